"""What ``GradTracker.state_dict()`` holds and how ``GradTracker(..., resume=state)`` checks it.

The state travels in the user's checkpoint (``torch.save``), so it is plain: ints, strings and the clip
strategy's own state (CPU tensors and ints). The store side of resuming is ``tracker/store/resume.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["STATE_KEYS", "STATE_VERSION", "check_state"]

STATE_VERSION = 1
STATE_KEYS = {"version", "run_id", "step", "clip", "clip_state"}
# Added later, so optional: the names of the tensors the model had at the checkpoint.
OPTIONAL_KEYS = {"layers"}


def check_state(state: Any, clip_spec: str, *, relaunch: bool = False) -> dict[str, Any]:
    """A ``state_dict()`` to resume from, checked before any file is opened (ValueError says what is off).

    Returns it with ``"fork"`` added: True when the program continues from the checkpoint as a *new* run
    (``relaunch``: the dashboard relaunched it, ``$GRADWATCH_PARENT_RUN`` is set; a ``parent_id`` was
    given; or ``$GRADWATCH_CLIP`` asks for another strategy than the run's), False when it continues the
    recorded run itself.
    """
    if not isinstance(state, Mapping) or not STATE_KEYS <= set(state) <= STATE_KEYS | OPTIONAL_KEYS:
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"resume must be what GradTracker.state_dict() returned (keys {sorted(STATE_KEYS)}), got {got}"
        )
    if state["version"] != STATE_VERSION:
        raise ValueError(f"resume: state version {state['version']!r}; this gradwatch reads {STATE_VERSION}")
    step, run_id = state["step"], state["run_id"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"resume: step {step!r} is not an int >= 0")
    if run_id is not None and (isinstance(run_id, bool) or not isinstance(run_id, int)):
        raise ValueError(f"resume: run_id {run_id!r} is not an int")
    layers = state.get("layers", [])
    if not isinstance(layers, list | tuple) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"resume: layers {layers!r} is not a list of parameter names")
    same_clip = state["clip"] == clip_spec
    if not same_clip and not relaunch:
        raise ValueError(
            f"resume: the run was recorded with clip={state['clip']!r} but this tracker clips with "
            f"{clip_spec!r}. One run holds one strategy: resume with the same clip, or start a new run "
            "(parent_id= links it to this one) to change it."
        )
    return {**state, "fork": relaunch}
