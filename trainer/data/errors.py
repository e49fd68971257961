"""Named exceptions of the data package; the trainer CLI turns them into one-line messages (exit code 2)."""

from __future__ import annotations

__all__ = ["DataError", "CorpusNotFound", "CorpusLayoutError"]


class DataError(Exception):
    """Base class for every error about a corpus."""


class CorpusNotFound(DataError, FileNotFoundError):
    """The corpus path does not exist (or is not a folder)."""


class CorpusLayoutError(DataError, ValueError):
    """The folder exists but is empty or not in the expected layout; the message names the layout."""
