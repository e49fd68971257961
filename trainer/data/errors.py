"""Named exceptions and warnings of the data package; the trainer CLI turns the exceptions into one-line
messages (exit code 2) and prints each warning as one ``warning:`` line."""

from __future__ import annotations

__all__ = ["DataError", "CorpusNotFound", "CorpusLayoutError", "CorpusWarning"]


class DataError(Exception):
    """Base class for every error about a corpus."""


class CorpusNotFound(DataError, FileNotFoundError):
    """The corpus path does not exist (or is not a folder)."""


class CorpusLayoutError(DataError, ValueError):
    """The folder exists but is empty or not in the expected layout; the message names the layout."""


class CorpusWarning(UserWarning):
    """Part of a corpus was skipped or changed rather than refused; the message names it and says why."""
