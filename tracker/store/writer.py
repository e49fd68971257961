"""BackgroundWriter: one thread per run that batches rows into the SQLite file.

The training thread only appends tuples to an unbounded ``queue.SimpleQueue`` (put never blocks; about a
microsecond). The thread drains everything that is waiting, writes it in one ``BEGIN IMMEDIATE``
transaction with ``executemany``, adds the ``grad_norm_blocks`` that its steps complete (blocks.py), and
stamps ``runs.heartbeat_at`` at least every ``heartbeat_every`` seconds so readers can tell a dead run.
With ``max_queue`` set, items beyond it are dropped and counted in ``dropped`` (off by default: nothing is
ever dropped unless asked). If the thread hits an error it stops, and the next call on the caller's side
raises WriterFailed with the original error as its cause: errors are never swallowed.

A lock that another process holds (a sqlite3 shell or DB browser in a transaction, a backup tool) is no
error: the thread keeps the batch and tries again for as long as it lasts, while new rows wait in the queue,
and writes everything once the lock is gone. The caller's next call after the first busy timeout warns once
(``DatabaseLockedWarning``). Only ``flush(timeout)``/``close(timeout=...)`` stop waiting: flush raises
DatabaseLocked and the rows stay queued; close gives up and says how many steps were not written.
"""

import atexit
import json
import math
import os
import queue
import sqlite3
import sys
import threading
import time as _time
import warnings
from pathlib import Path

from .blocks import (
    BLOCKS_FROM_BLOCKS,
    BLOCKS_FROM_ROWS,
    INSERT_BLOCKS,
    LAYERS_WITH_ROWS,
    ONE_BLOCK_FROM_ROWS,
    block_ranges,
    blocks_in_memory,
    count_rows,
    norm_rows,
    without_blocks,
)
from .connection import connect, immediate, translate
from .errors import DatabaseLocked, DatabaseLockedWarning, WriterClosed, WriterFailed
from .schema import BLOCK_SIZES

__all__ = ["BackgroundWriter", "EXTRA_STATS", "FINAL_STATUSES", "layer_row"]

EXTRA_STATS = ("weight_norm", "update_ratio", "max_abs")
FINAL_STATUSES = ("finished", "failed", "stopped")

_STEP, _CLIP, _NONFINITE, _METRICS, _LAYERS, _FLUSH, _CLOSE = range(7)

LAYER_COLUMNS = ("run_id", "id", "name", "shape", "numel", "dtype", "trainable")


def layer_row(run_id: int, layer) -> tuple:
    """A ``layers`` row (LAYER_COLUMNS order) from a dict with id, name, shape, and optionally numel, dtype,
    trainable (default True)."""
    shape = [int(d) for d in layer.get("shape", [])]
    numel = int(layer["numel"]) if layer.get("numel") is not None else math.prod(shape)
    dtype = None if layer.get("dtype") is None else str(layer["dtype"]).removeprefix("torch.")
    return (
        int(run_id),
        int(layer["id"]),
        str(layer["name"]),
        json.dumps(shape),
        numel,
        dtype,
        int(bool(layer.get("trainable", True))),
    )


# Layer ids per IN list in the block statements: below SQLite's old 999-variable limit.
_IDS_PER_STATEMENT = 900


