"""Reopening a recorded run to continue it from a checkpoint: the checks, and the rows it takes back.

A training job restarted from a checkpoint taken at step k trains steps k, k+1, ... again. What the run had
recorded at those steps belongs to the attempt that was abandoned (it ran on past the checkpoint, then
crashed or was preempted): left in place, the charts would show two timelines at once, and an attempt that
ends before the old one did would keep the old tail forever. So resuming deletes every row at a step >= k,
and every aggregate block that holds one (they are recomputed when the resumed run completes them again),
in the same transaction that marks the run running again. Rows before k are kept as they are.

Readers that cache a run's rows (``Store.runs()`` counts, envelopes, the dashboard's incremental frames)
compare ``runs.resumed_at`` with the value they cached under, and read the run afresh when it changed.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import CannotResume, RunNotFound, RunStillRunning
from .reader import derive_status, process_start_time
from .schema import LATER_COLUMNS, RESUME_COLUMNS, ensure_columns

__all__ = ["RESUME_COLUMNS", "ensure_resume_columns", "resume_run"]


# Tables with rows keyed by (run, step): (table, whether its key leads with layer_id, so that a delete per
# layer is a range scan instead of a scan of all the run's rows).
_STEP_TABLES = (
    ("steps", False),
    ("clip_events", False),
    ("nonfinite", False),
    ("metrics", False),
    ("grad_norms", True),
    ("grad_stats", True),
)


def ensure_resume_columns(conn: sqlite3.Connection) -> None:
    """Add the columns a resume writes to ``runs`` where the file predates them. The caller holds a write
    lock."""
    ensure_columns(conn, LATER_COLUMNS)


def _layer_rows(conn: sqlite3.Connection, run_id: int) -> dict[int, tuple[str, list[int]]]:
    rows = conn.execute("SELECT id, name, shape FROM layers WHERE run_id = ?", (run_id,)).fetchall()
    return {int(i): (name, json.loads(shape)) for i, name, shape in rows}


def _check_layers(recorded: dict[int, tuple[str, list[int]]], given: Iterable[Mapping[str, Any]], run: int):
    given_map = {int(g["id"]): (str(g["name"]), [int(d) for d in g.get("shape", [])]) for g in given}
    if given_map == recorded:
        return

    def shown(layers, i):
        name, shape = layers.get(i, ("(none)", "-"))
        return f"{name} {shape}"

    differ = [
        f"{i}: recorded {shown(recorded, i)}, now {shown(given_map, i)}"
        for i in sorted(set(recorded) | set(given_map))
        if recorded.get(i) != given_map.get(i)
    ]
    listed = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
    raise CannotResume(
        f"run {run} was recorded for another model: its parameter tensors differ ({listed}). Resume it with "
        "the model it recorded, or start a new run."
    )


def resume_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    from_step: int,
    layers: Iterable[Mapping[str, Any]],
    path: str,
    stale_after: float,
    pid: int,
    host: str | None = None,
    config: Callable[[str], str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Mark run ``run_id`` running again for a process that continues it at ``from_step``; delete what it
    recorded at steps >= ``from_step``. The caller holds a write transaction (BEGIN IMMEDIATE).
    ``config``: given the recorded ``runs.config`` text, the new one (the continuing process's settings).
    ``settings``: new values of the run's ``every``, ``nonfinite`` and ``world_size`` columns.

    Raises RunNotFound (no such run), CannotResume (its process is still alive, or ``layers`` are not the
    ones it recorded) and ValueError (a bad ``from_step``).
    """
    if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
        raise ValueError(f"from_step={from_step!r}; accepted: an int >= 0")
    have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}  # (a file from before the column)
    started = "pid_started_at" if "pid_started_at" in have else "NULL"
    row = conn.execute(
        f"SELECT status, heartbeat_at, pid, host, config, {started} FROM runs WHERE id = ?", (run_id,)
    ).fetchone()
    if row is None:
        raise RunNotFound(
            f"run {run_id} is not in {path}: resume a run in the database that recorded it (db=...)."
        )
    host = socket.gethostname() if host is None else host
    status, heartbeat, old_pid, old_host, old_config, started = row
    now = time.time()
    shown = derive_status(
        status,
        heartbeat,
        old_pid,
        old_host,
        now=now,
        stale_after=stale_after,
        this_host=host,
        started=started,
    )
    if shown == "running":
        beat = "no heartbeat yet" if heartbeat is None else f"heartbeat {now - heartbeat:.0f} s ago"
        wait = (
            " (it is alive on this machine)"
            if old_host == host
            else f", or wait until the run shows as crashed ({stale_after:.0f} s without a heartbeat)"
        )
        raise RunStillRunning(
            f"run {run_id} is still running (pid {old_pid} on {old_host}, {beat}): two processes would write "
            f"one run. Stop that process first{wait}.",
            elsewhere=old_host != host,
        )
    recorded = _layer_rows(conn, run_id)
    _check_layers(recorded, layers, run_id)
    ensure_resume_columns(conn)
    layer_ids = list(recorded)
    for table, by_layer in _STEP_TABLES:
        if by_layer:
            conn.executemany(
                f"DELETE FROM {table} WHERE run_id = ? AND layer_id = ? AND step >= ?",
                [(run_id, i, from_step) for i in layer_ids],
            )
        else:
            conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step >= ?", (run_id, from_step))
    # A block holds steps block*size .. (block+1)*size - 1: it goes when its last step is >= from_step.
    conn.execute(
        "DELETE FROM grad_norm_blocks WHERE run_id = ? AND (block + 1) * size - 1 >= ?", (run_id, from_step)
    )
    conn.execute(
        """UPDATE runs SET status = 'running', heartbeat_at = :now, pid = :pid, host = :host,
               pid_started_at = :pid_started_at, finished_at = NULL, error = NULL, stop_requested_at = NULL,
               resumed_at = :now, resumed_from_step = :step, config = :config,
               every = COALESCE(:every, every), nonfinite = COALESCE(:nonfinite, nonfinite),
               world_size = COALESCE(:world_size, world_size)
           WHERE id = :run""",
        dict(
            {k: None for k in ("every", "nonfinite", "world_size")},
            **{k: v for k, v in (settings or {}).items() if k in ("every", "nonfinite", "world_size")},
            now=now,
            pid=pid,
            pid_started_at=process_start_time(pid) if host == socket.gethostname() else None,
            host=host,
            step=from_step,
            run=run_id,
            config=old_config if config is None else config(old_config),
        ),
    )
