"""Opening SQLite files safely, and turning sqlite3's errors into the store's named errors.

Checks happen before the store's connection opens the file, so a wrong path never gets overwritten or
half-converted: an existing file is first read by a read-only SQLite connection (which tells SQLite from
anything else and changes nothing), and a missing file is created only when asked (URI mode ``rwc``);
``ro`` and ``rw`` never create anything.

Never with plain ``open()``: POSIX file locks belong to the process, and closing *any* descriptor of a file
drops all of them, including those of every SQLite connection this process holds on it. A dashboard's
long-lived reader would then look absent to the last writer, which deletes the WAL on exit under it: the
reader sees no later commit. SQLite's own connections share one lock table per file and defer such closes.
"""

import contextlib
import os
import shlex
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from .errors import (
    DatabaseCorrupt,
    DatabaseLocked,
    DatabaseNotFound,
    DirectoryNotFound,
    DiskFull,
    LeftoverJournal,
    NotADatabase,
    ReadOnlyDirectory,
    ReadOnlyLocation,
    ReadOnlyStore,
    StoreError,
)

__all__ = ["preflight", "check_leftovers", "connect", "immediate", "translate"]


# Primary result codes (sqlite3.h); extended codes keep them in the low byte.
_BUSY, _LOCKED, _READONLY, _IOERR, _CANTOPEN, _CORRUPT, _NOTADB, _FULL = 5, 6, 8, 10, 14, 11, 26, 13
# Extended codes: a read-only connection that cannot create (or initialise) the -shm file of a WAL database.
_READONLY_CANTINIT, _READONLY_DIRECTORY = _READONLY | 5 << 8, _READONLY | 6 << 8
_IOERR_SHMSIZE = _IOERR | 19 << 8  # the -shm file could not grow: a full disk
_JOURNAL_SUFFIXES = ("-wal", "-shm", "-journal")


def preflight(path: Path, *, create: bool, write: bool) -> None:
    """Refuse paths that cannot hold a gradwatch database, before SQLite opens them (reads only).

    ``write``: the store will write, so an existing file must be writable, and so must
    its directory unless the ``-wal``/``-shm`` files SQLite keeps beside it already exist and are writable.
    Checked here because SQLite opens an unwritable file read-only without a word, and its first read then
    creates ``-wal``/``-shm`` files with the database's read-only mode, which keep refusing writes after the
    user has fixed the database's own permissions.
    """
    if path.is_dir():
        raise NotADatabase(
            f"{path} is a directory; pass a database file path such as {path / 'gradwatch.db'}."
        )
    if path.exists():
        if not os.access(path, os.R_OK):
            raise ReadOnlyLocation(
                f"{path} cannot be read by this user; fix its permissions or choose another file."
            )
        if write:
            _check_writable(path)
        # An empty file is a valid empty database (e.g. made by `touch`); anything else must be SQLite.
        if not _is_sqlite(path):
            raise NotADatabase(
                f"{path} is not an SQLite database; gradwatch left it untouched. Check the path, or choose "
                "a new file name for the database."
            )
        return
    parent = path.parent
    if not parent.is_dir():
        if create:
            raise DirectoryNotFound(
                f"The directory {parent} does not exist, so {path.name} cannot be created there. "
                f"Create it first (mkdir -p {parent}) or choose another database path."
            )
        raise DatabaseNotFound(f"{path} does not exist (nor does its directory {parent}).")
    if not create:
        raise DatabaseNotFound(
            f"{path} does not exist. Record a run into it first (e.g. python -m trainer --db {path}) "
            "or pass the path of an existing gradwatch database."
        )
    if not os.access(parent, os.W_OK):
        raise ReadOnlyLocation(
            f"Cannot create {path}: the directory {parent} is not writable by this user. "
            "Choose a writable location for the database (e.g. your home or working directory)."
        )
    check_leftovers(path)


def check_leftovers(path: Path) -> None:
    """Refuse to create ``path`` while the ``-wal``/``-shm``/``-journal`` files of a deleted database of that
    name lie beside it: SQLite takes them for the new file's own and replays the old pages into it (a
    corrupt file, deleted runs back). They stay when the database is deleted while a process still has it
    open (a dashboard), or after a crash. Never removed here: they may still be in use, and hold data."""
    found = [p for p in (path.with_name(path.name + s) for s in _JOURNAL_SUFFIXES) if p.exists()]
    if not found or path.exists():  # (found first: a database created meanwhile owns its -wal)
        return
    names = ", ".join(str(p) for p in found)
    is_, them = ("is", "it") if len(found) == 1 else ("are", "them")
    raise LeftoverJournal(
        f"Cannot create {path}: {names} {is_} still there, left by a deleted database of that name (a "
        "process may still have it open, e.g. a dashboard or a sqlite3 shell). SQLite would replay "
        f"{them} into a new file and corrupt it, so gradwatch created nothing. Close the process that uses "
        f"the old database, then move {them} away (or delete {them} if you do not need the old runs), or "
        "choose another database path."
    )


def _is_sqlite(path: Path) -> bool:
    """Whether SQLite reads ``path`` as a database (its header); False only for "not a database". Other
    failures (a lock held, a corrupt page) are left to the store's own connection to report."""
    conn = sqlite3.connect(f"file:{_uri_path(path.resolve())}?mode=ro", uri=True, timeout=0)
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # reads the header and page 1
    except sqlite3.DatabaseError as e:
        return getattr(e, "sqlite_errorcode", None) != _NOTADB and "not a database" not in str(e)
    finally:
        conn.close()
    return True


