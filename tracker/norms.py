"""Per-tensor gradient norms, fused and grouped by (device, dtype): the measuring half of the tracker.

Pure functions plus one small cached plan. Nothing here syncs with the host: every result is a device tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NormPlan", "grad_norms", "max_abs", "nonfinite_flags", "tensor_norms"]

# Low-precision norms are accumulated and returned in float32: a float16 gradient whose elements are all
# finite can still have a norm above 65504, which would read as a spurious "inf" layer.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _foreach_norm(tensors: list[Tensor], ord: float) -> list[Tensor]:
    # torch has no public per-tensor fused norm; torch.nn.utils.get_total_norm uses this same kernel.
    dtype = torch.float32 if tensors[0].dtype in _LOW_PRECISION else None
    return list(torch._foreach_norm(tensors, ord, dtype=dtype))


@dataclass(frozen=True)
class NormPlan:
    """The grouping of a fixed list of tensors by (device, dtype), computed once and reused every step.

    ``groups`` holds, per group, the positions of its tensors in the original list. ``device`` is where the
    stacked results live (the first tensor's device, as in ``torch.nn.utils.get_total_norm``).
    """

    groups: tuple[tuple[int, ...], ...]
    size: int
    device: torch.device

    @classmethod
    def for_tensors(cls, tensors: Sequence[Tensor]) -> NormPlan:
        if not tensors:
            return cls(groups=(), size=0, device=torch.device("cpu"))
        by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            by_key.setdefault((t.device, t.dtype), []).append(i)
        return cls(
            groups=tuple(tuple(v) for v in by_key.values()), size=len(tensors), device=tensors[0].device
        )

    def apply(self, tensors: Sequence[Tensor], ord: float = 2.0) -> Tensor:
        """Per-tensor ``ord``-norms of ``tensors`` (same layout as the plan) as one 1-D float32 tensor."""
        if self.size == 0:
            return torch.zeros(0, dtype=torch.float32, device=self.device)
        if len(self.groups) == 1:
            # The common case (one device, one dtype): no regrouping, one fused kernel and one stack.
            return torch.stack(_foreach_norm(list(tensors), ord)).to(torch.float32)
        ordered: list[Tensor | None] = [None] * self.size
        for group in self.groups:
            for i, n in zip(group, _foreach_norm([tensors[i] for i in group], ord), strict=True):
                ordered[i] = n.to(self.device, torch.float32)
        return torch.stack(ordered)  # type: ignore[arg-type]


def tensor_norms(tensors: Sequence[Tensor], ord: float = 2.0) -> Tensor:
    """Per-tensor ``ord``-norms as a 1-D float32 tensor on the first tensor's device (order preserved)."""
    tensors = list(tensors)
    return NormPlan.for_tensors(tensors).apply(tensors, ord)


def grad_norms(grads: Sequence[Tensor], plan: NormPlan | None = None) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms of ``grads`` and the global L2 norm (the norm of all of them as one vector).

    Returns ``(norms, total)``: ``norms`` 1-D float32, ``total`` 0-d, both on the first gradient's device.
    The total is the norm of the per-tensor norms, exactly as ``torch.nn.utils.get_total_norm`` builds it,
    so clipping can reuse both without reading the gradients again. Pass a cached ``plan`` to skip regrouping.
    DTensor (FSDP2) gradients are handled by :func:`tracker.distributed.sharded_norms`, not here.
    """
    grads = list(grads)
    norms = (plan or NormPlan.for_tensors(grads)).apply(grads)
    return norms, torch.linalg.vector_norm(norms)


def max_abs(tensors: Sequence[Tensor], plan: NormPlan | None = None) -> Tensor:
    """Per-tensor max |x| (the inf-norm), 1-D float32."""
    tensors = list(tensors)
    return (plan or NormPlan.for_tensors(tensors)).apply(tensors, float("inf"))


def nonfinite_flags(norms: Tensor) -> Tensor:
    """Bool tensor: which norms are NaN/Inf. A NaN or Inf element anywhere makes its tensor's L2 norm so."""
    return ~torch.isfinite(norms)
