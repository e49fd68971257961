"""What one ``GradTracker.step()`` returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["StepStats"]


@dataclass(frozen=True)
class StepStats:
    """What ``GradTracker.step`` measured and did.

    On a logged step the fields are Python numbers. On a step that is not logged (``every > 1``) the tracker
    does not synchronise with the device, so ``total_norm``, ``clipped``, ``coef`` and ``threshold`` are 0-d
    tensors (``clip="none"``: ``clipped``, ``coef`` and ``threshold`` are the plain ``False``, ``1.0``, NaN):
    call ``float()``/``bool()`` on them only if you accept that sync. ``threshold`` is NaN when no
    threshold is in force (``clip="none"``, ZClip warm-up). ``skipped`` is always a bool: whether the
    optimizer step is skipped (``nonfinite="skip"``). The disabled tracker returns ``total_norm=None``.
    """

    step: int
    total_norm: float | Tensor | None
    clipped: bool | Tensor
    coef: float | Tensor
    threshold: float | Tensor | None
    skipped: bool
    logged: bool = True
