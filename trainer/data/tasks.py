"""``load_task``: a task (keywords, digits, characters) from a source (built-in, Speech Commands, transcripts)
as train/val/test torch Datasets of precomputed log-mels, with labels, a collate function and a record of what
was loaded (``info``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import synth_corpus
from .cache import default_cache_dir, params_hash
from .datasets import KeywordDataset, SequenceDataset, collate_keywords, collate_sequences
from .features import FeatureSpec, LogMel, SpecAugment, keyword_features, sequence_features
from .precompute import cached_features, compute_features
from .speech_commands import load_speech_commands
from .transcripts import load_transcripts
from .vocab import Vocabulary, digit_vocabulary

__all__ = ["TASKS", "SOURCES", "Splits", "load_task"]

SPLITS = ("train", "val", "test")
# task -> (kind, sources that provide it, description)
TASKS = {
    "keywords": ("classification", ("builtin", "speech_commands"), "spoken keywords, one class per clip"),
    "digits": ("sequence", ("builtin", "transcripts"), "spoken digit strings, CTC over the 10 digit words"),
    "characters": ("sequence", ("transcripts",), "any transcribed speech, CTC over characters"),
}
SOURCES = ("builtin", "speech_commands", "transcripts")


@dataclass
class Splits:
    """What ``load_task`` returns; see the package docstring for the item shapes."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    labels: list[str]
    collate: Callable
    kind: str  # "classification" | "sequence"
    features: FeatureSpec
    vocabulary: Vocabulary | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_mels(self) -> int:
        return self.features.n_mels

    @property
    def num_classes(self) -> int:
        """Output size of a model: classes, or vocabulary size including the blank."""
        return len(self.labels)


def load_task(
    task: str,
    source: str = "builtin",
    path: str | os.PathLike | None = None,
    *,
    size: str | int = "small",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    n_mels: int | None = None,
    frames: int = 32,
    specaugment: bool = False,
    classes: int = 10,
    before_features: Callable[[dict], None] | None = None,
) -> Splits:
    """Load ``task`` from ``source``; raises ValueError naming a bad option and the accepted ones,
    ``CorpusNotFound`` / ``CorpusLayoutError`` (``trainer.data.errors``) for a bad ``path``.

    ``before_features`` is called once with the corpus's record -- ``fingerprint`` and ``counts`` per split,
    as in ``info``, and ``path`` for a corpus on disk -- as soon as its files are listed (a built-in corpus:
    generated), before any feature is computed or read from the cache; what it raises, ``load_task``
    raises. A caller can refuse the corpus there without waiting for the features (minutes on a real one)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    kind, sources, _ = TASKS[task]
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose one of {list(SOURCES)}")
    if source not in sources:
        raise ValueError(f"task {task!r} cannot be loaded from {source!r}; its sources are {list(sources)}")
    if source == "builtin" and path is not None:
        raise ValueError(
            "path is only for source='speech_commands' or 'transcripts' (the built-in corpus is generated)"
        )
    if source != "builtin" and path is None:
        raise ValueError(f"source={source!r} needs path= (the corpus folder)")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fspec = (
        keyword_features(n_mels or 32, frames)
        if kind == "classification"
        else sequence_features(n_mels or 40)
    )

    with _one_torch_thread():
        if source == "builtin":
            loaded = _load_builtin(task, size, seed, cache, fspec, before_features)
        elif source == "speech_commands":
            loaded = load_speech_commands(
                Path(path),
                classes=classes,
                seed=seed,
                cache_dir=cache,
                spec=fspec,
                before_features=before_features,
            )
        else:
            loaded = load_transcripts(
                Path(path), task=task, seed=seed, cache_dir=cache, spec=fspec, before_features=before_features
            )
    feats, targets, labels, vocabulary, info = loaded

    augment = SpecAugment.for_spec(fspec) if specaugment else None
    if kind == "classification":
        sets = {s: KeywordDataset(feats[s], targets[s], augment if s == "train" else None) for s in SPLITS}
        collate = collate_keywords
    else:
        sets = {s: SequenceDataset(feats[s], targets[s], augment if s == "train" else None) for s in SPLITS}
        collate = collate_sequences
    info.update(
        task=task,
        source=source,
        kind=kind,
        counts={s: len(sets[s]) for s in SPLITS},
        features=dict(vars(fspec)),
        specaugment=None if augment is None else augment.extra_repr(),
    )
    return Splits(
        **sets, labels=labels, collate=collate, kind=kind, features=fspec, vocabulary=vocabulary, info=info
    )


@contextmanager
def _one_torch_thread():
    """Data preparation runs thousands of small ops (one resample per speaker, one log-mel per utterance):
    intra-op threads only add synchronisation there, and on a busy 2-core machine they made it 10x slower
    (measured: 200 log-mels in 0.18 s with one thread, 2.4 s with two). The caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_builtin(task: str, size, seed: int, cache: Path, fspec: FeatureSpec, before_features=None):
    manifest, splits = synth_corpus.load_or_generate(synth_corpus.synth_spec(task, size, seed), cache)
    folder = Path(manifest["path"])
    logmel = LogMel(fspec)
    # (the corpus folder's name is the hash of every generation parameter)
    fingerprint = {s: params_hash({"corpus": folder.name, "split": s}) for s in SPLITS}
    if before_features is not None:
        before_features({"fingerprint": fingerprint, "counts": {s: len(splits[s]) for s in SPLITS}})

    def compute():
        return {
            s: compute_features((splits[s].waveform(i) for i in range(len(splits[s]))), logmel)
            for s in SPLITS
        }

    feats, feature_seconds, feature_hit = cached_features(folder, fspec, compute)
    if task == "keywords":
        targets = {s: torch.from_numpy(splits[s].targets) for s in SPLITS}
        labels, vocabulary = list(manifest["labels"]), None
    else:
        vocabulary = digit_vocabulary()
        targets = {s: [vocabulary.encode(t) for t in splits[s].texts.tolist()] for s in SPLITS}
        labels = vocabulary.labels
    info = dict(
        fingerprint=fingerprint,
        voices=manifest["voices"],
        generation_seconds=manifest["generation_seconds"],
        cache_path=manifest["path"],
        cache_hit=manifest["cache_hit"],
        feature_seconds=feature_seconds,
        feature_cache_hit=feature_hit,
        size=size,
        seed=seed,
    )
    return feats, targets, labels, vocabulary, info
