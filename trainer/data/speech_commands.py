"""Google Speech Commands (v0.01 / v0.02) from its folder layout, as 10-, 12-, 30- or 35-class keyword tasks.

Layout (as distributed)::

    <root>/<word>/<speaker>_nohash_<n>.wav      1 s (or shorter) 16 kHz mono clips
    <root>/validation_list.txt                  lines "<word>/<file>.wav"
    <root>/testing_list.txt
    <root>/_background_noise_/*.wav             long noise recordings (needed for the 12-class _silence_)

Splits follow the two lists (speaker-disjoint by construction); clips in neither list are training clips. When
both lists are absent, the dataset README's hash rule assigns each speaker to a split (10% val, 10% test).
Variants (``classes``): 10 = the ten core words; 12 = the ten + ``_silence_`` + ``_unknown_`` (TensorFlow's
recipe: per split, 10% as many silence clips, 1 s crops of a background noise at a random volume, and 10% as
many clips of the other words); 30 / 35 = every word of v0.01 / v0.02. Clips shorter than 1 s are zero-padded
at the end; other sample rates are resampled to 16 kHz; stereo is averaged.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from .cache import params_hash
from .errors import CorpusLayoutError, CorpusNotFound
from .features import SAMPLE_RATE, FeatureSpec, LogMel, to_sample_rate
from .precompute import cached_features, compute_features
from .synth_corpus import KEYWORDS
from .textfiles import read_lines

__all__ = ["SPEECH_COMMANDS_CLASSES", "V1_WORDS", "V2_WORDS", "scan_speech_commands", "load_speech_commands"]

V2_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
V1_WORDS = tuple(w for w in V2_WORDS if w not in ("backward", "follow", "forward", "learn", "visual"))
SPEECH_COMMANDS_CLASSES = (10, 12, 30, 35)
SILENCE, UNKNOWN = "_silence_", "_unknown_"
NOISE_DIR = "_background_noise_"
LAYOUT = (
    "Speech Commands layout: <root>/<word>/<speaker>_nohash_<n>.wav, validation_list.txt, testing_list.txt, "
    "_background_noise_/*.wav"
)
CLIP = SAMPLE_RATE  # 1 s
_SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """One item, ``path`` relative to the root; silence crops a noise file at ``offset``, times ``volume``."""

    path: str
    label: int
    speaker: str
    offset: int = 0
    volume: float = 1.0


def _speaker(filename: str) -> str:
    return re.sub(r"_nohash_.*$", "", Path(filename).stem)


def which_set(filename: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """The dataset README's rule: a stable split per speaker, from the SHA-1 of the name before _nohash_."""
    max_per_class = 2**27 - 1
    digest = hashlib.sha1(_speaker(filename).encode()).hexdigest()
    percentage = (int(digest, 16) % (max_per_class + 1)) * (100.0 / max_per_class)
    if percentage < validation_percentage:
        return "val"
    if percentage < validation_percentage + testing_percentage:
        return "test"
    return "train"


def _word_folders(root: Path) -> dict[str, list[str]]:
    folders = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        wavs = sorted(f.name for f in d.iterdir() if f.suffix.lower() == ".wav")
        if wavs:
            folders[d.name] = wavs
    return folders


def _read_list(path: Path) -> set[str]:
    """The entries of a split list as ``<word>/<file>.wav``: the way a list written on Windows
    (``yes\\x.wav``) or by ``find .`` (``./yes/x.wav``) names a clip is the way the dataset's own lists do."""
    return {
        posixpath.normpath(line.strip().replace("\\", "/")) for _, line in read_lines(path) if line.strip()
    }


