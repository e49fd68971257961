"""The training loop, top to bottom: data → model → optimizer → tracker → steps → metrics → summary.

The tracker is the one seam for gradients: ``tracker.step(loss=...)`` runs right before
``optimizer.step()``, after gradient accumulation and after ``scaler.unscale_`` under AMP, so it
measures and clips the gradients the optimizer will actually use. With ``--no-track`` the tracker
is its do-nothing stand-in (``enabled=False``) and the loop has no ``if tracking:`` branches.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, default_run_name
from trainer.evaluate import TextUnits, batch_loss, evaluate, too_short_for_ctc
from trainer.models import build_model
from trainer.progress import Progress, format_summary
from trainer.runtime import Runtime, StopSignal
from trainer.sampling import BucketBatchSampler, SkippableBatches

__all__ = ["TrainingError", "run_training", "make_optimizer", "lr_factor"]


class TrainingError(Exception):
    """Training could not start or run (bad data path, unusable device...); carries an exit code."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based): linear warm-up over ``warmup``
    steps, then constant, linear decay or cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _load_data(cfg: TrainConfig, rt: Runtime):
    from trainer.data import load_task
    from trainer.data.errors import CorpusWarning

    kwargs = dict(
        task=cfg.task,
        source=cfg.data,
        path=cfg.data_path,
        cache_dir=cfg.cache_dir,
        seed=cfg.data_seed,
        specaugment=cfg.specaugment,
        classes=cfg.sc_variant,
    )
    if cfg.corpus_size is not None:
        kwargs["size"] = cfg.corpus_size
    failed = f"cannot load the {cfg.data} data for task {cfg.task!r}"
    try:
        # Rank 0 generates the built-in corpus into the cache; the others then read it.
        with rt.rank_zero_first(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CorpusWarning)
            splits = load_task(**kwargs)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # CorpusNotFound, CorpusLayoutError
        raise TrainingError(f"{failed}: {e}{_in_cache(cfg, e)}") from None
    except OSError as e:  # what the loader did not name itself: a folder it could not list, a full disk...
        where = f" {str(e.filename)!r}" if e.filename else ""
        reason = (e.strerror or str(e)).lower()
        raise TrainingError(f"{failed}: cannot access{where} ({reason}){_in_cache(cfg, e)}") from None
    for w in caught:  # what the loader skipped or changed: one line each, as the CLI's own warnings
        if not issubclass(w.category, CorpusWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        elif rt.is_main:
            print(f"warning: {w.message}", file=sys.stderr)
    return splits


def _in_cache(cfg: TrainConfig, e: Exception) -> str:
    """A hint when the file an error names is the corpus cache or a folder above it (a HOME that cannot be
    written, a cache on a full disk): the user did not name that folder, so say which it is."""
    from trainer.data.cache import default_cache_dir

    name = getattr(e, "filename", None)
    if not name:
        return ""
    root, path = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(), Path(str(name))
    if path != root and path not in root.parents and root not in path.parents:
        return ""
    return (
        f" (that is the corpus cache, {str(root)!r}: choose a folder you can write with --cache-dir DIR or "
        "$GRADWATCH_CACHE)"
    )


def _warn_too_short(cfg: TrainConfig, splits, model: nn.Module) -> None:
    """One warning for the utterances whose transcripts the CTC model's output is too short to align: the
    loader counts those with fewer feature frames than CTC needs (``info["too_short"]``), but the models
    subsample time, so more of them cannot be aligned. Their loss is silently 0 (``zero_infinity``)."""
    found = {s: too_short_for_ctc(model, getattr(splits, s)) for s in ("train", "val", "test")}
    if not any(found.values()):
        return
    # The example: one the loader's own warning did not already name, when there is one.
    every = [(s, item) for s, items in found.items() for item in items]
    split, (i, frames, out, needed) = next((x for x in every if x[1][1] >= x[1][3]), every[0])
    names = splits.info.get("names") or {}
    name = names[split][i] if split in names else f"{split} utterance {i}"
    counts = ", ".join(f"{len(items)} in {s}" for s, items in found.items() if items)
    reported = sum((splits.info.get("too_short") or {}).values())
    also = f"; {reported} of them were already too short for the features (above)" if reported else ""
    print(
        f"warning: {len(every)} utterance(s) ({counts}) are too short for their transcripts once {cfg.model} "
        f"has subsampled time (e.g. {name}: {frames} feature frames, {out} output frames, where CTC needs "
        f"{needed}): their loss counts as 0, so they teach the model nothing{also}; check their transcripts",
        file=sys.stderr,
    )


def _loaders(cfg: TrainConfig, splits, rt: Runtime):
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

    common = dict(collate_fn=splits.collate, pin_memory=rt.device.type == "cuda")
    generator = None
    if rt.distributed:
        sampler = DistributedSampler(splits.train, shuffle=True, seed=cfg.seed)
        batches = BatchSampler(sampler, cfg.batch_size, drop_last=False)
    elif splits.kind == "sequence" and hasattr(splits.train, "lengths"):
        batches = BucketBatchSampler(splits.train.lengths(), cfg.batch_size, seed=cfg.seed)
    else:
        # What DataLoader(shuffle=True, generator=g) builds, spelled out so that a pass can skip batches.
        generator = torch.Generator().manual_seed(cfg.seed)
        shuffled = RandomSampler(splits.train, generator=generator)
        batches = BatchSampler(shuffled, cfg.batch_size, drop_last=False)
    batches = SkippableBatches(batches)
    train = DataLoader(splits.train, batch_sampler=batches, generator=generator, **common)
    # The generalisation gap needs the training score measured like the validation score: eval mode,
    # no augmentation, on a fixed subset of the training set as large as the validation set.
    train_eval_set = splits.train
    if getattr(train_eval_set, "augment", None) is not None:
        train_eval_set = copy.copy(train_eval_set)
        train_eval_set.augment = None
    n = min(len(train_eval_set), max(len(splits.val), 1))
    every = max(1, len(train_eval_set) // n)
    subsets = {
        "train": _by_length(train_eval_set, list(range(0, len(train_eval_set), every))[:n]),
        "val": _by_length(splits.val, list(range(len(splits.val)))),
        "test": _by_length(splits.test, list(range(len(splits.test)))),
    }
    eval_bs = max(cfg.batch_size, 64)
    return train, batches, {k: DataLoader(v, batch_size=eval_bs, **common) for k, v in subsets.items()}


def _by_length(dataset, indices: list[int]):
    """Sorted by length, sequence batches pad little (less to compute). Neither the order nor the batch-mates
    change the metrics: the CTC models zero padded frames, so an utterance's output is its own."""
    from torch.utils.data import Subset

    if hasattr(dataset, "lengths"):
        lengths = dataset.lengths()
        indices = sorted(indices, key=lengths.__getitem__)
    return Subset(dataset, indices)


def _make_tracker(cfg: TrainConfig, model: nn.Module, rt: Runtime, resume: dict | None = None):
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


def _say_if_forked(cfg: TrainConfig, saved: dict, tracker, rt: Runtime) -> None:
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


class Evaluator:
    """Evaluates on rank 0 (whole splits, unsharded), derives the generalisation gap and logs the metrics
    under the names of design.md §5; keeps the time it took so the summary can report training alone."""

    def __init__(self, model, loaders, *, kind, rt, text, tracker):
        self.model, self.loaders, self.kind, self.rt, self.text, self.tracker = (
            model,
            loaders,
            kind,
            rt,
            text,
            tracker,
        )
        self.seconds = 0.0

    def __call__(self, splits: tuple[str, ...], *, step: int, extra: dict | None = None) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics: dict[str, float] = dict(extra or {})
        if self.rt.is_main:
            for split in splits:
                scores = evaluate(
                    self.model, self.loaders[split], kind=self.kind, device=self.rt.device, text=self.text,
                    autocast=self.rt.autocast,
                )  # fmt: skip
                metrics |= {f"{split}_{name}": value for name, value in scores.items()}
            if self.kind == "classify" and "train_acc" in metrics and "val_acc" in metrics:
                metrics["gen_gap"] = metrics["train_acc"] - metrics["val_acc"]
            if self.kind == "ctc" and "train_cer" in metrics and "val_cer" in metrics:
                metrics["gen_gap"] = metrics["val_cer"] - metrics["train_cer"]
            if "train_loss" in metrics and "val_loss" in metrics:
                metrics["gen_gap_loss"] = metrics["val_loss"] - metrics["train_loss"]
            # At the last optimizer step taken (the steps table is 0-based), so metrics line up with norms.
            self.tracker.log(metrics, step=max(step - 1, 0))
        self.rt.barrier()
        self.seconds += time.perf_counter() - t0
        return metrics


def run_training(cfg: TrainConfig) -> int:
    """Train as configured; returns the exit code (0 finished or SIGTERM-stopped, 130 Ctrl-C)."""
    rt = Runtime.start(cfg)
    try:
        return _train(cfg, rt)
    finally:
        rt.shutdown()


def _train(cfg: TrainConfig, rt: Runtime) -> int:
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    splits = _load_data(cfg, rt)
    data_seconds = time.perf_counter() - t_start
    train_loader, batches, eval_loaders = _loaders(cfg, splits, rt)
    n_classes = len(splits.labels)
    model = build_model(
        cfg.model,
        n_classes=n_classes,
        n_mels=getattr(splits, "n_mels", 32),
        dropout=cfg.dropout,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        rnn_type=cfg.rnn_type,
    ).to(rt.device)
    kind = model.kind
    if kind == "ctc" and rt.is_main:
        _warn_too_short(cfg, splits, model)
    text = None
    if splits.vocabulary is not None:
        text = TextUnits(splits.vocabulary.decode, digits_are_words=cfg.task == "digits")
    ddp_model = rt.wrap(model)
    optimizer = make_optimizer(cfg, model.parameters())
    micro_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.lr_schedule),
    )
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp)
    saved = _load_checkpoint(cfg, rt, splits, model, optimizer, scheduler, scaler) if cfg.resume else None
    start_epoch, start_batch, step, metrics = 0, 0, 0, {}
    if saved is not None:
        start_epoch, start_batch, step = saved["epoch"], saved.get("batch", 0), saved["step"]
        metrics = saved["metrics"]
    first_step = step  # where this process starts: its summary covers its own steps
    if cfg.run is None:  # --resume without --run: the name the checkpoint's run was recorded with
        cfg.run = (saved or {}).get("config", {}).get("run") or default_run_name(cfg)

    # Measure and record the inner model: DDP's "module." prefix is not part of the layer names.
    tracker = _make_tracker(cfg, model, rt, resume=saved["gradwatch"] if saved else None)
    run_name = cfg.run
    if saved is not None and saved["gradwatch"].get("run_id") == getattr(tracker, "run_id", None):
        run_name = saved["config"]["run"]  # the same run goes on, under the name it was recorded with
    stop = StopSignal(distributed=rt.distributed)
    if rt.is_main and not cfg.quiet:
        _describe_start(cfg, splits, model, rt, total_steps, data_seconds)
    progress = Progress(total_steps, bar=sys.stderr.isatty(), quiet=cfg.quiet or not rt.is_main, initial=step)
    status, error = "finished", None
    evaluate_now = Evaluator(model, eval_loaders, kind=kind, rt=rt, text=text, tracker=tracker)
    loader_generator = getattr(train_loader, "generator", None)  # the shuffle's, when not a sampler's
    epoch_order = None  # the shuffle generator's state at the start of the current epoch

    def save_checkpoint(epoch: int, batch: int) -> None:
        """At ``batch`` micro-batches into ``epoch`` (0: at its start). Every process calls it at the same
        point; the main one writes the file."""
        if cfg.checkpoint is None:
            return
        at_start = batch == 0 and loader_generator is not None
        random = ckpt.random_state(loader_generator.get_state() if at_start else epoch_order)
        # Each process's own generator: only the main one evaluates, and evaluation draws from it.
        every_rank = rt.gather(random)
        if not rt.is_main:
            return
        ckpt.save(
            cfg.checkpoint,
            dict(
                config=cfg.to_dict(),
                epoch=epoch,
                batch=batch,
                step=step,
                metrics=metrics,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                gradwatch=tracker.state_dict(),  # also flushes: the file has every step so far
                random=random,
                random_per_rank=every_rank,
                world_size=rt.world_size,
                corpus=ckpt.corpus_record(splits.info),
            ),
        )

    if saved is not None:  # last: building the model and the data above drew from the global generator
        saved["random"] = ckpt.rank_random_state(saved, rt.rank)
        ckpt.restore_loader_state(saved["random"], loader_generator)
        if start_batch == 0:
            ckpt.restore_global_state(saved["random"])
        if rt.is_main and not cfg.quiet:
            print(
                f"resumed from {cfg.checkpoint}: epoch {start_epoch}, batch {start_batch}, step {step}",
                file=sys.stderr,
            )
        _say_if_forked(cfg, saved, tracker, rt)
    t_loop = time.perf_counter()
    interrupted = False
    with stop.installed():
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if step >= total_steps:  # resumed where --max-steps had ended it: nothing left to train
                    break
                batches.set_epoch(epoch)
                epoch_order = loader_generator.get_state() if loader_generator is not None else None
                first = start_batch if epoch == start_epoch else 0
                batches.skip_next_pass(first)
                epoch_batches = iter(train_loader)  # draws the epoch's order (and the loader's base seed)
                if first:  # mid-epoch: the global state as it was after the uninterrupted run got here
                    ckpt.restore_global_state(saved["random"])
                model.train()
                buffers_before = None  # BatchNorm's running statistics before the step's first forward pass
                accumulated = torch.zeros((), device=rt.device)
                taken = micro_per_epoch  # micro-batches of this epoch taken when the loop below ends
                for i, batch in enumerate(epoch_batches, start=first):
                    group_start = i - i % cfg.grad_accum
                    group_size = min(cfg.grad_accum, micro_per_epoch - group_start)
                    last_micro = i - group_start == group_size - 1
                    # DDP: all-reduce gradients only on the micro-batch that completes the group.
                    sync = (
                        contextlib.nullcontext() if last_micro or not rt.distributed else ddp_model.no_sync()
                    )
                    if cfg.nonfinite == "skip" and buffers_before is None:
                        buffers_before = [b.detach().clone() for b in model.buffers()]
                    with sync:
                        with rt.autocast():
                            loss, _ = batch_loss(ddp_model, batch, kind, rt.device)
                        scaler.scale(loss / group_size).backward()
                    accumulated += loss.detach() / group_size
                    if not last_micro:
                        continue
                    # Recorded by the tracker and applied by the optimizer together, or not at all: a second
                    # Ctrl-C waits for the end of this block.
                    with stop.deferred():
                        scaler.unscale_(optimizer)  # clip and measure true gradients (no-op without AMP)
                        stats = tracker.step(loss=accumulated, scaler=scaler)
                        if cfg.nonfinite == "skip" and _truthy(getattr(stats, "skipped", False)):
                            # The forward passes in train mode already moved BatchNorm's running statistics
                            # (to NaN after a NaN batch): a skipped step must leave the model as it was.
                            _restore_buffers(model, buffers_before)
                        else:
                            scaler.step(optimizer)
                        buffers_before = None
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        scheduler.step()
                        step += 1
                    progress.update(step, stats, accumulated)
                    accumulated = torch.zeros((), device=rt.device)
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        lr = scheduler.get_last_lr()[0]
                        metrics = evaluate_now(("train", "val"), step=step, extra={"lr": lr})
                    # The epoch's last batch ends the loop itself: the sampler then finishes its pass (and
                    # draws what it draws at the end), so a checkpoint there is a true epoch boundary.
                    if stop.requested() or (step >= total_steps and i + 1 < micro_per_epoch):
                        taken = i + 1
                        break
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and i + 1 < micro_per_epoch:
                        save_checkpoint(epoch, i + 1)
                if stop.requested() or taken < micro_per_epoch:
                    # Cut short by a stop or --max-steps: a --resume goes on from here. Saved before the
                    # evaluation below, whose loaders draw from the global random state.
                    save_checkpoint(epoch, taken)
                if stop.requested():  # stop promptly: no evaluation pass after a stop request
                    break
                extra = {"lr": scheduler.get_last_lr()[0]}
                if taken == micro_per_epoch:  # `epoch` counts completed epochs, not one cut by --max-steps
                    extra["epoch"] = epoch + 1
                metrics = evaluate_now(("train", "val"), step=step, extra=extra)
                if rt.is_main:
                    progress.write(_epoch_line(epoch + 1, metrics))
                if taken == micro_per_epoch:
                    save_checkpoint(epoch + 1, 0)
                if stop.requested() or step >= total_steps:
                    break
            if stop.requested():
                status = "stopped"
            else:
                metrics |= evaluate_now(("test",), step=step)
        except KeyboardInterrupt:
            # A second Ctrl-C (StopSignal): what was in flight -- a step, an evaluation, the stop's own
            # checkpoint save -- is abandoned. No checkpoint is written: a step cut anywhere may have updated
            # some weights and not others; the last one saved stays whole (written to a .tmp, then renamed).
            status, interrupted = "stopped", True
        except BaseException as e:
            status, error = "failed", e
            raise
        finally:
            stop.hold()  # from here, a Ctrl-C no longer interrupts: the run's end is being recorded
            train_seconds = time.perf_counter() - t_loop - evaluate_now.seconds
            progress.close()
            if error is None:
                # A stop request is recorded like the tracker records a signal it handles itself: by name.
                reason = signal.Signals(stop.signum).name if status == "stopped" and stop.signum else None
                reason = "SIGINT" if interrupted else reason
                tracker.finish(status, error=reason)
            else:
                _finish_failed(tracker, error)
        if interrupted and rt.is_main:
            print(_interrupted_note(cfg), file=sys.stderr, flush=True)
        if rt.is_main:
            print(
                format_summary(
                    status=status,
                    run_name=run_name,
                    run_id=getattr(tracker, "run_id", None),
                    db=None if cfg.no_track else str(getattr(tracker, "db_path", cfg.db)),
                    steps=step,
                    first_step=first_step,
                    seconds=time.perf_counter() - t_start,
                    train_seconds=train_seconds,
                    metrics={k: v for k, v in metrics.items() if k not in ("epoch", "lr")},
                    clip=getattr(getattr(tracker, "clip", None), "spec", cfg.clip),
                    logged=progress.logged,
                    clip_rate=progress.clip_rate,
                    max_norm=progress.max_norm,
                ),
                flush=True,
            )
    # 130 even when the KeyboardInterrupt came from Python's own handler (no StopSignal in a thread).
    # The exit code says what the run was recorded as: a Ctrl-C that came too late to stop anything (during
    # the test evaluation, while the end was recorded) leaves a finished run finished, and exits 0.
    return 128 + signal.SIGINT if interrupted else (stop.exit_code if status == "stopped" else 0)


