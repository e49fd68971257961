"""Which parameters the tracker measures and how they map onto layer ids (``named_parameters()`` order)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["TrackedParameters"]


class TrackedParameters:
    """The layers of one model, as the store records them, and the trainable parameters to measure.

    Every parameter tensor is a layer with an id in ``named_parameters()`` order. Frozen parameters
    (``requires_grad=False``) are registered with ``trainable=False`` and not measured until one gets a
    gradient (unfrozen during fine-tuning): :meth:`take_unfrozen` then moves it to the measured ones. A
    tensor reachable under two names (tied weights) is one layer, named by its first name; ``aliases``
    maps the other names to it, so it is measured, clipped and counted in the global norm once.
    """

    def __init__(self, model: nn.Module):
        self.rows: list[dict[str, Any]] = []
        self.aliases: dict[str, str] = {}
        self.params: list[nn.Parameter] = []  # measured, in layer order
        self.ids: list[int] = []  # layer id of each measured parameter
        self.frozen: list[nn.Parameter] = []  # not measured (yet), in layer order
        self.frozen_ids: list[int] = []
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in first:
                self.aliases[name] = first[id(p)]
                continue
            first[id(p)] = name
            layer_id = len(self.rows)
            self.rows.append(
                dict(
                    id=layer_id,
                    name=name,
                    shape=list(p.shape),
                    numel=p.numel(),
                    dtype=str(p.dtype).removeprefix("torch."),
                    trainable=p.requires_grad,
                )
            )
            if p.requires_grad:
                self.params.append(p)
                self.ids.append(layer_id)
            else:
                self.frozen.append(p)
                self.frozen_ids.append(layer_id)
        self.names = [self.rows[i]["name"] for i in self.ids]  # of the measured parameters

    def take_unfrozen(self) -> list[int]:
        """Move the frozen parameters that now have a gradient to the measured ones (layer order kept);
        returns their layer ids, whose rows now say ``trainable=True``."""
        moved = [i for i, p in zip(self.frozen_ids, self.frozen, strict=True) if p.grad is not None]
        if not moved:
            return []
        by_id = dict(zip(self.ids, self.params, strict=True))
        by_id |= {i: p for i, p in zip(self.frozen_ids, self.frozen, strict=True) if i in moved}
        self.ids = sorted(by_id)
        self.params = [by_id[i] for i in self.ids]
        kept = [(i, p) for i, p in zip(self.frozen_ids, self.frozen, strict=True) if i not in moved]
        self.frozen_ids, self.frozen = [i for i, _ in kept], [p for _, p in kept]
        self.names = [self.rows[i]["name"] for i in self.ids]
        for i in moved:
            self.rows[i]["trainable"] = True
        return moved

    def __len__(self) -> int:
        return len(self.rows)
