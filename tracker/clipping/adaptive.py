"""Strategies whose threshold adapts to the history of global gradient norms: AutoClip and ZClip.

Their state (AutoClip's history, ZClip's running mean and variance) lives on the gradients' device as tensors
and is updated with tensor operations, so a step costs no host sync. A non-finite global norm never enters
the state (it is stored as NaN and ignored), and the gradients of that step are left untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import (
    FLOAT32_MAX,
    ClipResult,
    ClipSpecError,
    Strategy,
    fmt_num,
    global_result,
    norm_dtype,
    scalar_like,
)

__all__ = ["MAX_STEPS", "AutoClip", "ZClip"]

# The longest AutoClip window and ZClip warm-up, in optimizer steps: longer than any training run, so a
# larger value is a typo ("window=1e12"). Memory grows with the norms seen, not with the window, but a window
# this full would cost ~0.1 s per step (~1 ms measured at 100k norms, linear), and an int past 2**63 would
# overflow the history's int64 indices.
MAX_STEPS = 10_000_000

# The norms' statistics are float32 whatever torch's default dtype (under set_default_dtype(torch.float64)
# a tensor made without a dtype would be float64, and load_state_dict, which reads float32, would then not
# continue a run exactly).
_STAT = torch.float32

# The first allocation of a history or warm-up buffer; it doubles when full, up to the window or warm-up.
_FIRST_CAPACITY = 64


def _finite_or_nan(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, math.nan)


def _require_steps(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS:
        raise ClipSpecError(
            f"{what} must be an integer >= 1 and <= {MAX_STEPS} (10 million steps, longer than any "
            f"training run), got {value!r}"
        )
    return value


def _capacity(count: int, limit: int | None) -> int:
    """Room for ``count`` norms and the next one: doubling, never past ``limit`` (the window or warm-up), so
    that memory and per-step work follow the norms seen rather than the window asked for. At ``limit`` the
    buffer stops growing: AutoClip's history is then a ring buffer, ZClip's warm-up is over."""
    wanted = max(_FIRST_CAPACITY, 2 * count)
    return wanted if limit is None else min(wanted, limit)


def _nans(n: int, device: torch.device | None = None) -> Tensor:
    return torch.full((n,), math.nan, dtype=_STAT, device=device)


def _with_room(buffer: Tensor, count: int, limit: int | None) -> Tensor:
    """``buffer`` holding ``count`` norms, grown (NaN padding, ``_capacity``) when it is full and ``limit``
    not reached; as it is otherwise."""
    if count < buffer.numel() or (limit is not None and count >= limit):
        return buffer
    return torch.cat([buffer, _nans(_capacity(count, limit) - count, buffer.device)])


def _statistic(total: Tensor) -> Tensor:
    """The global norm as the float32 statistics see it. A float64 model's finite norm beyond float32's range
    counts as float32's largest value, still finite: cast, it would read as Inf, be left out of the
    statistics and leave the spike unclipped. The coefficient is still computed from the float64 norm."""
    if total.dtype == torch.float32:
        return total
    return torch.where(torch.isfinite(total), total.clamp(-FLOAT32_MAX, FLOAT32_MAX), total).to(torch.float32)


def _exceeds(stat: Tensor, total: Tensor, threshold: Tensor) -> Tensor:
    """Does the global norm exceed a threshold taken from the float32 statistics? Decided on the norm as the
    statistics hold it (``stat``): a float64 norm compared with the float32 percentile of a history holding
    its own rounding would exceed it half the time, "clipping" by 1 - 3e-7 at step 0 or with P = 100. A
    norm beyond float32's range (its statistic saturated at the largest float32) exceeds any threshold."""
    if total.dtype != torch.float64:
        return stat > threshold
    return (stat > threshold) | (total > FLOAT32_MAX)


