"""The folders and files of a real corpus: listing them, and saying by name what could not be read.

A corpus loader raises ``CorpusLayoutError`` for a file or folder the OS refuses (``cannot read PATH
(permission denied)``), so the trainer prints one line and exits 2 rather than a traceback. What a loader
skips or changes instead of refusing is reported as a ``CorpusWarning``: once per kind, with a count and an
example.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import CorpusLayoutError, CorpusWarning

# CorpusWarning is defined with the package's exceptions (.errors); still importable from here.
__all__ = ["CorpusWarning", "cannot_read", "exists", "list_folder", "is_folder", "warn", "examples"]


def cannot_read(path: Path | str, error: OSError) -> CorpusLayoutError:
    """The error for a file or folder the OS will not let us read: ``cannot read PATH (permission denied)``
    (or whatever else the OS said: no such file or directory, is a directory...)."""
    reason = (error.strerror or type(error).__name__).lower()  # "Permission denied" -> "permission denied"
    return CorpusLayoutError(f"cannot read {str(path)!r} ({reason})")


def exists(path: Path, folder: bool = False) -> bool:
    """Whether ``path`` exists (and is a folder, with ``folder=True``); one the OS will not look at (a folder
    above it unreadable) is refused by name rather than taken as absent."""
    try:
        return path.is_dir() if folder else path.exists()
    except OSError as e:
        raise cannot_read(path, e) from None


def list_folder(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` sorted by name, without hidden ones (names starting with ``.``: macOS's
    ``._x.wav`` AppleDouble files, ``.DS_Store``, editors' swap files are not part of a corpus)."""
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise cannot_read(folder, e) from None


def is_folder(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder (a link to one included); one that cannot be looked at is refused."""
    try:
        return entry.is_dir()
    except OSError as e:
        raise cannot_read(entry.path, e) from None


def examples(items: list, at_most: int = 3) -> str:
    """``'a', 'b', 'c' and 4 more``: the first few of ``items``, quoted, for a message."""
    shown = ", ".join(repr(str(i)) for i in items[:at_most])
    return shown + (f" and {len(items) - at_most} more" if len(items) > at_most else "")


def warn(message: str) -> None:
    """Report what a loader skipped or changed (the trainer prints it as one ``warning:`` line)."""
    warnings.warn(message, CorpusWarning, stacklevel=3)
