"""The monitoring variants compared by ``benchmarks/peers.py``, each used the way its docs show.

Every variant has the same four calls, so the timing loop has no per-tool branches:

    variant.load()                      # lazy import; returns None or why it cannot run
    variant.start(model, workdir)       # create the tool's writer (its files go under workdir)
    variant.before_block()              # before each interleaved block of steps
    variant.after_backward(loss, step)  # the seam right before optimizer.step()
    variant.finish()                    # close and flush, so bytes on disk are final

``period`` and ``logged(step)`` say on which (0-based) steps the tool does its expensive work,
so the timing code can weight rare logging steps by their frequency.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

__all__ = ["VARIANTS", "Variant", "make_variants"]


class Variant:
    """A bare training step: the baseline every overhead is measured against."""

    key = "bare"
    label = "bare step"
    tool = "none"  # the capability-matrix row this variant represents ("none": not in the matrix)
    dists: tuple[str, ...] = ()  # distributions whose versions the report names
    period = 1

    def load(self) -> str | None:
        return None

    def start(self, model: nn.Module, workdir: Path) -> None:
        self.model, self.workdir = model, workdir

    def before_block(self) -> None:
        pass

    def after_backward(self, loss: torch.Tensor, step: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def logged(self, step: int) -> bool:
        return step % self.period == 0

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in self.dists:
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return out

    def _import(self, *modules: str) -> str | None:
        # Tools are optional (the `bench` extra): a missing one is reported, never a crash.
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                return f"not installed ({exc.name or name})"
        return None


class ClipGradNorm(Variant):
    """``torch.nn.utils.clip_grad_norm_(params, 1.0)`` alone: clipping with no record."""

    key, label, tool = "clip_grad_norm", "torch clip_grad_norm_(1.0)", "clip_grad_norm_"

    def start(self, model, workdir):
        super().start(model, workdir)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def after_backward(self, loss, step):
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)


class GradWatch(Variant):
    """gradwatch's ``GradTracker`` writing to a SQLite file in ``workdir``."""

    tool = "gradwatch"
    dists = ("gradwatch",)

    def __init__(self, key: str, label: str, *, clip: str = "none", every: int = 1, extra: bool = False):
        self.key, self.label, self.clip, self.every, self.extra = key, label, clip, every, extra
        self.period = every

    def load(self):
        try:
            from tracker import GradTracker  # noqa: F401
        except ImportError as exc:
            return f"not available ({exc})"
        return None

    def start(self, model, workdir):
        from tracker import GradTracker

        super().start(model, workdir)
        options = {"clip": self.clip, "every": self.every}
        if self.extra:
            options["extra_stats"] = True
        self.tracker = GradTracker(model, db=str(workdir / "gradwatch.db"), run=self.key, **options)

    def after_backward(self, loss, step):
        self.tracker.step(loss=loss)

    def finish(self):
        self.tracker.finish()


class WandbWatch(Variant):
    """``wandb.watch(model, log="gradients", log_freq=N)`` on an offline run, loss logged each step."""

    tool = "wandb.watch"
    dists = ("wandb",)

    def __init__(self, log_freq: int):
        self.key = f"wandb_watch_{log_freq}"
        self.label = f"wandb.watch(log_freq={log_freq})"
        self.period = log_freq

    def load(self):
        # Offline and silent before the first import: the benchmark never touches the network.
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_MODE"] = "offline"
        return self._import("wandb")

    def start(self, model, workdir):
        import wandb

        super().start(model, workdir)
        # reinit="create_new": the log_freq=1 and log_freq=100 runs are alive side by side.
        self.run = wandb.init(
            mode="offline", dir=str(workdir), project="gradwatch-peers", name=self.key, reinit="create_new"
        )
        self.run.watch(model, log="gradients", log_freq=self.period)

    def before_block(self):
        import wandb

        # wandb's gradient hooks log to the global `wandb.run`, not to the run that watched the
        # model; with two runs alive, point it at ours (a user has one run, so this costs nothing).
        wandb.run = self.run

    def after_backward(self, loss, step):
        self.run.log({"loss": loss.item()})

    def finish(self):
        self.run.unwatch(self.model)
        self.run.finish()

    def logged(self, step):
        # wandb counts backward passes from 1 and logs when the count reaches log_freq.
        return (step + 1) % self.period == 0