def _check_writable(path: Path) -> None:
    sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    blocked = [p for p in (path, *sides) if p.exists() and not os.access(p, os.W_OK)]
    if not os.access(path.parent, os.W_OK) and not all(p.exists() for p in sides):
        blocked.append(path.parent)  # SQLite must create -wal/-shm there
    if blocked:
        names = ", ".join(str(p) for p in blocked)
        raise ReadOnlyLocation(
            f"Cannot open {path} for writing: {names} {'is' if len(blocked) == 1 else 'are'} read-only for "
            "this user. Fix the permissions (e.g. chmod u+w) or record into a writable location."
        )


def _uri_path(path: Path) -> str:
    # The file name's bytes, percent-encoded: a name that is not valid UTF-8 (held in a str with surrogate
    # escapes) reaches SQLite unchanged instead of failing to encode.
    return quote(os.fsencode(path))


def connect(path: Path, *, mode: str, busy_timeout: float, shown: Path | None = None) -> sqlite3.Connection:
    """A connection in driver autocommit mode (we issue BEGIN IMMEDIATE ourselves), usable from any thread.

    ``mode`` is SQLite's URI mode: ``ro``, ``rw`` or ``rwc`` (the only one that creates the file).
    ``shown``: the path error messages name (the database a private temporary file will become).
    """
    if mode not in ("ro", "rw", "rwc"):
        raise ValueError(f"mode={mode!r}; accepted: 'ro', 'rw', 'rwc'")
    uri = f"file:{_uri_path(path.absolute())}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise translate(exc, shown or path, "open") from exc
    return conn


def translate(exc: sqlite3.Error, path: Path, action: str, *, readonly: bool = False) -> StoreError:
    """The named StoreError for a sqlite3 error raised while doing ``action`` on ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_BUSY, _LOCKED) or "locked" in text:
        return DatabaseLocked(
            f"{path} stayed locked by another connection longer than the busy timeout while trying to "
            f"{action} ({text}). Another process holds a long write transaction (or an exclusive lock, e.g. "
            "an open `sqlite3` shell or a DB browser in a transaction, a backup tool): finish or close it "
            "and try again (a Store opened with a longer busy_timeout waits longer)."
        )
    if code in (_READONLY_DIRECTORY, _READONLY_CANTINIT):
        return ReadOnlyDirectory(
            f"Cannot {action}: {path} is in WAL mode and its directory {path.parent} is not writable by this "
            f"user, so SQLite cannot create the {path.name}-shm file that even a reader needs ({text}). "
            "Make the directory writable for this user (e.g. ask its owner for group write access), or "
            f"copy {path.name} (with its -wal file, if there is one) to a folder you can write and open the "
            "copy."
        )
    if primary == _FULL or code == _IOERR_SHMSIZE or (primary == _IOERR and _nearly_full(path)):
        return DiskFull(
            f"Cannot {action}: the disk holding {path} is full ({text}). Free some space on it, or record "
            "into a database on another disk (db=... or $GRADWATCH_DB)."
        )
    if primary == _READONLY:
        if readonly:
            return ReadOnlyStore(f"Cannot {action}: the store for {path} was opened with readonly=True.")
        return ReadOnlyLocation(
            f"Cannot {action}: {path} (or its directory, for the -wal/-shm files) is read-only for this "
            "user. Fix the permissions or record into a writable location."
        )
    if primary == _CORRUPT:
        # .dump stops at the damage and ends its script with a ROLLBACK that would undo everything it read;
        # .recover reads around it, but only shells built with SQLite's page table have it (not Debian 12's).
        q = shlex.quote(str(path))
        return DatabaseCorrupt(
            f"{path} is damaged: SQLite reports {text!r} while trying to {action}; gradwatch wrote nothing "
            f"more into it. Record into a new file, and recover what it holds with the sqlite3 shell: "
            f"sqlite3 {q} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 recovered.db "
            f"(a shell that has .recover can save more: sqlite3 {q} .recover | sqlite3 recovered.db)."
        )
    if primary == _NOTADB:
        return NotADatabase(
            f"{path} is not a readable SQLite database ({text}); gradwatch left it untouched. "
            "Check the path, or choose a new file name."
        )
    if primary == _CANTOPEN:
        return ReadOnlyLocation(
            f"SQLite cannot open {path} ({text}): the file or its directory is not writable by this user "
            "(or lies on a read-only file system). Choose a writable location for the database."
        )
    return StoreError(f"SQLite error while trying to {action} on {path}: {text}")


def _nearly_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has less than 1 MiB left: an I/O error is then a full disk."""
    try:
        stat = os.statvfs(path.parent)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


@contextlib.contextmanager
def immediate(
    conn: sqlite3.Connection, path: Path, action: str, *, readonly: bool = False, retry_for: float = 0
):
    """A write transaction that takes the write lock up front.

    A deferred BEGIN that reads and then writes fails with SQLITE_BUSY_SNAPSHOT when another writer
    committed in between, whatever the busy timeout; BEGIN IMMEDIATE waits for the lock instead.
    Nested sqlite-utils calls inside use savepoints (Database.atomic sees the open transaction).
    ``retry_for``: seconds to keep retrying BEGIN when SQLite answers SQLITE_BUSY at once — it does so,
    bypassing the busy handler, to a connection that opened the file just as another process switched
    it to WAL (seen with several processes creating one new file).
    """
    deadline = time.monotonic() + retry_for
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise translate(exc, path, action, readonly=readonly) from exc
            time.sleep(0.02)
        except sqlite3.Error as exc:
            raise translate(exc, path, action, readonly=readonly) from exc
    try:
        yield conn
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, path, action, readonly=readonly) from exc
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise translate(exc, path, action, readonly=readonly) from exc
