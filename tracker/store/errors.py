"""Named errors of the store. The library raises them; CLIs and pages turn them into friendly messages.

Every message says what went wrong with which file and what to do about it. None of these errors is
raised after touching the user's data: the store checks before it writes.
"""

__all__ = [
    "StoreError",
    "DirectoryNotFound",
    "ReadOnlyLocation",
    "ReadOnlyDirectory",
    "LeftoverJournal",
    "DatabaseNotFound",
    "NotADatabase",
    "DatabaseCorrupt",
    "ForeignDatabase",
    "SchemaTooNew",
    "SchemaTooOld",
    "DatabaseLocked",
    "DiskFull",
    "ReadOnlyStore",
    "RunNotFound",
    "CannotResume",
    "RunStillRunning",
    "WriterClosed",
    "WriterFailed",
    "DatabaseLockedWarning",
]


class StoreError(Exception):
    """Base class of every error raised by tracker.store."""


class DirectoryNotFound(StoreError):
    """The directory that should hold the database file does not exist."""


class ReadOnlyLocation(StoreError):
    """The database (or the directory for a new one) cannot be written by this process."""


class ReadOnlyDirectory(ReadOnlyLocation):
    """A WAL database in a directory this user cannot write: SQLite cannot create the ``-shm`` file that
    even a reader needs, so the file cannot be read safely from there."""


class LeftoverJournal(StoreError):
    """``-wal``/``-shm`` (or ``-journal``) files of a deleted database lie where a new one would be created:
    SQLite would replay them into the new file and corrupt it."""


class DatabaseNotFound(StoreError):
    """The database file does not exist (or holds no gradwatch tables yet) and create=False."""


class NotADatabase(StoreError):
    """The file exists but is not an SQLite database (wrong path, or a corrupt file)."""


class DatabaseCorrupt(NotADatabase):
    """The file is an SQLite database, but some of its pages are damaged."""


class ForeignDatabase(StoreError):
    """The file is an SQLite database written by another application."""


class SchemaTooNew(StoreError):
    """The database was written by a newer gradwatch with a schema this version cannot read."""


class SchemaTooOld(StoreError):
    """The database has an older schema version that this gradwatch does not migrate."""


class DatabaseLocked(StoreError):
    """Another connection held a lock on the database for longer than the busy timeout."""


class DiskFull(StoreError):
    """The disk (or file system) holding the database has no space left for it."""


class ReadOnlyStore(StoreError):
    """A write was attempted through a store opened with readonly=True."""


class RunNotFound(StoreError, KeyError):
    """No run with this id in the database."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CannotResume(StoreError):
    """A run cannot be continued: its process is still alive, or the model is not the one it recorded."""


class RunStillRunning(CannotResume):
    """The run's process still shows signs of life. ``elsewhere``: it ran on another host, so only its
    heartbeat tells, and a process that died there shows as crashed once the heartbeat is stale."""

    def __init__(self, message: str, *, elsewhere: bool):
        super().__init__(message)
        self.elsewhere = elsewhere


class WriterClosed(StoreError):
    """Rows were handed to a BackgroundWriter after close()."""


class WriterFailed(StoreError):
    """The background writer thread stopped on an error; the original error is the __cause__."""


class DatabaseLockedWarning(UserWarning):
    """Warned once per wait: another process has kept the database locked, rows wait in memory."""
