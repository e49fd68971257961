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

    def __init__(self, model: nn.Module, recorded: list[dict[str, Any]] | None = None):
        """``recorded``: the layer rows of a run this model continues (``Store.layer_rows``). Its tensors
        then take the recorded ids by name, new names ids after them, and recorded layers the model no longer
        has stay as rows (``absent``): a run whose model changed mid-run (a head added, LoRA injected)
        numbers its layers otherwise than ``named_parameters()`` does."""
        self.rows: list[dict[str, Any]] = []
        if recorded and [r["id"] for r in recorded] == list(range(len(recorded))):
            self.rows = [dict(r) for r in recorded]
        self.aliases: dict[str, str] = {}
        self.params: list[nn.Parameter] = []  # measured, in layer order
        self.ids: list[int] = []  # layer id of each measured parameter
        self.frozen: list[nn.Parameter] = []  # not measured (yet), in layer order
        self.frozen_ids: list[int] = []
        self.rescan(model)  # every tensor is new to an empty list: named by the recorded rows, or appended
        present = {*self.ids, *self.frozen_ids}
        self.absent = [i for i in range(len(self.rows)) if i not in present]  # recorded, not in this model

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

    def rescan(self, model: nn.Module) -> list[int]:
        """Take in what was registered on the model since (a head added, a module swapped for another);
        returns the ids of the layers whose rows are new or changed.

        A new name is a new layer (ids go on from the last). A name whose tensor was replaced keeps its layer
        id, with the new tensor's row. Either is measured when it requires grad, else frozen until it gets a
        gradient. A tensor no longer in the model (a module removed, or now tied to another) is no longer
        measured; its row stays, as its recorded norms do.
        """
        ids_by_name = {row["name"]: row["id"] for row in self.rows}
        now = dict(zip(self.ids, self.params, strict=True)) | dict(
            zip(self.frozen_ids, self.frozen, strict=True)
        )
        measured = set(self.ids)
        changed: list[int] = []
        seen: dict[int, nn.Parameter] = {}
        first: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in first:
                aliases[name] = first[id(p)]
                continue
            first[id(p)] = name
            layer_id = ids_by_name.get(name)
            if layer_id is None:
                layer_id = len(self.rows)
                self.rows.append(_row(layer_id, name, p))
                changed.append(layer_id)
            elif now.get(layer_id) is not p:
                self.rows[layer_id] = _row(layer_id, name, p)
                changed.append(layer_id)
            seen[layer_id] = p
        self.aliases = aliases
        for layer_id in (*self.ids, *self.frozen_ids):  # left the model: no longer measured, and said so
            if layer_id not in seen:
                self.rows[layer_id]["trainable"] = False
                changed.append(layer_id)
        self.ids, self.params, self.frozen_ids, self.frozen = [], [], [], []
        new = set(changed)  # (a set: on a model's first scan every tensor is new)
        for layer_id in sorted(seen):
            p = seen[layer_id]
            if (layer_id in measured and layer_id not in new) or (layer_id in new and p.requires_grad):
                self.ids.append(layer_id)
                self.params.append(p)
            else:
                self.frozen_ids.append(layer_id)
                self.frozen.append(p)
        self.names = [self.rows[i]["name"] for i in self.ids]
        return changed

    def retyped(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """The rows of ``params`` (measured or frozen) whose dtype changed (a model cast after the tracker
        was made), updated."""
        everything = zip((*self.ids, *self.frozen_ids), (*self.params, *self.frozen), strict=True)
        ids = {id(p): i for i, p in everything}
        changed = []
        for p in params:
            row = self.rows[ids[id(p)]]
            dtype = _dtype_name(p)
            if row["dtype"] != dtype:
                row["dtype"] = dtype
                changed.append(row)
        return changed

    def __len__(self) -> int:
        return len(self.rows)


def _row(layer_id: int, name: str, p: nn.Parameter) -> dict[str, Any]:
    return dict(
        id=layer_id,
        name=name,
        shape=list(p.shape),
        numel=p.numel(),
        dtype=_dtype_name(p),
        trainable=p.requires_grad,
    )


def _dtype_name(p: nn.Parameter) -> str:
    return str(p.dtype).removeprefix("torch.")
