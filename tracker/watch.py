"""Noticing that a model changed after the tracker was made: a head added, a module swapped for another.

torch calls global registration hooks whenever a parameter or a submodule is assigned to any module. We keep
the ids of the model's modules and raise a flag when one of them gets a parameter or submodule it did not
hold; the tracker reads the flag (one attribute) at each step and looks at the model again only then.
Re-assigning the same object (weights tied again in ``forward``) raises nothing.

Some changes pass no hook: ``nn.ModuleList.insert``/``nn.Sequential.insert`` and ``del`` write the module
dicts directly. A daemon thread looks at the model's tensors every ``POLL_SECONDS`` (one walk of
``parameters()``, ~0.1 ms for 150 tensors, off the training thread) and raises the same flag when they are
not the ones the tracker knows, or when one changed device or dtype since its last look: a part of the
model cast alone (``model.head.half()``) keeps its tensor objects, and the tracker's per-step check looks at
the first parameter only.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

__all__ = ["POLL_SECONDS", "ModelWatch"]

POLL_SECONDS = 2.0


class ModelWatch:
    """``changed`` becomes True when a module of ``model`` is given a new parameter or submodule."""

    def __init__(self, model: nn.Module):
        self.changed = False
        self.rearm(model)
        ref = weakref.ref(self)  # the hooks are global: they must not keep the tracker alive
        self._stop = threading.Event()
        poller = threading.Thread(
            target=_poll,
            args=(ref, weakref.ref(model), self._stop),
            name="gradwatch-model-watch",
            daemon=True,
        )
        poller.start()

        def on_parameter(module: nn.Module, name: str, param: Any) -> None:
            watch = ref()
            if watch is not None and id(module) in watch._modules:
                if module._parameters.get(name) is not param:  # (called before it is stored)
                    watch.relayout_only, watch.changed = False, True

        def on_module(module: nn.Module, name: str, submodule: Any) -> None:
            watch = ref()
            if watch is not None and id(module) in watch._modules:
                if module._modules.get(name) is not submodule:
                    watch.relayout_only, watch.changed = False, True

        handles = [
            register_module_parameter_registration_hook(on_parameter),
            register_module_module_registration_hook(on_module),
        ]
        self._finalizer = weakref.finalize(self, _remove, handles)

    def rearm(self, model: nn.Module) -> None:
        """Watch the modules and tensors ``model`` has now; lower the flag."""
        self._modules = {id(m) for m in model.modules()}
        params = list(model.parameters())
        self._tensors = frozenset(map(id, params))
        self._layouts = _layouts(params)  # (the poll's last look)
        # Only devices or dtypes changed (the same tensors): no rescan, no pending rows to write out first.
        self.relayout_only = False
        self.changed = False

    def close(self) -> None:
        self._stop.set()
        self._finalizer()


def _poll(watch_ref: Any, model_ref: Any, stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        watch, model = watch_ref(), model_ref()
        if watch is None or model is None:
            return
        try:
            params = list(model.parameters())
        except RuntimeError:  # a module dict changed size under the walk: look again next time
            continue
        layouts = _layouts(params)
        if frozenset(map(id, params)) != watch._tensors:
            watch.relayout_only, watch.changed = False, True
        elif layouts != watch._layouts and not watch.changed:
            watch.relayout_only, watch.changed = True, True
        watch._layouts = layouts
        del watch, model, params


def _layouts(params: list) -> list[tuple[Any, Any]]:
    return [(p.device, p.dtype) for p in params]


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()
