"""Closing the run of a GradTracker that was dropped unfinished: a notebook cell that makes a model, its
optimizer and a tracker, run again. Held by an exit hook, the old tracker used to keep the old model, its
gradients and its optimizer's state in memory (on a GPU: until the kernel restarts), and its run
``running``, until the process exited. The exit hook now holds it weakly, and when nothing else holds it
the run is closed from here, as the process's exit would have closed it.

What closing needs lives apart from the tracker (:class:`Remains`, kept up to date by it), since a finalizer
that referred to the tracker would keep it alive forever. The closing runs on a thread of its own: the
garbage collector runs finalizers in whichever thread it happens to run in, the writer's own among them,
and closing joins the writer.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

from tracker.lifetime import exit_status
from tracker.rows import pending_parts

__all__ = ["Remains", "close_run", "complete_update", "finish_at_exit", "when_dropped"]


class Remains:
    """What closing a run takes: the writer, the store, the SIGTERM hold, the rows not handed over yet.

    ``pending`` is the tracker's list of unlogged steps (the same object: the tracker replaces both when it
    drains them); ``exc_seen`` the traceback last shown at its last step (``lifetime.exit_status``).
    """

    __slots__ = ("writer", "store", "sigterm", "rows", "extra", "sharded", "pending", "exc_seen")

    def __init__(self) -> None:
        self.writer = self.store = self.sigterm = self.rows = self.extra = self.exc_seen = None
        self.sharded = False
        self.pending: list[Any] = []


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


def close_run(r: Remains, status: str, error: str | None, timeout: float, collective: bool = True) -> None:
    """Hand the last rows to the writer, give back the SIGTERM hold, close the run with ``status``."""
    try:
        complete_update(r, collective)
        pending, r.pending = r.pending, []
        if pending and r.writer is not None:
            r.rows.write_pending(r.writer, torch.cat(pending_parts(pending)).tolist(), 0, pending)
    finally:
        if r.sigterm is not None:
            r.sigterm.remove()
        if r.writer is not None:
            r.writer.close(status=status, error=error, timeout=timeout)
        if r.store is not None:
            r.store.close()


def _closed_when_dropped(r: Remains, timeout: float) -> None:
    # A traceback shown since its last step (Ctrl-C stopping its loop) decides, as at exit; taken now, in
    # the thread that dropped it, before a later one replaces it.
    status, error = exit_status(seen=r.exc_seen)
    if r.sigterm is not None:  # here: most often the main thread, the one that may put the handler back
        r.sigterm.remove()
    # Not a daemon: the interpreter waits for it before its exit hooks, so an exit right after still
    # finds the run closed.
    closing = threading.Thread(
        target=close_run, args=(r, status, error, timeout, False), name="gradwatch-close-dropped"
    )
    closing.start()


def when_dropped(tracker: Any, r: Remains, timeout: float) -> weakref.finalize:
    """Close ``r``'s run once ``tracker`` is garbage: call ``.detach()`` on the result when it finishes."""
    # (atexit=False: at exit a tracker still alive is finished by finish_at_exit, with all it holds.)
    finalizer = weakref.finalize(tracker, _closed_when_dropped, r, timeout)
    finalizer.atexit = False
    return finalizer


def finish_at_exit(ref: weakref.ref) -> None:
    """The exit hook of one tracker, registered with a weak reference to it (see the module's docstring)."""
    tracker = ref()
    if tracker is not None and not tracker._finished:
        tracker._at_exit()
