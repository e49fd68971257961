"""Adaptive Gradient Clipping (Brock, De, Smith, Simonyan 2021,
"High-Performance Large-Scale Image Recognition
Without Normalization", arXiv:2102.06171, section 4.1), unit-wise as in the authors' reference code
(deepmind-research nfnets ``agc_optax.py``):

    for each unit i of a parameter W with gradient G:
        max_norm_i = L * max(||W_i||, 1e-3)
        G_i <- G_i * max_norm_i / ||G_i||    if ||G_i|| > max_norm_i     (||G_i|| floored at 1e-6)

A unit is one output row: the slice along dim 0 of a PyTorch weight (Linear ``[out, in]``, Conv
``[out, in, kh, kw]``: every dim but 0 is reduced). Tensors that are scalars or vectors once size-1 dims are
squeezed (biases, gains, a ``[1, n]`` weight) are one unit, as ``unitwise_norm`` treats them. Complex
tensors are clipped by the moduli of their elements: ||G_i|| is the L2 norm of |G_i|.
The paper does not clip the final classifier layer: ``exclude=NAME`` skips parameters named NAME or
``NAME.<anything>`` (module prefix): ``exclude=fc2`` skips ``fc2.weight`` and ``fc2.bias``, not ``fc20``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .base import (
    ClipResult,
    ClipSpecError,
    Strategy,
    fmt_num,
    norm_dtype,
    real_view,
    require_threshold,
    scalar_like,
)

__all__ = ["AGC", "unit_dims", "unitwise_norm"]

_PARAM_EPS = 1e-3  # the paper's floor on the weight norm, so zero-initialised units can still move
_GRAD_EPS = 1e-6  # the reference code's floor on the gradient norm in the division


def unit_dims(shape: Sequence[int]) -> tuple[int, ...]:
    """The dims one unit's norm reduces over: all of them for a vector-like shape, else every dim but 0."""
    if sum(1 for s in shape if s != 1) <= 1:
        return tuple(range(len(shape)))
    return tuple(range(1, len(shape)))


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit in float32 (float64 for float64 ``x``), broadcastable against ``x`` (a 0-d
    tensor for vector-like tensors). Complex elements count with their modulus |z|."""
    if sum(1 for s in x.shape if s != 1) <= 1:
        return _unit_norm(x, tuple(range(x.ndim)), keepdim=False)
    return _unit_norm(x, tuple(range(1, x.ndim)), keepdim=True)


def _unit_squares(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    # Squared norms, because the squares of a unit split across shards add up.
    if not dims and not x.is_complex():  # a 0-d tensor: its own unit
        return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).square()
    return _unit_norm(x, dims, keepdim=True).square()


def _unit_norm(x: Tensor, dims: tuple[int, ...], *, keepdim: bool) -> Tensor:
    # vector_norm reads x once with no full-size temporary (x.square().sum() would allocate one per tensor),
    # in float32 for float16/bfloat16. float64 stays float64 (clip_grad_norm_'s precision for float64
    # models). dtype=float32 is refused for complex input (it wants a complex dtype): as |z|^2 = re^2 + im^2,
    # a complex unit's norm is that of its real view over the unit's dims and the trailing (re, im) dim. The
    # view is no copy (a lazily conjugated tensor is resolved first).
    if x.is_complex():
        norm = _unit_norm(torch.view_as_real(x.resolve_conj()), (*dims, -1), keepdim=keepdim)
        return norm.squeeze(-1) if keepdim else norm
    if x.dtype == torch.float64:
        return torch.linalg.vector_norm(x, dim=dims, keepdim=keepdim)
    return torch.linalg.vector_norm(x, dim=dims, keepdim=keepdim, dtype=torch.float32)


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
        self.clipping = require_threshold(clipping, "agc clipping factor L")
        if isinstance(exclude, str):
            exclude = (exclude,)
        for e in exclude:
            if not isinstance(e, str) or not e or any(c in e for c in ",+ "):
                raise ClipSpecError(f"agc exclude must be a parameter name or module prefix, got {e!r}")
        self.exclude = tuple(exclude)
        self._excluded_tied: frozenset[str] = frozenset()  # recorded names excluded through a tied alias

    def _base_spec(self) -> str:
        return f"agc:{fmt_num(self.clipping)}" + "".join(f",exclude={e}" for e in self.exclude)

    def _matches(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def _excluded(self, name: str) -> bool:
        return name in self._excluded_tied or self._matches(name)

    def bind_names(self, names: Sequence[str], aliases: Mapping[str, str]) -> None:
        """Refuses an ``exclude`` that matches no parameter (a typo would silently clip the head), and
        excludes a tied tensor by any of its names: with ``head.weight`` tied to ``embed.weight`` the tensor
        is recorded as ``embed.weight``, and ``exclude=head`` must still leave it alone."""
        every = [*names, *aliases]
        for e in self.exclude:
            if not any(n == e or n.startswith(e + ".") for n in every):
                prefixes = sorted({n.split(".")[0] for n in every})
                raise ClipSpecError(
                    f"agc exclude={e} matches no parameter of this model; give a parameter name or a module "
                    f"prefix as named_parameters() spells it (top-level modules: {', '.join(prefixes[:12])}"
                    f"{', ...' if len(prefixes) > 12 else ''})"
                )
        self._excluded_tied = frozenset(aliases[a] for a in aliases if self._matches(a))

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        total = norm_dtype(total_norm)
        if params is None or len(params) != len(grads):
            got = "none" if params is None else len(params)
            raise ValueError(
                f"agc needs params= matching grads one to one ({len(grads)} grads, params: {got})"
            )
        if self.exclude and (names is None or len(names) != len(grads)):
            raise ValueError(
                f"agc with exclude={','.join(self.exclude)} needs names= (parameter names matching grads)"
            )
        if not grads:
            zero = torch.zeros((), dtype=torch.int64, device=total.device)
            one = torch.ones_like(total)
            return ClipResult(scalar_like(self.clipping, total), one, total, zero.bool(), zero)
        skip = [self._excluded(n) for n in names] if self.exclude else [False] * len(grads)
        # With shards, a unit's extent comes from the full tensor's shape; the local shard may hold one row.
        shapes = shards.shapes if shards is not None else [tuple(g.shape) for g in grads]
        dims = [() if excluded else unit_dims(shape) for shape, excluded in zip(shapes, skip, strict=True)]
        # (an excluded tensor is never read: a 0-d placeholder stands in for it)
        blank = torch.zeros((), device=total.device)
        g_local = [blank if e else _unit_squares(g, d) for g, d, e in zip(grads, dims, skip, strict=True)]
        p_sq = [
            blank if e else _unit_squares(w.detach(), d) for w, d, e in zip(params, dims, skip, strict=True)
        ]
        g_sq = g_local
        if shards is not None:  # units split across ranks (vector-like shards): their squares add up
            g_sq, p_sq = shards.sum_units(g_local, dims), shards.sum_units(p_sq, dims)
        one = torch.ones(1, device=total.device)
        min_coefs, hits, sq_after = [], [], []
        for g, g2, local2, p2, excluded in zip(grads, g_sq, g_local, p_sq, skip, strict=True):
            if excluded:
                min_coefs.append(one[0])
                hits.append(one[0] < 0)
                sq_after.append(one[0] * 0)
                continue
            g_norm = g2.sqrt()
            max_norm = p2.sqrt().clamp(min=_PARAM_EPS) * self.clipping
            hit = torch.isfinite(g_norm) & (g_norm > max_norm)
            coef = torch.where(hit, max_norm / g_norm.clamp(min=_GRAD_EPS), 1.0)
            # In the coefficient's precision: cast to float16 first, a small one (1e-8) would round to 0.
            # A complex gradient is scaled through its real view (base.real_views says why).
            if g.is_complex():
                real_view(g).mul_(coef.unsqueeze(-1))
            else:
                g.mul_(coef)
            # (a 1 joins the units: a shard can hold none of them)
            min_coefs.append(torch.cat([coef.reshape(-1).to(total.device), one]).min())
            hits.append(hit.any().to(total.device))
            # A unit's norm scales by its own coefficient: the tensor's norm after needs no new read. The
            # local squares, not the unit's: summed over the shards below, they give the full tensor's.
            sq_after.append((local2 * coef.square()).sum().to(total.device))
        mins, hit_any, squares = torch.stack(min_coefs), torch.stack(hits), torch.stack(sq_after)
        if shards is not None:
            mins = shards.reduce(mins, "min")
            hit_any = shards.reduce(hit_any.to(torch.float32), "max").bool()
            squares = shards.reduce(squares)
        if any(skip):  # left alone: their norms before are their norms after
            # (a mask made on the device: torch.tensor(skip, device=...) would be a synchronising copy)
            excluded = torch.stack([one[0] > 0 if e else one[0] < 0 for e in skip])
            squares = torch.where(excluded, norm_dtype(norms).to(total.device).square(), squares)
        n = hit_any.sum()
        after = squares.sum().sqrt()
        coef = mins.min()
        return ClipResult(scalar_like(self.clipping, total), coef, after, n > 0, n)
