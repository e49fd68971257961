"""NullTracker: what ``GradTracker(..., enabled=False)`` returns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tracker.stats import StepStats

__all__ = ["NullTracker"]


class NullTracker:
    """The same methods as GradTracker, doing nothing, so a training loop needs no ``if tracking:`` branches.

    It measures nothing, clips nothing and opens no file; ``step()`` returns a StepStats with
    ``total_norm=None``, ``coef=1.0`` and ``threshold`` NaN (none in force, as documented for StepStats).
    """

    run_id = None
    is_writer = False

    def __init__(self) -> None:
        self._step = 0

    def step(self, loss: Any = None, *, scaler: Any = None) -> StepStats:
        self._step += 1
        return StepStats(self._step - 1, None, False, 1.0, math.nan, skipped=False, logged=False)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing recorded, nothing to resume

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        from tracker.store import FINAL_STATUSES

        if status not in FINAL_STATUSES:  # as GradTracker.finish: a mistake shows with tracking off too
            raise ValueError(f"status={status!r}; accepted: {', '.join(FINAL_STATUSES)}")

    def attach(self, optimizer: Any, *, scaler: Any = None) -> NullTracker:
        return self

    def remove(self) -> None:  # attach() returns self: its handle can be removed like a real one
        pass

    def detach(self) -> None:
        pass

    @property
    def step_count(self) -> int:
        return self._step

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False
