"""The arguments of ``GradTracker(...)``, checked before anything is opened: a bad value raises a
``ValueError`` (or ``ClipSpecError``) that names it and what is accepted, and touches no file. A disabled
tracker checks them the same way, so a script run with tracking off does not fail only once it is on."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from tracker.checkpoint import check_state
from tracker.clipping import ClipSpecError
from tracker.distributed import rank_and_world_size
from tracker.env import is_relaunch, resolve_clip
from tracker.extra import EXTRA_STATS
from tracker.layers import TrackedParameters

__all__ = [
    "NONFINITE_POLICIES",
    "as_number",
    "bind_strategy",
    "check_disabled",
    "check_options",
    "check_rank",
    "check_run_options",
    "checked_resume",
    "load_clip_state",
    "warn_if_disabled_in_a_group",
]

NONFINITE_POLICIES = ("record", "skip", "raise")


def check_options(every: Any, nonfinite: Any, extra_stats: Any, rank: Any) -> tuple[str, ...]:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite={nonfinite!r}; accepted: {', '.join(NONFINITE_POLICIES)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an int >= 0 (the process that writes), got {rank!r}")
    if extra_stats is False or extra_stats is None:
        return ()
    if extra_stats is True:
        return EXTRA_STATS
    if not isinstance(extra_stats, str | Iterable):
        raise ValueError(f"extra_stats={extra_stats!r}; accepted: True, False or a subset of {EXTRA_STATS}")
    names = (extra_stats,) if isinstance(extra_stats, str) else tuple(extra_stats)
    bad = [n for n in names if n not in EXTRA_STATS]
    if bad:
        raise ValueError(f"extra_stats: unknown {bad}; accepted: True, False or a subset of {EXTRA_STATS}")
    return tuple(n for n in EXTRA_STATS if n in names)


def check_disabled(cls: type, model: Any, kwargs: dict[str, Any]) -> None:
    """The arguments of a disabled tracker, checked as an enabled one checks them (no file is looked at), so
    that a script run with tracking off does not fail only once it is turned on."""
    inspect.signature(cls.__init__).bind(None, model, **kwargs)  # TypeError for an unknown keyword
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_options(
        kwargs.get("every", 1), kwargs.get("nonfinite", "record"), kwargs.get("extra_stats", False),
        kwargs.get("rank", 0),
    )  # fmt: skip
    choice = resolve_clip(kwargs.get("clip", "none"))  # (GRADWATCH_CLIP too, as an enabled tracker reads it)
    bind_strategy(choice, TrackedParameters(model))  # an AGC exclude naming no parameter
    if kwargs.get("resume") is not None:
        checked_resume(kwargs["resume"], choice, kwargs.get("parent_id"))
    check_rank(kwargs.get("rank", 0))
    check_run_options(kwargs.get("run"), kwargs.get("parent_id"), kwargs.get("config"))
    if choice.source == "env":
        # The dashboard relaunches a script with GRADWATCH_CLIP: a script that turned its tracker off (its own
        # flag or variable) would run unclipped and unrecorded, and the relaunch would look like a success.
        warnings.warn(
            f"GRADWATCH_CLIP={choice.strategy.spec} is set, but this GradTracker is disabled "
            "(enabled=False): it clips nothing and records nothing, so the override has no effect here. "
            "Enable the tracker for a relaunch to take effect.",
            stacklevel=3,
        )


def warn_if_disabled_in_a_group() -> None:
    # `enabled=(rank == 0)`, the usual "log on rank 0" pattern, leaves the other ranks unclipped (DDP
    # replicas drift apart) and, with sharded gradients, out of the norms' collectives (the others hang).
    rank, world = rank_and_world_size()
    if world > 1:
        warnings.warn(
            f"GradTracker(enabled=False) on rank {rank} of {world}: this rank measures and clips nothing. If "
            "other ranks track, their clipping is not this rank's (DDP replicas drift apart) and, with FSDP2 "
            "gradients, they wait forever for this rank to join the norms' reductions. To record from one "
            "rank only, pass enabled=True on every rank and rank=<the writing rank>: every rank then clips "
            "alike and only that one writes. (Fine if every rank is disabled.)",
            stacklevel=3,
        )


def bind_strategy(choice: Any, layers: TrackedParameters) -> None:
    """Tell the strategy the model's parameter names and the trainable ones' dtypes
    (``Strategy.bind_names``, ``bind_dtypes``), its error made to name the spec and where it came from."""
    strategy = choice.strategy
    # (a strategy of the user's own may lack these)
    bind_names, bind_dtypes = getattr(strategy, "bind_names", None), getattr(strategy, "bind_dtypes", None)
    try:
        if bind_names is not None:
            bind_names([row["name"] for row in layers.rows], layers.aliases)
        if bind_dtypes is not None:
            bind_dtypes({row["name"]: row["dtype"] for row in layers.rows if row["trainable"]})
    except ClipSpecError as e:
        origin = " (from GRADWATCH_CLIP)" if choice.source == "env" else ""
        raise ClipSpecError(f"clip {strategy.spec!r}{origin}: {e}") from None


def checked_resume(resume: Any, choice: Any, parent_id: Any) -> dict[str, Any]:
    """``check_state`` of a ``resume=`` state, with whether it starts a new run (a fork)."""
    if not isinstance(resume, Mapping):
        return check_state(resume, choice.strategy.spec)  # raises, saying what resume must be
    # Relaunched with other settings from outside (the dashboard's relaunch sets these variables): a
    # program that resumes from its checkpoint then starts a new run there instead of continuing it.
    # So does an explicit parent_id: "a new run from that checkpoint", e.g. to try other clipping.
    relaunch = (
        is_relaunch()
        or parent_id is not None
        or (choice.source == "env" and resume.get("clip") != choice.strategy.spec)
    )
    return check_state(resume, choice.strategy.spec, relaunch=relaunch)


def load_clip_state(strategy: Any, state: Any) -> None:
    # A state_dict() edited or saved by other code: a ValueError saying so, not a KeyError from inside.
    try:
        strategy.load_state_dict(state)
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"resume: its clip_state does not fit {strategy.spec!r} ({type(e).__name__}: {e}); pass what "
            "GradTracker.state_dict() returned for a run that clipped with it"
        ) from None


def check_rank(rank: int) -> None:
    _, world_size = rank_and_world_size()
    if rank >= world_size:  # no process would write: the run would silently record nothing
        raise ValueError(
            f"rank={rank} but there {'is' if world_size == 1 else 'are'} {world_size} process"
            f"{'' if world_size == 1 else 'es'} (ranks 0 to {world_size - 1}); "
            "pass the rank of the process that should write, usually 0"
        )


def check_run_options(run: Any, parent_id: Any, config: Any) -> None:
    """What the run record takes, checked before the database is opened (a bad value touches no file)."""
    if run is not None and (not isinstance(run, str) or (run and not run.strip())):
        raise ValueError(f"run={run!r}; accepted: a non-empty string (the run's name) or None")
    if parent_id is not None and (
        isinstance(parent_id, bool) or not isinstance(parent_id, int) or parent_id < 1
    ):
        raise ValueError(f"parent_id={parent_id!r}; accepted: the id of a recorded run (an int >= 1) or None")
    if config is not None and not isinstance(config, Mapping):
        hint = " (for argparse arguments: config=vars(args))" if hasattr(config, "__dict__") else ""
        raise ValueError(
            f"config must be a mapping of names to JSON-able values, got {type(config).__name__}{hint}"
        )
    if config is not None:
        from tracker.store.store import config_json

        config_json(config)  # (what it cannot store, said before any file is touched)


def as_number(loss: Any) -> float:
    try:
        return float(loss)
    except (TypeError, ValueError):
        raise ValueError(f"loss must be a tensor or a number, got {type(loss).__name__}: {loss!r}") from None
