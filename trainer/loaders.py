"""The run's DataLoaders: the training batches (bucketed by length, shuffled, or sharded under DDP; skippable,
so that a resume starts mid-epoch) and the evaluation subsets (fixed, sorted by length)."""

from __future__ import annotations

import copy

import torch

from trainer.config import TrainConfig
from trainer.runtime import Runtime
from trainer.sampling import BucketBatchSampler, SkippableBatches

__all__ = ["make_loaders"]


def make_loaders(cfg: TrainConfig, splits, rt: Runtime):
    """``(training loader, its batches, evaluation loaders by split)``: the batches are the loader's batch
    sampler, whose ``skip_next_pass(n)`` skips the first ``n`` batches of the next pass (a resume)."""
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
