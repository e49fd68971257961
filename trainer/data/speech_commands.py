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
at the end, longer ones cut to their first second (with a warning); other sample rates are resampled to
16 kHz; stereo is averaged.

Clips are the ``.wav`` files (any case) of the word folders; hidden files (``._x.wav`` from macOS) and folders
are skipped, other audio files (``.flac``...) too, with a warning. A list line names its clip up to case and
Unicode normalisation (``yes/x.wav`` is ``yes/x.WAV`` on disk); a line naming no clip at all is ignored with a
warning, and a clip named by both lists is refused: a held-out clip must never land in training.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import audio_info, read_audio
from .cache import params_hash, remove_stale
from .errors import CorpusLayoutError, CorpusNotFound
from .features import SAMPLE_RATE, FeatureSpec, LogMel, to_sample_rate
from .files import cannot_read, examples, exists, is_folder, list_folder, warn
from .precompute import cached_features, compute_features
from .split_lists import list_splits, read_split_list
from .synth_corpus import KEYWORDS

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
# Audio that soundfile reads but that is not a Speech Commands clip: skipped, and said so.
OTHER_AUDIO = (".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".m4a")
_SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """One item, ``path`` relative to the root; silence crops ``frames`` frames (1 s at the noise file's own
    rate) of a noise file at ``offset``, times ``volume``."""

    path: str
    label: int
    speaker: str
    offset: int = 0
    volume: float = 1.0
    frames: int = -1


def _speaker(filename: str) -> str:
    return re.sub(r"_nohash_.*$", "", Path(filename).stem)


def which_set(filename: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """The dataset README's rule: a stable split per speaker, from the SHA-1 of the name before _nohash_."""
    max_per_class = 2**27 - 1
    # (a name that is not UTF-8 hashes as its bytes on disk: surrogateescape gives them back)
    digest = hashlib.sha1(_speaker(filename).encode("utf-8", "surrogateescape")).hexdigest()
    percentage = (int(digest, 16) % (max_per_class + 1)) * (100.0 / max_per_class)
    if percentage < validation_percentage:
        return "val"
    if percentage < validation_percentage + testing_percentage:
        return "test"
    return "train"


def _wav_names(folder: Path, skipped: list[str]) -> list[str]:
    """The ``.wav`` files of ``folder`` (``.WAV`` too), sorted; other audio files are added to ``skipped``
    (as ``<folder name>/<file>``). Hidden files and folders (even one named ``x.wav``) are not clips."""
    names = []
    for entry in list_folder(folder):
        suffix = os.path.splitext(entry.name)[1].lower()
        if suffix == ".wav" and not is_folder(entry):
            names.append(entry.name)
        elif suffix in OTHER_AUDIO:
            skipped.append(f"{folder.name}/{entry.name}")
    return names


def _word_folders(root: Path, skipped: list[str]) -> dict[str, list[str]]:
    """``{word: [clip file names]}`` for the folders of ``root`` but the ``_``-prefixed and hidden ones."""
    return {
        d.name: _wav_names(Path(d.path), skipped)
        for d in list_folder(root)
        if not d.name.startswith("_") and is_folder(d)
    }


def scan_speech_commands(
    root: Path, classes: int = 10, seed: int = 0
) -> tuple[list[str], dict[str, list[Clip]]]:
    """``(labels, {"train": [Clip], "val": ..., "test": ...})`` for ``root``; raises CorpusNotFound or
    CorpusLayoutError naming the path and the expected layout."""
    if classes not in SPEECH_COMMANDS_CLASSES:
        raise ValueError(f"classes={classes!r}: Speech Commands variants are {list(SPEECH_COMMANDS_CLASSES)}")
    root = Path(root).expanduser()
    if not exists(root, folder=True):
        raise CorpusNotFound(f"Speech Commands folder {str(root)!r} does not exist ({LAYOUT})")
    skipped = []  # audio files of the word folders that are not .wav
    folders = _word_folders(root, skipped)
    if not any(folders.values()):
        raise CorpusLayoutError(f"{str(root)!r} has no <word>/*.wav folders; expected the {LAYOUT}")
    if classes in (10, 12):
        wanted = list(KEYWORDS)
    else:
        wanted = list(V2_WORDS if classes == 35 else V1_WORDS)
    missing = [w for w in wanted if not folders.get(w)]
    if missing:
        hint = " (v0.01 has 30 words: use classes=30)" if classes == 35 and len(folders) <= 30 else ""
        empty = [w for w in missing if w in folders]
        if empty:
            hint += f"; {empty} hold no .wav files"
        raise CorpusLayoutError(
            f"{str(root)!r} lacks word folders {missing} needed for the {classes}-class variant{hint}; "
            f"found {sorted(w for w, names in folders.items() if names)}"
        )
    labels = ([SILENCE, UNKNOWN] if classes == 12 else []) + wanted
    index = {w: i for i, w in enumerate(labels)}
    used = [w for w in folders if w in index or classes == 12]
    skipped = [name for name in skipped if name.split("/", 1)[0] in used]
    if skipped:
        warn(
            f"{len(skipped)} audio file(s) of the word folders are not .wav and were skipped "
            f"({examples(skipped)}): Speech Commands clips are WAV files; convert them to use them"
        )

    clips = [f"{word}/{name}" for word in used for name in folders[word]]
    val_list, test_list = root / "validation_list.txt", root / "testing_list.txt"
    if exists(val_list) != exists(test_list):
        absent = test_list if exists(val_list) else val_list
        raise CorpusLayoutError(f"{str(absent)!r} is missing (both split lists or neither; {LAYOUT})")
    lists = split_of = None
    if exists(val_list):
        lists = (read_split_list(val_list), read_split_list(test_list))
        files = {"val": val_list, "test": test_list}
        on_disk = [f"{word}/{name}" for word, names in folders.items() for name in names]  # unused words too
        split_of = list_splits(on_disk, {"val": lists[0], "test": lists[1]}, files)

    known = {s: [] for s in _SPLIT_NAMES}
    others = {s: [] for s in _SPLIT_NAMES}
    for rel in clips:
        word, name = rel.split("/", 1)
        split = which_set(rel) if split_of is None else split_of.get(rel, "train")
        if word in index:
            known[split].append(Clip(rel, index[word], _speaker(name)))
        else:
            others[split].append(Clip(rel, index[UNKNOWN], _speaker(name)))
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
                rel, frames, rate = noises[int(rng.integers(len(noises)))]
                offset = int(rng.integers(0, frames - rate + 1))  # a crop of 1 s at the file's own rate
                volume = float(rng.uniform(0, 1))
                known[split].append(Clip(rel, index[SILENCE], SILENCE, offset, volume, frames=rate))
    _warn_missing_classes(root, labels, known, no_others=classes == 12 and not any(others.values()))
    return labels, known


def _warn_missing_classes(root: Path, labels: list[str], clips: dict[str, list[Clip]], no_others: bool):
    """A class without training clips cannot be learnt (its val/test clips all count as errors); one without
    val or test clips is not measured there. Rare with the dataset's lists, possible with a subset of it."""
    lacking = {}
    for split in _SPLIT_NAMES:
        present = Counter(c.label for c in clips[split])
        lacking[split] = [label for i, label in enumerate(labels) if not present[i]]
    if not any(lacking.values()):
        return
    where = "; ".join(f"{split}: {', '.join(ls)}" for split, ls in lacking.items() if ls)
    hint = (
        f" ({UNKNOWN} takes its clips from the words other than the ten, and this folder has none)"
        if no_others
        else ""
    )
    warn(
        f"{str(root)!r}: classes without clips in a split ({where}){hint}: a class is not learnt without "
        "training clips, and not measured in a split without clips of it"
    )


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


def _noise_files(root: Path) -> list[tuple[str, int, int]]:
    """``(path, frames, sample rate)`` of every background noise file; one shorter than the 1 s a _silence_
    clip crops from it (an empty one included) is refused, as it would make a clip of mostly zeros."""
    folder = root / NOISE_DIR
    skipped = []
    names = _wav_names(folder, skipped) if exists(folder, folder=True) else []
    if not names:
        also = f" (it holds {examples(skipped)}: convert them to WAV)" if skipped else ""
        raise CorpusLayoutError(
            f"{str(folder)!r} has no .wav files{also}: the 12-class variant crops _silence_ clips from them "
            f"({LAYOUT})"
        )
    if skipped:
        warn(f"{len(skipped)} file(s) of {str(folder)!r} are not .wav and were skipped ({examples(skipped)})")
    noises = []
    for name in names:
        frames, rate = audio_info(folder / name)
        if frames < rate:
            raise CorpusLayoutError(
                f"background noise file {str(folder / name)!r} lasts {frames / rate:.3f} s: _silence_ clips "
                "are 1 s crops of these files; remove it or replace it with a longer recording"
            )
        noises.append((f"{NOISE_DIR}/{name}", frames, rate))
    return noises


def _waveform(root: Path, clip: Clip) -> np.ndarray:
    """The clip's samples at 16 kHz, as long as the file (a _silence_ crop: 1 s)."""
    if clip.speaker == SILENCE:
        wav, rate = read_audio(root / clip.path, start=clip.offset, frames=clip.frames)
        wav = wav * clip.volume
    else:
        wav, rate = read_audio(root / clip.path)
        if not len(wav):  # (padded, it would train as a second of silence with its word's label)
            raise CorpusLayoutError(
                f"audio file {str(root / clip.path)!r} has no samples: replace it, or remove it from the "
                "corpus"
            )
    return to_sample_rate(torch.from_numpy(wav), rate).numpy()


def _one_second(wav: np.ndarray) -> np.ndarray:
    """``wav`` zero-padded at the end, or cut, to 1 s (16,000 samples)."""
    out = np.zeros(CLIP, dtype=np.float32)
    out[: min(len(wav), CLIP)] = wav[:CLIP]
    return out


def _clip_waveform(root: Path, clip: Clip) -> np.ndarray:
    return _one_second(_waveform(root, clip))


def load_speech_commands(
    root: Path, *, classes: int, seed: int, cache_dir: Path, spec: FeatureSpec, before_features=None
):
    """``(features, targets, labels, None, info)`` per split, features cached by (file list, spec);
    ``before_features(record)`` first (``load_task``)."""
    labels, clips = scan_speech_commands(root, classes, seed)
    root = Path(root).expanduser().resolve()
    fingerprint = []
    for split in _SPLIT_NAMES:
        for c in clips[split]:
            try:
                st = (root / c.path).stat()
            except OSError as e:
                raise cannot_read(root / c.path, e) from None
            key = (split, c.path, c.label, c.offset, c.volume, st.st_size, st.st_mtime_ns)
            # A _silence_ crop's length too: 16,000 frames of a 48 kHz file used to make a third of a second.
            fingerprint.append(key + ((c.frames,) if c.speaker == SILENCE else ()))
    folder = Path(cache_dir) / f"speech_commands-{params_hash({'root': str(root), 'files': fingerprint})}"
    # What a checkpoint compares on --resume: the clips of each split, their labels and (size, mtime).
    fingerprints = {s: params_hash({"files": [f for f in fingerprint if f[0] == s]}) for s in _SPLIT_NAMES}
    if before_features is not None:
        counts = {s: len(clips[s]) for s in _SPLIT_NAMES}
        before_features({"fingerprint": fingerprints, "counts": counts, "path": str(root)})
    logmel = LogMel(spec)
    long_clips = []  # (path, seconds) of the clips cut to their first second

    def one_second_clips(split):
        for c in clips[split]:
            wav = _waveform(root, c)
            if len(wav) > CLIP:
                long_clips.append((c.path, len(wav) / SAMPLE_RATE))
            yield _one_second(wav)

    def compute():
        return {s: compute_features(one_second_clips(s), logmel) for s in _SPLIT_NAMES}

    start = time.perf_counter()
    about = {"source": "speech_commands", "root": str(root), "classes": classes, "seed": seed}
    feats, seconds, hit = cached_features(folder, spec, compute, about)
    removed, freed = remove_stale(folder, about)  # the caches of this corpus's earlier states
    if long_clips:  # (computed once: a cache hit reads the cut clips back without a word)
        path, longest = max(long_clips, key=lambda item: item[1])
        warn(
            f"{len(long_clips)} clip(s) last more than 1 s and were cut to their first second (the longest: "
            f"{path!r}, {longest:.2f} s): Speech Commands clips are 1 s; trim them around the word"
        )
    targets = {s: torch.tensor([c.label for c in clips[s]], dtype=torch.long) for s in _SPLIT_NAMES}
    info = dict(
        path=str(root),
        classes=classes,
        voices={s: sorted({c.speaker for c in clips[s]} - {SILENCE}) for s in _SPLIT_NAMES},
        split_rule="lists" if (root / "validation_list.txt").exists() else "hash",
        fingerprint=fingerprints,
        cache_path=str(folder),
        cache_hit=hit,  # the features are all a real corpus caches
        feature_cache_hit=hit,
        feature_seconds=seconds,
        load_seconds=round(time.perf_counter() - start, 3),
        seed=seed,
        removed_caches={"folders": removed, "bytes": freed},
    )
    return feats, targets, labels, None, info
