"""How a run learns that its process is ending: the status to record at exit, and SIGTERM as a clean stop."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

__all__ = ["SigtermAsExit", "exit_status", "last_shown", "stop_reason"]

_sigterm_received = False


def last_shown() -> tuple[int, int, type] | None:
    """What names the traceback last shown (``sys.last_value``) without keeping it alive: its frames hold
    the tensors of the failed call (a CUDA out-of-memory in a notebook would stay out of memory)."""
    last = getattr(sys, "last_value", None)
    return None if last is None else (id(last), id(last.__traceback__), type(last))


def exit_status(seen: tuple[int, int, type] | None = None) -> tuple[str, str | None]:
    """(status, error) for a run still open when the interpreter exits (called from an atexit handler).

    The interpreter sets ``sys.last_value`` for an uncaught exception before it runs atexit handlers; an
    uncaught SystemExit leaves none, hence the flag set by our SIGTERM handler. In an interactive session
    (``python -i``, the REPL, Jupyter) it is set by every traceback shown and stays until the next: ``seen``
    (``last_shown()`` at the run's last step) is one that was there already then, a typo at the prompt that
    training went on after, not what ended it.
    """
    last = getattr(sys, "last_value", None)
    if _sigterm_received:
        return "stopped", "SIGTERM"
    if last is None or (seen is not None and last_shown() == seen):
        return "finished", None
    if isinstance(last, KeyboardInterrupt | SystemExit):
        return "stopped", type(last).__name__
    return "failed", f"{type(last).__name__}: {last}"


def stop_reason(exc_type: type[BaseException]) -> str:
    """``runs.error`` for a KeyboardInterrupt or SystemExit unwinding a ``with GradTracker(...)`` block: the
    signal's name when it is the SystemExit our SIGTERM handler raised, as at exit (``exit_status``)."""
    if _sigterm_received and issubclass(exc_type, SystemExit):
        return "SIGTERM"
    return exc_type.__name__


# The trackers alive at once share one handler: how many hold it now, and what the first of them replaced
# (put back when the last one goes). Only main-thread code installs and restores; the lock keeps the count
# right when a tracker is finished from another thread.
_lock = threading.Lock()
_holders = 0
_replaced: Any = signal.SIG_DFL


def _new_lock_in_fork_child() -> None:
    # A thread of the parent may have held the lock when it forked; the child has only the forking thread,
    # so the copy would stay locked forever (the trackers a child inherits give their holds back at fork).
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_fork_child)


def _in_pool_worker() -> bool:
    """A worker of a ``multiprocessing`` Pool: its pool ends it with SIGTERM (``terminate()``, also on
    leaving ``with Pool(...)``), often while its main thread waits in a lock for the next task, where a
    Python-level handler never runs: the worker would never end, and the pool would wait for it forever."""
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None:
        return False
    return "PoolWorker" in mp.current_process().name


def _on_sigterm(signum: int, frame: Any) -> None:
    global _sigterm_received
    if _holders == 0:
        # Every tracker that held it has finished, the last from a thread that could not put back the
        # default (a dropped tracker's run is closed by a thread of its own): SIGTERM ends the process as
        # it would without gradwatch, not as an exception some `except BaseException` could swallow.
        if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
            return  # called by a handler installed since, chaining to us: without gradwatch, it had none
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _sigterm_received = True
    raise SystemExit(128 + signum)


class SigtermAsExit:
    """While installed, SIGTERM raises SystemExit(143) in the main thread.

    The dashboard stops a run with SIGTERM; raised as SystemExit, it unwinds the training loop so the run is
    closed as "stopped" (by the tracker's __exit__ or atexit) instead of looking crashed. Installed only when
    nobody else handles SIGTERM, and only from the main thread (the only one allowed to set handlers).
    Several trackers alive at once (a GAN's two models) share the handler: it stays while any of them holds
    it, and the last one removed, in whatever order, puts back the handler that was there before the first.
    """

    def __init__(self) -> None:
        global _holders, _replaced
        self.installed = False
        if threading.current_thread() is not threading.main_thread() or _in_pool_worker():
            return
        with _lock:
            current = signal.getsignal(signal.SIGTERM)
            if current is not _on_sigterm:  # (when it is ours, another tracker installed it: join)
                if current is not signal.SIG_DFL:  # somebody else handles (or ignores) SIGTERM: theirs wins
                    return
                signal.signal(signal.SIGTERM, _on_sigterm)
                _replaced = current
            _holders += 1
            self.installed = True

    def remove(self) -> None:
        global _holders
        with _lock:
            if not self.installed:
                return
            self.installed = False
            _holders -= 1
            # Removed from another thread, the last holder cannot restore the handler; it stays, as it did
            # before the count (and a later tracker joins it and restores it when it goes).
            if _holders == 0 and threading.current_thread() is threading.main_thread():
                if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # nobody replaced it since
                    signal.signal(signal.SIGTERM, _replaced)
