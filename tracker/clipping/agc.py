"""Adaptive Gradient Clipping (Brock, De, Smith, Simonyan 2021,
"High-Performance Large-Scale Image Recognition
Without Normalization", arXiv:2102.06171, section 4.1), unit-wise as in the authors' reference code
(deepmind-research nfnets ``agc_optax.py``):

    for each unit i of a parameter W with gradient G:
        max_norm_i = L * max(||W_i||, 1e-3)
        G_i <- G_i * max_norm_i / ||G_i||    if ||G_i|| > max_norm_i     (||G_i|| floored at 1e-6)

A unit is one output row: the slice along dim 0 of a PyTorch weight (Linear ``[out, in]``, Conv
``[out, in, kh, kw]``: every dim but 0 is reduced). Tensors that are scalars or vectors once size-1 dims are
squeezed (biases, gains, a ``[1, n]`` weight) are one unit, as ``unitwise_norm`` treats them.
The paper does not clip the final classifier layer: ``exclude=NAME`` skips parameters named NAME or
``NAME.<anything>`` (module prefix): ``exclude=fc2`` skips ``fc2.weight`` and ``fc2.bias``, not ``fc20``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import ClipResult, ClipSpecError, Strategy, fmt_num, require_positive, scalar_like

__all__ = ["AGC", "unitwise_norm"]

_PARAM_EPS = 1e-3  # the paper's floor on the weight norm, so zero-initialised units can still move
_GRAD_EPS = 1e-6  # the reference code's floor on the gradient norm in the division


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit, broadcastable against ``x`` (a 0-d tensor for vector-like tensors)."""
    if sum(1 for s in x.shape if s != 1) <= 1:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True, dtype=torch.float32)


class AGC(Strategy):
    """``agc:L[,exclude=NAME]...``: unit-wise adaptive clipping with clipping factor L (the paper: 0.01 at
    batch size 4096; smaller batches tolerate larger L). Needs ``params=`` and, with ``exclude``,
    ``names=`` in clip_.

    Recorded: threshold = L; coef = the smallest unit coefficient; n_clipped = tensors with a clipped unit.
    A unit whose gradient norm is non-finite is left untouched.
    """

    name = "agc"

    def __init__(self, clipping: float, exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.clipping = require_positive(clipping, "agc clipping factor L")
        if isinstance(exclude, str):
            exclude = (exclude,)
        for e in exclude:
            if not isinstance(e, str) or not e or any(c in e for c in ",+ "):
                raise ClipSpecError(f"agc exclude must be a parameter name or module prefix, got {e!r}")
        self.exclude = tuple(exclude)

    def _base_spec(self) -> str:
        return f"agc:{fmt_num(self.clipping)}" + "".join(f",exclude={e}" for e in self.exclude)

    def _excluded(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def _clip(self, grads, norms, total_norm, *, params, step, names) -> ClipResult:
        total = total_norm.to(torch.float32)
        if params is None or len(params) != len(grads):
            got = "none" if params is None else len(params)
            raise ValueError(
                f"agc needs params= matching grads one to one ({len(grads)} grads, params: {got})"
            )
        if self.exclude and (names is None or len(names) != len(grads)):
            raise ValueError(
                f"agc with exclude={','.join(self.exclude)} needs names= (parameter names matching grads)"
            )
        skip = [self._excluded(n) for n in names] if self.exclude else [False] * len(grads)
        ones = torch.ones_like(total)
        min_coefs, hits, sq_after = [ones], [], []
        for g, p, n_g, excluded in zip(grads, params, norms.to(total.device), skip, strict=True):
            if excluded or g.numel() == 0:  # (0 units: nothing to clip, and min() would fail)
                sq_after.append(n_g.to(torch.float32) ** 2)
                continue
            g_norm = unitwise_norm(g)
            max_norm = unitwise_norm(p.detach()).clamp(min=_PARAM_EPS) * self.clipping
            hit = torch.isfinite(g_norm) & (g_norm > max_norm)
            coef = torch.where(hit, max_norm / g_norm.clamp(min=_GRAD_EPS), 1.0)
            g.mul_(coef.to(g.dtype))
            min_coefs.append(coef.min().to(total.device))
            hits.append(hit.any().to(total.device))
            # A unit's norm scales by its own coefficient: the tensor's norm after needs no new read.
            sq_after.append(((g_norm * coef) ** 2).sum().to(total.device))
        n = torch.stack(hits).sum() if hits else torch.zeros((), dtype=torch.int64, device=total.device)
        after = torch.stack(sq_after).sum().sqrt() if sq_after else total
        coef = torch.stack(min_coefs).min()
        return ClipResult(scalar_like(self.clipping, total), coef, after, n > 0, n)
