"""Closing the run of a GradTracker that was dropped unfinished: a notebook cell that makes a model, its
optimizer and a tracker, run again. Held by an exit hook, the old tracker used to keep the old model, its
gradients and its optimizer's state in memory (on a GPU: until the kernel restarts), and its run
``running``, until the process exited. The exit hook now holds it weakly, and when nothing else holds it
the run is closed from here, as the process's exit would have closed it.

What closing needs lives apart from the tracker (:class:`Remains`, kept up to date by it), since a finalizer
that referred to the tracker would keep it alive forever. The closing is done by a thread of its own (see
``_queue``). A tracker is also kept alive by whatever refers to it: the optimizer it is attached to (through
its step hook), and nothing else of gradwatch's (the handle ``attach()`` returns and a GradScaler's wrapped
``step`` refer to the attachment weakly).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
import time
import traceback
import weakref
from typing import Any

import torch

from tracker.lifetime import exit_status
from tracker.rows import pending_parts

__all__ = [
    "ExitHook",
    "Remains",
    "close_run",
    "complete_update",
    "drain_pending",
    "wait_closed",
    "when_dropped",
]


class Remains:
    """What closing a run takes: the writer, the store, the SIGTERM hold, the rows not handed over yet.

    ``pending`` is the tracker's list of unlogged steps (the same object: the tracker replaces both when it
    drains them); ``exc_seen`` the traceback last shown at its last step (``lifetime.exit_status``).
    """

    __slots__ = ("writer", "store", "sigterm", "rows", "extra", "sharded", "pending", "exc_seen", "run")

    def __init__(self) -> None:
        self.writer = self.store = self.sigterm = self.rows = self.extra = self.exc_seen = None
        self.sharded = False
        self.pending: list[Any] = []
        self.run: tuple[str, int] | None = None  # (the database's real path, the run id), once opened


def complete_update(r: Remains, collective: bool) -> None:
    """Hand over the row that extra statistics held back for the update ratio (tracker.extra), if any."""
    if r.extra is None:
        return
    # Sharded, the update ratio's norms are a collective every rank must join: not from a call one rank may
    # make alone (state_dict() on the writing rank, finish() of a failing rank). The row is written without
    # the ratio, and again with it when the next step() completes it.
    row = r.extra.incomplete() if r.sharded and not collective else r.extra.complete()
    if row is not None and r.writer is not None:
        r.writer.add_step(**row)


def drain_pending(r: Remains) -> None:
    """Hand the buffered unlogged steps to the writer as rows (one host copy), leaving ``r.pending`` a new,
    empty list (a deferred row keeps the old one)."""
    pending, r.pending = r.pending, []
    if pending and r.writer is not None:
        r.rows.write_pending(r.writer, torch.cat(pending_parts(pending)).tolist(), 0, pending)


def close_run(r: Remains, status: str, error: str | None, timeout: float, collective: bool = True) -> None:
    """Hand the last rows to the writer, close the run with ``status``, then give back the SIGTERM hold
    (last: a SIGTERM while the close waits for a lock still stops the run cleanly)."""
    try:
        complete_update(r, collective)
        drain_pending(r)
    finally:
        try:
            if r.writer is not None:
                r.writer.close(status=status, error=error, timeout=timeout)
            if r.store is not None:
                r.store.close()
        finally:
            if r.sigterm is not None:
                r.sigterm.remove()
            r.rows = r.extra = None  # (they hold the model's parameters)


# The runs of dropped trackers, closed one after the other by one thread. A finalizer runs wherever the
# garbage collector happens to run: in any thread, at any allocation, possibly while that thread holds a lock
# (of threading's own, or of SIGTERM's bookkeeping) that closing a run would take again. So it does only
# what is safe there (a SimpleQueue's put, documented as such) and this thread does the rest. Started with
# the first tracker, from its constructor, never from a finalizer; a daemon, drained at exit.
_queue: queue.SimpleQueue = queue.SimpleQueue()
_closer: threading.Thread | None = None
_closer_lock = threading.Lock()
# The runs queued or being closed, by (database real path, run id): a tracker resuming one waits for it.
_closing: set[tuple[str, int]] = set()


def _close_one(item: tuple) -> None:
    r, status, error, timeout, exit_hook = item
    try:
        close_run(r, status, error, timeout, collective=False)
    except BaseException:  # (as a thread of its own would: said on stderr; the next run is still closed)
        traceback.print_exc()
    finally:
        _closing.discard(r.run)
        with contextlib.suppress(Exception):  # (an exit hook of someone else's whose == raises, say)
            atexit.unregister(exit_hook)


def _close_queued(q: queue.SimpleQueue) -> None:
    while (item := q.get()) is not None:
        _close_one(item)


def _drain_at_exit() -> None:
    # The interpreter is exiting: the runs of trackers dropped just before are closed before it ends (by
    # this thread, should the closer have died).
    closer = _closer
    if closer is not None and closer.is_alive():
        _queue.put(None)
        closer.join()
    while True:
        try:
            item = _queue.get_nowait()
        except queue.Empty:
            return
        if item is not None:
            _close_one(item)


def wait_closed(db: str | os.PathLike, run_id: int, timeout: float) -> None:
    """Wait (up to ``timeout`` s) until run ``run_id`` of ``db`` is no longer queued or being closed here:
    a tracker resuming a run whose tracker this process dropped a moment ago."""
    key = (os.path.realpath(db), run_id)
    deadline = time.monotonic() + timeout
    while key in _closing and time.monotonic() < deadline:
        time.sleep(0.01)


def _start_closer() -> None:
    global _closer
    with _closer_lock:
        if _closer is None or not _closer.is_alive():
            _closer = threading.Thread(
                target=_close_queued, args=(_queue,), name="gradwatch-closer", daemon=True
            )
            _closer.start()


def _new_queue_in_fork_child() -> None:
    # The parent's closer thread did not come along, and what it had queued are the parent's runs.
    global _queue, _closer, _closer_lock, _closing
    _queue, _closer, _closer_lock, _closing = queue.SimpleQueue(), None, threading.Lock(), set()


os.register_at_fork(after_in_child=_new_queue_in_fork_child)
atexit.register(_drain_at_exit)


def _closed_when_dropped(r: Remains, timeout: float, exit_hook: ExitHook) -> None:
    # A traceback shown since its last step (Ctrl-C stopping its loop) decides, as at exit; taken now, in
    # the thread that dropped it, before a later one replaces it. (No lock is taken here.)
    status, error = exit_status(seen=r.exc_seen)
    if r.run is not None:
        _closing.add(r.run)
    if r.writer is not None:  # its own exit hook need not flush: the closer closes it, after that hook
        r.writer.writer.closed_elsewhere = True
    _queue.put((r, status, error, timeout, exit_hook))


class ExitHook:
    """The exit hook of one tracker: finishes it, if it is still alive and open then. It holds the tracker
    weakly, so that the hook does not keep a dropped one alive; one object per tracker, so that
    ``atexit.unregister`` removes that one's alone."""

    def __init__(self, tracker: Any) -> None:
        self._ref = weakref.ref(tracker)

    def __call__(self) -> None:
        tracker = self._ref()
        if tracker is not None and not tracker._finished:
            tracker._at_exit()


def when_dropped(tracker: Any, r: Remains, timeout: float, exit_hook: ExitHook) -> weakref.finalize:
    """Close ``r``'s run once ``tracker`` is garbage: call ``.detach()`` on the result when it finishes."""
    _start_closer()
    finalizer = weakref.finalize(tracker, _closed_when_dropped, r, timeout, exit_hook)
    finalizer.atexit = False  # (at exit a tracker still alive is finished by its ExitHook, with all it holds)
    return finalizer
