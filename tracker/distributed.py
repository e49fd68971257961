"""Process-group facts (rank, world size) and global norms of sharded (FSDP2 / DTensor) gradients.

DDP needs nothing special: after backward every rank holds the same all-reduced gradients, so local norms are
already global. FSDP2 gradients are DTensors sharded across ranks; their norms must be reduced to what
``grad.full_tensor()`` would give, never the local shard's. We do that with one all-reduce of the squared
per-tensor norms per (mesh, sharded-dims) group instead of one collective per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from tracker.norms import NormPlan

__all__ = ["is_dtensor", "like", "local_tensor", "rank_and_world_size", "sharded_norms"]

try:  # DTensor is part of torch >= 2.4; keep the import soft so a trimmed build still imports us.
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - depends on the torch build
    DTensor = None  # type: ignore[assignment,misc]


def rank_and_world_size() -> tuple[int, int]:
    """This process's global rank and the world size; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local_tensor(t: Tensor) -> Tensor:
    """The tensor this rank holds: the local shard of a DTensor (sharing storage), else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def like(local: Tensor, reference: Tensor) -> Tensor:
    """``local`` as a DTensor laid out like ``reference`` when that is one (so norms reduce globally)."""
    if not is_dtensor(reference):
        return local
    return DTensor.from_local(local, reference.device_mesh, reference.placements, run_check=False)


def _summed_mesh_dims(t: Tensor) -> tuple[int, ...]:
    # Squared norms add up across the mesh dims a tensor is sharded on; replicated dims hold copies.
    return tuple(i for i, p in enumerate(t.placements) if isinstance(p, Shard))


def _without_partial(t: Tensor) -> Tensor:
    # A Partial tensor's value is the SUM of the locals, so local norms say nothing about it: reduce it first.
    # Gradients are rarely left Partial (FSDP2 reduce-scatters them), so the extra collective is acceptable.
    if any(isinstance(p, Partial) for p in t.placements):
        placements = [Replicate() if isinstance(p, Partial) else p for p in t.placements]
        return t.redistribute(t.device_mesh, placements)
    return t


def sharded_norms(grads: Sequence[Tensor]) -> Tensor:
    """Per-tensor global L2 norms (``full_tensor`` semantics) of gradients that may be DTensors.

    Returns a 1-D float32 tensor on the first local tensor's device. Collective: every rank of the meshes
    involved must call it with the same list, in the same order (as they do in a data-parallel step).
    """
    grads = [_without_partial(g) if is_dtensor(g) else g for g in grads]
    local = [local_tensor(g) for g in grads]
    squared = NormPlan.for_tensors(local).apply(local).square()
    groups: dict[tuple[object, tuple[int, ...]], list[int]] = {}
    for i, g in enumerate(grads):
        if is_dtensor(g):
            dims = _summed_mesh_dims(g)
            if dims:
                groups.setdefault((g.device_mesh, dims), []).append(i)
    for (mesh, dims), idx in groups.items():
        index = torch.tensor(idx, device=squared.device)
        part = squared.index_select(0, index)
        for d in dims:
            dist.all_reduce(part, op=dist.ReduceOp.SUM, group=mesh.get_group(d))  # type: ignore[attr-defined]
        squared = squared.index_copy(0, index, part)
    return squared.sqrt()