def scan_speech_commands(
    root: Path, classes: int = 10, seed: int = 0
) -> tuple[list[str], dict[str, list[Clip]]]:
    """``(labels, {"train": [Clip], "val": ..., "test": ...})`` for ``root``; raises CorpusNotFound or
    CorpusLayoutError naming the path and the expected layout."""
    if classes not in SPEECH_COMMANDS_CLASSES:
        raise ValueError(f"classes={classes!r}: Speech Commands variants are {list(SPEECH_COMMANDS_CLASSES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusNotFound(f"Speech Commands folder {str(root)!r} does not exist ({LAYOUT})")
    folders = _word_folders(root)
    if not folders:
        raise CorpusLayoutError(f"{str(root)!r} has no <word>/*.wav folders; expected the {LAYOUT}")
    if classes in (10, 12):
        wanted = list(KEYWORDS)
    else:
        wanted = list(V2_WORDS if classes == 35 else V1_WORDS)
    missing = [w for w in wanted if w not in folders]
    if missing:
        hint = " (v0.01 has 30 words: use classes=30)" if classes == 35 and len(folders) <= 30 else ""
        raise CorpusLayoutError(
            f"{str(root)!r} lacks word folders {missing} needed for the {classes}-class variant{hint}; "
            f"found {sorted(folders)}"
        )
    labels = ([SILENCE, UNKNOWN] if classes == 12 else []) + wanted
    index = {w: i for i, w in enumerate(labels)}

    val_list, test_list = root / "validation_list.txt", root / "testing_list.txt"
    if val_list.exists() != test_list.exists():
        absent = test_list if val_list.exists() else val_list
        raise CorpusLayoutError(f"{str(absent)!r} is missing (both split lists or neither; {LAYOUT})")
    lists = (_read_list(val_list), _read_list(test_list)) if val_list.exists() else None

    def split_of(rel: str) -> str:
        if lists is None:
            return which_set(rel)
        return "val" if rel in lists[0] else "test" if rel in lists[1] else "train"

    known = {s: [] for s in _SPLIT_NAMES}
    others = {s: [] for s in _SPLIT_NAMES}
    for word, wavs in folders.items():
        for name in wavs:
            rel = f"{word}/{name}"
            if word in index:
                known[split_of(rel)].append(Clip(rel, index[word], _speaker(name)))
            elif classes == 12:
                others[split_of(rel)].append(Clip(rel, index[UNKNOWN], _speaker(name)))
    for split in _SPLIT_NAMES:
        if not known[split]:
            raise CorpusLayoutError(f"{str(root)!r}: the {split} split has no clips: " + _why_empty(
                split, lists, (val_list, test_list), classes
            ))  # fmt: skip
    if classes == 12:
        noises = _noise_files(root)
        for k, split in enumerate(_SPLIT_NAMES):
            rng = np.random.default_rng([seed, k])
            n_extra = math.ceil(len(known[split]) * 10 / 100)
            picks = rng.permutation(len(others[split]))[:n_extra]
            known[split] += [others[split][i] for i in sorted(picks)]
            for _ in range(n_extra):
                rel, frames = noises[int(rng.integers(len(noises)))]
                offset = int(rng.integers(0, max(frames - CLIP, 0) + 1))
                known[split].append(Clip(rel, index[SILENCE], SILENCE, offset, float(rng.uniform(0, 1))))
    return labels, known


def _why_empty(split: str, lists, files: tuple[Path, Path], classes: int) -> str:
    """Why a split of a Speech Commands folder came out empty, and what to do about it."""
    if lists is None:
        return (
            "the README's hash rule put none of the speakers there (too few speakers); add "
            "validation_list.txt and testing_list.txt to choose the split"
        )
    if split == "train":
        return "every clip is in validation_list.txt or testing_list.txt"
    entries, path = (lists[0], files[0]) if split == "val" else (lists[1], files[1])
    if not entries:
        return f"{str(path)!r} is empty"
    example = sorted(entries)[0]
    return (
        f"none of the {len(entries)} lines of {str(path)!r} (e.g. {example!r}) names a clip of the "
        f"{classes}-class variant; lines are '<word>/<speaker>_nohash_<n>.wav', relative to the folder"
    )


def _noise_files(root: Path) -> list[tuple[str, int]]:
    folder = root / NOISE_DIR
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        raise CorpusLayoutError(
            f"{str(folder)!r} has no .wav files: the 12-class variant crops _silence_ clips from them "
            f"({LAYOUT})"
        )
    return [(f"{NOISE_DIR}/{f.name}", soundfile.info(str(f)).frames) for f in files]


def read_audio(path: Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, through soundfile (wav, flac, ogg ...)."""
    try:
        wav, rate = soundfile.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise CorpusLayoutError(f"cannot read audio file {str(path)!r}: {e}") from None
    return wav.mean(axis=1), rate


def _clip_waveform(root: Path, clip: Clip) -> np.ndarray:
    if clip.speaker == SILENCE:
        wav, rate = read_audio(root / clip.path, start=clip.offset, frames=CLIP)
        wav = wav * clip.volume
    else:
        wav, rate = read_audio(root / clip.path)
        if not len(wav):  # (padded, it would train as a second of silence with its word's label)
            raise CorpusLayoutError(
                f"audio file {str(root / clip.path)!r} has no samples: replace it, or remove it from the "
                "corpus"
            )
    wav = to_sample_rate(torch.from_numpy(wav), rate).numpy()
    out = np.zeros(CLIP, dtype=np.float32)
    out[: min(len(wav), CLIP)] = wav[:CLIP]
    return out


def load_speech_commands(root: Path, *, classes: int, seed: int, cache_dir: Path, spec: FeatureSpec):
    """``(features, targets, labels, None, info)`` per split, features cached by (file list, spec)."""
    labels, clips = scan_speech_commands(root, classes, seed)
    root = Path(root).expanduser().resolve()
    fingerprint = []
    for split in _SPLIT_NAMES:
        for c in clips[split]:
            st = (root / c.path).stat()
            fingerprint.append((split, c.path, c.label, c.offset, c.volume, st.st_size, st.st_mtime_ns))
    folder = Path(cache_dir) / f"speech_commands-{params_hash({'root': str(root), 'files': fingerprint})}"
    logmel = LogMel(spec)

    def compute():
        return {
            s: compute_features((_clip_waveform(root, c) for c in clips[s]), logmel) for s in _SPLIT_NAMES
        }

    start = time.perf_counter()
    feats, seconds, hit = cached_features(folder, spec, compute)
    targets = {s: torch.tensor([c.label for c in clips[s]], dtype=torch.long) for s in _SPLIT_NAMES}
    info = dict(
        path=str(root),
        classes=classes,
        voices={s: sorted({c.speaker for c in clips[s]} - {SILENCE}) for s in _SPLIT_NAMES},
        split_rule="lists" if (root / "validation_list.txt").exists() else "hash",
        cache_path=str(folder),
        cache_hit=hit,  # the features are all a real corpus caches
        feature_cache_hit=hit,
        feature_seconds=seconds,
        load_seconds=round(time.perf_counter() - start, 3),
        seed=seed,
    )
    return feats, targets, labels, None, info
