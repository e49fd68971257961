"""Features with torchaudio: log-mel (MelSpectrogram + AmplitudeToDB), SpecAugment, resampling to 16 kHz.

Two shapes of input:
- keywords: fixed 1 s clips -> exactly ``frames`` frames. With ``center=True`` a clip of ``L`` samples
  gives ``1 + L // hop`` frames, so ``hop = L // (frames - 1)`` (16,000 // 31 = 516 samples, 32.25 ms) gives
  32 frames for 32 x 32 inputs (the seed CNN's shape); window and FFT 640 samples (40 ms).
- sequences (digits, transcripts): 25 ms window (400 samples), 10 ms hop (160), variable number of frames.
Each log-mel is normalised per utterance (zero mean, unit variance over the whole spectrogram) so that
loudness, microphone gain and a corpus's recording level do not matter and no global statistics are stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torchaudio

__all__ = [
    "SAMPLE_RATE",
    "FeatureSpec",
    "keyword_features",
    "sequence_features",
    "LogMel",
    "SpecAugment",
    "to_sample_rate",
]

SAMPLE_RATE = 16_000  # every corpus is brought to 16 kHz before features


@dataclass(frozen=True)
class FeatureSpec:
    """Log-mel parameters; ``frames`` fixes the number of frames (crop/pad at the end) or None (variable)."""

    n_mels: int
    n_fft: int
    win_length: int
    hop_length: int
    frames: int | None = None
    top_db: float = 80.0
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if self.n_mels < 1 or self.n_fft < 2 or self.hop_length < 1 or self.win_length > self.n_fft:
            raise ValueError(f"invalid log-mel parameters {self}")
        if self.frames is not None and self.frames < 2:
            raise ValueError(f"frames={self.frames}: need at least 2 frames (or None for variable length)")

    def key(self) -> str:
        """A short hash naming this parameter set (feature caches are keyed by it)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def keyword_features(n_mels: int = 32, frames: int = 32, clip_samples: int = SAMPLE_RATE) -> FeatureSpec:
    """Fixed-size log-mels for 1 s keyword clips: ``frames`` frames exactly (hop = clip // (frames - 1))."""
    if frames < 2:
        raise ValueError(f"frames={frames}: need at least 2")
    hop = clip_samples // (frames - 1)
    window = min(640, max(2 * hop, 64))
    return FeatureSpec(n_mels=n_mels, n_fft=window, win_length=window, hop_length=hop, frames=frames)


def sequence_features(n_mels: int = 40) -> FeatureSpec:
    """Variable-length log-mels for sequence tasks: 25 ms window, 10 ms hop."""
    return FeatureSpec(n_mels=n_mels, n_fft=400, win_length=400, hop_length=160, frames=None)


class LogMel(torch.nn.Module):
    """Waveforms ``[..., samples]`` at ``spec.sample_rate`` -> normalised log-mels ``[..., n_mels, T]``."""

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=spec.sample_rate,
            n_fft=spec.n_fft,
            win_length=spec.win_length,
            hop_length=spec.hop_length,
            n_mels=spec.n_mels,
            power=2.0,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=spec.top_db)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        lead = wav.shape[:-1]
        x = self._normalised_db(self.mel(wav.reshape(-1, 1, wav.shape[-1])))  # [B, 1, n_mels, T]
        x = x.reshape(*lead, self.spec.n_mels, x.shape[-1])
        if self.spec.frames is not None:
            x = _fix_frames(x, self.spec.frames)
        return x

    def _normalised_db(self, mel: torch.Tensor) -> torch.Tensor:
        # AmplitudeToDB's top_db floor uses the max over the last three dims: one channel per utterance
        # ([B, 1, n_mels, T]) keeps the floor per utterance ([B, n_mels, T] would share it across the batch).
        db = self.to_db(mel)
        mean = db.mean(dim=(-2, -1), keepdim=True)
        std = db.std(dim=(-2, -1), keepdim=True)
        return (db - mean) / (std + 1e-5)


def _fix_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop or zero-pad the last dim to ``frames`` (zero = the mean of a normalised log-mel)."""
    t = x.shape[-1]
    if t >= frames:
        return x[..., :frames]
    return torch.nn.functional.pad(x, (0, frames - t))


class SpecAugment(torch.nn.Module):
    """SpecAugment (Park et al., 2019) without time warping: ``n_masks`` frequency and time masks.

    Applied to ``[..., n_mels, frames]`` on the training split only; masks are filled with 0, the mean of a
    normalised log-mel. Randomness comes from torch's global generator (seeded by the training loop).
    """

    def __init__(self, freq_mask: int, time_mask: int, n_masks: int = 2):
        super().__init__()
        if freq_mask < 0 or time_mask < 0 or n_masks < 0:
            raise ValueError(
                f"SpecAugment needs non-negative sizes, got {freq_mask=}, {time_mask=}, {n_masks=}"
            )
        self.n_masks = n_masks
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask_param=freq_mask)
        self.time = torchaudio.transforms.TimeMasking(time_mask_param=time_mask)

    @classmethod
    def for_spec(cls, spec: FeatureSpec) -> SpecAugment:
        """Defaults: masks up to 1/8 of the mel bands; time masks up to 1/8 of a fixed-size clip, or 20
        frames (200 ms) for variable-length sequences (LibriSpeech's "LD" policy: 27 bands, 100 frames)."""
        time_mask = spec.frames // 8 if spec.frames else 20
        return cls(freq_mask=max(1, spec.n_mels // 8), time_mask=max(1, time_mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_masks):
            x = self.freq(x)
            x = self.time(x)
        return x

    def extra_repr(self) -> str:
        return f"freq_mask={self.freq.mask_param}, time_mask={self.time.mask_param}, n_masks={self.n_masks}"


@lru_cache(maxsize=8)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)  # builds its sinc kernel once per rate pair


def to_sample_rate(wav: torch.Tensor, orig: int, new: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample ``[..., samples]`` from ``orig`` Hz to ``new`` Hz (no-op when equal)."""
    if orig <= 0:
        raise ValueError(f"sample rate {orig} Hz is not positive")
    if orig == new:
        return wav
    return _resampler(orig, new)(wav)
