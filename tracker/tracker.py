"""GradTracker: measure -> non-finite policy -> clip -> record, once per optimizer step.

The hot path keeps everything on the device. On a logged step (every ``every``-th) the step's scalars, the
per-layer norms and whatever was buffered since the last logged step are concatenated into ONE tensor and
copied to the host once; the resulting Python lists go to the store's background writer, which never blocks.
On the other steps nothing is copied to the host at all.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import operator
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tracker import forks
from tracker.arguments import (
    NONFINITE_POLICIES,
    as_number,
    bind_strategy,
    check_disabled,
    check_options,
    check_rank,
    check_run_options,
    checked_resume,
    load_clip_state,
    warn_if_disabled_in_a_group,
)
from tracker.attach import Attachment, AttachmentHandle
from tracker.checkpoint import STATE_VERSION
from tracker.clipping.base import some_names
from tracker.command import environment, started_in, typed_argv, under_torchrun
from tracker.distributed import (
    Shards,
    accepts_shards,
    is_dtensor,
    local_tensor,
    rank_and_world_size,
    sharded_norms,
)
from tracker.dropped import (
    ExitHook,
    Remains,
    close_run,
    complete_update,
    drain_pending,
    wait_closed,
    when_dropped,
)
from tracker.env import resolve_clip, resolve_db, resolve_lineage
from tracker.extra import EXTRA_STATS, ExtraStats
from tracker.layers import TrackedParameters
from tracker.lifetime import SigtermAsExit, exit_status, last_shown, stop_reason
from tracker.norms import NormPlan, grad_norms
from tracker.null import FINISHED, NullTracker
from tracker.outbox import Outbox
from tracker.rows import COEF, THRESHOLD, TOTAL, RowBuilder, pending_parts, short_threshold, was_clipped
from tracker.stats import StepStats
from tracker.watch import ModelWatch

__all__ = ["CONFIG_KEY", "EXTRA_STATS", "NONFINITE_POLICIES", "GradTracker", "NonFiniteGradientError"]

CONFIG_KEY = "_gradwatch"  # the tracker's own notes inside runs.config
# How long finish() waits for another process's lock on the file before giving up (what was not written is
# then named in a DatabaseLocked): long past any write, short enough that a forgotten sqlite3 shell holding a
# transaction cannot keep a finished program from exiting.
FINISH_LOCK_WAIT_S = 120.0


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN/Inf under ``nonfinite="raise"``; ``.step`` and ``.layer`` say where first."""

    def __init__(self, step: int, layers: list[str]):
        self.step, self.layer, self.layers = step, layers[0], layers
        more = f" (and {len(layers) - 1} more layers)" if len(layers) > 1 else ""
        super().__init__(f"non-finite gradient at step {step} in layer {layers[0]!r}{more}")


# Subsets of parameters with a gradient seen recently, each with its plan. A model whose subset changes
# every step (mixture of experts, layer drop) would otherwise grow the cache without bound.
_SUBSETS_KEPT = 64


def _remember(cache: dict, key: tuple[int, ...], value: Any) -> Any:
    if len(cache) >= _SUBSETS_KEPT:
        del cache[next(iter(cache))]  # the oldest
    cache[key] = value
    return value


_GRAD = operator.attrgetter("grad")
# Gradient dtypes whose norms come out of the fused kernel as float32 (low precision: accumulated in it).
_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_IS_NONE = functools.partial(operator.is_, None)


def _resume_when_stale(
    store: Any, run_id: int, step: int, layers: list, config: dict | None, settings: dict
) -> None:
    """``store.resume_run``, waiting while the run's old process on another host may just have died: a job
    restarted on a new node within seconds of losing the old one finds its heartbeat still fresh. Only the
    heartbeat can tell from here, and it goes stale within ``stale_after`` if that process is gone."""
    from tracker.store import RunStillRunning

    deadline = time.monotonic() + store.stale_after + 5.0
    while True:
        try:
            return store.resume_run(
                run_id, from_step=step, layers=layers, config=config, keep=(CONFIG_KEY,), settings=settings
            )
        except RunStillRunning as e:
            if not e.elsewhere or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


_ATTACHED = "measured this model and was still attached to its optimizer"


def _close_replaced(old: GradTracker, why: str = _ATTACHED) -> None:
    """A new tracker on a model that an open, attached one measures, or continuing the run an open one
    records: a notebook cell run again, most often. Both would clip every step (twice), and the old run
    would read "running" until the kernel exits (or refuse to be resumed, as running). The old one is closed
    as the process's exit would close it (a KeyboardInterrupt that stopped its loop: stopped), and said
    so."""
    status, error = exit_status(seen=old._remains.exc_seen)
    old.finish(status, error=error)
    run = f"run #{old.run_id}" if old.run_id is not None else "a tracker (of a rank that does not write)"
    warnings.warn(
        f"GradTracker: {run} {why} (a notebook cell run again?): it is closed now as {status!r} and "
        "detached, so that only the new GradTracker measures and clips. Close a run with tracker.finish(), "
        "or use `with GradTracker(...) as tracker:`.",
        stacklevel=3,
    )


def _default_run_name() -> str:
    script = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    if not script or script.startswith("-"):  # python -c "...", python - < file: no script to name it by
        script = "python"
    return f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"


