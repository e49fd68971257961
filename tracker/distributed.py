"""Process-group facts (rank, world size) and global norms of sharded (FSDP2 / DTensor) gradients.

DDP needs nothing special: after backward every rank holds the same all-reduced gradients, so local norms are
already global. FSDP2 gradients are DTensors sharded across ranks; their norms must be reduced to what
``grad.full_tensor()`` would give, never the local shard's. We do that with one all-reduce of the squared
per-tensor norms per (mesh, sharded-dims) group instead of one collective per tensor.

The strategies that look at gradient values themselves (``value``, ``agc``) and gradient noise get a
:class:`Shards` with the local shards: it reduces their per-tensor and per-unit values the same way, so that
what they record and decide is what one process holding the full tensors would.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tracker.norms import NormPlan

__all__ = [
    "Shards",
    "accepts_shards",
    "is_dtensor",
    "like",
    "local_tensor",
    "rank_and_world_size",
    "sharded_norms",
]

# torch.distributed.tensor (DTensor) is not imported here: it costs 0.5-1 s (it pulls in sympy), and a tensor
# can only be a DTensor once the program has imported it. Until then nothing is one.
_DTENSOR_MODULE = "torch.distributed.tensor"


def _dtensor() -> Any:
    """The DTensor module when the program has imported it (so DTensors may exist), else None."""
    return sys.modules.get(_DTENSOR_MODULE)


def rank_and_world_size() -> tuple[int, int]:
    """This process's global rank and the world size; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_dtensor(t: Tensor) -> bool:
    module = _dtensor()
    return module is not None and isinstance(t, module.DTensor)


def local_tensor(t: Tensor) -> Tensor:
    """The tensor this rank holds: the local shard of a DTensor (sharing storage), else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def like(local: Tensor, reference: Tensor) -> Tensor:
    """``local`` as a DTensor laid out like ``reference`` when that is one (so norms reduce globally)."""
    if not is_dtensor(reference):
        return local
    return _dtensor().DTensor.from_local(local, reference.device_mesh, reference.placements, run_check=False)


def _without_partial(t: Tensor) -> Tensor:
    # A Partial tensor's value is the SUM of the locals, so local norms say nothing about it: reduce it first.
    # Gradients are rarely left Partial (FSDP2 reduce-scatters them), so the extra collective is acceptable.
    from torch.distributed.tensor import Partial, Replicate  # (a DTensor exists: imported already)

    if any(isinstance(p, Partial) for p in t.placements):
        placements = [Replicate() if isinstance(p, Partial) else p for p in t.placements]
        return t.redistribute(t.device_mesh, placements)
    return t


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass(frozen=True)
class _Split:
    """One mesh dim a tensor is sharded on: the mesh, the mesh dim and the tensor dim it splits."""

    mesh: object
    mesh_dim: int
    tensor_dim: int


def _every_split(i: int, split: _Split) -> bool:
    return True


@dataclass(frozen=True)
class _InsideUnits:
    """Chooses the splits on a dim inside tensor i's units (hashable: it keys the cached groups)."""

    unit_dims: tuple[tuple[int, ...], ...]

    def __call__(self, i: int, split: _Split) -> bool:
        return split.tensor_dim in self.unit_dims[i]


