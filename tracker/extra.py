"""Optional per-layer statistics beside the gradient norms: weight norm, update/weight ratio, max |g|.

Computed on logged steps only. ``update_ratio`` = ||W_after - W_before|| / ||W_before|| needs the weights
after the optimizer step, which happens after ``tracker.step()``: the weights are copied at the step, and the
row is held back until the next ``step()`` (or ``finish()``) completes it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tracker.distributed import Shards, like, local_tensor, sharded_norms
from tracker.norms import NormPlan, grad_norms, max_abs

__all__ = ["EXTRA_STATS", "ExtraStats"]

EXTRA_STATS = ("weight_norm", "update_ratio", "max_abs")


class ExtraStats:
    """The chosen statistics for one list of measured parameters; ``measure`` returns 1-D device tensors."""

    def __init__(self, names: tuple[str, ...], params: list[Tensor], plan: NormPlan, sharded: bool):
        self.names, self.params, self.plan, self.sharded = names, params, plan, sharded
        self.holds_rows = "update_ratio" in names
        self._copy: list[Tensor] | None = None  # one buffer per parameter, allocated once
        self._snapshot: tuple[list[Tensor], Tensor] | None = None
        self._held: tuple[dict[str, Any], list[Tensor], Tensor, Any] | None = None

    def replan(self, plan: NormPlan) -> None:
        """The parameters moved or changed dtype: a new plan, and weight copies made afresh."""
        self.plan, self._copy = plan, None

    @torch.no_grad()
    def measure(
        self, grads: list[Tensor], present: Any, everything: bool, shards: Shards | None = None
    ) -> dict[str, Tensor]:
        """``present``: positions of ``grads`` in ``params``; ``everything``: every parameter has a grad;
        ``shards``: the layout of ``grads`` when they are sharded (FSDP2), for the statistics of values."""
        out: dict[str, Tensor] = {}
        if "weight_norm" in self.names or self.holds_rows:
            params = self.params if everything else [self.params[i] for i in present]
            if self.sharded:
                weights = sharded_norms(params)
            else:
                weights = grad_norms(params, self.plan if everything else None)[0]
            if "weight_norm" in self.names:
                out["weight_norm"] = weights
            if self.holds_rows:
                self._snapshot = (self._copy_weights(params, present, everything), weights)
        if "max_abs" in self.names:
            largest = max_abs([local_tensor(g) for g in grads])  # before clipping, like the norms
            out["max_abs"] = shards.reduce(largest, "max") if shards is not None else largest
        return out

    def _copy_weights(self, params: list[Tensor], present: Any, everything: bool) -> list[Tensor]:
        # Reused buffers: a fresh copy per logged step would cost a large allocation (page faults, zeroing)
        # every time, several times the copy itself.
        if self._copy is None:
            self._copy = [torch.empty_like(local_tensor(p)) for p in self.params]
        buffers = self._copy if everything else [self._copy[i] for i in present]
        torch._foreach_copy_(buffers, [local_tensor(p).detach() for p in params])
        return buffers

    def hold(self, row: dict[str, Any], present: Any) -> None:
        """Keep the step's row until the optimizer has applied the update (see :meth:`complete`)."""
        assert self._snapshot is not None, "measure() must run on the step whose row is held"
        before, weights = self._snapshot
        self._snapshot = None
        self._held = (row, before, weights, present)

    def incomplete(self) -> dict[str, Any] | None:
        """The held row as it stands (``update_ratio`` NULL), still held for :meth:`complete`: what can be
        written where the ratio's norms cannot be taken (sharded, where they are a collective that one rank
        saving a checkpoint, or failing, cannot run alone). None if nothing is held."""
        return None if self._held is None else dict(self._held[0])

    @torch.no_grad()
    def complete(self) -> dict[str, Any] | None:
        """The held row with ``update_ratio`` filled in from the current weights; None if nothing is held."""
        if self._held is None:
            return None
        row, before, weights, present = self._held
        self._held = None
        after = [self.params[i] for i in present]
        now = [local_tensor(a).detach() for a in after]
        if all(b.dtype is a.dtype and b.device == a.device for a, b in zip(now, before, strict=True)):
            # In place: the buffer becomes w_before - w_after (its norm is the update's); no new memory.
            torch._foreach_sub_(before, now)
        else:  # the model was cast or moved since the copy (complex, another device): out of place
            before = [b.to(a.device) - a for a, b in zip(now, before, strict=True)]
        if self.sharded:
            moved = sharded_norms([like(b, a) for a, b in zip(after, before, strict=True)])
        else:
            moved = grad_norms(before)[0]
        ratio = (moved / weights).tolist()  # a weight of norm 0 gives inf/NaN: recorded as NULL
        row["extra"] = dict(row["extra"] or {}, update_ratio=[r if math.isfinite(r) else None for r in ratio])
        return row
