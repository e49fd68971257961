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

from .base import ClipResult, ClipSpecError, Strategy, fmt_num, global_result, scalar_like

__all__ = ["AutoClip", "ZClip"]


def _finite_or_nan(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, math.nan)


class AutoClip(Strategy):
    """``autoclip:[P][,window=N]``: AutoClip (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping
    for Source Separation Networks", arXiv:2007.14469).

    threshold_t = numpy.percentile([N_0 .. N_t], P) (linear interpolation), *including* the current global
    norm N_t, then global norm clipping with that threshold. P is on the 0-100 scale (default 10), not a 0-1
    quantile. With ``window=N`` only the last N norms count. The history is a device tensor that grows by
    doubling (or a ring buffer of N with a window); without a window each step sorts the whole history
    (about 30 us at 1k steps, 9 ms at 100k steps on one CPU core), so long runs should set a window.
    """

    name = "autoclip"

    def __init__(self, percentile: float = 10.0, window: int | None = None) -> None:
        super().__init__()
        p = percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not (0 < p <= 100):
            raise ClipSpecError(
                f"autoclip percentile must be in (0, 100] (a percentile, not a 0-1 quantile), got {p!r}"
            )
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ClipSpecError(f"autoclip window must be an integer >= 1, got {window!r}")
        self.percentile = float(p)
        self.window = window
        self.count = 0  # global norms seen so far (host-side int: the slot to write needs no sync)
        self._history: Tensor | None = None

    def _base_spec(self) -> str:
        window = f",window={self.window}" if self.window is not None else ""
        return f"autoclip:{fmt_num(self.percentile)}{window}"

    def _slot(self, device: torch.device) -> int:
        h = self._history
        if self.window is not None:
            if h is None or h.device != device:
                self._history = (
                    torch.full((self.window,), math.nan, device=device) if h is None else h.to(device)
                )
            return self.count % self.window
        if h is None or h.device != device or self.count >= h.numel():
            size = max(64, 2 * self.count)
            grown = torch.full((size,), math.nan, device=device)
            if h is not None and self.count:
                grown[: self.count] = h[: self.count].to(device)
            self._history = grown
        return self.count

    def _clip(self, grads, norms, total_norm, *, params, step, names) -> ClipResult:
        total = total_norm.to(torch.float32)
        slot = self._slot(total.device)
        self._history[slot] = _finite_or_nan(total)
        self.count += 1
        seen = self._history[: min(self.count, self._history.numel())]
        # Unfilled and non-finite slots are NaN: nanquantile skips them. torch's "linear" interpolation is
        # numpy.percentile's default.
        threshold = torch.nanquantile(seen, self.percentile / 100.0, interpolation="linear")
        return global_result(grads, total, threshold)

    def history(self) -> Tensor:
        """The norms that count now, oldest first (NaN where a norm was non-finite)."""
        if self._history is None:
            return torch.zeros(0)
        if self.window is None or self.count <= self.window:
            return self._history[: self.count].clone()
        start = self.count % self.window
        return torch.cat([self._history[start:], self._history[:start]])

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "history": self.history().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hist = torch.as_tensor(state["history"], dtype=torch.float32)
        count = int(state["count"])
        if hist.numel() != (count if self.window is None else min(count, self.window)):
            raise ValueError(f"autoclip state: history of {hist.numel()} norms does not match count {count}")
        if self.window is None:
            self._history = torch.full((max(64, 2 * count),), math.nan)
            self._history[:count] = hist
        else:
            # Put the kept norms back where a run that never stopped would have them in its ring buffer.
            self._history = torch.full((self.window,), math.nan)
            idx = torch.arange(count - hist.numel(), count) % self.window
            self._history[idx] = hist
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
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ClipSpecError(f"zclip warmup must be an integer >= 1, got {warmup!r}")
        self.z_thresh, self.alpha, self.warmup = float(z), float(a), warmup
        self.count = 0
        self._buffer: Tensor | None = None
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def _base_spec(self) -> str:
        return f"zclip:{fmt_num(self.z_thresh)},alpha={fmt_num(self.alpha)},warmup={self.warmup}"

    def _clip(self, grads, norms, total_norm, *, params, step, names) -> ClipResult:
        total = total_norm.to(torch.float32)
        g = _finite_or_nan(total)
        if self.count < self.warmup:
            if self._buffer is None:
                self._buffer = torch.full((self.warmup,), math.nan, device=total.device)
            elif self._buffer.device != total.device:  # e.g. state loaded on the CPU, training on a GPU
                self._buffer = self._buffer.to(total.device)
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

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"count": self.count}
        if self.count < self.warmup:
            buf = self._buffer if self._buffer is not None else torch.zeros(0)
            state["buffer"] = buf[: self.count].cpu()
        else:
            state["mean"], state["var"] = self.mean.cpu(), self.var.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        count = int(state["count"])
        if count < self.warmup:
            buf = torch.as_tensor(state["buffer"], dtype=torch.float32)
            if buf.numel() != count:
                raise ValueError(
                    f"zclip state: warm-up buffer of {buf.numel()} norms does not match count {count}"
                )
            self._buffer = torch.full((self.warmup,), math.nan)
            self._buffer[:count] = buf
            self.mean = self.var = None
        else:
            self.mean = torch.as_tensor(state["mean"], dtype=torch.float32)
            self.var = torch.as_tensor(state["var"], dtype=torch.float32)
        self.count = count
