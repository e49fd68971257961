"""Rows waiting on the training thread before they go to the store's background writer.

Every hand-off to the writer thread costs twice: waking the thread (the OS may switch to it at once, and on a
busy machine the training thread then waits for its next time slice: ~2 ms measured on 2 shared cores), and
one SQLite transaction on the writer's side (~1.5 ms of CPU, most of it fixed per transaction, all of it
competing with training for the GIL). So rows are collected in a list (~1 µs per call) and handed over
together at most every ``interval`` seconds (default 1 s: the dashboard polls about that often); the writer
then wakes once and commits them in one transaction. ``flush()``/``close()`` hand over whatever is left.
A step slower than ``interval`` is handed over at once, so slow training is never delayed.

Training also pauses (a validation pass, a checkpoint, a data stall) with rows still collected. A small
daemon thread hands those over when nothing has been handed over for ``2 * interval``: a pause never hides
rows from the dashboard, and a process killed during one loses nothing it had recorded. It waits on an
event between checks and never fires while steps keep handing over themselves. What it hands over was
built from host values only (the deferred row builders read Python lists), and a lock keeps hand-offs from
the two threads whole and in order.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Outbox"]


class Outbox:
    """The writer's ``add_*`` methods, batched in time. Order is preserved."""

    def __init__(self, writer: Any, interval: float = 1.0):
        if not interval >= 0:
            raise ValueError(f"interval must be seconds >= 0, got {interval!r}")
        self.writer = writer
        self.interval = interval
        self._items: list[tuple[Any, tuple, dict]] = []
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watch: threading.Thread | None = None
        if interval > 0:
            self._watch = threading.Thread(target=self._watch_pauses, name="gradwatch-outbox", daemon=True)
            self._watch.start()

    def _watch_pauses(self) -> None:
        while not self._closed.wait(self.interval):
            if self._items and time.monotonic() - self._last >= 2 * self.interval:
                try:
                    self.handoff()
                except Exception:  # noqa: BLE001 - the training thread's next hand-off or flush() reports it
                    pass

    def _add(self, method: Any, args: tuple, kwargs: dict) -> None:
        self._items.append((method, args, kwargs))
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.handoff(now)

    def add_step(self, **row: Any) -> None:
        self._add(self.writer.add_step, (), row)

    def add_clip_events(self, events: list[dict[str, Any]]) -> None:
        self._add(self.writer.add_clip_events, (events,), {})

    def add_nonfinite(self, step: int, layers: list[tuple[int, bool, bool]]) -> None:
        self._add(self.writer.add_nonfinite, (step, layers), {})

    def add_layers(self, layers: list[dict[str, Any]]) -> None:
        self._add(self.writer.add_layers, (layers,), {})

    def add_metrics(self, step: int, values: dict[str, float]) -> None:
        self._add(self.writer.add_metrics, (step, values), {})

    def defer(self, build: Any, *args: Any) -> None:
        """Queue ``build(writer, *args)``, called at the hand-off: it turns raw values into ``add_*`` calls on
        the writer. The training thread then pays for an append, and the rows are built in one warm loop."""
        self._add(build, (self.writer, *args), {})

    def handoff(self, now: float | None = None) -> None:
        with self._lock:
            if self._closed.is_set() and threading.current_thread() is self._watch:
                return  # closed meanwhile: close() handed everything over
            items, self._items = self._items, []
            for method, args, kwargs in items:
                method(*args, **kwargs)
            self._last = time.monotonic() if now is None else now

    def flush(self) -> None:
        self.handoff()
        self.writer.flush()

    def close(self, status: str, error: str | None = None, timeout: float | None = None) -> None:
        try:
            self.handoff()
        finally:
            self._closed.set()
            with self._lock:  # a hand-off by the watcher in progress ends before the writer closes
                self.writer.close(status=status, error=error, timeout=timeout)

    @property
    def pending(self) -> int:
        """Items not yet handed to the writer, plus those the writer has not written yet."""
        return len(self._items) + getattr(self.writer, "pending", 0)
