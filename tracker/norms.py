"""Per-tensor gradient norms, fused and grouped by (device, dtype): the measuring half of the tracker.

Pure functions plus one small cached plan. Nothing here syncs with the host: every result is a device tensor.

On CUDA, ``torch._foreach_norm`` is one fused kernel over the whole list. On the CPU it is a C++ loop of
per-tensor norms, each reduced on one thread, and reading the gradients is most of what measuring costs
there. BLAS ``dot(g, g)`` reads a large tensor with every intra-op thread (``torch.get_num_threads()``), so
for large float32/float64 CPU tensors the plan takes the squared norm that way and the square root of that:
about twice as fast with 2 threads, ~1.1x with 1 (docs/benchmarks.md, "CPU norm read"). Small ones, where
the per-call Python cost would eat the gain, stay in the fused call. The result has the
same overflow and NaN/Inf semantics (neither kernel rescales: an element of 1e20 gives an infinite float32
norm in both) and is closer to the float64 value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DOT_MIN_NUMEL", "NormPlan", "grad_norms", "max_abs", "nonfinite_flags", "tensor_norms"]

# Low-precision norms are accumulated and returned in float32: a float16 gradient whose elements are all
# finite can still have a norm above 65504, which would read as a spurious "inf" layer.
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_FLOAT32_OUT = (torch.float32, *_LOW_PRECISION)
# From this many elements (128 KiB of float32) up, one Python-level dot() per tensor beats the foreach loop
# on the CPU with 2 threads: measured break-even ~32k elements, 2x faster at 256k; with 1 thread break-even
# is ~64k and the gain ~1.1x, the loss below it under 10% (docs/benchmarks.md, "CPU norm read").
DOT_MIN_NUMEL = 32768
_DOT_DTYPES = (torch.float32, torch.float64)


def _foreach_norm(tensors: list[Tensor], ord: float) -> list[Tensor]:
    # torch has no public per-tensor fused norm; torch.nn.utils.get_total_norm uses this same kernel.
    # float32 accumulation asked for even for float32 groups (same bits, same speed, measured): a tensor
    # cast to float16 after the plan was made then still cannot overflow its norm.
    dtype = torch.float32 if tensors[0].dtype in _FLOAT32_OUT else None
    if ord == math.inf and not all(map(Tensor.numel, tensors)):
        # max |x| over no element (an FSDP2 shard of a tensor with fewer rows than ranks, a 0-size weight):
        # torch's kernel refuses it, having no identity for max; |x| >= 0 makes 0 the one to take.
        full = [i for i, t in enumerate(tensors) if t.numel()]
        out = [torch.zeros((), dtype=dtype or t.dtype, device=t.device) for t in tensors]
        if full:
            read = torch._foreach_norm([tensors[i] for i in full], ord, dtype=dtype)
            for i, n in zip(full, read, strict=True):
                out[i] = n
        return out
    return list(torch._foreach_norm(tensors, ord, dtype=dtype))


# Gradients whose norms are kept in float64: clip_grad_norm_ computes their total and coefficient in float64,
# and a finite norm of them may exceed float32's range (complex128's |z| is a float64).
_WIDE = (torch.float64, torch.complex128)


def _out_dtype(t: Tensor) -> torch.dtype:
    # Every other dtype gives float32 norms.
    return torch.float64 if t.dtype in _WIDE else torch.float32


def _reads_with_dot(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in _DOT_DTYPES and t.numel() >= DOT_MIN_NUMEL


def _squared_norm(t: Tensor) -> Tensor:
    if t.dtype not in _DOT_DTYPES:  # cast to low precision after the plan was made: dot() would overflow
        return torch.linalg.vector_norm(t, dtype=torch.float32).square()
    # A gradient is laid out like its weight: contiguous unless the weight is not (channels_last, say).
    flat = t.view(-1) if t.is_contiguous() else t.reshape(-1)
    return torch.dot(flat, flat)


@dataclass(frozen=True)
class _DotSplit:
    """Within one CPU group: the positions read with ``dot``, the rest, and how to put them back in order."""

    dot: tuple[int, ...]
    rest: tuple[int, ...]
    order: Tensor  # cat([dot results, rest results])[order] is in group order

    @classmethod
    def for_group(cls, tensors: Sequence[Tensor]) -> _DotSplit | None:
        dot = tuple(j for j, t in enumerate(tensors) if _reads_with_dot(t))
        if not dot:
            return None
        rest = tuple(sorted(set(range(len(tensors))) - set(dot)))
        return cls(dot, rest, torch.tensor(dot + rest).argsort())

    def norms(self, tensors: Sequence[Tensor]) -> Tensor:
        read = torch.stack([_squared_norm(tensors[j]) for j in self.dot]).sqrt_()
        if self.rest:
            rest = torch.stack(_foreach_norm([tensors[j] for j in self.rest], 2.0))
            read = torch.cat([read, rest]).index_select(0, self.order)
        # float64 when a tensor is (also one cast to float64 after the plan was made: never narrowed to
        # float32, where a finite float64 norm could read as inf; the tracker then plans again).
        return read if read.dtype == torch.float64 else read.to(torch.float32)


@dataclass(frozen=True)
class NormPlan:
    """The grouping of a fixed list of tensors by (device, dtype), computed once and reused every step.

    ``groups`` holds, per group, the positions of its tensors in the original list. ``device`` is where the
    stacked results live (the first tensor's device, as in ``torch.nn.utils.get_total_norm``). ``splits``
    holds, per group, which of its tensors are large CPU ones read with ``dot`` (None: all in one fused call).
    """

    groups: tuple[tuple[int, ...], ...]
    size: int
    device: torch.device
    splits: tuple[_DotSplit | None, ...] = field(compare=False, repr=False)

    @classmethod
    def for_tensors(cls, tensors: Sequence[Tensor]) -> NormPlan:
        if not tensors:
            return cls(groups=(), size=0, device=torch.device("cpu"), splits=())
        by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            by_key.setdefault((t.device, t.dtype), []).append(i)
        groups = tuple(tuple(v) for v in by_key.values())
        splits = tuple(_DotSplit.for_group([tensors[i] for i in g]) for g in groups)
        return cls(groups=groups, size=len(tensors), device=tensors[0].device, splits=splits)

    def apply(self, tensors: Sequence[Tensor], ord: float = 2.0) -> Tensor:
        """Per-tensor ``ord``-norms of ``tensors`` (same layout as the plan) as one 1-D tensor: float32, or
        float64 when a group is float64."""
        if self.size == 0:
            return torch.zeros(0, dtype=torch.float32, device=self.device)
        if len(self.groups) == 1:
            # The common case (one device, one dtype): no regrouping.
            return self._group_norms(0, tensors, ord)
        ordered: list[Tensor | None] = [None] * self.size
        for k, group in enumerate(self.groups):
            norms = self._group_norms(k, [tensors[i] for i in group], ord).to(self.device)
            for i, n in zip(group, norms.unbind(), strict=True):
                ordered[i] = n
        return torch.stack(ordered)  # type: ignore[arg-type]

    def _group_norms(self, k: int, tensors: Sequence[Tensor], ord: float) -> Tensor:
        split = self.splits[k]
        if split is not None and ord == 2.0:
            return split.norms(tensors)
        return torch.stack(_foreach_norm(list(tensors), ord)).to(_out_dtype(tensors[0]))


def tensor_norms(tensors: Sequence[Tensor], ord: float = 2.0) -> Tensor:
    """Per-tensor ``ord``-norms as a 1-D float32 tensor (float64 if any tensor is) on the first tensor's
    device (order preserved)."""
    tensors = list(tensors)
    return NormPlan.for_tensors(tensors).apply(tensors, ord)


def grad_norms(grads: Sequence[Tensor], plan: NormPlan | None = None) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms of ``grads`` and the global L2 norm (the norm of all of them as one vector).

    Returns ``(norms, total)``: ``norms`` 1-D float32 (float64 if any gradient is), ``total`` 0-d, both on the
    first gradient's device.
    The total is the norm of the per-tensor norms, exactly as ``torch.nn.utils.get_total_norm`` builds it,
    so clipping can reuse both without reading the gradients again. Pass a cached ``plan`` to skip regrouping.
    DTensor (FSDP2) gradients are handled by :func:`tracker.distributed.sharded_norms`, not here.
    """
    grads = list(grads)
    norms = (plan or NormPlan.for_tensors(grads)).apply(grads)
    return norms, torch.linalg.vector_norm(norms)


def max_abs(tensors: Sequence[Tensor], plan: NormPlan | None = None) -> Tensor:
    """Per-tensor max |x| (the inf-norm), 1-D float32 (float64 for float64 tensors)."""
    tensors = list(tensors)
    return (plan or NormPlan.for_tensors(tensors)).apply(tensors, float("inf"))


def nonfinite_flags(norms: Tensor) -> Tensor:
    """Bool tensor: which norms are NaN/Inf. A NaN or Inf element anywhere makes its tensor's L2 norm so."""
    return ~torch.isfinite(norms)
