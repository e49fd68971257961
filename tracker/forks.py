"""Trackers across ``os.fork()``: a child forked from a process with a live tracker (multiprocessing's
"fork" start method, Hogwild training) has a copy of the tracker but not its writer thread, and a copy of
SQLite's per-process lock state. Every tracker registers here (which also tells a new tracker about an
open one on the same model: a notebook cell run again); in the child, each is told so
(``GradTracker._fork_child``), and the databases they had open are remembered so that a tracker the child
creates on one of them is refused in a sentence rather than left to wait for a lock nobody holds."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["attached_on", "check_not_inherited", "inherited", "open_on", "recording", "register"]

# Every tracker of this process (anything with a ``_fork_child()`` method).
_TRACKERS: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
# In a forked child: the databases its parent's trackers had open at the fork (real path -> parent's pid).
_INHERITED_DBS: dict[str, int] = {}


def register(tracker: Any) -> None:
    """Have ``tracker._fork_child()`` called in the child of every later fork of this process."""
    with _lock:  # (a WeakSet changed while another thread iterates it raises "changed size")
        _TRACKERS.add(tracker)


def _registered() -> list[Any]:
    with _lock:
        return list(_TRACKERS)


def _underlying(model: Any) -> Any:
    """The module that ``model`` wraps, through ``torch.compile`` (``_orig_mod``) and DDP/DataParallel
    (``module``): a notebook cell run again wraps the same model in a new wrapper each time."""
    from torch import nn

    for _ in range(8):  # (wrappers of wrappers: compile(DDP(m)); bounded, in case one wraps itself)
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def open_on(model: Any) -> list[Any]:
    """The trackers of this process that measure ``model`` (or the model it wraps, or a wrapper of it) and
    are not finished."""
    model = _underlying(model)
    return [t for t in _registered() if not t._finished and _underlying(getattr(t, "_model", None)) is model]


def recording(db: Any, run_id: int) -> list[Any]:
    """The trackers of this process that record run ``run_id`` of the database ``db`` and are not finished."""
    where = os.path.realpath(db)
    return [
        t
        for t in _registered()
        if not t._finished and t.run_id == run_id and os.path.realpath(t.db_path) == where
    ]


def attached_on(model: Any) -> list[Any]:
    """Those of :func:`open_on` that are attached to an optimizer (they clip at its every step)."""
    return [t for t in open_on(model) if t._hooks]


def inherited(path: Any, parent_pid: int) -> None:
    """Called in a forked child by a tracker that had ``path`` open in its parent ``parent_pid``."""
    _INHERITED_DBS[os.path.realpath(path)] = parent_pid


def check_not_inherited(path: Any) -> None:
    """ValueError for a database that this process, forked, inherited open connections to: SQLite's lock
    state is per process, and a child's copy of it says the parent's locks are held here, so the child's own
    connection can wait for them forever (DatabaseLocked after the busy timeout, at random: only when the
    fork caught the parent's writer inside a transaction)."""
    parent = _INHERITED_DBS.get(os.path.realpath(path)) if _INHERITED_DBS else None
    if parent is not None:
        raise ValueError(
            f"{path}: this process was forked from process {parent} while a GradTracker there had this "
            "database open, and SQLite's connections and locks do not survive a fork (this process's own "
            "connection could wait forever for a lock that nobody holds). Start the child with the 'spawn' "
            "start method (multiprocessing.get_context('spawn'), as torch.multiprocessing recommends), or "
            "record it into another database file."
        )


def _end_trackers_in_fork_child() -> None:
    global _lock
    _lock = threading.Lock()  # (another thread may have held it at the fork: the child has only this one)
    for tracker in list(_TRACKERS):
        tracker._fork_child()


os.register_at_fork(after_in_child=_end_trackers_in_fork_child)
