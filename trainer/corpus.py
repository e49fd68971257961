"""The run's corpus: loaded through ``trainer.data.load_task``, and what loading it said in the CLI's words.

The loader's errors become a TrainingError (naming the corpus cache when that is the folder at fault: the user
did not name it); what it skipped or changed is one ``warning:`` line each; a check handed in
(``before_features``: a resumed checkpoint's) runs before any feature is computed. Also the start line's
account of what loading did (generation, features, old caches removed), and the warning about utterances
that a CTC model's subsampled output is too short to align.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from torch import nn

from trainer.config import TrainConfig
from trainer.errors import TrainingError
from trainer.evaluate import too_short_for_ctc
from trainer.runtime import Runtime

__all__ = ["load_corpus", "describe_loading", "warn_too_short"]


def load_corpus(cfg: TrainConfig, rt: Runtime, before_features: Callable[[dict], None] | None = None):
    """The corpus of ``cfg``, what the loader said of it printed. ``before_features`` (``load_task``'s: a
    resumed checkpoint's ``resume.CorpusCheck``) may refuse it with a TrainingError before any feature is
    computed; what the loader had said of the corpus by then is printed first."""
    from trainer.data import load_task
    from trainer.data.errors import CorpusWarning

    kwargs = dict(
        task=cfg.task,
        source=cfg.data,
        path=cfg.data_path,
        cache_dir=cfg.cache_dir,
        seed=cfg.data_seed,
        specaugment=cfg.specaugment,
        classes=cfg.sc_variant,
    )
    if cfg.corpus_size is not None:
        kwargs["size"] = cfg.corpus_size
    if before_features is not None:
        kwargs["before_features"] = before_features
    failed = f"cannot load the {cfg.data} data for task {cfg.task!r}"
    caught = []
    try:
        # Rank 0 generates the built-in corpus into the cache; the others then read it.
        with rt.rank_zero_first(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CorpusWarning)
            splits = load_task(**kwargs)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # CorpusNotFound, CorpusLayoutError
        raise TrainingError(f"{failed}: {e}{_in_cache(cfg, e)}") from None
    except OSError as e:  # what the loader did not name itself: a folder it could not list, a full disk...
        where = f" {str(e.filename)!r}" if e.filename else ""
        reason = (e.strerror or str(e)).lower()
        raise TrainingError(f"{failed}: cannot access{where} ({reason}){_in_cache(cfg, e)}") from None
    except TrainingError:  # before_features refused the corpus: what the loader said so far comes first
        _show_warnings(caught, rt)
        raise
    _show_warnings(caught, rt)
    return splits


def _show_warnings(caught: list, rt: Runtime) -> None:
    """What the loader skipped or changed: one line each, as the CLI's own warnings."""
    from trainer.data.errors import CorpusWarning

    for w in caught:
        if not issubclass(w.category, CorpusWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        elif rt.is_main:
            print(f"warning: {w.message}", file=sys.stderr)


def _in_cache(cfg: TrainConfig, e: Exception) -> str:
    """A hint when the file an error names is the corpus cache or a folder above it (a HOME that cannot be
    written, a cache on a full disk): the user did not name that folder, so say which it is."""
    from trainer.data.cache import default_cache_dir

    name = getattr(e, "filename", None)
    if not name:
        return ""
    root, path = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(), Path(str(name))
    if path != root and path not in root.parents and root not in path.parents:
        return ""
    return (
        f" (that is the corpus cache, {str(root)!r}: choose a folder you can write with --cache-dir DIR or "
        "$GRADWATCH_CACHE)"
    )


def describe_loading(info: dict) -> str:
    """What loading the data spent its time on, from what the loader reports: only the built-in corpora are
    generated, and every source may compute its features (a cache hit does neither); and the disk space it
    freed, when that is large (a real corpus's caches of its earlier states, removed)."""
    from trainer.data.cache import REPORTED_BYTES, removed_words

    done = []
    if info.get("cache_hit") is False and "generation_seconds" in info:
        done.append(f"corpus generated in {info['generation_seconds']:.1f} s")
    if info.get("feature_cache_hit") is False and "feature_seconds" in info:
        done.append(f"features computed in {info['feature_seconds']:.1f} s")
    removed = info.get("removed_caches") or {}
    if removed.get("bytes", 0) >= REPORTED_BYTES:
        done.append(removed_words(removed))
    return f" ({', '.join(done)})" if done else ""


def warn_too_short(cfg: TrainConfig, splits, model: nn.Module) -> None:
    """One warning for the utterances whose transcripts the CTC model's output is too short to align: the
    loader counts those with fewer feature frames than CTC needs (``info["too_short"]``), but the models
    subsample time, so more of them cannot be aligned. Their loss is silently 0 (``zero_infinity``)."""
    found = {s: too_short_for_ctc(model, getattr(splits, s)) for s in ("train", "val", "test")}
    if not any(found.values()):
        return
    # The example: one the loader's own warning did not already name, when there is one.
    every = [(s, item) for s, items in found.items() for item in items]
    split, (i, frames, out, needed) = next((x for x in every if x[1][1] >= x[1][3]), every[0])
    names = splits.info.get("names") or {}
    name = names[split][i] if split in names else f"{split} utterance {i}"
    counts = ", ".join(f"{len(items)} in {s}" for s, items in found.items() if items)
    reported = sum((splits.info.get("too_short") or {}).values())
    also = f"; {reported} of them were already too short for the features (above)" if reported else ""
    print(
        f"warning: {len(every)} utterance(s) ({counts}) are too short for their transcripts once {cfg.model} "
        f"has subsampled time (e.g. {name}: {frames} feature frames, {out} output frames, where CTC needs "
        f"{needed}): their loss counts as 0, so they teach the model nothing{also}; check their transcripts",
        file=sys.stderr,
    )
