"""Reading the text files of a corpus (transcripts, split lists): UTF-8, with or without a byte-order mark."""

from __future__ import annotations

import codecs
from pathlib import Path

from .errors import CorpusLayoutError
from .files import cannot_read

__all__ = ["read_lines"]


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` for every line of ``path``, counted from 1 like an editor does.

    A UTF-8 byte-order mark (Windows editors write one) is dropped, so it does not become part of the first
    line. Lines end at ``\\n`` only (a ``\\r`` before it is dropped): ``str.splitlines`` would also cut at
    characters such as U+2028 that may be part of a transcript. Raises CorpusLayoutError naming the file and
    the line of the first byte that is not UTF-8, or a file the OS will not let us read (``cannot read PATH
    (permission denied)``).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise cannot_read(path, e) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorpusLayoutError(
            f"{str(path)}:{line}: the file is not UTF-8 text (byte {data[e.start]:#04x}; Latin-1 or "
            "Windows-1252, perhaps): save it as UTF-8"
        ) from None
    return [(n, line.removesuffix("\r")) for n, line in enumerate(text.split("\n"), 1)]
