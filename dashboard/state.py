"""Per-process and per-session state of the dashboard: the database, the store, the launcher.

Set up once in the entry point (``streamlit_app.py``) and read by every page through these functions.
The Store is cached per file (``st.cache_resource``): its connection is opened with
``check_same_thread=False`` because Streamlit runs every rerun and fragment on its own thread.
It is the only Store this process opens on the file: the one write (a stop request) is made by a child
process (``stopping.record_stop`` says why).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import streamlit as st

from dashboard.db import friendly_error, resolve_db_path
from dashboard.jobs import Launcher
from dashboard.text import code_span, escape_markdown

__all__ = [
    "LIVE_INTERVAL_S",
    "db_path",
    "explain_missing_directory",
    "ids_from_url",
    "ids_to_url",
    "get_store",
    "launcher",
    "log_dir",
    "can_stop",
    "show_store_error",
    "stop_job",
    "stop_recorded_run",
    "unknown_ids_text",
]

LIVE_INTERVAL_S = 2.0  # a step written by a trainer shows within this (plus one read) in an open page
BUSY_TIMEOUT_S = 2.0


def db_path() -> Path:
    """The database of this session: ``-- --db PATH``, else ``$GRADWATCH_DB``, else ``./gradwatch.db``."""
    if "db_path" not in st.session_state:
        # Streamlit sets sys.argv to [script, *args after "--"]; under pytest/AppTest argv is pytest's own.
        argv = sys.argv[1:] if Path(sys.argv[0]).name == "streamlit_app.py" else []
        try:
            st.session_state["db_path"] = str(resolve_db_path(argv, os.environ, os.getcwd()))
        except ValueError as exc:
            st.error(f"The dashboard was started with {escape_markdown(exc)}")
            st.stop()
    return Path(st.session_state["db_path"])


def log_dir() -> Path:
    """Launch logs and replayed configs live next to the database, so they outlive the dashboard."""
    return db_path().parent / "gradwatch-logs"


_OPENED = itertools.count(1)  # numbers the Stores this process opens: see data.db_key


def _open_store(path: str):
    from tracker.store import Store

    # A short busy timeout: a page should say "locked" within seconds rather than hang.
    return Store.open(path, create=False, readonly=True, busy_timeout=BUSY_TIMEOUT_S)


@st.cache_resource(show_spinner=False)
def _store(path: str, identity: tuple):
    # identity (inode, device) makes a replaced file (deleted and recreated) get a fresh Store.
    store = _open_store(path)
    # The pages' caches of what is read through it are keyed on this (data.db_key): rows read from another
    # file at this path, or from this file before it was rewritten, are never served as this Store's.
    store.cache_key = f"{path}#{next(_OPENED)}"
    return store


@st.cache_resource(show_spinner=False)
def _seen() -> dict[str, tuple]:
    """Database path -> ((inode, device), (size, mtime_ns)) of the file its cached Store was last found
    sound at: process-wide, like the Stores."""
    return {}


def get_store():
    """The read-only Store for this session's database, or None when there is no database yet (no file, or
    an empty file: the start page).

    Raises the store's named errors (StoreError subclasses) for a file that is not usable. The cached Store
    is kept while the file is the same: one ``stat`` per call. A file replaced (another inode) gets a new
    Store; a file whose main file changed in place (a checkpoint, but also a file truncated or overwritten,
    which the cached connection would not notice: it reads its own page cache and the WAL) is first checked
    through a new connection, and answers what a first visit would; when the two read other runs (another
    gradwatch file copied over it), the cached Store is replaced too.
    """
    from tracker.store import DatabaseNotFound, StoreError

    path = db_path()
    key, seen = str(path), _seen()
    before = seen.get(key)
    try:
        info = path.stat()
    except FileNotFoundError:
        if before is not None:  # deleted: let go of it (and of its disk space)
            _store.clear(key, before[0])
            seen.pop(key, None)
        return None
    identity, shape = (info.st_ino, info.st_dev), (info.st_size, info.st_mtime_ns)
    try:
        if before is not None and before[0] != identity:
            _store.clear(key, before[0])  # replaced: let go of the old file
        elif before is not None and before[1] != shape and not _same_content(key, identity):
            _store.clear(key, identity)  # rewritten in place: its cached connection reads the old pages
        store = _store(key, identity)
    except StoreError as exc:
        if before is not None:
            _store.clear(key, before[0])
            seen.pop(key, None)
        if isinstance(exc, DatabaseNotFound):
            return None
        raise
    seen[key] = (identity, shape)
    return store


def _same_content(key: str, identity: tuple) -> bool:
    """Whether the cached Store of a file whose main file changed in place still reads what the file holds:
    yes after a checkpoint (the usual change, every few seconds while a run writes), no after another file
    was copied over it. Asked of a new connection, which raises what a first visit would (a file truncated,
    overwritten with garbage)."""
    from tracker.store import StoreError

    fresh = _open_store(key)
    try:
        try:
            cached = _store(key, identity).fingerprint()
        except StoreError:  # (its pages are another file's: "damaged")
            return False
        return cached == fresh.fingerprint()
    finally:
        fresh.close()


def recorded_runs():
    """The runs table of this session's database (``data.runs``), or None when there is no database yet.

    Raises the store's named errors, like :func:`get_store`.
    """
    from dashboard import data

    store = get_store()
    return None if store is None else data.runs(store)


def rerun_when_a_run_appears() -> None:
    """On a page that said "No run recorded yet": look again every ``LIVE_INTERVAL_S`` and draw the page
    when a run is there (a file deleted and recorded again, or moved back), as a page with runs follows
    them. One ``stat`` per look while there is no file."""

    def look() -> None:
        try:
            store = get_store()
        except Exception:  # noqa: BLE001 - a file being written or damaged: the next look, or a reload, says
            return
        if store is not None and store.fingerprint():
            st.rerun()

    st.fragment(look, run_every=LIVE_INTERVAL_S)()


def explain_missing_directory() -> bool:
    """When the database's directory does not exist, say so with how to fix it and return True (a page then
    has nothing else to show: no run can be recorded or launched there)."""
    path = db_path()
    if path.parent.is_dir():
        return False
    st.error(
        f"The directory {code_span(path.parent)} does not exist, so there is no database "
        f"{code_span(path.name)} in it.\n\n**How to fix:** check the path given with `--db` or "
        "`$GRADWATCH_DB`, or create the directory first.",
        icon=":material/error:",
    )
    return True


@st.cache_resource(show_spinner=False)
def _launcher(directory: str) -> Launcher:
    return Launcher(directory)


def launcher() -> Launcher:
    """The process-wide launcher: jobs started from any browser session are listed and stoppable from all."""
    return _launcher(str(log_dir()))


def can_stop(run: dict) -> bool:
    """A recorded run this dashboard can signal: running, on this machine, with a recorded pid."""
    import socket

    import pandas as pd

    pid = run.get("pid")
    return (
        run.get("status") == "running"
        and run.get("host") == socket.gethostname()
        and pid is not None
        and bool(pd.notna(pid))
        and int(pid) > 0
    )


def stop_recorded_run(run: dict) -> str:
    """SIGTERM the run's process and record the request; returns what happened, for the page to show."""
    from dashboard.stopping import record_stop, stop_pid

    pid = int(run["pid"])
    launcher().mark_stopping(pid)  # a job of this dashboard: its exit (143) then reads as stopped, not failed
    if not stop_pid(pid):
        return f"Process {pid} is already gone; the run will show as crashed."
    # The signal was sent; the record is a courtesy (the file may be read-only).
    problem = record_stop(db_path(), int(run["id"]))
    if problem:
        return f"Sent SIGTERM to {pid} (could not record the request: {escape_markdown(problem)})."
    return f"Sent SIGTERM to {pid}: the run finishes its step, flushes and ends as stopped."


