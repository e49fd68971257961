"""The fixed-rule strategies: none, value, norm, layer (thresholds constant or scheduled) and random.

Each is a small class whose ``_clip`` is a few tensor operations; the adaptive ones (AutoClip, ZClip) live in
``adaptive.py`` and AGC in ``agc.py``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import torch

from ..norms import tensor_norms
from .base import (
    NORM_EPS,
    ClipResult,
    ClipSpecError,
    Strategy,
    fmt_num,
    global_result,
    group_by_device,
    norm_dtype,
    require_threshold,
    scalar_like,
    scale_each_,
    some_names,
)
from .schedules import Schedule

__all__ = ["LayerClip", "NoClip", "NormClip", "RandomClip", "ValueClip"]


def _schedule(threshold: float | Schedule, what: str) -> Schedule:
    if isinstance(threshold, Schedule):
        return threshold
    return Schedule("constant", (require_threshold(threshold, what),))


class NoClip(Strategy):
    """``none``: monitor only. threshold NaN (no threshold), coef 1, nothing changed."""

    name = "none"

    def _base_spec(self) -> str:
        return "none"

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        total = norm_dtype(total_norm)
        zero = torch.zeros((), dtype=torch.int64, device=total.device)
        return ClipResult(scalar_like(math.nan, total), torch.ones_like(total), total, zero.bool(), zero)


class ValueClip(Strategy):
    """``value:C``: clamp every element to [-C, C], exactly ``torch.nn.utils.clip_grad_value_``.

    Also for non-finite gradients (elementwise: +-inf becomes +-C, and counts as clipped; NaN stays NaN and
    does not hide the other elements). Reports coef = norm_after / norm_before (1 when the norm before is 0
    or non-finite) and n_clipped = tensors with an element beyond C. Costs a NaN-free copy and two extra
    reads of the gradients (min/max before, L2 norm after).
    """

    name = "value"

    def __init__(self, threshold: float | Schedule) -> None:
        super().__init__()
        self.threshold = _schedule(threshold, "value threshold C")

    def _base_spec(self) -> str:
        return f"value:{self.threshold.spec}"

    def bind_dtypes(self, dtypes: Mapping[str, str]) -> None:
        """Complex parameters are refused: clamping to [-C, C] needs an order, which complex numbers lack
        (torch's clip_grad_value_ refuses them too, from inside its kernel)."""
        complex_ = [name for name, dtype in dtypes.items() if dtype.startswith("complex")]
        if complex_:
            raise ClipSpecError(
                "value clipping clamps each element to [-C, C], which complex numbers have no order for, "
                f"and the model has complex parameters ({some_names(complex_)}). Use norm:C or layer:C "
                "(they scale, keeping each element's phase), or agc:L."
            )

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        c = self.threshold.at(step)
        total = norm_dtype(total_norm)
        if not grads:
            zero = torch.zeros((), dtype=torch.int64, device=total.device)
            return ClipResult(scalar_like(c, total), torch.ones_like(total), total, zero.bool(), zero)
        # min/max per tensor from one aminmax pass: the fused inf-norm is ~7x slower on CPU (20 ms vs 2.8 ms
        # for 150 tensors, 5M elements).
        changed = torch.stack([_beyond(g, c).to(total.device) for g in grads])
        # The two fused clamps of clip_grad_value_ (which wants parameters, not the gradients we are given).
        for tensors, _ in group_by_device(grads):
            torch._foreach_clamp_min_(tensors, -c)
            torch._foreach_clamp_max_(tensors, c)
        squares = tensor_norms(grads).to(total.device).square()
        if shards is not None:  # a tensor changed if any of its shards did; its norm adds up over them
            changed = shards.reduce(changed.to(torch.float32), "max").bool()
            squares = shards.reduce(squares)
        after = squares.sum().sqrt()
        ok = torch.isfinite(total) & (total > 0)
        coef = torch.where(ok, after / torch.where(ok, total, 1.0), 1.0).clamp(max=1.0)
        n = changed.sum()
        return ClipResult(scalar_like(c, total), coef, after, n > 0, n)


def _beyond(g, c: float):
    """Bool 0-d tensor: does ``g`` hold an element outside [-c, c]? (aminmax fails on empty tensors.)

    A NaN would make aminmax's min and max NaN and hide the elements that are clamped next to it, so NaN
    counts as 0 (inside) and +-inf stays itself (outside: it becomes +-c). Without a host sync there is no
    "only if the tensor holds a NaN": the copy costs ~1.4x the aminmax alone (5.2 vs 3.8 ms for 150 tensors,
    5M elements, one CPU core); g.abs() > c then any() costs 2x, two comparisons 4x."""
    if g.numel() == 0:
        return torch.zeros((), dtype=torch.bool, device=g.device)
    lo, hi = torch.aminmax(torch.nan_to_num(g, nan=0.0, posinf=math.inf, neginf=-math.inf))
    return (hi > c) | (lo < -c)


class NormClip(Strategy):
    """``norm:C[@p=P]``: global norm clipping, ``torch.nn.utils.clip_grad_norm_`` semantics:
    coef = min(1, C / (N + 1e-6)) applied to every gradient when N > C.

    With ``@p=P`` (P >= 1 or ``inf``) N is the global P-norm, computed here with one extra read, exactly as
    clip_grad_norm_(norm_type=P); ``total_norm_after`` is still reported as an L2 norm.
    """

    name = "norm"

    def __init__(self, threshold: float | Schedule, norm_type: float = 2.0) -> None:
        super().__init__()
        self.threshold = _schedule(threshold, "norm threshold C")
        p = norm_type
        if isinstance(p, bool) or not isinstance(p, int | float) or math.isnan(p) or p < 1:
            raise ClipSpecError(f"norm type p must be a number >= 1 or inf, got {norm_type!r}")
        self.norm_type = float(p)

    def _base_spec(self) -> str:
        p = (
            ""
            if self.norm_type == 2.0
            else f"@p={'inf' if math.isinf(self.norm_type) else fmt_num(self.norm_type)}"
        )
        return f"norm:{self.threshold.spec}{p}"

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        total = norm_dtype(total_norm)
        threshold = scalar_like(self.threshold.at(step), total)
        if self.norm_type == 2.0 or not grads:
            return global_result(grads, total, threshold)
        p = self.norm_type
        per_tensor = tensor_norms(grads, p).to(total.device)
        if shards is not None:  # the local shards' p-norms: a max over shards, or a sum of p-th powers
            per_tensor = (
                shards.reduce(per_tensor, "max") if math.isinf(p) else shards.reduce(per_tensor**p) ** (1 / p)
            )
        measured = torch.linalg.vector_norm(per_tensor, p)
        result = global_result(grads, measured, threshold)
        # Global scaling scales every norm by the same coefficient, so the L2 norm after needs no new read.
        return ClipResult(
            result.threshold, result.coef, total * result.coef, result.clipped, result.n_clipped
        )


class LayerClip(Strategy):
    """``layer:C``: the norm rule per parameter tensor: g_i <- g_i * min(1, C / (||g_i|| + 1e-6)).

    A tensor whose norm is non-finite is left untouched (the others are still clipped). Reports the smallest
    coefficient as coef and the number of tensors scaled as n_clipped.
    """

    name = "layer"

    def __init__(self, threshold: float | Schedule) -> None:
        super().__init__()
        self.threshold = _schedule(threshold, "layer threshold C")

    def _base_spec(self) -> str:
        return f"layer:{self.threshold.spec}"

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        c = self.threshold.at(step)
        total = norm_dtype(total_norm)
        norms = norm_dtype(norms)
        hit = torch.isfinite(norms) & (norms > c)
        coefs = torch.where(hit, c / (norms + NORM_EPS), 1.0)
        scale_each_(grads, coefs)
        n = hit.sum()
        coef = coefs.min() if len(grads) else torch.ones_like(total)
        # Each tensor's norm scales by its own coefficient: the L2 norm after needs no new read.
        after = torch.linalg.vector_norm(norms * coefs) if len(grads) else total
        return ClipResult(scalar_like(c, total), coef, after, n > 0, n)


class RandomClip(Strategy):
    """``random:LO-HI[,seed=S]``: global norm clipping with a threshold drawn uniformly from [LO, HI] each
    step. An ablation control (does a *particular* threshold matter?), not a published method.

    The draw is a pure function of (seed, step), made on the host: no device work, same values on resume.
    """

    name = "random"

    def __init__(self, low: float, high: float, seed: int = 0) -> None:
        super().__init__()
        self.low = require_threshold(low, "random lower bound LO")
        self.high = require_threshold(high, "random upper bound HI")
        if self.high < self.low:
            raise ClipSpecError(f"random bounds must satisfy LO <= HI, got {low!r}-{high!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ClipSpecError(f"random seed must be an integer >= 0, got {seed!r}")
        self.seed = seed

    def _base_spec(self) -> str:
        seed = f",seed={self.seed}" if self.seed else ""
        return f"random:{fmt_num(self.low)}-{fmt_num(self.high)}{seed}"

    def threshold_at(self, step: int) -> float:
        """The threshold drawn for 0-based ``step``."""
        u = random.Random(self.seed * 1_000_003 + step).random()
        # (min: rounding must not carry a draw past HI, which was checked to fit a float32 threshold)
        return min(self.low + (self.high - self.low) * u, self.high)

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        total = norm_dtype(total_norm)
        return global_result(grads, total, scalar_like(self.threshold_at(step), total))