class _SortedNorms:
    """The finite norms seen so far in ascending order, then +inf padding, on the device.

    Inserting or removing one norm is a searchsorted and a shift (a few O(n) element-wise kernels, no sort,
    no sync): ~0.03 ms at 10k norms on one CPU core, where re-sorting the history (torch.nanquantile) takes
    ~1.1 ms. A non-finite norm is inserted as +inf, i.e. into the padding, and never counts.
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.values = torch.full((capacity,), math.inf, dtype=_STAT, device=device)
        self.index = torch.arange(capacity, device=device)
        self.finite = torch.zeros((), dtype=torch.int64, device=device)

    @classmethod
    def of(cls, norms: Tensor, capacity: int) -> _SortedNorms:
        self = cls(capacity, norms.device)
        ordered = torch.sort(torch.where(torch.isfinite(norms), norms, math.inf)).values
        self.values[: ordered.numel()] = ordered
        self.finite = torch.isfinite(norms).sum()
        return self

    def to(self, device: torch.device) -> _SortedNorms:
        self.values, self.index, self.finite = (t.to(device) for t in (self.values, self.index, self.finite))
        return self

    def grow(self, capacity: int) -> None:
        pad = self.values.new_full((capacity - self.values.numel(),), math.inf)
        self.values = torch.cat([self.values, pad])
        self.index = torch.arange(capacity, device=self.values.device)

    def insert(self, norm: Tensor) -> None:
        at = torch.searchsorted(self.values, norm.reshape(1))
        right = torch.cat([self.values[:1], self.values[:-1]])  # the last slot (padding) falls off
        self.values = torch.where(self.index < at, self.values, torch.where(self.index == at, norm, right))
        self.finite += torch.isfinite(norm).long()

    def remove(self, norm: Tensor) -> None:
        at = torch.searchsorted(self.values, norm.reshape(1))  # first slot holding this value
        left = torch.cat([self.values[1:], torch.full_like(self.values[:1], math.inf)])  # padding comes in
        self.values = torch.where(self.index < at, self.values, left)
        self.finite -= torch.isfinite(norm).long()

    def percentile(self, q: float) -> Tensor:
        """numpy.percentile(finite norms, 100 q) with its default linear interpolation; NaN when empty."""
        last = (self.finite - 1).clamp(min=0)
        # float64 keeps the interpolation weight exact for long histories; MPS has no float64.
        pos = q * last.to(torch.float32 if last.device.type == "mps" else torch.float64)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, last)
        a = self.values.gather(0, lo.reshape(1))  # gather, not values[lo]: a 0-d index would be read on host
        b = self.values.gather(0, hi.reshape(1))
        value = (a + (b - a) * (pos - lo)).to(torch.float32).reshape(())
        return torch.where(self.finite > 0, value, math.nan)


def _finite_or_inf(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, math.inf)


class AutoClip(Strategy):
    """``autoclip:[P][,window=N]``: AutoClip (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping
    for Source Separation Networks", arXiv:2007.14469).

    threshold_t = numpy.percentile([N_0 .. N_t], P) (linear interpolation), *including* the current global
    norm N_t, then global norm clipping with that threshold. P is on the 0-100 scale (default 10), not a 0-1
    quantile. With ``window=N`` only the last N norms count. Non-finite norms are left out. The history is
    kept twice on the device: in order (growing by doubling, or a ring buffer of N with a window) to know
    what leaves the window and to save state, and sorted, so a step costs O(history) and no sort.
    """

    name = "autoclip"

    def __init__(self, percentile: float = 10.0, window: int | None = None) -> None:
        super().__init__()
        p = percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not (0 < p <= 100):
            raise ClipSpecError(
                f"autoclip percentile must be in (0, 100] (a percentile, not a 0-1 quantile), got {p!r}"
            )
        self.percentile = float(p)
        self.window = None if window is None else _require_steps(window, "autoclip window")
        self.count = 0  # global norms seen so far (host-side int: the slot to write needs no sync)
        self._history: Tensor | None = None  # in order, NaN for non-finite norms
        self._sorted: _SortedNorms | None = None

    def _base_spec(self) -> str:
        window = f",window={self.window}" if self.window is not None else ""
        return f"autoclip:{fmt_num(self.percentile)}{window}"

    def _ready(self, device: torch.device) -> None:
        if self._history is None:
            capacity = _capacity(0, self.window)
            self._history = _nans(capacity, device)
            self._sorted = _SortedNorms(capacity, device)
        elif self._history.device != device:  # e.g. state loaded on the CPU, training on a GPU
            self._history = self._history.to(device)
            self._sorted.to(device)
        # Full before the window is: grow. (Once the window is full the history is a ring buffer of it.)
        self._history = _with_room(self._history, self.count, self.window)
        if self._history.numel() > self._sorted.values.numel():
            self._sorted.grow(self._history.numel())

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        total = norm_dtype(total_norm)
        stat = _statistic(total)
        self._ready(total.device)
        slot = self.count if self.window is None else self.count % self.window
        if self.window is not None and self.count >= self.window:
            self._sorted.remove(_finite_or_inf(self._history[slot]))
        self._history[slot] = _finite_or_nan(stat)
        self._sorted.insert(_finite_or_inf(stat))
        self.count += 1
        threshold = self._sorted.percentile(self.percentile / 100.0)
        return global_result(grads, total, threshold, trigger=_exceeds(stat, total, threshold))

    def history(self) -> Tensor:
        """The norms that count now, oldest first (NaN where a norm was non-finite)."""
        if self._history is None:
            return torch.zeros(0, dtype=_STAT)
        if self.window is None or self.count <= self.window:
            return self._history[: self.count].clone()
        start = self.count % self.window
        return torch.cat([self._history[start:], self._history[:start]])

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "history": self.history().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hist = torch.as_tensor(state["history"], dtype=_STAT)
        count = int(state["count"])
        if hist.numel() != (count if self.window is None else min(count, self.window)):
            raise ValueError(f"autoclip state: history of {hist.numel()} norms does not match count {count}")
        capacity = _capacity(count, self.window)
        self._history = _nans(capacity)
        if self.window is None:
            self._history[:count] = hist
        else:
            # Put the kept norms back where a run that never stopped would have them in its ring buffer.
            self._history[torch.arange(count - hist.numel(), count) % self.window] = hist
        self._sorted = _SortedNorms.of(hist, capacity)
        self.count = count


class ZClip(Strategy):
    """``zclip:[Z][,alpha=A][,warmup=N]``: ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for
    LLM Pre-Training", arXiv:2504.02507), z-score mode with reciprocal ("adaptive_scaling") clipping.

    Warm-up: the first N global norms (default 25) are collected, nothing is clipped; then mu and sigma^2 are
    their mean and (population) variance. After that, per step with global norm g:
        z = (g - mu) / (sigma + 1e-6);  if z > Z (default 2.5): clip the global norm to mu + Z^2 * sigma / z
        g* = the clipped norm (or g);   mu <- A mu + (1-A) g*;   sigma^2 <- A sigma^2 + (1-A) (g* - mu)^2
    with A = 0.97 and the updated mu in the variance, as in the authors' code. The reported threshold is
    the trigger level mu + Z * sigma (NaN during warm-up); the norm after is the clipped-to value.
    Unlike the authors' package, no fixed max_grad_norm is applied on top.
    """

    name = "zclip"

    def __init__(self, z_thresh: float = 2.5, alpha: float = 0.97, warmup: int = 25) -> None:
        super().__init__()
        z, a = z_thresh, alpha
        if isinstance(z, bool) or not isinstance(z, int | float) or not (math.isfinite(z) and z > 0):
            raise ClipSpecError(f"zclip z-score threshold Z must be a finite number > 0, got {z!r}")
        if isinstance(a, bool) or not isinstance(a, int | float) or not (0 < a < 1):
            raise ClipSpecError(f"zclip alpha must be in (0, 1), got {a!r}")
        self.z_thresh, self.alpha = float(z), float(a)
        self.warmup = _require_steps(warmup, "zclip warmup")
        self.count = 0
        self._buffer: Tensor | None = None
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def _base_spec(self) -> str:
        return f"zclip:{fmt_num(self.z_thresh)},alpha={fmt_num(self.alpha)},warmup={self.warmup}"

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        total = norm_dtype(total_norm)
        g = _finite_or_nan(_statistic(total))
        if self.count < self.warmup:
            self._ready(total.device)
            self._buffer[self.count] = g
            self.count += 1
            if self.count == self.warmup:
                self.mean = torch.nanmean(self._buffer)
                self.var = torch.nanmean((self._buffer - self.mean) ** 2)
            return global_result(grads, total, scalar_like(math.nan, total))  # NaN threshold: never clips
        self.count += 1
        mean, var = self.mean.to(total.device), self.var.to(total.device)
        std = var.sqrt()
        z = (g - mean) / (std + 1e-6)
        Z = self.z_thresh
        clipped = z > Z  # False for NaN: a non-finite norm never triggers
        target = mean + Z * Z * std / z
        result = global_result(grads, total, mean + Z * std, target=target, trigger=clipped)
        g_eff = torch.where(clipped, target, g)
        new_mean = self.alpha * mean + (1 - self.alpha) * g_eff
        new_var = self.alpha * var + (1 - self.alpha) * (g_eff - new_mean) ** 2
        finite = torch.isfinite(g)
        # If warm-up saw only non-finite norms, start the statistics from the first finite one.
        self.mean = torch.where(finite, torch.where(torch.isnan(mean), g_eff, new_mean), mean)
        self.var = torch.where(finite, torch.where(torch.isnan(var), 0.0, new_var), var)
        return result

    def _ready(self, device: torch.device) -> None:
        """A warm-up buffer on ``device`` with room for this step's norm (nanmean ignores the NaN padding)."""
        if self._buffer is None:
            self._buffer = _nans(_capacity(0, self.warmup), device)
        elif self._buffer.device != device:  # e.g. state loaded on the CPU, training on a GPU
            self._buffer = self._buffer.to(device)
        self._buffer = _with_room(self._buffer, self.count, self.warmup)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"count": self.count}
        if self.count < self.warmup:
            buf = self._buffer if self._buffer is not None else torch.zeros(0, dtype=_STAT)
            state["buffer"] = buf[: self.count].cpu()
        else:
            state["mean"], state["var"] = self.mean.cpu(), self.var.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        count = int(state["count"])
        if count < self.warmup:
            buf = torch.as_tensor(state["buffer"], dtype=_STAT)
            if buf.numel() != count:
                raise ValueError(
                    f"zclip state: warm-up buffer of {buf.numel()} norms does not match count {count}"
                )
            self._buffer = _nans(_capacity(count, self.warmup))
            self._buffer[:count] = buf
            self.mean = self.var = None
        else:
            self.mean = torch.as_tensor(state["mean"], dtype=_STAT)
            self.var = torch.as_tensor(state["var"], dtype=_STAT)
        self.count = count
