"""Stopping a run: SIGTERM to its process, the stop request recorded from a child process, and the exit
codes a stopped process ends with.

The trainer and the tracker turn SIGTERM into a clean ``stopped`` run: the step is finished and flushed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["STOP_EXIT_CODES", "record_stop", "stop_pid"]


# Run in a child process: opening a Store reads the file's header with a plain open() and close(), and closing
# any descriptor of a file drops every POSIX lock this process holds on it, those of the dashboard's cached
# read-only connection included. A training process that closes after that finds no other reader, deletes
# the WAL and the -shm under that connection, which from then on never sees a new row.
_RECORD_STOP = """
import sys
from tracker.store import Store, StoreError
try:
    with Store.open(sys.argv[1], create=False) as store:
        store.request_stop(int(sys.argv[2]))
except StoreError as exc:
    sys.exit(str(exc))
"""


def record_stop(db: str | os.PathLike, run_id: int, *, timeout: float = 60.0) -> str | None:
    """Record a stop request for ``run_id`` (``runs.stop_requested_at``) from a short-lived child process,
    never in this one (see ``_RECORD_STOP``). Returns None when recorded, else why it was not."""
    repo = Path(__file__).resolve().parents[1]  # makes `tracker` importable without an installed package
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RECORD_STOP, str(db), str(int(run_id))],
            cwd=repo,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {done.returncode}"
    return None


def stop_pid(pid: int) -> bool:
    """Send SIGTERM to ``pid``; False when there is no such process (it already ended)."""
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


# How a process stopped by a signal exits: 128 + the signal's number (the tracker's SystemExit(143) on
# SIGTERM, 130 after Ctrl-C), or minus it when the signal killed it before any handler ran.
STOP_EXIT_CODES = frozenset({0, 128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT})
