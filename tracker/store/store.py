"""Store: opens a gradwatch SQLite file, creates runs and layers, hands out background writers.

The read queries live in reader.py (the ``Reads`` mixin); the row-heavy writes in writer.py.
One connection per Store, shared by threads under a lock (Streamlit calls from several threads);
each BackgroundWriter opens its own.
"""

import contextlib
import functools
import json
import math
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import resume
from .blocks import LAYERS_WITH_ROWS
from .connection import check_leftovers, connect, immediate, preflight, translate
from .envelope import EnvelopeCache
from .errors import DatabaseLocked, DatabaseNotFound, DiskFull, ReadOnlyStore, RunNotFound
from .reader import Reads, process_start_time
from .schema import LATER_COLUMNS, TABLES, check_schema, create_schema, ensure_columns
from .writer import LAYER_COLUMNS, BackgroundWriter, layer_row

__all__ = ["Store", "NONFINITE_POLICIES"]

NONFINITE_POLICIES = ("record", "skip", "raise")

# The last row of every table and index a new run appends to: one root-to-leaf path each, read before the
# run is inserted, so that a file damaged where the writer would append fails with DatabaseCorrupt first,
# instead of leaving a run that can never be written. Not an integrity check (files reach GBs).
_RIGHT_EDGES = (
    "SELECT max(id) FROM runs",
    "SELECT max(parent_id) FROM runs",
    *(
        f"SELECT max(run_id) FROM {table}"  # the primary key's last leaf (WITHOUT ROWID tables)
        for table in TABLES
        if table not in ("meta", "runs", "metrics")  # (no run rows; its own id; an index, below)
    ),
    "SELECT max(run_id) FROM metrics",  # (the metrics_by_step index)
    "SELECT run_id FROM metrics ORDER BY run_id DESC, name DESC, step DESC LIMIT 1",  # its primary key
)


def _create_file(path: Path, busy_timeout: float) -> None:
    """Make a new database file, already in WAL mode with its tables, atomically.

    The tables are created in a private file next to ``path`` that is then hard-linked into place;
    when several processes start at once, one link wins and the others open the winner's file. Creating
    in place instead makes them race through SQLite's rollback-journal-to-WAL switch, where a connection
    can get SQLITE_BUSY for seconds, past its busy handler. The private file and its -wal/-shm are removed
    whatever happens (a full disk, say); errors name ``path``, the file the user asked for.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        conn = connect(tmp, mode="rwc", busy_timeout=busy_timeout, shown=path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            with immediate(conn, path, "create the gradwatch tables"):
                create_schema(conn)
            # The tables are in tmp's -wal until a checkpoint copies them into tmp. close() would do it but
            # says nothing when it cannot (a full disk), and tmp, linked into place without them, would be a
            # malformed database at the user's path: checkpoint here, where a failure raises.
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise sqlite3.OperationalError("database is locked (checkpoint of a new file)")
        except sqlite3.Error as exc:
            raise translate(exc, path, "create the database") from exc
        finally:
            conn.close()  # the last connection checkpoints and removes tmp's -wal and -shm
        wal = tmp.with_name(tmp.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:  # (the checkpoint above was cut short after all)
            raise DiskFull(
                f"Cannot create the database {path}: the new file could not be completed on its disk (the "
                "disk is full?); nothing was created there. Free some space on it, or record into a "
                "database on another disk (db=... or $GRADWATCH_DB)."
            )
        # Again right before the file appears: a database deleted meanwhile may have left its -wal/-shm.
        check_leftovers(path)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError:  # no hard links on this file system: create in place (Store._prepare)
            pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def _text(value: str) -> str:
    """``value`` as text SQLite can store: a str from the OS holding bytes that are not UTF-8 (surrogate
    escapes, e.g. a Latin-1 directory name) gets each such byte written as ``\\xNN``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return os.fsencode(value).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _merged_config(new: Mapping[str, Any], keep: tuple[str, ...], recorded: str | None) -> str:
    try:
        old = json.loads(recorded or "{}")
    except ValueError:
        old = {}
    merged = dict(new)
    for key in keep:
        if isinstance(old, dict) and isinstance(old.get(key), dict):
            merged[key] = {**old[key], **(new.get(key) or {})}
    return config_json(merged)


