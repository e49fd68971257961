"""The SQLite store of gradwatch: schema, background writer, read queries (the only SQL in the project)."""

from .errors import (
    CannotResume,
    DatabaseLocked,
    DatabaseNotFound,
    DirectoryNotFound,
    ForeignDatabase,
    NotADatabase,
    ReadOnlyLocation,
    ReadOnlyStore,
    RunNotFound,
    RunStillRunning,
    SchemaTooNew,
    SchemaTooOld,
    StoreError,
    WriterClosed,
    WriterFailed,
)
from .schema import BLOCK_SIZES, SCHEMA_VERSION
from .store import NONFINITE_POLICIES, Store
from .writer import EXTRA_STATS, FINAL_STATUSES, BackgroundWriter

__all__ = [
    "Store",
    "BackgroundWriter",
    "SCHEMA_VERSION",
    "BLOCK_SIZES",
    "EXTRA_STATS",
    "FINAL_STATUSES",
    "NONFINITE_POLICIES",
    "StoreError",
    "DirectoryNotFound",
    "ReadOnlyLocation",
    "DatabaseNotFound",
    "NotADatabase",
    "ForeignDatabase",
    "SchemaTooNew",
    "SchemaTooOld",
    "DatabaseLocked",
    "ReadOnlyStore",
    "RunNotFound",
    "CannotResume",
    "RunStillRunning",
    "WriterClosed",
    "WriterFailed",
]