def _interrupted_note(cfg: TrainConfig) -> str:
    last = ""
    if cfg.checkpoint is not None:
        saved = os.path.exists(cfg.checkpoint)
        last = (
            f"; --resume continues from the last checkpoint saved in {cfg.checkpoint!r}"
            if saved
            else f"; no checkpoint had been saved to {cfg.checkpoint!r} yet"
        )
    return (
        "python -m trainer: interrupted by a second Ctrl-C: the work in flight was abandoned, without a "
        f"checkpoint for it{last}"
    )


def _load_checkpoint(cfg: TrainConfig, rt: Runtime, splits, model, optimizer, scheduler, scaler):
    """``--resume``: the checkpoint at ``--checkpoint`` loaded into the training state, or None (no file)."""
    try:
        saved = ckpt.load(cfg.checkpoint)
        if saved is None:
            return None
        ckpt.check_compatible(saved["config"], cfg.to_dict(), cfg.checkpoint)
        ckpt.check_world_size(saved, rt.world_size, cfg.checkpoint)
        unchecked = ckpt.check_same_corpus(saved, splits.info, cfg.checkpoint)
        if unchecked and rt.is_main:
            print(f"warning: {unchecked}", file=sys.stderr)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise TrainingError(f"--resume: {e}") from None
    return saved


