"""The run's tracker (``tracker.GradTracker``): made from the config -- going on with a resumed checkpoint's
run, or starting one forked from it, which is said -- and finished when the run fails; its errors in the
CLI's words."""

from __future__ import annotations

import os
import sys

from torch import nn

from trainer.config import TrainConfig
from trainer.errors import TrainingError
from trainer.runtime import Runtime

__all__ = ["make_tracker", "say_if_forked", "finish_failed"]


def make_tracker(cfg: TrainConfig, model: nn.Module, rt: Runtime, resume: dict | None = None):
    """The run's GradTracker (its do-nothing stand-in with --no-track). ``resume``: a checkpoint's tracker
    state, whose run goes on (or is forked: --parent-run, $GRADWATCH_PARENT_RUN, $GRADWATCH_CLIP)."""
    from tracker import GradTracker

    kwargs = dict(
        run=cfg.run,
        clip=cfg.clip,
        every=cfg.every,
        config=cfg.to_dict(),
        enabled=not cfg.no_track,
        nonfinite=cfg.nonfinite,
        extra_stats=cfg.extra_stats,
        parent_id=cfg.parent_run,
        handle_sigterm=False,  # the loop's StopSignal handles SIGTERM: finish the step, then stop
    )
    if cfg.db is not None:
        kwargs["db"] = cfg.db
    if resume and not cfg.no_track:  # the state of a tracking run ({} from a --no-track one)
        _check_resumed_clip(cfg, resume)
        kwargs["resume"] = resume
    from tracker.store.errors import StoreError

    try:
        return GradTracker(model, **kwargs)
    except (StoreError, ValueError) as e:  # a bad database path or file, or an invalid GRADWATCH_CLIP
        raise TrainingError(str(e)) from None
    except OSError as e:
        raise TrainingError(f"cannot open the database: {e}") from None


def _check_resumed_clip(cfg: TrainConfig, resume: dict) -> None:
    """The tracker refuses to continue a run with a clip other than the one it recorded, in the words of its
    Python API (``parent_id=``). That happens to a CLI user whose run was recorded under ``$GRADWATCH_CLIP``
    and is resumed without it (the config's --clip matches, the recorded strategy does not): say it with the
    CLI's flags. A ``$GRADWATCH_CLIP`` that differs, a --parent-run or a relaunch make a new run instead."""
    from tracker import parse_clip

    if cfg.parent_run is not None or os.environ.get("GRADWATCH_PARENT_RUN", "").strip():
        return
    if os.environ.get("GRADWATCH_CLIP", "").strip():
        return
    recorded, clip = resume.get("clip"), parse_clip(cfg.clip).spec
    if recorded is not None and recorded != clip:
        raise TrainingError(
            f"--resume: the run in {cfg.checkpoint!r} was recorded clipping with {recorded!r} "
            f"(GRADWATCH_CLIP was set when it ran), and this process clips with {clip!r} "
            f"(--clip {cfg.clip}). "
            f"One run holds one strategy: resume it with GRADWATCH_CLIP={recorded} set again, or add "
            "--parent-run ID (and copy the checkpoint to another --checkpoint path) to start a new run from "
            "it that clips otherwise"
        )


def say_if_forked(cfg: TrainConfig, saved: dict, tracker, rt: Runtime) -> None:
    """A resume that records a new run (``--parent-run``, ``$GRADWATCH_PARENT_RUN``, or ``$GRADWATCH_CLIP``
    asking for other clipping than the checkpoint's run) saves its checkpoints over the one it started from:
    say so, even with --quiet, so that nobody loses the way back to the original run unawares."""
    recorded = (saved.get("gradwatch") or {}).get("run_id")
    run_id = getattr(tracker, "run_id", None)
    if not rt.is_main or recorded is None or run_id is None or run_id == recorded:
        return
    why = "--parent-run" if cfg.parent_run is not None else "$GRADWATCH_PARENT_RUN / $GRADWATCH_CLIP"
    print(
        f"note: this is a new run #{run_id} (parent #{recorded}) from the checkpoint's step, because of "
        f"{why}: the checkpoint's own run #{recorded} is left as it was. This run saves its checkpoints to "
        f"{cfg.checkpoint}, over the one it started from: copy that file first if run #{recorded} is to be "
        "continued later.",
        file=sys.stderr,
    )


def finish_failed(tracker, error: BaseException) -> None:
    """The run recorded as failed (stopped, for a KeyboardInterrupt), with the error's type and text."""
    status = "stopped" if isinstance(error, KeyboardInterrupt) else "failed"
    try:
        tracker.finish(status, error=f"{type(error).__name__}: {error}")
    except TypeError:  # a tracker whose finish() takes no error text
        tracker.finish(status)
