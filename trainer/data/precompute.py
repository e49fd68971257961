"""Log-mels computed once per split and cached next to the corpus (epochs then only index tensors)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .cache import locked, write_about
from .features import FeatureSpec, LogMel

__all__ = ["compute_features", "cached_features"]


def compute_features(waves: Iterable[np.ndarray], logmel: LogMel, chunk: int = 256):
    """Log-mels of 16 kHz waveforms: one ``[N, n_mels, frames]`` tensor for fixed-size features (computed in
    batches), else a list of ``[n_mels, T_i]``."""
    fixed = logmel.spec.frames is not None
    out, batch = [], []

    def flush():
        if not batch:
            return
        if fixed:  # equal lengths for 1 s clips; pad the odd short one so they stack
            n = max(len(w) for w in batch)
            x = torch.stack([torch.nn.functional.pad(torch.from_numpy(w), (0, n - len(w))) for w in batch])
            out.append(logmel(x))
        else:
            out.extend(logmel(torch.from_numpy(w)) for w in batch)
        batch.clear()

    with torch.no_grad():
        for w in waves:
            batch.append(np.asarray(w, dtype=np.float32))
            if len(batch) == chunk:
                flush()
        flush()
    if fixed:
        return torch.cat(out) if out else torch.zeros(0, logmel.spec.n_mels, logmel.spec.frames)
    return out


def cached_features(folder: Path, fspec: FeatureSpec, compute: Callable[[], dict], about: dict | None = None):
    """``compute()`` once per (corpus folder, feature spec); stored as ``features-<key>.pt`` in ``folder``.

    Returns ``(features per split, seconds spent computing (0 on a hit), hit)``. Variable-length features are
    stored concatenated along time with their lengths (one tensor per split loads much faster than thousands).
    Read and written under the folder's lock (``cache.locked``); the folder is made only once there are
    features to write, so a failed ``compute()`` leaves nothing behind. ``about`` (a real corpus: its source,
    path and settings) is written beside them as ``corpus.json``, for ``cache.remove_stale``.
    """
    path = folder / f"features-{fspec.key()}.pt"
    with locked(folder.parent, folder.name):
        if path.exists():
            if about is not None:  # (a folder of an older trainer is labelled on its first hit)
                write_about(folder, about)
            return _unpack(torch.load(path, weights_only=True)), 0.0, True
        start = time.perf_counter()
        feats = compute()
        seconds = round(time.perf_counter() - start, 3)
        folder.mkdir(parents=True, exist_ok=True)
        if about is not None:
            write_about(folder, about)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        torch.save(_pack(feats), tmp)
        os.replace(tmp, path)
    return feats, seconds, False


def _pack(feats: dict) -> dict:
    packed = {}
    for s, f in feats.items():
        if isinstance(f, torch.Tensor):
            packed[s] = {"fixed": f}
        else:
            lengths = torch.tensor([x.shape[-1] for x in f], dtype=torch.long)
            packed[s] = {"cat": torch.cat(f, dim=-1) if f else torch.zeros(0, 0), "lengths": lengths}
    return packed


def _unpack(packed: dict) -> dict:
    out = {}
    for s, p in packed.items():
        if "fixed" in p:
            out[s] = p["fixed"]
        else:
            out[s] = list(torch.split(p["cat"], p["lengths"].tolist(), dim=-1)) if len(p["lengths"]) else []
    return out