def job_run(job) -> dict | None:
    """The recorded run a running job is training: the run it resumes, else the running run recorded with
    the job's pid on this machine (the newest one). None when there is none (yet), or no database."""
    if job.state != "running":
        return None
    runs = recorded_runs()
    if runs is None:
        return None
    rows = [r for r in runs.to_dict("records") if can_stop(r) and int(r["pid"]) == job.pid]
    resumed = [r for r in rows if job.spec.resumes is not None and int(r["id"]) == job.spec.resumes]
    return (resumed or rows or [None])[0]  # runs() lists the newest first


def stop_job(job) -> str:
    """Stop a job launched from this dashboard. When its run is known this is the Run page's Stop
    (:func:`stop_recorded_run`: SIGTERM, and the request recorded in ``runs.stop_requested_at``); else
    SIGTERM alone (a job whose run is not recorded yet), or cancel a queued job. Returns what happened."""
    run = job_run(job)
    if run is not None:
        return stop_recorded_run(run)
    queued = job.popen is None
    if not launcher().stop(job):
        return f"Nothing to stop: the job has already ended ({job.state})."
    if queued:
        return "Cancelled: it will not start."
    return f"Sent SIGTERM to {job.pid} (its run is not recorded yet)."


def show_store_error(exc: BaseException) -> None:
    """Render a store error as a friendly message with how to fix it (never a traceback)."""
    st.error(friendly_error(db_path(), exc), icon=":material/error:")


def ids_from_url(param: str, seen_key: str, known) -> tuple[list[int], list[str]]:
    """Run ids named in the page's address (``?run=3``, ``?runs=2,3,4``) when it names them anew (a link
    opened, a reload: not the value this page wrote itself, ``seen_key``): ``(known ids, the rest as
    typed)``; ``([], [])`` when there is nothing new to follow."""
    raw = st.query_params.get(param)
    if raw is None or raw == st.session_state.get(seen_key):
        return [], []
    st.session_state[seen_key] = raw
    ids, unknown = [], []
    for part in str(raw).split(","):
        text = part.strip().lstrip("#")
        if not text:
            continue
        if not (
            text.isascii() and text.isdigit()
        ):  # (int() also takes "1_0", "-1", "٣": no id is written so)
            unknown.append(part.strip())
            continue
        run_id = int(text)
        if run_id not in known:
            unknown.append(text)
        elif run_id not in ids:
            ids.append(run_id)
    return ids, unknown


def ids_to_url(param: str, seen_key: str, ids) -> None:
    """Make the page's address name ``ids`` (none: no parameter), so a reload or a shared link opens them."""
    value = ",".join(str(int(i)) for i in ids)
    if param not in st.query_params and st.session_state.get(seen_key) in (None, value or None):
        # Opened without it (the sidebar, a first visit), showing what the page shows by itself: the
        # address stays as it is. Writing it adds an entry to the browser's history, and Back then needed
        # two presses to leave the page. A pick made here writes it.
        st.session_state[seen_key] = value or None
        return
    if value:
        if st.query_params.get(param) != value:
            st.query_params[param] = value
    elif param in st.query_params:
        del st.query_params[param]
    st.session_state[seen_key] = value or None


def unknown_ids_text(unknown: list[str]) -> str:
    """``run 99`` / ``runs 99, abc``, as typed, escaped for markdown."""
    return ("run " if len(unknown) == 1 else "runs ") + ", ".join(escape_markdown(u) for u in unknown)