class TensorBoardScalars(Variant):
    """``SummaryWriter.add_scalar`` of every parameter's gradient norm (and the loss) each step."""

    key, label, tool = "tb_scalars", "TensorBoard add_scalar per tensor", "TensorBoard scalars"
    dists = ("tensorboard",)

    def load(self):
        return self._import("tensorboard", "torch.utils.tensorboard")

    def start(self, model, workdir):
        from torch.utils.tensorboard import SummaryWriter

        super().start(model, workdir)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.writer = SummaryWriter(log_dir=str(workdir))

    def after_backward(self, loss, step):
        self.writer.add_scalar("loss", loss, step)
        for name, p in self.named:
            if p.grad is not None:
                self.writer.add_scalar(f"grad_norm/{name}", p.grad.norm(), step)

    def finish(self):
        self.writer.close()


class TensorBoardHistograms(TensorBoardScalars):
    """``SummaryWriter.add_histogram`` of every parameter's gradient (and the loss) each step."""

    key, label, tool = "tb_histograms", "TensorBoard add_histogram per tensor", "TensorBoard histograms"

    def after_backward(self, loss, step):
        self.writer.add_scalar("loss", loss, step)
        for name, p in self.named:
            if p.grad is not None:
                self.writer.add_histogram(f"grad/{name}", p.grad, step)


class LightningGradNorm(Variant):
    """``lightning.pytorch.utilities.grad_norm(model, norm_type=2)`` each step, as Lightning's docs
    show in ``on_before_optimizer_step``; its dict goes to Lightning's ``CSVLogger`` (in memory,
    flushed to CSV every 100 steps: the cheapest logger Lightning ships)."""

    key, label, tool = "lightning_grad_norm", "Lightning grad_norm + CSVLogger", "Lightning grad_norm"
    dists = ("lightning",)

    def load(self):
        return self._import("lightning.pytorch.utilities", "lightning.pytorch.loggers")

    def start(self, model, workdir):
        from lightning.pytorch.loggers import CSVLogger

        super().start(model, workdir)
        self.logger = CSVLogger(save_dir=str(workdir), name="lightning", version=0)

    def after_backward(self, loss, step):
        from lightning.pytorch.utilities import grad_norm

        norms = grad_norm(self.model, norm_type=2)
        norms["loss"] = loss.detach()
        self.logger.log_metrics(norms, step=step)

    def finish(self):
        self.logger.finalize("success")


class ItemLoop(Variant):
    """A per-parameter ``.item()`` loop (what Cockpit-style and many small tools do): one host sync
    per tensor, rows committed to a SQLite file (WAL, synchronous=NORMAL) every step."""

    key, label, tool = "item_loop", "per-tensor .item() loop → SQLite", ".item() loop → SQLite"

    def start(self, model, workdir):
        super().start(model, workdir)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.db = sqlite3.connect(workdir / "norms.db")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE layers (id INTEGER PRIMARY KEY, name TEXT)")
        self.db.execute(
            "CREATE TABLE norms (step INTEGER, layer INTEGER, norm REAL, PRIMARY KEY (step, layer))"
        )
        self.db.execute("CREATE TABLE losses (step INTEGER PRIMARY KEY, loss REAL)")
        self.db.executemany("INSERT INTO layers VALUES (?, ?)", list(enumerate(n for n, _ in self.named)))
        self.db.commit()

    def after_backward(self, loss, step):
        rows = [(step, i, p.grad.norm().item()) for i, (_, p) in enumerate(self.named) if p.grad is not None]
        self.db.executemany("INSERT INTO norms VALUES (?, ?, ?)", rows)
        self.db.execute("INSERT INTO losses VALUES (?, ?)", (step, loss.item()))
        self.db.commit()

    def finish(self):
        self.db.close()


def make_variants() -> list[Variant]:
    """Fresh variant objects, in the order of the tables."""
    return [
        Variant(),
        ClipGradNorm(),
        GradWatch("gw_none", "gradwatch clip=none"),
        GradWatch("gw_norm", "gradwatch clip=norm:1.0", clip="norm:1.0"),
        GradWatch("gw_every10", "gradwatch clip=none every=10", every=10),
        GradWatch("gw_extra", "gradwatch clip=none extra stats", extra=True),
        WandbWatch(1),
        WandbWatch(100),
        TensorBoardScalars(),
        TensorBoardHistograms(),
        LightningGradNorm(),
        ItemLoop(),
    ]


VARIANTS = tuple(v.key for v in make_variants())
