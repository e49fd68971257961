"""``--resume``: a checkpoint read and checked before anything slow is done for it, then restored.

In the order a resume meets them: ``read_checkpoint`` refuses a checkpoint saved with other settings or by
another number of processes, before the data is loaded; ``CorpusCheck``, handed to the loader, refuses one
whose train split changed on disk, before any feature is computed (minutes on a real corpus); ``restore``
loads its weights and the optimizer, LR schedule and AMP scaler states once they are built. What a checkpoint
holds and how it is compared is ``trainer.checkpoint``'s; this module says it as the CLI does (``--resume:``,
exit code 2).
"""

from __future__ import annotations

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.errors import TrainingError
from trainer.runtime import Runtime

__all__ = ["read_checkpoint", "CorpusCheck", "restore"]


def read_checkpoint(cfg: TrainConfig, rt: Runtime) -> dict | None:
    """``--resume``: the checkpoint at ``--checkpoint``, refused when saved with other settings or by another
    number of processes; None when there is no file (a first start)."""
    try:
        saved = ckpt.load(cfg.checkpoint)
        if saved is not None:
            ckpt.check_compatible(saved["config"], cfg.to_dict(), cfg.checkpoint)
            ckpt.check_world_size(saved, rt.world_size, cfg.checkpoint)
    except (ValueError, RuntimeError, KeyError) as e:
        raise TrainingError(f"--resume: {e}") from None
    return saved


class CorpusCheck:
    """``load_task(before_features=...)`` for a resume: refuses (TrainingError) a corpus whose train split is
    not the one the checkpoint ``saved`` was saved with (``checkpoint.check_same_corpus``). What the check
    says without refusing (a changed val or test split; a checkpoint saved without the record) is kept in
    ``warning``, to be printed after the loader's own warnings."""

    def __init__(self, saved: dict, path: str):
        self.saved, self.path = saved, path
        self.warning: str | None = None

    def __call__(self, record: dict) -> None:
        try:
            self.warning = ckpt.check_same_corpus(self.saved, record, self.path)
        except (ValueError, KeyError) as e:
            raise TrainingError(f"--resume: {e}") from None


def restore(saved: dict, model, optimizer, scheduler, scaler) -> None:
    """The training state in the checkpoint ``saved`` loaded into the model, optimizer, LR schedule and AMP
    scaler."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise TrainingError(f"--resume: {e}") from None
