"""A folder of audio files + transcripts, for sequence tasks (CTC): its utterances as log-mels and targets.

The folder's utterances and splits are read from its layout (LibriSpeech's, ``transcripts.tsv`` or
``trans.txt``; by ``transcript_layouts``, which documents them). Audio: any format soundfile reads -- flac,
wav, ogg; any rate, resampled to 16 kHz; stereo averaged. A clip shorter than one analysis window (25 ms) is
zero-padded at the end to it; a file with no samples, NaN, infinite or huge samples, or less audio than its
header declares (truncated; an MP3 too, beyond its header's estimate) is refused (``.audio`` reads the
files). Utterances with fewer frames than CTC needs for their transcript are counted in ``info["too_short"]``
and reported once as a ``CorpusWarning``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .audio import audio_info, mp3_cut_short, read_audio
from .cache import params_hash, remove_stale
from .errors import CorpusLayoutError
from .features import FeatureSpec, LogMel, to_sample_rate
from .files import warn
from .precompute import cached_features, compute_features
from .transcript_layouts import SPLIT_NAMES, Utterance, scan_transcripts
from .vocab import character_vocabulary, ctc_min_frames, digit_vocabulary

__all__ = ["Utterance", "scan_transcripts", "load_transcripts"]

_MP3_FRAME = 1152  # samples: how far an MP3 header's estimated length may be from what decodes
# Bumped when what a cached feature set may hold changes, so that features computed before are not read back
# (2: NaN, infinite, huge and truncated audio are refused; it was cached as NaN features before).
_CACHE_VERSION = 2


def _waveform(path: Path, min_samples: int) -> np.ndarray:
    """16 kHz samples of ``path``, zero-padded at the end to ``min_samples`` (one analysis window): the
    log-mel's centred frames reflect-pad half a window on each side, which a shorter clip cannot give."""
    wav, rate = read_audio(path)  # refuses unreadable and truncated files, NaN, infinite or huge samples
    if len(wav) == 0:  # nothing to pad: a recording that failed, not a short utterance
        raise CorpusLayoutError(
            f"audio file {str(path)!r} has no samples: replace it, or remove its transcript line"
        )
    if path.suffix.lower() == ".mp3":
        # read_audio keeps an MP3 that is cut short, with a warning; but a transcript describes the whole
        # recording. (An MP3 that only decodes shorter than libsndfile's estimate of its length is intact.)
        announced, _ = audio_info(path)
        if len(wav) + _MP3_FRAME < announced and mp3_cut_short(path, len(wav), announced):
            raise CorpusLayoutError(
                f"audio file {str(path)!r} is truncated: {len(wav)} of the {announced} frames its header "
                "announces could be read, while its transcript describes all of them: replace it, or remove "
                "its transcript line"
            )
    wav = to_sample_rate(torch.from_numpy(wav), rate).numpy()
    if len(wav) < min_samples:
        wav = np.pad(wav, (0, min_samples - len(wav)))
    return wav


def _warn_too_short(splits, feats, targets, root: Path) -> dict[str, int]:
    """The utterances per split with fewer feature frames than CTC needs for their transcript: no model can
    align them (a model that subsamples time needs more frames still), so they teach it nothing."""
    short = {s: [] for s in SPLIT_NAMES}
    for s in SPLIT_NAMES:
        for u, f, t in zip(splits[s], feats[s], targets[s], strict=True):
            if f.shape[-1] < 2 * len(t) and f.shape[-1] < ctc_min_frames(t):  # (the first test is cheap)
                short[s].append((u, f.shape[-1], ctc_min_frames(t)))
    found = [x for s in SPLIT_NAMES for x in short[s]]
    if found:
        u, frames, needed = found[0]
        counts = ", ".join(f"{len(short[s])} in {s}" for s in SPLIT_NAMES if short[s])
        warn(
            f"{len(found)} utterance(s) of {str(root)!r} ({counts}) are too short for their transcripts "
            f"(e.g. {u.where}: {frames} frames where CTC needs {needed}): no model can align them, so they "
            "add nothing to the loss (the trainer counts them as 0); check that their transcripts match"
        )
    return {s: len(short[s]) for s in SPLIT_NAMES}


def load_transcripts(
    root: Path, *, task: str, seed: int, cache_dir: Path, spec: FeatureSpec, before_features=None
):
    """``(features, targets, labels, vocabulary, info)`` per split, features cached by (file list, spec);
    ``before_features(record)`` first (``load_task``)."""
    splits = scan_transcripts(root, seed)
    root = Path(root).expanduser().resolve()
    if task == "digits":
        vocabulary = digit_vocabulary()
    else:
        vocabulary = character_vocabulary(u.text for us in splits.values() for u in us)
    targets = {}
    for s in SPLIT_NAMES:
        targets[s] = []
        for u in splits[s]:
            try:
                targets[s].append(vocabulary.encode(u.text))
            except ValueError as e:
                hint = " (task='characters' takes any text)" if task == "digits" else ""
                message = f"{u.where}: transcript of {str(root / u.path)!r}: {e}{hint}"
                raise CorpusLayoutError(message) from None
    fingerprint, texts = [], {s: [] for s in SPLIT_NAMES}
    for s in SPLIT_NAMES:
        for u in splits[s]:
            st = (root / u.path).stat()
            fingerprint.append((s, u.path, st.st_size, st.st_mtime_ns))
            texts[s].append((u.path, st.st_size, st.st_mtime_ns, u.text))
    key = params_hash({"root": str(root), "files": fingerprint, "version": _CACHE_VERSION})
    # What a checkpoint compares on --resume: the files of each split, with their transcripts (which change
    # the targets, not the features: the cache key leaves them out).
    fingerprints = {s: params_hash({"files": texts[s]}) for s in SPLIT_NAMES}
    if before_features is not None:
        counts = {s: len(splits[s]) for s in SPLIT_NAMES}
        before_features({"fingerprint": fingerprints, "counts": counts, "path": str(root)})
    folder = Path(cache_dir) / f"transcripts-{key}"
    logmel = LogMel(spec)

    start = time.perf_counter()
    about = {"source": "transcripts", "root": str(root), "seed": seed}
    feats, seconds, hit = cached_features(
        folder,
        spec,
        lambda: {
            s: compute_features((_waveform(root / u.path, spec.n_fft) for u in splits[s]), logmel)
            for s in SPLIT_NAMES
        },
        about,
    )
    removed, freed = remove_stale(folder, about)  # the caches of this corpus's earlier states
    info = dict(
        path=str(root),
        voices={s: sorted({u.speaker for u in splits[s]}) for s in SPLIT_NAMES},
        cache_path=str(folder),
        cache_hit=hit,  # the features are all a real corpus caches
        feature_cache_hit=hit,
        feature_seconds=seconds,
        load_seconds=round(time.perf_counter() - start, 3),
        seed=seed,
        removed_caches={"folders": removed, "bytes": freed},
        too_short=_warn_too_short(splits, feats, targets, root),
        names={s: [u.where for u in splits[s]] for s in SPLIT_NAMES},  # "file:line", for messages
        fingerprint=fingerprints,
    )
    return feats, targets, vocabulary.labels, vocabulary, info