def _finish_failed(tracker, error: BaseException) -> None:
    status = "stopped" if isinstance(error, KeyboardInterrupt) else "failed"
    try:
        tracker.finish(status, error=f"{type(error).__name__}: {error}")
    except TypeError:  # a tracker whose finish() takes no error text
        tracker.finish(status)


def _restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, before in zip(model.buffers(), saved, strict=True):
            buffer.copy_(before)


def _truthy(x) -> bool:
    return bool(x.item()) if isinstance(x, torch.Tensor) else bool(x)


def _epoch_line(epoch: int, metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k.split("_")[-1] in ("loss", "acc", "cer", "wer")}
    return f"epoch {epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items())


def _data_work(info: dict) -> str:
    """What loading the data spent its time on, from what the loader reports: only the built-in corpora are
    generated, and every source may compute its features (a cache hit does neither); and the disk space it
    freed, when that is large (a real corpus's caches of its earlier states, removed)."""
    from trainer.data.cache import REPORTED_BYTES, removed_words

    done = []
    if info.get("cache_hit") is False and "generation_seconds" in info:
        done.append(f"corpus generated in {info['generation_seconds']:.1f} s")
    if info.get("feature_cache_hit") is False and "feature_seconds" in info:
        done.append(f"features computed in {info['feature_seconds']:.1f} s")
    removed = info.get("removed_caches") or {}
    if removed.get("bytes", 0) >= REPORTED_BYTES:
        done.append(removed_words(removed))
    return f" ({', '.join(done)})" if done else ""


def _describe_start(cfg, splits, model, rt, total_steps, data_seconds) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    info = getattr(splits, "info", {}) or {}
    sizes = "/".join(str(len(s)) for s in (splits.train, splits.val, splits.test))
    lines = [
        f"{cfg.task} · {cfg.model} ({n_params / 1e6:.2f}M params) · {cfg.data} data, train/val/test {sizes}"
        + f" · data ready in {data_seconds:.1f} s"
        + _data_work(info),
        f"{cfg.optimizer} lr {cfg.lr:g} · {total_steps} steps · clip {cfg.clip} · device {rt.device}"
        + (" + AMP" if rt.amp else "")
        + (f" × {rt.world_size} processes" if rt.distributed else ""),
    ]
    for line in lines:
        print(line, file=sys.stderr, flush=True)