class BackgroundWriter:
    """Writes one run's rows on a background thread. Create it with ``Store.writer(run_id)``.

    Values must be plain Python numbers (``tensor.tolist()``), norms in layer-id order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        run_id: int,
        *,
        busy_timeout: float = 30.0,
        heartbeat_every: float = 5.0,
        max_queue: int | None = None,
        batch_rows: int = 200_000,
    ):
        if heartbeat_every <= 0:
            raise ValueError(f"heartbeat_every={heartbeat_every!r}; accepted: seconds > 0")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue={max_queue!r}; accepted: None (unbounded) or an int >= 1")
        self.path = Path(path)
        self.run_id = int(run_id)
        self.heartbeat_every = float(heartbeat_every)
        self.max_queue = max_queue
        self.batch_rows = int(batch_rows)
        self.dropped = 0  # items refused because max_queue was reached (always 0 when unbounded)
        self.rows_written = 0  # grad_norms rows committed so far
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        # Opened here so a bad path fails on the caller's thread; used only by the writer thread after.
        self._busy_timeout = busy_timeout
        self._steps_queued = 0  # add_step rows accepted (caller's thread)
        self._steps_written = 0  # of them, committed (writer thread, under _gate)
        self._metrics_queued = 0  # metric values accepted (caller's thread)
        self._metrics_written = 0  # of them, committed (writer thread, under _gate)
        self._gate = threading.Lock()  # a commit, or giving up (close's timeout): never both at once
        self._abandoned = threading.Event()
        self._locked_since: float | None = None  # monotonic; set while another process's lock holds a batch
        self._lock_warned = False
        self._final_written = False  # the final status is committed (writer thread, under _gate)
        self._conn = connect(self.path, mode="rw", busy_timeout=busy_timeout)
        try:
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: ~100 B-tree append points stay cached
            last = self._conn.execute("SELECT max(step) FROM steps WHERE run_id = ?", (self.run_id,))
            row = last.fetchone()
            self._last_step = row[0] if row[0] is not None else -1
            # Every layer that may have rows in a block still to complete: those already in the file (a
            # resumed run) and those this writer is handed; blocks are computed for all of them, so that a
            # layer that stops getting gradients still gets its last blocks.
            self._layers = {r[0] for r in self._conn.execute(LAYERS_WITH_ROWS, dict(run=self.run_id))}
        except sqlite3.Error as exc:
            self._conn.close()
            raise translate(exc, self.path, f"start writing run {self.run_id}") from exc
        except BaseException:
            self._conn.close()
            raise
        self._dense = 0  # layer ids 0..n-1 (layer_ids=None) are in self._layers up to this n
        self._block_sql: list | None = None  # statements for the layer ids in self._layers, see _statements
        self._thread = threading.Thread(target=self._run, name=f"gradwatch-writer-{self.run_id}", daemon=True)
        self._thread.start()
        # Set when its GradTracker was dropped unfinished: tracker.dropped closes it, so no flush at exit.
        self.closed_elsewhere = False
        atexit.register(self._flush_at_exit)

    # ---- caller side: cheap, never blocks -------------------------------------------------------
    def add_step(
        self,
        *,
        step: int,
        norms=(),
        layer_ids=None,
        total_norm=None,
        total_norm_after=None,
        loss=None,
        clipped=None,
        coef=None,
        threshold=None,
        skipped=False,
        nonfinite_count=None,
        first_nonfinite_layer=None,
        extra=None,
        time=None,
    ) -> None:
        """Queue one logged step: its ``steps`` row and one ``grad_norms`` row per layer.

        ``norms[i]`` belongs to layer ``layer_ids[i]`` (default: layer id i); None = no gradient (no row).
        ``extra`` maps names in EXTRA_STATS to per-layer lists in the same order (``grad_stats`` rows).
        ``nonfinite_count`` defaults to the number of NaN/Inf norms.
        """
        if layer_ids is not None and len(layer_ids) != len(norms):
            raise ValueError(f"len(layer_ids)={len(layer_ids)} but len(norms)={len(norms)}; they must match")
        if extra:
            unknown = set(extra) - set(EXTRA_STATS)
            if unknown:
                raise ValueError(f"extra keys {sorted(unknown)}; accepted: {list(EXTRA_STATS)}")
        row = (
            self.run_id,
            int(step),
            _time.time() if time is None else time,
            loss,
            total_norm,
            total_norm_after,
            None if clipped is None else int(clipped),
            coef,
            threshold,
            int(bool(skipped)),
            nonfinite_count,
            first_nonfinite_layer,
        )
        if self._put((_STEP, row, norms, layer_ids, extra or None), len(norms)):
            self._steps_queued += 1

    def add_clip_events(self, events) -> None:
        """Queue clip events: dicts with step, strategy, threshold, norm_before, norm_after, coef, clipped,
        n_clipped (optional), n_tensors (optional). One event per step (a later one replaces it)."""
        rows = [
            (
                self.run_id,
                int(e["step"]),
                e.get("strategy"),
                e.get("threshold"),
                e.get("norm_before"),
                e.get("norm_after"),
                e.get("coef"),
                int(bool(e["clipped"])),
                e.get("n_clipped"),
                e.get("n_tensors"),
            )
            for e in events
        ]
        if rows:
            self._put((_CLIP, rows), len(rows))

    def add_nonfinite(self, step: int, layers) -> None:
        """Queue the layers that had NaN/Inf gradients at ``step``: (layer_id, has_nan, has_inf) tuples."""
        rows = [(self.run_id, int(step), int(lid), int(bool(n)), int(bool(i))) for lid, n, i in layers]
        if rows:
            self._put((_NONFINITE, rows), len(rows))

    def add_metrics(self, step: int, values: dict, time=None) -> None:
        """Queue scalar metrics at ``step`` (a later value for the same name and step replaces it)."""
        t = _time.time() if time is None else time
        rows = [
            (self.run_id, str(k), int(step), None if v is None else float(v), t) for k, v in values.items()
        ]
        if rows and self._put((_METRICS, rows), len(rows)):
            self._metrics_queued += len(rows)

    def add_layers(self, layers) -> None:
        """Queue ``layers`` rows (dicts as ``Store.add_layers`` takes; an id already recorded is replaced),
        written before the rows queued after them: a model changed mid-run, without a write on the caller's
        thread (which would wait for, and fail on, another process's lock)."""
        rows = [layer_row(self.run_id, layer) for layer in layers]
        if rows:
            self._put((_LAYERS, rows), len(rows))

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is committed. Raises WriterFailed; after ``timeout`` seconds,
        DatabaseLocked when another process's lock is the reason (the rows stay queued and are written once
        it is released), else TimeoutError."""
        done = threading.Event()
        self._put((_FLUSH, done), 0, control=True)
        if not self._wait(done, timeout):
            since = self._locked_since
            if since is not None:
                raise DatabaseLocked(
                    f"{self.path} has been locked by another process for {_time.monotonic() - since:.0f} s: "
                    f"{self._steps_queued - self._steps_written} steps of run {self.run_id} are waiting in "
                    f"memory, written once the lock is released. {_LOCK_ADVICE}"
                )
            raise TimeoutError(f"writer for run {self.run_id} did not flush within {timeout} s")
        self._raise_if_failed()

    def close(self, status: str = "finished", error: str | None = None, timeout: float | None = None) -> None:
        """Flush, record the final status (finished, failed or stopped) and stop the thread.

        Without ``timeout`` it waits as long as another process keeps the database locked. With one, it
        gives up when the lock outlasts it: the rows not yet written are dropped and DatabaseLocked says
        how many steps they were; the run keeps the status "running" (shown as crashed once this process
        is gone)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status={status!r}; accepted: {', '.join(FINAL_STATUSES)}")
        if self._closed:
            return
        done = threading.Event()
        gave_up = None
        if self._error is None:
            self._queue.put((_CLOSE, (status, error), done))
            if not self._wait(done, timeout):
                # Still writing when the time is up: a lock (possibly still within the busy timeout, so not
                # known as one yet) or a very slow disk. Either way the caller asked not to wait longer.
                gave_up = self._give_up(status, timeout)  # (None when it finished just in time)
        self._closed = True
        atexit.unregister(self._flush_at_exit)
        self._thread.join(0 if gave_up else timeout)
        if gave_up:
            raise gave_up
        self._raise_if_failed()

    def _give_up(self, status: str, timeout: float | None) -> DatabaseLocked | None:
        with self._gate:  # no commit can slip in after the count: what it says was not written, was not
            if self._final_written:
                return None
            self._abandoned.set()
            steps = self._steps_queued - self._steps_written
            metrics = self._metrics_queued - self._metrics_written
            since = self._locked_since
        if since is not None:
            why = f"{self.path} has been locked by another process for {_time.monotonic() - since:.0f} s"
        else:
            why = f"{self.path} could not be written within {timeout:g} s (locked by another process?)"
        last = f"its steps up to {self._last_step}" if self._last_step >= 0 else "none of its steps"
        return DatabaseLocked(
            f"Gave up writing run {self.run_id}: {why}. {steps} logged steps, {metrics} metric values and "
            f"the final status {status!r} could not be written; the file has {last}, and shows the run as "
            f"crashed once this process ends. {_LOCK_ADVICE}"
        )

    @property
    def pending(self) -> int:
        """Items queued and not written yet (approximate)."""
        return self._queue.qsize()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.close("finished")
        else:
            self.close("failed", error=f"{exc_type.__name__}: {exc}")

    def _wait(self, done: threading.Event, timeout: float | None) -> bool:
        # Poll so that a thread which died after our put() cannot leave us waiting forever.
        deadline = None if timeout is None else _time.monotonic() + timeout
        while not done.wait(0.05):
            if not self._thread.is_alive():
                return True
            if deadline is not None and _time.monotonic() > deadline:
                return False
        return True

    def _put(self, item, n_rows: int, control: bool = False) -> bool:
        self._raise_if_failed()
        if self._closed:
            raise WriterClosed(f"writer for run {self.run_id} is closed (the run has ended)")
        if self._locked_since is not None and not self._lock_warned:
            self._warn_locked()
        if not control and self.max_queue is not None and self._queue.qsize() >= self.max_queue:
            self.dropped += 1
            return False
        self._queue.put(item)
        return True

    def _warn_locked(self) -> None:
        since = self._locked_since
        self._lock_warned = True
        if since is None:
            return
        held, waiting = _time.monotonic() - since, self._steps_queued - self._steps_written
        warnings.warn(
            f"gradwatch: {self.path} has been locked by another process for {held:.0f} s; {waiting} steps of "
            f"run {self.run_id} are waiting in memory and will be written when the lock is released "
            f"(training goes on). {_LOCK_ADVICE}",
            DatabaseLockedWarning,
            stacklevel=4,
        )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterFailed(
                f"the background writer of run {self.run_id} stopped: {self._error}"
            ) from self._error

    def _flush_at_exit(self) -> None:
        # The interpreter is exiting without close(): commit what is queued; the status stays "running"
        # and readers show the run as crashed once its pid is gone (the program never said it finished).
        # (Not for a dropped tracker's: gradwatch's closer closes it, after this hook, and says what it lost.)
        if self._thread.is_alive() and self._error is None and not self.closed_elsewhere:
            try:
                self.flush(timeout=30)
            except DatabaseLocked as exc:  # the rows still queued are lost with the process: say so
                print(f"gradwatch: {exc}", file=sys.stderr)
            except TimeoutError:  # (a lock not yet past its busy timeout, or a slow disk)
                waiting = self._steps_queued - self._steps_written
                print(
                    f"gradwatch: {self.path} could not be written within 30 s at exit (locked by another "
                    f"process?): {waiting} logged steps of run {self.run_id} are lost. {_LOCK_ADVICE}",
                    file=sys.stderr,
                )
            except Exception:  # noqa: BLE001 - nothing left to report to at exit
                pass

    # ---- writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        last_beat = 0.0
        try:
            while True:
                wait = max(0.0, last_beat + self.heartbeat_every - _time.monotonic())
                try:
                    first = self._queue.get(timeout=wait)
                except queue.Empty:
                    first = None
                items, control = self._drain(first)
                beat = _time.monotonic() - last_beat >= self.heartbeat_every * 0.5
                if items or beat or control:
                    final = control[1] if control is not None and control[0] == _CLOSE else None
                    self._write(items, final=final)
                    last_beat = _time.monotonic()
                if control is not None:
                    control[-1].set()
                    if control[0] == _CLOSE:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, see _raise_if_failed
            self._error = exc
            # Wake every flush()/close() waiting on us; they see the error.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[0] in (_FLUSH, _CLOSE):
                    item[-1].set()
        finally:
            self._conn.close()

    def _drain(self, first):
        """Data items up to (not including) the next flush/close, at most ~batch_rows rows."""
        items, control, rows = [], None, 0
        item = first
        while item is not None:
            if item[0] in (_FLUSH, _CLOSE):
                control = item
                break
            items.append(item)
            rows += len(item[2]) if item[0] == _STEP else len(item[1])
            if rows >= self.batch_rows:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        return items, control

    def _write(self, items, *, final=None) -> None:
        """One transaction: the items' rows, block aggregates, and the heartbeat (or the final status)."""
        run = self.run_id
        steps, payload, stats, clips, nonfinite, metrics, layers = [], [], [], [], [], [], []
        for item in items:
            kind = item[0]
            if kind == _STEP:
                _, row, norms, ids, extra = item
                if row[10] is None:  # nonfinite_count from the norms
                    bad = (
                        0 if _finite_sum(norms) else sum(1 for v in norms if v is not None and not _finite(v))
                    )
                    row = row[:10] + (bad,) + row[11:]
                steps.append(row)
                payload.append((row[1], norms, ids))
                if extra:
                    lids = ids if ids is not None else range(len(norms))
                    cols = [extra.get(name) or [None] * len(norms) for name in EXTRA_STATS]
                    stats.extend((run, lid, row[1], *vals) for lid, *vals in zip(lids, *cols, strict=True))
            elif kind == _CLIP:
                clips.extend(item[1])
            elif kind == _NONFINITE:
                nonfinite.extend(item[1])
            elif kind == _LAYERS:
                layers.extend(item[1])
            else:
                metrics.extend(item[1])

        prev_last = self._last_step
        new_last = max(prev_last, max(r[1] for r in steps)) if steps else prev_last
        rewritten = [r[1] for r in steps if r[1] <= prev_last]  # again or out of order: recompute
        self._note_layers(payload)

        started = _time.monotonic()
        while True:  # another process's lock: keep the rows, try again until it goes (or close gives up)
            gate = False
            try:
                with immediate(self._conn, self.path, "write rows", retry_for=self._busy_timeout):
                    c = self._conn
                    if layers:  # (a layer written twice in one batch: the later row wins, as queued)
                        c.executemany(
                            f"INSERT OR REPLACE INTO layers ({', '.join(LAYER_COLUMNS)}) VALUES ({_q(7)})",
                            layers,
                        )
                    if steps:
                        c.executemany(f"INSERT OR REPLACE INTO steps VALUES ({_q(12)})", steps)
                    if payload:
                        c.executemany(
                            "INSERT OR REPLACE INTO grad_norms VALUES (?, ?, ?, ?)", norm_rows(run, payload)
                        )
                    if stats:
                        c.executemany(f"INSERT OR REPLACE INTO grad_stats VALUES ({_q(6)})", stats)
                    if new_last > prev_last or rewritten:
                        self._write_blocks(payload, prev_last, new_last, rewritten)
                    if clips:
                        c.executemany(f"INSERT OR REPLACE INTO clip_events VALUES ({_q(10)})", clips)
                    if nonfinite:
                        c.executemany(f"INSERT OR REPLACE INTO nonfinite VALUES ({_q(5)})", nonfinite)
                    if metrics:
                        c.executemany(f"INSERT OR REPLACE INTO metrics VALUES ({_q(5)})", metrics)
                    now = _time.time()
                    if final is not None:
                        c.execute(
                            "UPDATE runs SET status = ?, error = ?, finished_at = ?, heartbeat_at = ? "
                            "WHERE id = ?",
                            (final[0], final[1], now, now, run),
                        )
                    else:
                        c.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (now, run))
                    gate = self._gate.acquire()
                    if self._abandoned.is_set():  # close() gave up and said these rows were not written
                        raise _Abandoned("close() gave up waiting for another process's lock")
                self._steps_written += len(steps)
                self._metrics_written += len(metrics)
                self._final_written = final is not None
                break
            except DatabaseLocked:
                if self._abandoned.is_set():
                    raise
                if self._locked_since is None:
                    self._locked_since = started
            finally:
                if gate:
                    self._gate.release()
        if self._locked_since is not None:  # the lock is gone: a later one is warned about again
            self._locked_since = None
            self._lock_warned = False
        self.rows_written += count_rows(payload)
        self._last_step = new_last

    def _note_layers(self, payload) -> None:
        for _, norms, ids in payload:
            if ids is None:
                if len(norms) > self._dense:
                    self._layers.update(range(self._dense, len(norms)))
                    self._dense = len(norms)
                    self._block_sql = None
            elif not self._layers.issuperset(ids):
                self._layers.update(ids)
                self._block_sql = None

    def _statements(self) -> list[tuple]:
        """(rows sql, one-block rows sql, blocks sql, layer params) per chunk of the known layer ids."""
        if self._block_sql is None:  # built again only when a new layer id shows up
            ids = sorted(self._layers)
            self._block_sql = []
            for start in range(0, len(ids), _IDS_PER_STATEMENT):
                part = ids[start : start + _IDS_PER_STATEMENT]
                names = "(" + ", ".join(f":l{i}" for i in range(len(part))) + ")"
                self._block_sql.append(
                    (
                        BLOCKS_FROM_ROWS.format(ids=names),
                        ONE_BLOCK_FROM_ROWS.format(ids=names),
                        BLOCKS_FROM_BLOCKS.format(ids=names),
                        {f"l{i}": lid for i, lid in enumerate(part)},
                    )
                )
        return self._block_sql

    def _write_blocks(self, payload, prev_last: int, new_last: int, rewritten: list[int]) -> None:
        """Write the blocks this transaction completes and recompute the complete ones it rewrote: size 16
        from the payload when its steps alone fill a block (blocks_in_memory), else in SQL from the rows
        already in the file; each larger size in SQL from the blocks of the size before it (written just
        before, or complete and exact since an earlier transaction)."""
        plan = [(size, block_ranges(size, prev_last, new_last, rewritten)) for size in BLOCK_SIZES]
        if not plan[0][1]:  # nothing completed or rewritten at the smallest size: nothing at any size
            return
        c, run = self._conn, self.run_id
        smallest = BLOCK_SIZES[0]
        rows, covered = blocks_in_memory(run, payload, smallest, prev_last, new_last)
        if rows:
            c.executemany(INSERT_BLOCKS, rows)
            plan[0] = (smallest, without_blocks(plan[0][1], smallest, covered))
        for rows_sql, one_sql, blocks_sql, layers in self._statements():
            part = None
            for size, ranges in plan:
                for lo, hi in ranges:
                    if part is None:
                        sql = one_sql if hi - lo + 1 == size else rows_sql
                        c.execute(sql, dict(layers, run=run, size=size, lo=lo, hi=hi))
                    else:
                        bounds = dict(b_lo=lo // part, b_hi=(hi + 1) // part - 1)
                        c.execute(blocks_sql, dict(layers, run=run, size=size, part=part, **bounds))
                part = size


_LOCK_ADVICE = (
    "Find and close the process holding the lock: a sqlite3 shell or a DB browser with an open transaction, "
    "or a backup tool."
)


class _Abandoned(Exception):
    """close() gave up waiting for another process's lock: the writer thread stops without committing."""


def _q(n: int) -> str:
    return ", ".join("?" * n)


def _finite(v) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def _finite_sum(norms) -> bool:
    try:
        return _finite(sum(norms))
    except TypeError:  # a None (no gradient) in the list
        return False
