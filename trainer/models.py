"""The trainer's models: two keyword classifiers and two CTC sequence models.

Every model takes log-mel features ``x`` shaped ``[batch, 1, n_mels, frames]``.

* Classifiers (``kind == "classify"``) return logits ``[batch, n_classes]``.
* CTC models (``kind == "ctc"``) take ``lengths`` (valid frames per utterance) and return
  ``(log_probs [batch, time, vocab], out_lengths)``; ``log_probs`` are float32 log-softmax outputs
  (CTC in half precision is unstable, so the head always works in float32), blank is index 0.

``build_model(name, ...)`` is the one entry point; ``MODEL_TASKS`` is the compatibility table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODELS",
    "MODEL_TASKS",
    "MODEL_DEFAULTS",
    "SeedCNN",
    "ResNetKWS",
    "CRNNCTC",
    "ConformerCTC",
    "build_model",
    "model_kind",
]

# Which task each model can learn. Classifiers need one label per clip; CTC models need a sequence.
MODEL_TASKS: dict[str, tuple[str, ...]] = {
    "seed-cnn": ("keywords",),
    "resnet-kws": ("keywords",),
    "crnn-ctc": ("digits", "characters"),
    "conformer-ctc": ("digits", "characters"),
}
MODELS = tuple(MODEL_TASKS)

# Architecture defaults; ``None`` on the command line means "this model's default".
MODEL_DEFAULTS: dict[str, dict] = {
    "seed-cnn": {"dropout": 0.0},
    "resnet-kws": {"dropout": 0.1, "hidden_size": 64},
    "crnn-ctc": {"dropout": 0.1, "hidden_size": 128, "num_layers": 2, "rnn_type": "gru"},
    "conformer-ctc": {"dropout": 0.1, "hidden_size": 144, "num_layers": 4, "rnn_type": "gru"},
}


class SeedCNN(nn.Module):
    """The seed document's ``SpeechRecognitionModel``, layer for layer, on 1×32×32 inputs.

    conv 1→32, conv 32→64 (3×3, padding 1, ReLU), avg-pool 2, fc 64·16·16→512, ReLU, fc 512→classes.
    ``dropout`` (default 0, i.e. exactly the seed) sits between the two fully connected layers.
    """

    kind = "classify"

    def __init__(self, n_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(64 * 16 * 16, 512)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"seed-cnn needs 32 mel × 32 frame inputs, got {tuple(x.shape[-2:])}")
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.pool(x).flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class _ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetKWS(nn.Module):
    """A small residual CNN for keywords: stem, three residual stages (×1, ×2, ×2 width; the
    last two halve the resolution), global average pooling, dropout, linear. Any input size."""

    kind = "classify"

    def __init__(self, n_classes: int = 10, hidden_size: int = 64, dropout: float = 0.1):
        super().__init__()
        w = hidden_size
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(
            _ResidualBlock(w, w, 1), _ResidualBlock(w, 2 * w, 2), _ResidualBlock(2 * w, 2 * w, 2)
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * w, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


class _ConvSubsample(nn.Module):
    """Two 3×3 convolutions; the second has stride 2 in both axes, so time is halved (CTC output
    rate 20 ms for 10 ms features: still several frames per spoken digit)."""

    def __init__(self, n_mels: int, channels: int = 32):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.out_features = channels * ((n_mels + 1) // 2)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """Output frames of inputs of ``lengths`` frames: the stride-2 convolution (kernel 3, padding 1) gives
        ``(lengths + 1) // 2``, at least 1."""
        return torch.div(lengths + 1, 2, rounding_mode="floor").clamp(min=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Padded frames are zeroed before each convolution: BatchNorm's shift and the ReLU make them non-zero,
        # and a 3×3 kernel at an utterance's last frames would read them, so its output would depend on how
        # long its batch-mates are. Zeros there are what the convolution's own padding gives it alone.
        conv = self.conv
        x = conv[2](conv[1](conv[0](_zero_padding(x, lengths))))
        x = conv[5](conv[4](conv[3](_zero_padding(x, lengths))))  # [B, C, F', T']
        out_lengths = self.output_lengths(lengths).clamp(max=x.shape[-1])
        x = _zero_padding(x, out_lengths).permute(0, 3, 1, 2).flatten(2)  # [B, T', C·F']
        return x, out_lengths


def _valid_frames(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, frames]``: True on each utterance's first ``lengths[b]`` frames."""
    return torch.arange(frames, device=lengths.device) < lengths[:, None]


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` (time last) with every frame past its utterance's length set to 0."""
    valid = _valid_frames(lengths, x.shape[-1])
    return x.masked_fill(~valid.view(x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1]), 0)


def _zero_padding_hook(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of a depthwise convolution inside torchaudio's Conformer: zero the padded frames of
    its input ``[B, C, T]`` (``module.valid_frames``, set by ConformerCTC.forward for one call)."""
    valid = getattr(module, "valid_frames", None)
    if valid is None:
        return None
    return (args[0].masked_fill(~valid[:, None, :], 0), *args[1:])


def _full_lengths(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[-1], dtype=torch.long, device=x.device)
    return lengths.to(device=x.device, dtype=torch.long)


class CRNNCTC(nn.Module):
    """Conv front end + bidirectional GRU/LSTM stack + linear CTC head (blank = 0).

    Recurrent nets are where exploding gradients are classic (Pascanu et al. 2013): this is the
    model of the clipping showcase.
    """

    kind = "ctc"

    def __init__(
        self,
        n_mels: int,
        vocab_size: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        rnn_type: str = "gru",
        dropout: float = 0.1,
    ):
        super().__init__()
        if rnn_type not in ("gru", "lstm"):
            raise ValueError(f"rnn_type must be 'gru' or 'lstm', got {rnn_type!r}")
        self.frontend = _ConvSubsample(n_mels)
        self.proj = nn.Linear(self.frontend.out_features, hidden_size)
        rnn_cls = nn.GRU if rnn_type == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            hidden_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_size, vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of the log-probabilities for inputs of ``lengths`` feature frames (the CTC loss aligns the
        transcript to these): half as many, as the front end subsamples time by 2."""
        return self.frontend.output_lengths(lengths)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.frontend(x, _full_lengths(x, lengths))
        x = self.dropout(F.relu(self.proj(x)))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, out_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        y, _ = self.rnn(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        logits = self.head(self.dropout(y))
        return F.log_softmax(logits.float(), dim=-1), out_lengths


class ConformerCTC(nn.Module):
    """Conv subsampling + linear input projection + ``torchaudio.models.Conformer`` + linear CTC head."""

    kind = "ctc"

    def __init__(
        self,
        n_mels: int,
        vocab_size: int,
        hidden_size: int = 144,
        num_layers: int = 4,
        dropout: float = 0.1,
        num_heads: int = 4,
        kernel_size: int = 15,
    ):
        super().__init__()
        from torchaudio.models import Conformer  # imported here: the classifiers do not need torchaudio

        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
        self.frontend = _ConvSubsample(n_mels)
        self.proj = nn.Linear(self.frontend.out_features, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.conformer = Conformer(
            input_dim=hidden_size,
            num_heads=num_heads,
            ffn_dim=4 * hidden_size,
            num_layers=num_layers,
            depthwise_conv_kernel_size=kernel_size,
            dropout=dropout,
        )
        self.head = nn.Linear(hidden_size, vocab_size)
        # torchaudio's Conformer masks padded frames in attention only; its depthwise convolutions (kernel 15)
        # read up to 7 of them past an utterance's end. A pre-hook zeroes them there: a hook, not a wrapper
        # module, so parameter names (the tracker's layers, checkpoints) stay torchaudio's.
        self._depthwise = [m for m in self.conformer.modules() if isinstance(m, nn.Conv1d) and m.groups > 1]
        for conv in self._depthwise:
            conv.register_forward_pre_hook(_zero_padding_hook)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of the log-probabilities for inputs of ``lengths`` feature frames (the CTC loss aligns the
        transcript to these): half as many, as the front end subsamples time by 2 (the Conformer keeps
        them)."""
        return self.frontend.output_lengths(lengths)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.frontend(x, _full_lengths(x, lengths))
        x = self.dropout(self.proj(x))
        valid = _valid_frames(out_lengths, x.shape[1])
        for conv in self._depthwise:
            conv.valid_frames = valid
        try:
            y, out_lengths = self.conformer(x, out_lengths)
        finally:
            for conv in self._depthwise:
                conv.valid_frames = None
        return F.log_softmax(self.head(y).float(), dim=-1), out_lengths


def model_kind(name: str) -> str:
    """``"classify"`` or ``"ctc"`` for a model name (ValueError for an unknown name)."""
    _check_name(name)
    return "classify" if name in ("seed-cnn", "resnet-kws") else "ctc"


def _check_name(name: str) -> None:
    if name not in MODEL_TASKS:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")


def build_model(
    name: str,
    *,
    n_classes: int,
    n_mels: int = 32,
    dropout: float | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    rnn_type: str | None = None,
) -> nn.Module:
    """Build a model by name. ``n_classes`` is the number of classes (classifiers) or the CTC
    vocabulary size including the blank (CTC models). ``None`` options take ``MODEL_DEFAULTS``."""
    _check_name(name)
    d = MODEL_DEFAULTS[name]

    def pick(key, value):
        return d.get(key) if value is None else value

    if name == "seed-cnn":
        return SeedCNN(n_classes, dropout=pick("dropout", dropout))
    if name == "resnet-kws":
        return ResNetKWS(
            n_classes, hidden_size=pick("hidden_size", hidden_size), dropout=pick("dropout", dropout)
        )
    if name == "crnn-ctc":
        return CRNNCTC(
            n_mels,
            n_classes,
            hidden_size=pick("hidden_size", hidden_size),
            num_layers=pick("num_layers", num_layers),
            rnn_type=pick("rnn_type", rnn_type),
            dropout=pick("dropout", dropout),
        )
    return ConformerCTC(
        n_mels,
        n_classes,
        hidden_size=pick("hidden_size", hidden_size),
        num_layers=pick("num_layers", num_layers),
        dropout=pick("dropout", dropout),
    )
