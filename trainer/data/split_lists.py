"""Speech Commands' split lists (``validation_list.txt``, ``testing_list.txt``): which clip each line names.

A clip the lists hold out must never land in training for the way a line spells it: a line names the clip it
spells, else the one clip equal to it up to case and Unicode normalisation (``yes/x.wav`` for ``yes/x.WAV`` on
disk; NFC typed for an NFD name stored by macOS). A line naming no clip at all is ignored with one warning per
list (a clip deleted since, a word the folder does not have); a line naming several clips that way, or a clip
named by both lists, is refused.
"""

from __future__ import annotations

import posixpath
import unicodedata
from pathlib import Path

from .errors import CorpusLayoutError
from .files import examples, warn
from .textfiles import read_lines

__all__ = ["read_split_list", "list_splits"]


def read_split_list(path: Path) -> list[str]:
    """The entries of a split list as ``<word>/<file>.wav``: the way a list written on Windows
    (``yes\\x.wav``) or by ``find .`` (``./yes/x.wav``) names a clip is the way the dataset's own lists do."""
    lines = (line.strip() for _, line in read_lines(path))
    return sorted({posixpath.normpath(line.replace("\\", "/")) for line in lines if line})


def _loose(name: str) -> str:
    """``name`` up to case and Unicode normalisation (macOS writes names decomposed, NFD; lists are NFC)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def list_splits(clips: list[str], entries: dict[str, list[str]], files: dict[str, Path]) -> dict[str, str]:
    """``{clip: "val" | "test"}`` for the lines of the two lists (``entries``, read from ``files``), among
    ``clips`` (every clip on disk, words of other variants included); raises CorpusLayoutError naming a line
    that matches several clips, or the clips named by both lists."""
    on_disk, loose, split_of, both = set(clips), None, {}, []
    for split, lines in entries.items():
        stale = []
        for line in lines:
            clip = line if line in on_disk else None
            if clip is None:
                if loose is None:
                    loose = {}
                    for c in clips:
                        loose.setdefault(_loose(c), []).append(c)
                matches = loose.get(_loose(line), [])
                if len(matches) > 1:
                    raise CorpusLayoutError(
                        f"{str(files[split])!r}: the line {line!r} names none of the clips exactly, and "
                        f"{examples(matches)} up to case or Unicode normalisation: rename the files so that "
                        "it names one"
                    )
                clip = matches[0] if matches else None
            if clip is None:
                stale.append(line)
            elif split_of.setdefault(clip, split) != split:
                both.append(clip)
        if stale:
            warn(
                f"{len(stale)} of the {len(lines)} lines of {str(files[split])!r} name no .wav clip of the "
                f"folder ({examples(stale)}): they are ignored"
            )
    if both:
        raise CorpusLayoutError(
            f"{len(both)} clip(s) are named by both {str(files['val'])!r} and {str(files['test'])!r} "
            f"({examples(both)}): a clip belongs to one split; remove it from one of the lists"
        )
    return split_of
