"""Length-bucketed batches for sequence tasks: less padding, same randomness.

A padded batch costs as much as its longest utterance times its size; random batches of digit strings
(1–3 s) carry about a third of padding. Sorting within large random pools and then shuffling the
batches keeps every epoch's order random while batching utterances of similar length together.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch

__all__ = ["BucketBatchSampler", "SkippableBatches"]


class BucketBatchSampler:
    """Batches of indices: shuffle, cut into pools of ``pool`` batches, sort each pool by length,
    cut into batches, shuffle the batches. Deterministic from ``seed`` and the epoch (``set_epoch``)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, pool: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]


class SkippableBatches:
    """A batch sampler whose next pass can start ``k`` batches in, without loading the skipped ones.

    A checkpoint saved mid-epoch resumes at its position this way: the epoch's order is drawn as it was
    (the same generator state), and its first ``k`` batches of indices are dropped before the loader
    reads a sample, so neither the data nor augmentation draws from the random state.
    """

    def __init__(self, batches):
        self.batches = batches
        self._skip = 0

    def skip_next_pass(self, k: int) -> None:
        self._skip = k

    def set_epoch(self, epoch: int) -> None:
        inner = getattr(self.batches, "sampler", self.batches)  # a BatchSampler's, or a batch sampler's own
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.batches), skip, None)
