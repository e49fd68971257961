"""Rows waiting on the training thread before they go to the store's background writer.

Every hand-off to the writer thread costs twice: waking the thread (the OS may switch to it at once, and on a
busy machine the training thread then waits for its next time slice: ~2 ms measured on 2 shared cores), and
one SQLite transaction on the writer's side (~1.5 ms of CPU, most of it fixed per transaction, all of it
competing with training for the GIL). So rows are collected in a list (~1 µs per call) and handed over
together at most every ``interval`` seconds (default 1 s: the dashboard polls about that often); the writer
then wakes once and commits them in one transaction. ``flush()``/``close()`` hand over whatever is left.
A step slower than ``interval`` is handed over at once, so slow training is never delayed.
"""

from __future__ import annotations

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

    def add_metrics(self, step: int, values: dict[str, float]) -> None:
        self._add(self.writer.add_metrics, (step, values), {})

    def defer(self, build: Any, *args: Any) -> None:
        """Queue ``build(writer, *args)``, called at the hand-off: it turns raw values into ``add_*`` calls on
        the writer. The training thread then pays for an append, and the rows are built in one warm loop."""
        self._add(build, (self.writer, *args), {})

    def handoff(self, now: float | None = None) -> None:
        items, self._items = self._items, []
        for method, args, kwargs in items:
            method(*args, **kwargs)
        self._last = time.monotonic() if now is None else now

    def flush(self) -> None:
        self.handoff()
        self.writer.flush()

    def close(self, status: str, error: str | None = None) -> None:
        try:
            self.handoff()
        finally:
            self.writer.close(status=status, error=error)

    @property
    def pending(self) -> int:
        """Items not yet handed to the writer, plus those the writer has not written yet."""
        return len(self._items) + getattr(self.writer, "pending", 0)
