"""Torch Datasets over precomputed log-mels, and their collate functions.

Features are computed once per split (epochs then cost only indexing); SpecAugment, when given, is applied per
item at ``__getitem__`` time, so each epoch sees new masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["KeywordDataset", "SequenceDataset", "collate_keywords", "collate_sequences"]


class KeywordDataset(Dataset):
    """Items ``(features[1, n_mels, frames] float32, class index int)``."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, augment: Callable | None = None):
        if features.ndim != 3 or len(features) != len(targets):
            raise ValueError(
                f"features {tuple(features.shape)} and targets {tuple(targets.shape)} do not match"
            )
        self.features = features
        self.targets = targets.long()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.features[i].unsqueeze(0)
        if self.augment is not None:
            x = self.augment(x)
        return x, int(self.targets[i])


class SequenceDataset(Dataset):
    """Items ``(features[1, n_mels, T_i] float32, ids LongTensor[L_i])`` (ids >= 1; 0 is the CTC blank)."""

    def __init__(
        self,
        features: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        augment: Callable | None = None,
    ):
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} feature sequences but {len(targets)} targets")
        self.features = list(features)
        self.targets = [t.long() for t in targets]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.features[i].unsqueeze(0)
        if self.augment is not None:
            x = self.augment(x)
        return x, self.targets[i]

    def lengths(self) -> list[int]:
        """Frames per item (for length-bucketed batching)."""
        return [f.shape[-1] for f in self.features]


def collate_keywords(batch):
    """-> ``(x[B, 1, n_mels, frames], y[B] long)``."""
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def collate_sequences(batch):
    """-> ``(x[B, 1, n_mels, T_max], y[B, L_max], x_lens[B], y_lens[B])``.

    Features are zero-padded at the end (0 is the mean of a normalised log-mel); targets are padded with 0
    (the blank, never a real label), the layout ``torch.nn.functional.ctc_loss`` accepts with ``y_lens``.
    """
    xs, ys = zip(*batch, strict=True)
    x_lens = torch.tensor([x.shape[-1] for x in xs], dtype=torch.long)
    y_lens = torch.tensor([len(y) for y in ys], dtype=torch.long)
    x = xs[0].new_zeros(len(xs), *xs[0].shape[:-1], int(x_lens.max()))
    y = torch.zeros(len(ys), int(y_lens.max()), dtype=torch.long)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        x[i, ..., : xi.shape[-1]] = xi
        y[i, : len(yi)] = yi
    return x, y, x_lens, y_lens
