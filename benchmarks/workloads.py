"""The three workloads of the peer benchmark: a model, one fixed synthetic batch and its loss.

M1  the seed document's CNN (8.4M parameters, 8 tensors), 1×32×32 inputs, batch 64, cross-entropy.
M2  a 12-layer ``nn.TransformerEncoder`` (d_model 256, 8 heads, ~150 parameter tensors), token
    classification over a 1,000-word vocabulary, cross-entropy.
M3  the trainer's recurrent CTC model (``crnn-ctc``: conv front end + 2-layer BiGRU(128) + linear),
    batch 32 × 100 frames × 40 mel, CTC loss.

The batch is generated once and reused: the benchmark measures the cost of monitoring a step,
not data loading. M1 and M3 come from ``trainer.models`` when the trainer imports, so the
benchmark trains exactly what the trainer trains; a local definition of the same layers is the
fallback (recorded in ``Workload.source``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WORKLOADS", "Workload", "build_workload"]

WORKLOADS = ("m1", "m2", "m3")


@dataclass
class Workload:
    key: str  # "m1", "m2", "m3"
    title: str  # short human name for tables
    model: nn.Module  # the initial model; each variant trains its own deep copy
    batch: tuple  # tensors already on the device
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor]
    source: str  # where the model class came from ("trainer.models" or "benchmarks.workloads")
    shape: str  # batch description for the table

    @property
    def n_tensors(self) -> int:
        return sum(1 for p in self.model.parameters() if p.requires_grad)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _trainer_build_model():
    # The trainer package is built concurrently and imports its CLI on import; any failure there
    # must not stop the benchmark, which then uses the local definitions below.
    try:
        from trainer.models import build_model
    except Exception:  # noqa: BLE001 - ImportError or an error inside a half-built trainer
        return None
    return build_model


class _SeedCNN(nn.Module):
    """Fallback M1: conv 1→32, conv 32→64 (3×3, p=1, ReLU), avg-pool 2, fc 16384→512→10."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(64 * 16 * 16, 512)
        self.fc2 = nn.Linear(512, n_classes)

    def forward(self, x, lengths=None):
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(x))))).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class _CRNNCTC(nn.Module):
    """Fallback M3: conv front end (time stride 2) + 2-layer BiGRU(128) + linear CTC head."""

    def __init__(self, n_mels: int = 40, vocab_size: int = 11, hidden: int = 128):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU()
        )
        self.proj = nn.Linear(32 * ((n_mels + 1) // 2), hidden)
        self.rnn = nn.GRU(hidden, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, vocab_size)

    def forward(self, x, lengths=None):
        x = self.conv(x).permute(0, 3, 1, 2).flatten(2)  # [B, T', C·F']
        y, _ = self.rnn(F.relu(self.proj(x)))
        out_lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return F.log_softmax(self.head(y).float(), dim=-1), out_lengths


class _TransformerClassifier(nn.Module):
    """M2: embedding + 12 post-norm encoder layers + linear head: 2 + 12·12 + 2 = 148 tensors."""

    def __init__(self, vocab: int = 1000, d_model: int = 256, nhead: int = 8, layers: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=4 * d_model, batch_first=True)
        # enable_nested_tensor only matters for padded inference; off to silence its warning.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)
        self.pos = nn.Parameter(torch.zeros(1, 512, d_model))

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        return self.head(self.encoder(h))


def _ctc_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, lengths, targets, target_lengths = batch
    log_probs, out_lengths = model(x, lengths)
    return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0)


def _classify_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _token_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    tokens, y = batch
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def build_workload(
    key: str, device: str = "cpu", *, batch_size: int | None = None, seed: int = 0
) -> Workload:
    """Build workload ``key`` (one of ``WORKLOADS``) on ``device``; ``batch_size`` overrides the default."""
    if key not in WORKLOADS:
        raise ValueError(f"unknown workload {key!r}; accepted: {', '.join(WORKLOADS)}")
    torch.manual_seed(seed)
    build_model = _trainer_build_model()
    gen = torch.Generator().manual_seed(seed)
    if key == "m1":
        b = batch_size or 64
        if build_model is not None:
            model, source = build_model("seed-cnn", n_classes=10), "trainer.models (seed-cnn)"
        else:
            model, source = _SeedCNN(), "benchmarks.workloads"
        batch = (torch.randn(b, 1, 32, 32, generator=gen), torch.randint(0, 10, (b,), generator=gen))
        return Workload(
            "m1",
            "M1 seed CNN",
            model.to(device),
            tuple(t.to(device) for t in batch),
            _classify_loss,
            source,
            f"{b}×1×32×32",
        )
    if key == "m2":
        # 4×64 tokens keeps the full run within ~10 minutes on 2 cores; a small batch makes the
        # per-tensor costs of monitoring weigh more, not less.
        b, length = batch_size or 4, 64
        model = _TransformerClassifier()
        batch = (
            torch.randint(0, 1000, (b, length), generator=gen),
            torch.randint(0, 1000, (b, length), generator=gen),
        )
        return Workload(
            "m2",
            "M2 Transformer-12",
            model.to(device),
            tuple(t.to(device) for t in batch),
            _token_loss,
            "benchmarks.workloads",
            f"{b}×{length} tokens",
        )
    b, frames, mels, vocab = batch_size or 32, 100, 40, 11  # vocab: blank + 10 digits
    if build_model is not None:
        model, source = build_model("crnn-ctc", n_classes=vocab, n_mels=mels), "trainer.models (crnn-ctc)"
    else:
        model, source = _CRNNCTC(mels, vocab), "benchmarks.workloads"
    target_lengths = torch.randint(2, 6, (b,), generator=gen)
    batch = (
        torch.randn(b, 1, mels, frames, generator=gen),
        torch.full((b,), frames, dtype=torch.long),
        torch.randint(1, vocab, (int(target_lengths.sum()),), generator=gen),
        target_lengths,
    )
    return Workload(
        "m3",
        "M3 CRNN-CTC",
        model.to(device),
        tuple(t.to(device) for t in batch),
        _ctc_loss,
        source,
        f"{b}×{frames} frames×{mels} mel",
    )
