"""NullTracker: what ``GradTracker(..., enabled=False)`` returns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tracker.stats import StepStats

__all__ = ["FINISHED", "NullTracker"]

FINISHED = "this GradTracker is finished; create a new one for a new run"  # (what a finished tracker says)


class NullTracker:
    """The same methods as GradTracker, doing nothing, so a training loop needs no ``if tracking:`` branches.

    It measures nothing, clips nothing and opens no file; ``step()`` returns a StepStats with
    ``total_norm=None``, ``coef=1.0`` and ``threshold`` NaN (none in force, as documented for StepStats).
    """

    run_id = None
    is_writer = False

    def __init__(self) -> None:
        self._step = 0
        self._attached = 0
        self._finished = False

    # The misuses GradTracker refuses are refused here too: a script run with tracking off must not fail only
    # once it is turned on.
    def step(self, loss: Any = None, *, scaler: Any = None) -> StepStats:
        if self._attached:
            raise RuntimeError(
                "this GradTracker is attached to an optimizer (attach()), which runs step() before every "
                "optimizer.step(): calling it too would measure and clip each step twice (tracking is off "
                "here, enabled=False, but it would be so once on). Call one or the other."
            )
        if self._finished:
            raise RuntimeError(FINISHED)
        self._step += 1
        return StepStats(self._step - 1, None, False, 1.0, math.nan, skipped=False, logged=False)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._finished:
            raise RuntimeError(FINISHED)

    def flush(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing recorded, nothing to resume

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        from tracker.store import FINAL_STATUSES

        if status not in FINAL_STATUSES:  # as GradTracker.finish: a mistake shows with tracking off too
            raise ValueError(f"status={status!r}; accepted: {', '.join(FINAL_STATUSES)}")
        self._finished, self._attached = True, 0

    def attach(self, optimizer: Any, *, scaler: Any = None) -> NullTracker:
        if self._finished:
            raise RuntimeError(FINISHED)
        self._attached += 1
        return self

    def remove(self) -> None:  # attach() returns self: its handle can be removed like a real one
        self._attached = max(self._attached - 1, 0)

    def detach(self) -> None:
        self._attached = 0

    @property
    def step_count(self) -> int:
        return self._step

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False