class GradTracker:
    """Measures, clips and records the gradients of ``model``. Call :meth:`step` right before
    ``optimizer.step()`` (after ``scaler.unscale_`` with AMP), or let :meth:`attach` do it (docs/tracker.md).

    ``GradTracker(model, enabled=False)`` returns a :class:`NullTracker` with the same methods, doing nothing.
    """

    def __new__(cls, model: nn.Module | None = None, *, enabled: bool = True, **kwargs: Any):
        if not enabled:
            check_disabled(cls, model, kwargs)
            warn_if_disabled_in_a_group()
            for old in forks.attached_on(model):  # (a cell run again, tracking off)
                _close_replaced(old)
            return NullTracker()
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        *,
        db: str | os.PathLike[str] | None = None,
        run: str | None = None,
        clip: Any = "none",
        every: int = 1,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
        nonfinite: str = "record",
        rank: int = 0,
        extra_stats: bool | str | Iterable[str] = False,
        parent_id: int | None = None,
        handle_sigterm: bool = True,
        resume: Mapping[str, Any] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.extra_stats = check_options(every, nonfinite, extra_stats, rank)
        self.every, self.nonfinite, self.rank = every, nonfinite, rank
        choice = resolve_clip(clip)  # GRADWATCH_CLIP, when set, wins over the argument
        self.clip = choice.strategy
        resumed = None if resume is None else checked_resume(resume, choice, parent_id)
        # "none" without noise changes nothing: skip the call and its few tensor allocations per step.
        self._clipping = choice.strategy.name != "none" or getattr(choice.strategy, "noise", None) is not None
        self._remains = Remains()  # what closes the run if this tracker is dropped unfinished (dropped.py)
        self.layers = TrackedParameters(model)
        self._choice = choice
        bind_strategy(choice, self.layers)
        self._model = model
        self._watch = ModelWatch(model)  # a head added or a module swapped later is taken in at the next step
        self._warned_no_grads = False
        self._clip_takes_shards = accepts_shards(self.clip)
        self._measure_params()
        self._step = 0
        if resumed is not None:
            self._step = resumed["step"]
            if resumed["clip"] == self.clip.spec:  # (a fork to another strategy starts that one afresh)
                load_clip_state(self.clip, resumed["clip_state"])  # AutoClip's history, ZClip's statistics
        # Unlogged steps waiting for the next host copy: (step, scalars or None, norms, positions, scaled).
        self._pending: list[tuple[int, Tensor | None, Tensor, Any, bool]] = self._remains.pending
        self._hooks: list[Attachment] = []
        # Per attached optimizer, the gradients it held when last measured (Attachment.grad_signature)
        self._measured_for: dict[Attachment, Any] = {}
        self._remains.exc_seen = last_shown()  # (see _at_exit)
        self._finished = False
        check_rank(rank)
        process_rank, world_size = rank_and_world_size()
        self.is_writer = process_rank == rank
        self.db_path = resolve_db(db)
        # The dashboard relaunches other people's scripts by environment: name and lineage come from it too.
        run, parent_id, position = resolve_lineage(run, parent_id)
        check_run_options(run, parent_id, config)
        # An open tracker of this process attached to an optimizer of this model (a notebook cell run again)
        # would go on clipping every step: closed once this one exists, or before, when this one continues
        # its run. Trackers not attached are left alone (several may measure one model: a benchmark's).
        replaced = forks.attached_on(model)
        if resumed is not None and not resumed["fork"]:
            # The run to continue is still open in this process (a notebook cell resuming it, run again
            # with a new model): closed first, as the process's exit would, or it would refuse as running.
            for old in forks.recording(self.db_path, resumed["run_id"]):
                if old in replaced:
                    replaced.remove(old)
                _close_replaced(old, "records the run this one continues")
            wait_closed(self.db_path, resumed["run_id"], FINISH_LOCK_WAIT_S)  # (dropped a moment ago)
        self.run_id: int | None = None
        self._store = self._writer = None
        self._sigterm = None
        self._pid, self._forked_from = os.getpid(), None
        if self.is_writer:  # other ranks hold the same (all-reduced) gradients: they clip, never write
            forks.check_not_inherited(self.db_path)
            self._open_run(run, config, choice, parent_id, world_size, resumed, position)
            self._remains.run = (os.path.realpath(self.db_path), self.run_id)
        try:
            for old in replaced:
                _close_replaced(old)
            self._sigterm = self._remains.sigterm = SigtermAsExit() if handle_sigterm else None
            # Held weakly: a tracker dropped unfinished is closed when collected, not kept alive until exit.
            self._exit_hook = ExitHook(self)
            atexit.register(self._exit_hook)
            self._dropped = when_dropped(self, self._remains, FINISH_LOCK_WAIT_S, self._exit_hook)
            forks.register(self)
        except BaseException as e:  # (a warning turned into an error, say): the run just opened is closed
            self._finished = True
            self._watch.close()
            with contextlib.suppress(Exception):
                close_run(self._remains, "failed", f"{type(e).__name__}: {e}", FINISH_LOCK_WAIT_S, False)
            raise

    def _open_run(self, run, config, choice, parent_id, world_size, resumed, position=1) -> None:
        from tracker.store import Store

        notes: dict[str, Any] = {}
        if resumed is not None and resumed["fork"]:
            # A new run from the checkpoint: steps numbered on from it, linked to the run it started from.
            parent_id = parent_id if parent_id is not None else resumed["run_id"]
            notes["resumed_from"] = {"run_id": resumed["run_id"], "step": resumed["step"]}
        elif resumed is not None:
            if resumed["run_id"] is None:
                raise ValueError(
                    "resume: this state has no run id: it was saved by a process that does not write "
                    "(another rank). Save tracker.state_dict() on the rank that writes (rank=...)."
                )
            store = Store.open(self.db_path, create=False)
            try:
                run_id, recorded = resumed["run_id"], store.layer_rows(resumed["run_id"])
                if "layers" in resumed:  # the checkpoint says which tensors its model had
                    required = set(resumed["layers"])
                else:  # (a checkpoint from before it did: those with a norm recorded before it)
                    measured = store.layers_measured_before(run_id, resumed["step"])
                    required = {r["name"] for r in recorded if r["id"] in measured and r["trainable"]}
                self._number_as_recorded(run_id, recorded, required)
                # The continuing process's config replaces the recorded one (its --epochs may have grown):
                # what a relaunch replays. The tracker's own notes (a fork's origin, say) are kept.
                cfg = None if config is None else self._config_with_notes(config, choice, {})
                settings = dict(every=self.every, nonfinite=self.nonfinite, world_size=world_size)
                _resume_when_stale(store, resumed["run_id"], resumed["step"], self.layers.rows, cfg, settings)
                # Which layers are trainable is this process's model's, not the abandoned attempt's.
                store.add_layers(resumed["run_id"], self.layers.rows)
                writer = store.writer(resumed["run_id"])
            except BaseException:
                store.close()
                raise
            self.run_id, self._store = resumed["run_id"], store
            self._writer = self._remains.writer = Outbox(writer)
            self._remains.store = store
            return

        # What a relaunch replays, recorded at creation (a resume keeps it): argv and the command as typed
        # when argv lost part of it (-m, -c, -u), the folder it was started in, and torchrun if it ran it.
        typed = typed_argv()
        if typed is not None:
            notes["orig_argv"] = typed
        if under_torchrun():
            notes["torchrun"] = True
        if position > 1:  # the k-th tracker of its process (a GAN's): what its relaunch matches runs by
            notes["position"] = position
        cfg = self._config_with_notes(config, choice, notes)
        if parent_id is not None and not os.path.exists(self.db_path):  # no file holds it: create none
            from tracker.store import RunNotFound

            raise RunNotFound(f"parent_id={parent_id}: no such run, {self.db_path} does not exist")
        store = Store.open(self.db_path, create=True)
        try:
            self.run_id = store.create_run(
                name=run or _default_run_name(),
                config=cfg,
                clip=self.clip.spec,
                clip_source=choice.source,
                parent_id=parent_id,
                argv=list(sys.argv),
                cwd=started_in(),
                env=environment(),
                python=sys.executable,
                pid=os.getpid(),
                host=socket.gethostname(),
                every=self.every,
                nonfinite=self.nonfinite,
                world_size=world_size,
            )
            store.add_layers(self.run_id, self.layers.rows)
            writer = store.writer(self.run_id)  # (its first reads may find the file damaged)
        except BaseException:
            store.close()  # the run cannot be recorded: the caller gets the error, no connection stays open
            raise
        self._store = self._remains.store = store
        self._writer = self._remains.writer = Outbox(writer)

    def _number_as_recorded(self, run_id: int, recorded: list[dict[str, Any]], required: set[str]) -> None:
        """Give this model's tensors the layer ids the run recorded them under, by name: they differ from
        ``named_parameters()`` order when the model changed mid-run (a head added, LoRA injected).

        ``required``: the names of the tensors the model had at the checkpoint; each must be in this one. A
        layer that had left it need not be, nor one that joined after the checkpoint (a resumed run
        appending it again takes that id). The store then checks names and shapes id by id."""
        from tracker.store import CannotResume

        if not recorded:
            return  # no such run, or no layers: resume_run says which
        layers = TrackedParameters(self._model, recorded=recorded)
        missing = [layers.rows[i]["name"] for i in layers.absent if layers.rows[i]["name"] in required]
        if missing:
            said = [f"{n} (now tied to {layers.aliases[n]})" if n in layers.aliases else n for n in missing]
            raise CannotResume(
                f"run {run_id} was recorded for another model: it measured {some_names(said, 5)} until the "
                f"checkpoint, and this model does not have {'it' if len(missing) == 1 else 'them'}. Resume "
                "it with the model it recorded, or start a new run."
            )
        for i in layers.absent:  # not in this model: not measured, and said so
            layers.rows[i]["trainable"] = False
        self.layers = layers
        self._measure_params()

    def _config_with_notes(self, config, choice, notes: dict[str, Any]) -> dict[str, Any]:
        cfg = dict(config or {})
        # The runs table has no columns for these; they go under one reserved config key, only when present.
        if choice.source == "env":
            notes["requested_clip"] = choice.requested  # what the program asked for before GRADWATCH_CLIP
        if self.layers.aliases:
            notes["tied"] = self.layers.aliases  # alias name -> the layer name it is recorded under
        if notes:
            cfg[CONFIG_KEY] = notes
        return cfg

    # ------------------------------------------------------------------ public verbs
    def step(self, loss: Tensor | float | None = None, *, scaler: Any = None) -> StepStats:
        """Measure the current gradients, apply the non-finite policy, clip them in place, and record.

        Call it after backward (and after ``scaler.unscale_``), right before ``optimizer.step()``.
        ``loss`` (tensor or number) is recorded on logged steps, in the same host copy as the norms.
        ``scaler``: the ``torch.amp.GradScaler`` that will run this step. It skips the optimizer step when
        the unscaled gradients hold inf/NaN, so such a step is then recorded as skipped (logged or not).
        """
        if self._hooks:
            raise RuntimeError(
                "this GradTracker is attached to an optimizer (attach()), which already runs step() right "
                "before every optimizer.step(): calling it too would measure and clip each step twice, and "
                "record the clipped gradients as a step of their own. Call one or the other (handle.remove() "
                "or tracker.detach() to step by hand)."
            )
        return self._step_now(loss, scaler)

    def _step_now(self, loss: Tensor | float | None = None, scaler: Any = None) -> StepStats:
        # Grad mode off, as torch.no_grad() would, without its Python context manager: ~30 µs a step here.
        if not torch.is_grad_enabled():
            return self._measure_clip_record(loss, scaler)
        torch._C._set_grad_enabled(False)
        try:
            return self._measure_clip_record(loss, scaler)
        finally:
            torch._C._set_grad_enabled(True)

    def _measure_clip_record(self, loss: Tensor | float | None, scaler: Any) -> StepStats:
        if self._finished:
            raise RuntimeError(self._ended(FINISHED))
        self._complete_update()
        step = self._step
        self._step += 1
        # (an interactive session's last traceback, shown before this step: not what ends the run; ~50 ns)
        self._remains.exc_seen = last_shown() if getattr(sys, "last_value", None) is not None else None
        grads, present = self._grads()
        norms, total = self._measure(grads, present)
        scaled = scaler is not None and scaler.is_enabled()

        logged = step % self.every == 0
        # Extra statistics describe the gradients as measured (before clipping), like the norms.
        extra = self._extra_stats(grads, present) if logged else {}
        skipped = False
        if self.nonfinite != "record" and not bool(torch.isfinite(norms).all()):  # one sync, documented
            if scaled:
                # A GradScaler's routine overflow: it skips this optimizer step and lowers its scale. As under
                # attach(scaler=), the step is recorded as skipped, unclipped; the policy is the scaler's.
                skipped = True
            elif self.nonfinite == "raise":
                if not logged:  # the offending step is recorded whole, as a logged one
                    extra = self._extra_stats(grads, present)
                self._record(step, total, None, norms, present, loss, skipped=False, extra=extra)
                self.flush()
                bad = [
                    self.layers.names[present[i]]
                    for i, x in enumerate(norms.tolist())
                    if not math.isfinite(x)
                ]
                raise NonFiniteGradientError(step, bad)
            else:
                skipped = True
                self._drop_grads()

        result = None
        if self._clipping and not skipped:
            if present is self._all and not self._sharded:  # the usual case: no per-step lists to build
                local, params, names = grads, self._params, self.layers.names
            else:
                local = [local_tensor(g) for g in grads]
                params = [local_tensor(self._params[i]) for i in present]
                names = [self.layers.names[i] for i in present]
            kwargs = {}
            if self._sharded and self._clip_takes_shards:
                kwargs["shards"] = self._shards_of(present)
            result = self.clip.clip_(local, norms, total, params=params, step=step, names=names, **kwargs)
        scalars = self._scalars(total, result) if result is not None else None

        if skipped and not logged:  # skipped steps are always logged
            extra = self._extra_stats(grads, present)
        if not logged and not skipped:  # not logged: buffer on the device, no host sync
            self._pending.append((step, scalars, norms, present, scaled))
            if result is None:
                return StepStats(step, total, False, 1.0, math.nan, skipped=False, logged=False)
            return StepStats(step, total, result.clipped, result.coef, result.threshold, False, logged=False)
        total_v, clipped, coef, threshold = self._record(
            step, total, scalars, norms, present, loss, skipped=skipped, extra=extra, scaled=scaled
        )
        return StepStats(step, total_v, clipped, coef, threshold, skipped=skipped)

    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint to continue this run from it: ``GradTracker(..., resume=state)``.

        Call it where the model and optimizer states are saved, after ``optimizer.step()``. It holds the run
        id, the next step, the clip spec, the clip strategy's state (AutoClip's history, ZClip's
        statistics: CPU tensors and ints, ``torch.save``-able) and the names of the model's tensors (which a
        model resuming from it must have). It also writes out what is buffered and
        waits for it, so that everything recorded before the checkpoint is in the file when it returns.
        """
        if not self._finished:
            self._complete_update(collective=False)
            # The checkpoint saves the model as it is now: a change since the last step (a head appended, a
            # module deleted) is recorded first, so that this model can resume from it.
            if self._watch.changed or self._check_not_replaced(self._model):
                self._take_changes()
            self.flush()
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "step": self._step,
            "clip": self.clip.spec,
            "clip_state": self.clip.state_dict(),
            # The model's tensors now, by layer name: what the model resuming from this checkpoint must have.
            "layers": [
                self.layers.rows[i]["name"] for i in sorted((*self.layers.ids, *self.layers.frozen_ids))
            ],
        }

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record scalar metrics (``{"val_acc": 0.91}``) at ``step``, by default the last measured step."""
        if self._finished:
            raise RuntimeError(
                self._ended("this GradTracker is finished: log() before finish(), or create a new one")
            )
        if not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be a mapping of name -> number, got {type(metrics).__name__}")
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric names must be non-empty strings, got {name!r}")
            try:
                clean[name] = float(value.item() if isinstance(value, Tensor) else value)
            except (TypeError, ValueError, RuntimeError, OverflowError):  # (10**400: no float holds it)
                raise ValueError(
                    f"metric {name!r} must be a number or a 1-element tensor, got {value!r}"
                ) from None
        at = max(self._step - 1, 0) if step is None else step
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if self._writer is not None and clean:
            self._writer.add_metrics(at, clean)

    def flush(self) -> None:
        """Copy buffered device values to the host and wait until everything is in the file."""
        if self._finished:  # finish() wrote everything: nothing to wait for (it raised WriterClosed)
            return
        self._drain_pending()
        if self._writer is not None:
            self._writer.flush()

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """Close the run as ``finished`` (default), ``failed`` or ``stopped``; a second call does nothing."""
        from tracker.store import FINAL_STATUSES

        if status not in FINAL_STATUSES:  # before anything closes: finish() can be called again
            raise ValueError(f"status={status!r}; accepted: {', '.join(FINAL_STATUSES)}")
        if self._finished:
            return
        self._finished = True
        self._dropped.detach()
        try:  # (every rank finishes together when it is "finished": the collectives it may need are joined)
            close_run(self._remains, status, error, FINISH_LOCK_WAIT_S, collective=status == "finished")
        finally:
            with contextlib.suppress(Exception):  # (an exit hook of someone else's whose == raises, say)
                atexit.unregister(self._exit_hook)
            self._watch.close()
            self.detach()
            # A finished tracker kept around (a notebook's variables, its Out cache) keeps neither the model
            # nor its parameters and gradients alive.
            self._model = self._first = self._extra = self._rows = self._shards = None
            self._params = self._frozen = self.layers.params = self.layers.frozen = []

    def attach(self, optimizer: torch.optim.Optimizer, *, scaler: Any = None) -> AttachmentHandle:
        """Run :meth:`step` right before every ``optimizer.step()``, also the one ``GradScaler.step`` makes
        after unscaling. Pass ``scaler`` too so the steps it skips for inf/NaN are recorded as skipped.
        Returns a handle: ``handle.remove()`` detaches (``finish()`` detaches everything)."""
        if self._finished:
            raise RuntimeError(self._ended(FINISHED))
        attachment = Attachment(self, optimizer, scaler)
        self._hooks.append(attachment)
        return AttachmentHandle(attachment)

    def detach(self) -> None:
        for handle in list(self._hooks):
            handle.remove()

    def _forget(self, handle: Attachment) -> None:
        if handle in self._hooks:
            self._hooks.remove(handle)
        self._measured_for.pop(handle, None)

    def _attached_step(self, handle: Attachment, *, skipped: bool = False, scaler: Any = None) -> None:
        """An attached optimizer is about to step (or its GradScaler skipped it).

        Several optimizers on one model (Muon for the matrices, AdamW for the rest) step one after the
        other on the same gradients: one step of the run per backward. The first of them to step on new
        gradients has all tracked gradients measured and clipped; the others, holding the gradients that
        were measured (nothing computed since), then step on them as they are. An optimizer that steps only
        every other iteration is measured whenever it is the first, so it never steps unclipped.
        """
        several = len(self._hooks) > 1  # (one optimizer: every step of it is a step of the run, no checks)
        if several and handle.grad_signature() is None:
            return  # it holds no gradient (an expert this batch did not use): its step updates nothing
        if several and handle.same_gradients(self._measured_for.get(handle)):
            return  # measured and clipped already, before another optimizer's step
        if several:
            # GradScaler.step unscales only its own optimizer's gradients: the others', measured now too,
            # must be unscaled first. One optimizer's step skipped while another's is taken is no skipped
            # step: measured and clipped (the finite part, per strategy) for the others, non-finite recorded.
            # The scaler skipping every optimizer that holds gradients is. (Host syncs: on the skip path the
            # scaler has synced already to skip this one; with fused optimizers, one per step.)
            for other in self._hooks:
                if other is not handle:
                    other.unscale_now()
            skipped = (skipped or (scaler is not None and handle.scaler_skips())) and all(
                h.scaler_skips() for h in self._hooks if h is not handle and h.grad_signature() is not None
            )
            scaler = None
        if skipped:
            self._record_skipped_by_scaler()
        else:
            self._step_now(scaler=scaler)
        if several:
            self._measured_for = {h: h.grad_signature() for h in self._hooks}

    @property
    def step_count(self) -> int:
        """How many optimizer steps were measured so far (the next step's 0-based index)."""
        return self._step

    def __enter__(self) -> GradTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish("finished")
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            self.finish("stopped", error=stop_reason(exc_type))
        else:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")
        return False  # never swallow the exception

    # ------------------------------------------------------------------ measuring
    def _grads(self) -> tuple[list[Tensor], Any]:
        if self._watch.changed:  # a parameter or module assigned to the model since the last step
            if self._watch.relayout_only:  # the same tensors, some moved or cast: compared at this step
                self._watch.relayout_only = self._watch.changed = False
                self._check_layout(every=True)  # (no sync: the buffered steps keep their positions)
            else:
                self._take_changes()
        # Unfrozen since the last step? One C-level pass over the frozen parameters (none: free).
        if self._frozen and not all(map(_IS_NONE, map(_GRAD, self._frozen))):
            self._take_unfrozen()
        grads = list(map(_GRAD, self._params))
        # Not `None in grads`: that compares every tensor with None through Tensor.__eq__ (~30 µs each).
        if not any(map(_IS_NONE, grads)):
            return grads, self._all
        present = [i for i, g in enumerate(grads) if g is not None]
        key = tuple(present)
        if key not in self._explained:  # missing gradients not seen before: explained?
            _remember(self._explained, key, True)
            if self._check_not_replaced(self._model):  # a module deleted since: measure what is left
                self._take_changes()
                return self._grads()
        if not present and self._params and not self._warned_no_grads:
            self._warned_no_grads = True
            warnings.warn(
                f"GradTracker.step() at step {self._step - 1}: none of the {len(self._params)} "
                "parameters has a gradient, so this step records a global norm of 0 and no layer norms. "
                "Call step() after loss.backward() and before optimizer.zero_grad(), or use "
                "attach(optimizer). (Said once.)",
                stacklevel=5,
            )
        return [grads[i] for i in present], present

    def _measure_params(self) -> None:
        """Everything that depends on which parameters are measured: at the start, and again when frozen
        parameters get gradients (unfrozen during fine-tuning)."""
        self._params = self.layers.params
        self._frozen = self.layers.frozen
        self._all = range(len(self._params))
        self._sharded = any(is_dtensor(p) for p in self._params)
        self._plan_layout()
        # FSDP2: the layout of the shards; FSDP2 lays gradients out like their parameters.
        self._shards = Shards.of(self._params) if self._sharded else None
        self._subset_shards: dict[tuple[int, ...], Shards | None] = {}
        self._explained: dict[tuple[int, ...], bool] = {}  # sets of missing gradients checked (_grads)
        self._extra = (
            ExtraStats(self.extra_stats, self._params, self._plan, self._sharded)
            if self.extra_stats
            else None
        )
        self._first = self._params[0] if self._params else None
        self._layout = (self._first.device, self._first.dtype) if self._first is not None else None
        self._holds_rows = self._extra is not None and self._extra.holds_rows
        self._rows = RowBuilder(self.layers.ids, self._all, self.clip.spec, self._extra)
        remains = self._remains
        remains.rows, remains.extra, remains.sharded = self._rows, self._extra, self._sharded

    def _take_changes(self) -> None:
        """Parameters or modules were assigned to the model since the last step: measure and clip what it
        holds now, as ``clip_grad_norm_(model.parameters())`` would (docs/tracker.md). Rare; it may sync."""
        self._drain_pending()  # buffered steps are laid out by the old list: turn them into rows first
        changed = self.layers.rescan(self._model)
        self._watch.rearm(self._model)
        self._measure_params()
        # A part of the model cast since (the watch's poll saw it): its rows say the dtype it has now.
        retyped = [
            row for row in self.layers.retyped(self._params + self._frozen) if row["id"] not in changed
        ]
        bind_strategy(self._choice, self.layers)  # (after: a strategy may refuse the new dtypes)
        rows = [self.layers.rows[i] for i in changed] + retyped
        if rows and self._writer is not None:  # (by the writer thread: never waits for a lock here)
            self._writer.add_layers(rows)

    def _take_unfrozen(self) -> None:
        """Frozen parameters got gradients: measure and clip them from this step on, like torch's
        ``clip_grad_norm_(model.parameters())`` would. Rare (an unfreezing schedule), so it may sync."""
        self._drain_pending()  # buffered steps are laid out by the old list: turn them into rows first
        moved = self.layers.take_unfrozen()
        self._measure_params()
        if self._writer is not None:
            self._writer.add_layers([self.layers.rows[i] for i in moved])  # trainable = 1

    def _check_not_replaced(self, model: nn.Module) -> bool:
        """Each time a new set of gradients is missing: are the tensors we measure still the model's?

        True when some are gone under names the model no longer has (``del model.head``: no hook tells):
        the caller takes the model as it is. Raises when they were replaced under the same names without
        the registration hooks ModelWatch sees: ``fully_shard`` (FSDP2) does that (it writes to
        ``module._parameters``). A tracker made before that holds the old ones, which never get a gradient
        again: every step would record nothing, silently.
        """
        names = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
        current = set(names.values())
        known = {id(p) for p in (*self._params, *self._frozen)}
        gone = [name for name, p in zip(self.layers.names, self._params, strict=True) if id(p) not in current]
        # Replaced: a name of a gone tensor now holds a tensor the tracker does not know. A deletion leaves
        # the name unused, or, in a ModuleList, held by a known tensor renumbered into it.
        replaced = [name for name in gone if name in names and names[name] not in known]
        if not replaced:
            return bool(gone) or not current <= known  # (a tensor inserted without a hook is new too)
        gone = replaced
        if gone:
            raise RuntimeError(
                f"{len(gone)} of the {len(self._params)} parameters this GradTracker measures are no longer "
                f"the model's ({some_names(gone)}): they were replaced after the tracker was created "
                "(fully_shard, to_empty, a swapped module), so they never get gradients. Create the "
                "GradTracker after wrapping or changing the model."
            )
        return False

    def _plan_layout(self) -> None:
        """What depends on the parameters' devices and dtypes: the grouping plans and the fast path."""
        self._plan = NormPlan.for_tensors([local_tensor(p) for p in self._params])
        self._layouts = [(p.device, p.dtype) for p in self._params]  # (what the plan was made for)
        # The fast path of _measure(): one device, one float dtype, no sharding: one kernel, one stack.
        dtypes = {p.dtype for p in self._params}
        self._fast = not self._sharded and len(self._plan.groups) == 1 and dtypes <= set(_FAST_DTYPES)
        self._subset_plans: dict[tuple[int, ...], NormPlan] = {}

    def _check_layout(self, every: bool = False) -> bool:
        """A model moved or cast after the tracker was made (model.cuda(), model.half()): plan again; True
        when it did. Usually the parameters move together, so the first one stands for all (one compare per
        step). ``every``: compare every parameter; for when a kernel failed or read a wider dtype than
        planned (part of a model cast alone, ``model.head.double()``)."""
        first = self._first
        if first is None:
            return False
        if every:
            layouts = [(p.device, p.dtype) for p in self._params]
            if layouts == self._layouts:
                return False
        elif (first.device, first.dtype) == self._layout:
            return False
        self._layout = (first.device, first.dtype)
        self._plan_layout()
        if self._extra is not None:
            self._extra.replan(self._plan)
        retyped = self.layers.retyped(self._params + self._frozen)
        if retyped:  # (a strategy may refuse the new dtypes: value clipping, complex ones)
            bind_strategy(self._choice, self.layers)
        if self._writer is not None and retyped:  # layers.dtype says what the tensors are now
            self._writer.add_layers(retyped)
        return True

    def _measure(self, grads: list[Tensor], present: Any) -> tuple[Tensor, Tensor]:
        try:
            return self._measure_dense(grads, present)
        # Free on the usual path: only a failed kernel looks at the layouts. (Sparse tensors fail in the
        # fused norm with NotImplementedError, in the large tensors' dot() read with RuntimeError.)
        except (NotImplementedError, RuntimeError):
            at = zip(present, grads, strict=True)  # positions: a range when every tensor has a gradient
            sparse = [self.layers.names[i] for i, g in at if g.is_sparse]
            if not sparse:
                # Part of the model cast or moved since the plan was made (its first parameter not): the
                # fused kernel refuses a float64 tensor among float32 ones. Plan again and measure again.
                if self._check_layout(every=True):
                    return self._measure_dense(grads, present)
                raise
            raise TypeError(
                f"sparse gradients cannot be measured or clipped ({', '.join(sparse)}): torch's norm "
                "kernels, and with them clip_grad_norm_, do not take them. Use nn.Embedding(sparse=False) "
                "(dense gradients), or create the GradTracker on a module without the sparse parameters."
            ) from None

    def _measure_dense(self, grads: list[Tensor], present: Any) -> tuple[Tensor, Tensor]:
        self._check_layout()
        if self._fast and present is self._all:
            # The usual case, right after backward with the caches cold: every Python object touched is a
            # memory read, so no regrouping, just the fused kernel and one stack, or, for large CPU tensors,
            # the plan's faster dot() reads (tracker/norms.py).
            if self._plan.splits[0] is not None:
                norms = self._plan.apply(grads)
                if norms.dtype == torch.float64:  # a large tensor cast to float64 alone (see _check_layout)
                    self._check_layout(every=True)
            else:
                # float32 accumulation whatever the dtypes (for float32, the same bits at the same speed): a
                # part of the model cast to float16 after the plan was made cannot overflow its norm.
                norms = torch.stack(torch._foreach_norm(grads, 2.0, dtype=torch.float32))
            return norms, torch.linalg.vector_norm(norms)
        if self._sharded:
            norms = sharded_norms(grads, self._shards_of(present))
            return norms, torch.linalg.vector_norm(norms)
        if present is self._all:
            return grad_norms(grads, self._plan)
        key = tuple(present)
        plan = self._subset_plans.get(key)
        if plan is None:
            plan = _remember(self._subset_plans, key, NormPlan.for_tensors(grads))
        return grad_norms(grads, plan)

    def _shards_of(self, present: Any) -> Shards | None:
        if present is self._all or self._shards is None:
            return self._shards
        key = tuple(present)
        if key not in self._subset_shards:
            _remember(self._subset_shards, key, self._shards.select(present))
        return self._subset_shards[key]

    def _drop_grads(self) -> None:
        # Skipping = every gradient set to None: torch's optimizers leave a parameter without a gradient
        # untouched (no update, no momentum or step-count change). Zeroing would still move Adam by momentum.
        for p in self._params:
            p.grad = None
        for handle in self._hooks:
            handle.drop_grads()

    @torch.no_grad()
    def _record_skipped_by_scaler(self) -> None:
        """GradScaler found inf/NaN and did not call optimizer.step(): record a skipped, unclipped step."""
        if self._finished:
            return
        self._complete_update()
        step = self._step
        self._step += 1
        grads, present = self._grads()
        norms, total = self._measure(grads, present)
        extra = self._extra_stats(grads, present)
        self._record(step, total, None, norms, present, None, skipped=True, extra=extra)

    @staticmethod
    def _scalars(total: Tensor, r: Any) -> Tensor:
        parts = (total, r.total_norm_after, r.coef, r.threshold, r.clipped, r.n_clipped)
        dtype = torch.float64 if total.dtype == torch.float64 else torch.float32  # (a float64 model's norms)
        return torch.stack([t.to(device=total.device, dtype=dtype) for t in parts])

    def _extra_stats(self, grads: list[Tensor], present: Any) -> dict[str, Tensor]:
        # Not measured on a rank that does not write, unless sharded: their norms are then collectives that
        # every rank must join (the writer would wait forever for the others).
        if self._extra is None or (self._writer is None and not self._sharded):
            return {}
        return self._extra.measure(grads, present, present is self._all, self._shards_of(present))

    # ------------------------------------------------------------------ recording
    def _record(
        self, step, total, scalars, norms, present, loss, *, skipped, extra, scaled=False
    ) -> tuple[Any, ...]:
        """Copy this step (and the buffered ones) to the host in one transfer and queue it for the writer.

        Only the copy and the values ``step()`` returns are worked out here. The rows are built by
        ``RowBuilder.write_step`` (tracker/rows.py) when the outbox hands them over (about once a second):
        right after the norm kernel has streamed every gradient through the caches, each Python object this
        thread touches is a cache miss, so building ~150-layer rows here cost ~3x what it costs in the
        hand-off's warm loop.
        """
        # Not clipped: only the total travels; after = before, coef 1 and "no threshold" are filled in later.
        parts = [scalars if scalars is not None else total.reshape(1), norms]
        has_loss = isinstance(loss, Tensor)
        if has_loss:
            parts.append(loss.detach().reshape(1).to(norms.device, torch.float32))
            loss = None  # its value travels in the copy
        elif loss is not None:
            loss = as_number(loss)  # a numpy scalar, say: recorded like a float
        parts.extend(extra.values())
        pending, self._pending = self._pending, []  # (a new list: the deferred rows keep this one)
        self._remains.pending = self._pending
        if pending:
            parts.extend(pending_parts(pending))
        host = torch.cat(parts).tolist()  # the one device-to-host copy of this logged step

        if self._writer is not None:
            args = (step, host, scalars is not None, present, has_loss, loss, tuple(extra), pending, skipped)
            if self._holds_rows:  # held until the optimizer step has happened: built now, not deferred
                self._rows.write_step(self._writer, *args, scaled, time.time())
            else:
                self._writer.defer(self._rows.write_step, *args, scaled, time.time())
        elif self._holds_rows and self._sharded:  # no row here, but update_ratio's collective to join later
            self._extra.hold({"extra": None}, present)
        if scalars is None:  # not clipped
            return host[0], False, 1.0, math.nan
        threshold = host[THRESHOLD]  # as the store records it: 0.05, not float32's 0.05000000074505806
        return host[TOTAL], was_clipped(host), host[COEF], short_threshold(threshold) or threshold

    def _drain_pending(self) -> None:
        drain_pending(self._remains)
        self._pending = self._remains.pending

    def _complete_update(self, collective: bool = True) -> None:
        if self._extra is not None:
            complete_update(self._remains, collective)

    def _at_exit(self) -> None:
        self.finish(*exit_status(seen=self._remains.exc_seen))

    def _fork_child(self) -> None:
        """This process is a child forked from the one that made the tracker (multiprocessing's "fork" start
        method, Hogwild training): the writer thread did not come along, so rows handed to it here would be
        lost while flush() reported success. The tracker is ended here, for this process only: the parent's
        run is neither written nor closed by the child (not at its exit either)."""
        if self._finished:  # (its connections were closed before the fork)
            return
        self._finished, self._forked_from = True, self._pid
        self._dropped.detach()  # (the child's copy must not close the parent's run when it is collected)
        if self._sigterm is not None:  # its hold on the SIGTERM handler: the child's own trackers decide
            self._sigterm.remove()
        if self._writer is not None:
            forks.inherited(self.db_path, self._pid)

    def _ended(self, message: str) -> str:
        if self._forked_from is None:
            return message
        return (
            f"this GradTracker was created by process {self._forked_from}, and this is a child forked from "
            f"it (pid {os.getpid()}): its background writer does not run here, so nothing this process "
            f"records could reach {self.db_path}. Start the child with the 'spawn' start method and create a "
            "GradTracker there (a run of its own), or create one in this child on another database file."
        )
