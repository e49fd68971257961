"""The built-in spoken corpora, generated offline with eSpeak NG and cached on disk.

Speakers: every packaged voice variant (``f3``, ``m1``, ``croak``, ``whisper``, ... about 100) is one
speaker, paired with one English accent (``en``, ``en-us``, ``en-gb-scotland``, ...) to give voices such as
``en-us+f3``. Speakers are split 80/10/10 into train/val/test, so validation and test voices are never heard
in training (as in real benchmarks). Each utterance draws a speaking rate, a pitch, a noise colour (white,
pink or brown), an SNR and a time shift, all from ``numpy.random.default_rng([seed, speaker, rep, item])``,
so a corpus is a pure function of its parameters, whatever the generation order.

- ``keywords``: the 10 core Speech Commands words, one 1 s clip each, the word centred +- 100 ms (the time
  shift of TensorFlow's Speech Commands recipe; words anywhere in the second cost ~10 points of accuracy).
- ``digits``: strings of 2-5 digits read as words ("three one four"), 50-300 ms of silence before and after.

Cache layout ``<cache_dir>/<task>-<hash of params>/``: ``manifest.json`` + ``train.npz`` / ``val.npz`` /
``test.npz``, each holding all waveforms of the split as one int16 array at 16 kHz (``audio``) cut by
``offsets`` (N + 1 sample indices), the ``texts`` spoken, the ``voices`` (index into the manifest's voice
list of the split) and ``targets`` (class index for keywords; -1 for digits: their targets are the texts).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import espeak
from .cache import locked, params_hash, write_atomically
from .errors import DataError
from .features import SAMPLE_RATE, to_sample_rate

__all__ = [
    "KEYWORDS",
    "DIGIT_WORDS",
    "ACCENTS",
    "SIZES",
    "SynthSpec",
    "SynthSplit",
    "synth_spec",
    "assign_voices",
    "load_or_generate",
]

VERSION = 2  # 2: eSpeak NG's random generator seeded (version 1 corpora depended on the time)
SPLITS = ("train", "val", "test")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# English voices of eSpeak NG that differ in pronunciation (the library matches names case-insensitively).
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
# reps = renditions per (speaker, word) for keywords, digit strings per speaker for digits;
# no n_voices = every speaker.
SIZES = {
    "keywords": {"tiny": dict(n_voices=6, reps=1), "small": dict(reps=4), "full": dict(reps=10)},
    "digits": {"tiny": dict(n_voices=6, reps=4), "small": dict(reps=60), "full": dict(reps=150)},
}


@dataclass(frozen=True)
class SynthSpec:
    """Every parameter that changes the generated audio (the cache folder is named by their hash)."""

    task: str
    seed: int = 0
    n_voices: int | None = None  # None: every packaged voice variant
    reps: int = 3
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    rate_wpm: tuple[int, int] = (140, 210)
    pitch: tuple[int, int] = (25, 75)
    snr_db: tuple[float, float] = (15.0, 35.0)
    clip_seconds: float = 1.0  # keywords
    max_shift_seconds: float | None = 0.1  # keywords: word centred +- this; None = anywhere in the clip
    pad_seconds: tuple[float, float] = (0.05, 0.3)  # digits: silence before and after
    n_digits: tuple[int, int] = (2, 5)

    def __post_init__(self):
        if self.task not in SIZES:
            raise ValueError(f"built-in corpus task {self.task!r} is not one of {sorted(SIZES)}")
        if self.reps < 1:
            raise ValueError(f"reps={self.reps}: need at least 1 utterance per speaker")
        if self.n_voices is not None and self.n_voices < 3:
            raise ValueError(f"n_voices={self.n_voices}: need at least 3 speakers (one per split)")
        if abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split={self.split}: three positive fractions summing to 1 (train, val, test)")


def synth_spec(task: str, size: str | int = "small", seed: int = 0) -> SynthSpec:
    """The spec of a size preset (``tiny``, ``small``, ``full``) or of ``size`` reps with every speaker."""
    if task not in SIZES:
        raise ValueError(f"the built-in corpus has tasks {sorted(SIZES)}, not {task!r}")
    if isinstance(size, bool) or not isinstance(size, (str, int)):
        raise ValueError(f"size={size!r}: use one of {sorted(SIZES[task])} or a positive int")
    if isinstance(size, int):
        return SynthSpec(task=task, seed=seed, reps=size)
    if size not in SIZES[task]:
        raise ValueError(f"size={size!r}: use one of {sorted(SIZES[task])} or a positive int")
    return SynthSpec(task=task, seed=seed, **SIZES[task][size])


def assign_voices(spec: SynthSpec, variants: list[str]) -> dict[str, list[str]]:
    """Speakers per split (disjoint): variants shuffled by the seed, each paired with one accent."""
    order = np.random.default_rng([spec.seed, 7]).permutation(len(variants))
    if spec.n_voices is not None:
        if spec.n_voices > len(variants):
            raise ValueError(f"n_voices={spec.n_voices}: eSpeak NG has only {len(variants)} voice variants")
        order = order[: spec.n_voices]
    voices = [f"{ACCENTS[k % len(ACCENTS)]}+{variants[i]}" for k, i in enumerate(order)]
    n = len(voices)
    n_val = max(1, round(spec.split[1] * n))
    n_test = max(1, round(spec.split[2] * n))
    n_train = n - n_val - n_test
    return {
        "train": voices[:n_train],
        "val": voices[n_train : n_train + n_val],
        "test": voices[n_train + n_val :],
    }


@dataclass
class SynthSplit:
    """One split of a generated corpus, as stored: int16 audio at 16 kHz cut by offsets."""

    audio: np.ndarray
    offsets: np.ndarray
    texts: np.ndarray
    voices: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def waveform(self, i: int) -> np.ndarray:
        """Utterance ``i`` as float32 in [-1, 1]."""
        return self.audio[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32768.0

    @classmethod
    def load(cls, path: Path) -> SynthSplit:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in ("audio", "offsets", "texts", "voices", "targets")})

    def save(self, path: Path) -> None:
        np.savez(path, **asdict(self))


def load_or_generate(spec: SynthSpec, cache_dir: Path) -> tuple[dict, dict[str, SynthSplit]]:
    """The corpus of ``spec`` from ``cache_dir`` (generated and cached first if absent).

    Returns ``(manifest, {"train": SynthSplit, "val": ..., "test": ...})``; ``manifest["cache_hit"]`` tells
    whether this call found the corpus on disk.
    """
    variants = espeak.voice_variants()
    params = {"version": VERSION, **asdict(spec), "variants": variants, "sample_rate": SAMPLE_RATE}
    name = f"{spec.task}-{params_hash(params)}"
    folder = Path(cache_dir) / name
    with locked(Path(cache_dir), name):
        hit = (folder / "manifest.json").exists()
        if not hit:
            with write_atomically(folder) as tmp:
                _generate(spec, params, variants, tmp)
        manifest = json.loads((folder / "manifest.json").read_text())
    splits = {s: SynthSplit.load(folder / f"{s}.npz") for s in SPLITS}
    manifest.update(cache_hit=hit, path=str(folder))
    return manifest, splits


def _generate(spec: SynthSpec, params: dict, variants: list[str], out: Path) -> None:
    start = time.perf_counter()
    voices = assign_voices(spec, variants)
    counts = {}
    for split in SPLITS:
        data = _generate_split(spec, voices[split], variants)
        data.save(out / f"{split}.npz")
        counts[split] = len(data)
    seconds = time.perf_counter() - start
    labels = list(KEYWORDS) if spec.task == "keywords" else list(DIGIT_WORDS)
    manifest = {
        "version": VERSION,
        "task": spec.task,
        "params": params,
        "labels": labels,
        "voices": voices,
        "counts": counts,
        "generation_seconds": round(seconds, 3),
        "created": time.time(),
        "espeak_sample_rate": espeak.sample_rate(),
        "sample_rate": SAMPLE_RATE,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _generate_split(spec: SynthSpec, voices: list[str], variants: list[str]) -> SynthSplit:
    clips, texts, voice_ids, targets = [], [], [], []
    for v, voice in enumerate(voices):
        speaker = variants.index(voice.split("+", 1)[1])  # stable id whatever the split assignment
        # (rng, text spoken, text stored, target) per utterance of this speaker
        items = []
        for rep in range(spec.reps):
            if spec.task == "keywords":
                for w, word in enumerate(KEYWORDS):
                    items.append((np.random.default_rng([spec.seed, speaker, rep, w]), word, word, w))
            else:
                rng = np.random.default_rng([spec.seed, speaker, rep, 1000])
                digits = rng.integers(0, 10, size=rng.integers(spec.n_digits[0], spec.n_digits[1] + 1))
                spoken = " ".join(DIGIT_WORDS[d] for d in digits)
                items.append((rng, spoken, "".join(str(d) for d in digits), -1))
        speech = _speak_all(spec, voice, items)
        finish = _keyword_clip if spec.task == "keywords" else _digits_clip
        for (rng, _, text, target), wav in zip(items, speech, strict=True):
            clips.append(finish(spec, rng, wav))
            texts.append(text)
            targets.append(target)
            voice_ids.append(v)
    offsets = np.zeros(len(clips) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in clips], out=offsets[1:])
    audio = np.concatenate(clips) if clips else np.zeros(0, dtype=np.int16)
    return SynthSplit(
        audio, offsets, np.array(texts), np.array(voice_ids, np.int32), np.array(targets, np.int64)
    )


def _speak_all(spec: SynthSpec, voice: str, items: list) -> list[np.ndarray]:
    """Synthesise one speaker's utterances (random rate and pitch each); float32 at 16 kHz.

    Resampled in one batch: torchaudio zero-pads the input anyway, so padding the shorter utterances to the
    longest and cutting each output at ``ceil(n * 16000 / 22050)`` samples gives the same samples (to float
    rounding) as one call per utterance, for one convolution instead of hundreds.
    """
    espeak.reset()  # the library's output depends on what it spoke before: start each speaker afresh
    raws = []
    for rng, spoken, _, _ in items:
        rate = int(rng.integers(spec.rate_wpm[0], spec.rate_wpm[1] + 1))
        pitch = int(rng.integers(spec.pitch[0], spec.pitch[1] + 1))
        raw = espeak.synthesize(spoken, voice=voice, rate=rate, pitch=pitch)
        if raw.size == 0 or np.abs(raw).max() == 0:
            raise DataError(f"eSpeak NG produced silence for {spoken!r} with voice {voice!r}")
        raws.append(raw)
    orig = espeak.sample_rate()
    batch = np.zeros((len(raws), max(len(r) for r in raws)), dtype=np.float32)
    for i, r in enumerate(raws):
        batch[i, : len(r)] = r / 32768.0
    out = to_sample_rate(torch.from_numpy(batch), orig, SAMPLE_RATE).numpy()
    return [out[i, : -(-len(r) * SAMPLE_RATE // orig)] for i, r in enumerate(raws)]


def _keyword_clip(spec: SynthSpec, rng: np.random.Generator, speech: np.ndarray) -> np.ndarray:
    n = int(round(spec.clip_seconds * SAMPLE_RATE))
    if len(speech) > n:  # a slow voice: keep the middle second
        start = (len(speech) - n) // 2
        speech = speech[start : start + n]
    clip = np.zeros(n, dtype=np.float32)
    lo, hi = 0, n - len(speech)
    if spec.max_shift_seconds is not None:
        centre, max_shift = (n - len(speech)) // 2, int(spec.max_shift_seconds * SAMPLE_RATE)
        lo, hi = max(lo, centre - max_shift), min(hi, centre + max_shift)
    shift = int(rng.integers(lo, hi + 1))
    clip[shift : shift + len(speech)] = speech
    return _add_noise(spec, rng, clip, speech)


def _digits_clip(spec: SynthSpec, rng: np.random.Generator, speech: np.ndarray) -> np.ndarray:
    before, after = (int(rng.uniform(*spec.pad_seconds) * SAMPLE_RATE) for _ in range(2))
    clip = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
    return _add_noise(spec, rng, clip, speech)


def _add_noise(spec: SynthSpec, rng: np.random.Generator, clip: np.ndarray, speech: np.ndarray) -> np.ndarray:
    """Add white, pink or brown noise at a random SNR (relative to the speech's power); return int16."""
    alpha = int(rng.integers(0, 3))  # noise power spectrum ~ 1 / f**alpha
    snr_db = rng.uniform(*spec.snr_db)
    # shaped at a power-of-two length, then cropped (an FFT of a length with large prime factors is slow)
    n = 1 << max(len(clip) - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / f ** (alpha / 2), n=n)[: len(clip)]
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    noise *= np.sqrt(speech_power / (10 ** (snr_db / 10)) / max(float(np.mean(noise**2)), 1e-20))
    mixed = clip + noise.astype(np.float32)
    peak = float(np.abs(mixed).max())
    if peak > 0.99:  # never clip the int16 range
        mixed *= 0.99 / peak
    return np.round(mixed * 32767).astype(np.int16)
