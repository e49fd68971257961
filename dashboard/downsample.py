"""Downsampling that keeps spikes: a min/max envelope per bucket.

A gradient spike is often a single step; averaging or striding would hide exactly what the user looks for.
Each bucket of consecutive points contributes its minimum and its maximum (in step order), so every extreme
survives and a trace never has more than ``max_points`` points.
"""

from __future__ import annotations

import numpy as np

__all__ = ["minmax_envelope", "minmax_indices"]


def minmax_envelope(x, y, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` reduced to at most ``max_points`` points, keeping each bucket's min and max.

    ``x`` must be sorted ascending (steps). Buckets hold equal numbers of points. Non-finite values (NaN/Inf
    norms) are kept: they sort as extremes, so an exploding step is never dropped.
    """
    x = np.asarray(x)
    keep = minmax_indices(x, y, max_points)
    return x[keep], np.asarray(y, dtype=float)[keep]


def minmax_indices(x, y, max_points: int = 2000) -> np.ndarray:
    """The positions of the points :func:`minmax_envelope` keeps, ascending: index any data that goes with
    the points (hover text) with them, so that it stays with its own point."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points!r}")
    x = np.asarray(x)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    n = len(x)
    if n <= max_points:
        return np.arange(n)
    n_buckets = max_points // 2
    bucket = (np.arange(n) * n_buckets) // n
    # Sort by (bucket, y): the first row of a bucket is its minimum, the last its maximum.
    # +inf/-inf sort naturally; NaN goes last, so a NaN step becomes the bucket's "max" and stays visible.
    order = np.lexsort((y, bucket))
    starts = np.searchsorted(bucket[order], np.arange(n_buckets), side="left")
    ends = np.append(starts[1:], n) - 1
    return np.unique(np.concatenate([order[starts], order[ends]]))  # unique also restores step order
