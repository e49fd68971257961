"""The training loop, top to bottom: data → model → optimizer → tracker → steps → metrics → summary.

The tracker is the one seam for gradients: ``tracker.step(loss=...)`` runs right before
``optimizer.step()``, after gradient accumulation and after ``scaler.unscale_`` under AMP, so it
measures and clips the gradients the optimizer will actually use. With ``--no-track`` the tracker
is its do-nothing stand-in (``enabled=False``) and the loop has no ``if tracking:`` branches.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time

import torch
from torch import nn

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, default_run_name
from trainer.corpus import describe_loading, load_corpus, warn_too_short
from trainer.errors import TrainingError
from trainer.evaluate import Evaluator, TextUnits, batch_loss
from trainer.loaders import make_loaders
from trainer.models import build_model
from trainer.progress import Progress, format_summary
from trainer.resume import CorpusCheck, read_checkpoint, restore
from trainer.runtime import Runtime, StopSignal
from trainer.tracking import finish_failed, make_tracker, say_if_forked

__all__ = ["TrainingError", "run_training", "make_optimizer", "lr_factor"]


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
    # Checked against this run's settings before the data is loaded, and against the corpus before its
    # features are computed: a refusal comes before the slow part.
    saved = read_checkpoint(cfg, rt) if cfg.resume else None
    check = CorpusCheck(saved, cfg.checkpoint) if saved is not None else None
    splits = load_corpus(cfg, rt, before_features=check)
    if check is not None and check.warning and rt.is_main:
        print(f"warning: {check.warning}", file=sys.stderr)
    data_seconds = time.perf_counter() - t_start
    train_loader, batches, eval_loaders = make_loaders(cfg, splits, rt)
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
        warn_too_short(cfg, splits, model)
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
    start_epoch, start_batch, step, metrics = 0, 0, 0, {}
    if saved is not None:
        restore(saved, model, optimizer, scheduler, scaler)
        start_epoch, start_batch, step = saved["epoch"], saved.get("batch", 0), saved["step"]
        metrics = saved["metrics"]
    first_step = step  # where this process starts: its summary covers its own steps
    if cfg.run is None:  # --resume without --run: the name the checkpoint's run was recorded with
        cfg.run = (saved or {}).get("config", {}).get("run") or default_run_name(cfg)

    # Measure and record the inner model: DDP's "module." prefix is not part of the layer names.
    tracker = make_tracker(cfg, model, rt, resume=saved["gradwatch"] if saved else None)
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
        say_if_forked(cfg, saved, tracker, rt)
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
                finish_failed(tracker, error)
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


def _restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, before in zip(model.buffers(), saved, strict=True):
            buffer.copy_(before)


def _truthy(x) -> bool:
    return bool(x.item()) if isinstance(x, torch.Tensor) else bool(x)


def _epoch_line(epoch: int, metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k.split("_")[-1] in ("loss", "acc", "cer", "wer")}
    return f"epoch {epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items())


def _describe_start(cfg, splits, model, rt, total_steps, data_seconds) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    info = getattr(splits, "info", {}) or {}
    sizes = "/".join(str(len(s)) for s in (splits.train, splits.val, splits.test))
    lines = [
        f"{cfg.task} · {cfg.model} ({n_params / 1e6:.2f}M params) · {cfg.data} data, train/val/test {sizes}"
        + f" · data ready in {data_seconds:.1f} s"
        + describe_loading(info),
        f"{cfg.optimizer} lr {cfg.lr:g} · {total_steps} steps · clip {cfg.clip} · device {rt.device}"
        + (" + AMP" if rt.amp else "")
        + (f" × {rt.world_size} processes" if rt.distributed else ""),
    ]
    for line in lines:
        print(line, file=sys.stderr, flush=True)