def config_json(config: Mapping[str, Any]) -> str:
    """``runs.config`` as strict JSON: SQLite's ``json_extract`` rejects Python's NaN/Infinity literals, so
    non-finite numbers are stored as null. Keys become strings; numpy scalars and 0-d tensors their
    number; other values JSON has no type for, their str(). ``ValueError`` for what would lose a value (two
    keys with one string form, ``1`` and ``"1"``) or cannot be written (a config that holds itself)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            out = {str(k): clean(v) for k, v in x.items()}
            if len(out) < len(x):
                keys = sorted(map(repr, x), key=str)
                raise ValueError(
                    f"config: keys {', '.join(keys)} include two with the same string form, and JSON keys "
                    "are strings: one value would be lost. Rename one of them."
                )
            return out
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    def default(x: Any) -> Any:  # a numpy scalar or a 0-d tensor is its number; anything else its str()
        try:
            value = x.item()
        except Exception:  # noqa: BLE001 - no .item(), or not a single value
            return str(x)
        return clean(value) if isinstance(value, int | float | bool) else str(x)

    try:
        return json.dumps(clean(config), sort_keys=True, default=default, allow_nan=False)
    except RecursionError:  # (json's own ValueError for a cycle comes after clean() has recursed)
        raise ValueError(
            "config holds itself (a dict or list that contains itself): JSON cannot store it"
        ) from None


class Store(Reads):
    """A gradwatch database file. Create with ``Store.open(path)``."""

    def __init__(self, path: Path, conn, *, readonly: bool, busy_timeout: float, stale_after: float):
        self.path = path
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.stale_after = stale_after
        self._conn = conn
        self._lock = threading.RLock()
        self._sqlite_utils_db = None
        self._envelopes = EnvelopeCache()
        self._summaries: dict[int, tuple] = {}  # run id -> running counts for runs()

    @property
    def _db(self):
        # Imported on first write: sqlite-utils imports pandas (~0.7 s), which readers and a training
        # process that only enqueues rows do not need at import time.
        if self._sqlite_utils_db is None:
            import sqlite_utils

            self._sqlite_utils_db = sqlite_utils.Database(self._conn, execute_plugins=False)
        return self._sqlite_utils_db

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        create: bool | None = None,
        readonly: bool = False,
        busy_timeout: float = 5.0,
        stale_after: float = 30.0,
    ) -> "Store":
        """Open (and with ``create``, make) a gradwatch database.

        create: make the file and its tables when missing (default: True unless readonly).
        readonly: open with SQLite's read-only mode: never changes the database, not even the journal mode
            (SQLite may create the empty -wal/-shm files WAL readers share); writes raise ReadOnlyStore.
            What a dashboard should use.
        busy_timeout: seconds to wait for another connection's lock before DatabaseLocked.
        stale_after: seconds without a heartbeat after which a "running" run is reported as "crashed".
        """
        if create is None:
            create = not readonly
        if create and readonly:
            raise ValueError("create=True with readonly=True; a read-only store cannot create a database")
        if busy_timeout < 0 or stale_after <= 0:
            raise ValueError(
                f"busy_timeout={busy_timeout!r}, stale_after={stale_after!r}; accepted: >= 0, > 0"
            )
        path = Path(path)
        preflight(path, create=create, write=not readonly)
        if create and not path.exists():
            _create_file(path, busy_timeout)
        mode = "ro" if readonly else ("rwc" if create else "rw")
        conn = connect(path, mode=mode, busy_timeout=busy_timeout)
        try:
            try:
                cls._prepare(conn, path, create=create, busy_timeout=busy_timeout)
                if not readonly:
                    conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                raise translate(exc, path, "open the database", readonly=readonly) from exc
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, readonly=readonly, busy_timeout=busy_timeout, stale_after=stale_after)

    @staticmethod
    def _prepare(conn, path: Path, *, create: bool, busy_timeout: float) -> None:
        """Check the file is ours; create the tables in an empty one (create=True)."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                if check_schema(conn, str(path)):
                    return
                if not create:
                    raise DatabaseNotFound(
                        f"{path} exists but holds no gradwatch tables yet (an empty file). "
                        "Record a run into it first, or open it with create=True."
                    )
                # WAL lets readers read while a writer writes; set before the first table exists.
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                with immediate(conn, path, "create the gradwatch tables", retry_for=busy_timeout):
                    if not check_schema(conn, str(path)):  # another process may have won the race
                        create_schema(conn)
                return
            except (sqlite3.OperationalError, DatabaseLocked) as exc:
                # Processes racing to create one new file: while one switches it to WAL, the others can
                # get SQLITE_BUSY at once, without the busy handler; try again until the busy timeout.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Store({str(self.path)!r}, readonly={self.readonly})"

    # ---- writes of run metadata (rare, small: sqlite-utils, inside BEGIN IMMEDIATE) ------------------
    @contextlib.contextmanager
    def _write(self, action: str):
        if self.readonly:
            raise ReadOnlyStore(f"Cannot {action}: {self.path} was opened with readonly=True.")
        db = self._db  # its first use imports sqlite-utils and pandas: never while holding the write lock
        with self._lock, immediate(self._conn, self.path, action, retry_for=self.busy_timeout):
            yield db

    def create_run(
        self,
        *,
        name: str,
        config: dict | None = None,
        clip: str | None = None,
        clip_source: str | None = None,
        parent_id: int | None = None,
        argv: list[str] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        every: int = 1,
        nonfinite: str = "record",
        world_size: int = 1,
        pid: int | None = None,
        host: str | None = None,
    ) -> int:
        """Insert a run with status "running" and return its id. argv/cwd/python/pid/host default to
        this process (what the dashboard needs to relaunch it and to tell whether it is alive); ``env``, the
        environment variables to relaunch it with, is recorded only when given (None: NULL)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name={name!r}; accepted: a non-empty string")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r}; accepted: an int >= 1")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r}; accepted: an int >= 1")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r}; accepted: {', '.join(NONFINITE_POLICIES)}")
        now = time.time()
        row = dict(
            name=_text(name),
            status="running",
            config=config_json(config or {}),
            clip=clip,
            clip_source=clip_source,
            parent_id=parent_id,
            argv=json.dumps(list(sys.argv if argv is None else argv)),
            cwd=_text(os.getcwd() if cwd is None else cwd),
            env=None if env is None else json.dumps({_text(k): _text(v) for k, v in env.items()}),
            python=_text(sys.executable if python is None else python),
            pid=os.getpid() if pid is None else pid,
            # (which process that pid is: a reused pid, or one of another pid namespace, is another one)
            pid_started_at=(
                process_start_time(os.getpid() if pid is None else pid)
                if host in (None, socket.gethostname())
                else None
            ),
            host=_text(socket.gethostname() if host is None else host),
            every=every,
            nonfinite=nonfinite,
            world_size=world_size,
            created_at=now,
            heartbeat_at=now,
        )
        with self._write("create a run") as db:
            for sql in _RIGHT_EDGES:  # the pages this run's rows will go to must be readable (cheap)
                db.execute(sql).fetchall()
            if (
                parent_id is not None
                and not db.execute("SELECT 1 FROM runs WHERE id = ?", (parent_id,)).fetchone()
            ):
                raise RunNotFound(f"parent_id={parent_id}: no such run in {self.path}")
            ensure_columns(db.conn, LATER_COLUMNS)  # (a file from before pid_started_at and env)
            run_id = db["runs"].insert(row).last_pk
            # What its writer reads first, where its rows will go: a damaged cell there can pass the reads of
            # the right edges above. In this transaction, so that a file damaged there gets no run at all.
            db.execute("SELECT max(step) FROM steps WHERE run_id = ?", (run_id,)).fetchall()
            db.execute(LAYERS_WITH_ROWS, dict(run=run_id)).fetchall()
            return run_id

    def add_layers(self, run_id: int, layers) -> None:
        """Record the run's parameter tensors: dicts with id, name, shape, and optionally numel, dtype,
        trainable (default True). A layer id already recorded for the run is replaced."""
        rows = [dict(zip(LAYER_COLUMNS, layer_row(run_id, layer), strict=True)) for layer in layers]
        with self._write("record layers") as db:
            self._require_run(run_id)
            if rows:
                db["layers"].insert_all(rows, replace=True)

    def layer_rows(self, run_id: int) -> list[dict[str, Any]]:
        """The layers a run recorded, in id order, as the dicts ``add_layers`` takes (shape a list,
        trainable a bool). What a resuming tracker numbers its model by (no pandas, unlike ``layers``)."""
        rows = self._conn.execute(
            "SELECT id, name, shape, numel, dtype, trainable FROM layers WHERE run_id = ? ORDER BY id",
            (int(run_id),),
        ).fetchall()
        return [
            dict(id=i, name=n, shape=json.loads(s), numel=k, dtype=d, trainable=bool(t))
            for i, n, s, k, d, t in rows
        ]

    def layers_measured_before(self, run_id: int, step: int) -> set[int]:
        """Ids of the run's layers with a gradient norm recorded at a step before ``step`` (a checkpoint)."""
        rows = self._conn.execute(
            "SELECT DISTINCT layer_id FROM grad_norms WHERE run_id = ? AND step < ?", (int(run_id), int(step))
        ).fetchall()
        return {int(i) for (i,) in rows}

    def resume_run(
        self,
        run_id: int,
        *,
        from_step: int,
        layers,
        pid: int | None = None,
        config: Mapping[str, Any] | None = None,
        keep: tuple[str, ...] = (),
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Continue run ``run_id`` from a checkpoint taken before step ``from_step``: mark it running for
        this process (``pid``, default this one) and delete what it recorded at steps >= ``from_step``
        (those steps are trained again; tracker/store/resume.py says why). ``layers``: the rows
        ``add_layers`` took, which must be the ones the run recorded. ``config``: the continuing process's
        settings, which replace ``runs.config`` (it may have grown its epochs, say); the recorded values of
        the object keys in ``keep`` are kept under the new ones. ``settings``: the continuing process's
        ``every``, ``nonfinite`` and ``world_size`` (the run's columns), where they may have changed.

        Raises RunNotFound, CannotResume (its process is alive, or another model) or ValueError."""
        layers = list(layers)
        with self._write("resume a run"):
            resume.resume_run(
                self._conn,
                int(run_id),
                from_step=from_step,
                layers=layers,
                path=str(self.path),
                stale_after=self.stale_after,
                pid=os.getpid() if pid is None else pid,
                config=None if config is None else functools.partial(_merged_config, config, keep),
                settings=settings,
            )
        self.clear_cache()

    def writer(self, run_id: int, **options) -> BackgroundWriter:
        """A BackgroundWriter for this run (options: busy_timeout, heartbeat_every, max_queue, batch_rows)."""
        if self.readonly:
            raise ReadOnlyStore(f"Cannot write run {run_id}: {self.path} was opened with readonly=True.")
        self._require_run(run_id)
        options.setdefault("busy_timeout", max(self.busy_timeout, 30.0))
        return BackgroundWriter(self.path, run_id, **options)

    def request_stop(self, run_id: int) -> None:
        """Record that a stop was asked for (the dashboard also sends SIGTERM to the run's pid)."""
        with self._write("request a stop") as db:
            self._require_run(run_id)
            db["runs"].update(run_id, {"stop_requested_at": time.time()})
