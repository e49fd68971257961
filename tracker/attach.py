"""The hooks behind ``GradTracker.attach(optimizer, scaler=...)``."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Attachment"]


class Attachment:
    """Runs ``tracker.step()`` right before every ``optimizer.step()`` (a step pre-hook, so it also fires when
    ``GradScaler.step`` calls the optimizer after unscaling). ``remove()`` undoes everything.

    GradScaler does not call ``optimizer.step()`` when it found inf/NaN, so no optimizer hook can see that
    step. Given the scaler, we wrap this one instance's ``step``: if the optimizer was not called during it,
    the scaler skipped it, and the tracker records a skipped step.
    """

    def __init__(self, tracker: Any, optimizer: torch.optim.Optimizer, scaler: Any = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"attach() needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if scaler is not None and not callable(getattr(scaler, "step", None)):
            raise ValueError(
                f"scaler must be a torch.amp.GradScaler (or have .step), got {type(scaler).__name__}"
            )
        self.tracker, self.optimizer, self.scaler = tracker, optimizer, scaler
        self._calls = 0
        self._pre = optimizer.register_step_pre_hook(self._before_step)
        if scaler is not None:
            scaler.step = self._wrap_scaler_step(scaler.step)

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._calls += 1
        self.tracker.step()

    def _wrap_scaler_step(self, original: Any) -> Any:
        def step(optimizer, *args, **kwargs):
            calls = self._calls
            out = original(optimizer, *args, **kwargs)
            if optimizer is self.optimizer and self._calls == calls and self._pre is not None:
                self.tracker._record_skipped_by_scaler()
            return out

        return step

    def drop_grads(self) -> None:
        """Make the coming optimizer step a no-op: torch's optimizers skip parameters whose grad is None."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def remove(self) -> None:
        if self._pre is not None:
            self._pre.remove()
            self._pre = None
            if self.scaler is not None and "step" in vars(self.scaler):
                del self.scaler.step  # back to the class's method
        self.tracker._forget(self)
