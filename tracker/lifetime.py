"""How a run learns that its process is ending: the status to record at exit, and SIGTERM as a clean stop."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

__all__ = ["SigtermAsExit", "exit_status"]

_sigterm_received = False


def exit_status() -> tuple[str, str | None]:
    """(status, error) for a run still open when the interpreter exits (called from an atexit handler).

    The interpreter sets ``sys.last_value`` for an uncaught exception before it runs atexit handlers; an
    uncaught SystemExit leaves none, hence the flag set by our SIGTERM handler.
    """
    last = getattr(sys, "last_value", None)
    if _sigterm_received:
        return "stopped", "SIGTERM"
    if last is None:
        return "finished", None
    if isinstance(last, KeyboardInterrupt | SystemExit):
        return "stopped", type(last).__name__
    return "failed", f"{type(last).__name__}: {last}"


class SigtermAsExit:
    """While installed, SIGTERM raises SystemExit(143) in the main thread.

    The dashboard stops a run with SIGTERM; raised as SystemExit, it unwinds the training loop so the run is
    closed as "stopped" (by the tracker's __exit__ or atexit) instead of looking crashed. Installed only when
    nobody else handles SIGTERM, and only from the main thread (the only one allowed to set handlers).
    """

    def __init__(self) -> None:
        self.installed = False
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.installed = True

    @staticmethod
    def _on_sigterm(signum: int, frame: Any) -> None:
        global _sigterm_received
        _sigterm_received = True
        raise SystemExit(128 + signum)

    def remove(self) -> None:
        if self.installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is self._on_sigterm:  # nobody replaced it since
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.installed = False