@dataclass(frozen=True)
class Shards:
    """How a list of gradients is split across ranks, for the clip strategies that get the local shards.

    Built once from the DTensor gradients (their placements do not change between steps); position i
    describes the i-th tensor, plain tensors and replicated DTensors are not split. Every method that
    reduces is a collective: all ranks call it with tensors laid out alike, in the same order.
    ``Partial`` placements are not split dims: a strategy sees their local summands (FSDP2 and DDP never
    leave gradients partial; :func:`sharded_norms` reduces them for the norms).
    """

    shapes: tuple[tuple[int, ...], ...]  # global shapes
    splits: tuple[tuple[_Split, ...], ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, tensors: Sequence[Tensor]) -> Shards | None:
        """The layout of ``tensors`` (DTensors or plain), or None when none of them is sharded."""
        splits = tuple(
            tuple(
                _Split(t.device_mesh, m, p.dim)
                for m, p in enumerate(t.placements)
                if isinstance(p, _dtensor().Shard) and t.device_mesh.size(m) > 1
            )
            if is_dtensor(t)
            else ()
            for t in tensors
        )
        if not any(splits):
            return None
        return cls(tuple(tuple(t.shape) for t in tensors), splits)

    def __len__(self) -> int:
        return len(self.shapes)

    def select(self, positions: Sequence[int]) -> Shards | None:
        """The layout of the tensors at ``positions`` (say, those that have a gradient this step)."""
        splits = tuple(self.splits[i] for i in positions)
        return Shards(tuple(self.shapes[i] for i in positions), splits) if any(splits) else None

    def _groups(self, dims_of, device: torch.device) -> list[tuple[Any, tuple[int, ...], list[int], Tensor]]:
        # Tensors that reduce over the same mesh dims share one collective. The positions also as a tensor,
        # made once per layout and device: building it every step would be a host-to-device copy each time.
        key = (dims_of, device)
        cached = self._cache.get(key)
        if cached is None:
            groups: dict[tuple[object, tuple[int, ...]], list[int]] = {}
            for i, splits in enumerate(self.splits):
                chosen = tuple(s.mesh_dim for s in splits if dims_of(i, s))
                if chosen:
                    groups.setdefault((splits[0].mesh, chosen), []).append(i)
            cached = self._cache[key] = [
                (mesh, dims, idx, torch.tensor(idx, device=device)) for (mesh, dims), idx in groups.items()
            ]
        return cached

    def reduce(self, values: Tensor, op: str = "sum") -> Tensor:
        """Per-tensor values (1-D, one per tensor, each computed on the local shard) combined over the
        shards of each tensor with ``op`` ("sum", "max" or "min"); unsplit tensors keep theirs."""
        values = values.clone()
        for mesh, dims, _, index in self._groups(_every_split, values.device):
            part = values.index_select(0, index)
            for d in dims:
                dist.all_reduce(part, op=_OPS[op], group=mesh.get_group(d))  # type: ignore[attr-defined]
            values.index_copy_(0, index, part)
        return values

    def sum_units(self, squares: Sequence[Tensor], unit_dims: Sequence[tuple[int, ...]]) -> list[Tensor]:
        """Per-unit sums of squares, each computed on the local shard over ``unit_dims[i]`` (keepdim), summed
        over the shards that split a unit: those on a dim inside the unit. One collective per group."""
        out = list(squares)
        if not out:
            return out
        inside = _InsideUnits(tuple(unit_dims))
        for mesh, dims, idx, _ in self._groups(inside, out[0].device):
            flat = torch.cat([out[i].reshape(-1) for i in idx])
            for d in dims:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=mesh.get_group(d))  # type: ignore[attr-defined]
            for i, part in zip(idx, flat.split([out[i].numel() for i in idx]), strict=True):
                out[i] = part.reshape(out[i].shape)
        return out

    def shard_index(self, i: int) -> int:
        """This rank's position among the shards of tensor ``i`` (0 for an unsplit tensor): tensors split
        alike get the same index on a rank, different ones on ranks that hold different parts."""
        index = 0
        for s in self.splits[i]:
            mesh = s.mesh
            index = index * mesh.size(s.mesh_dim) + mesh.get_local_rank(s.mesh_dim)  # type: ignore[attr-defined]
        return index


def sharded_norms(grads: Sequence[Tensor], shards: Shards | None = None) -> Tensor:
    """Per-tensor global L2 norms (``full_tensor`` semantics) of gradients that may be DTensors.

    Returns a 1-D float32 tensor on the first local tensor's device. Collective: every rank of the meshes
    involved must call it with the same list, in the same order (as they do in a data-parallel step).
    ``shards``: ``Shards.of(grads)`` kept from an earlier step (the layout does not change), to reuse it.
    """
    grads = [_without_partial(g) if is_dtensor(g) else g for g in grads]
    local = [local_tensor(g) for g in grads]
    squared = NormPlan.for_tensors(local).apply(local).square()
    shards = Shards.of(grads) if shards is None else shards
    return (shards.reduce(squared) if shards is not None else squared).sqrt()


def accepts_shards(strategy: Any) -> bool:
    """Does ``strategy.clip_`` accept ``shards=`` (the built-in ones do; a user's may not)?"""
    try:
        params = inspect.signature(strategy.clip_).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C callable): do not pass it
        return False
    return any(p.name == "shards" or p.kind is p.VAR_KEYWORD for p in params)
