"""Min/max envelopes of per-layer norms over step buckets, read from grad_norm_blocks.

A bucket is ``w`` consecutive steps, ``bucket = step // w``, with ``w`` a multiple of a block size so
that whole blocks fall in one bucket; only blocks wholly inside [lo, hi] are read, and the steps at the two
ends of the range that no such block covers come from the raw rows, so every bucket is exact. The caller
keeps hi <= the run's last step: the writer stores complete blocks only (a block wholly inside such a
range is complete), and files of older versions hold exact partial blocks that no such range covers.
The merge happens in SQL (one statement), and results are cached per query: on a live run only the
buckets from the last (incomplete) one onwards are read again.
"""

import math
import threading
from collections import OrderedDict

from .schema import BLOCK_SIZES

__all__ = ["COLUMNS", "bucket_width", "EnvelopeCache"]

COLUMNS = ["layer_id", "step", "step_end", "norm_min", "norm_max", "norm_mean", "count"]


def bucket_width(lo: int, hi: int, max_points: int, size: int = 1) -> int:
    """Smallest multiple of ``size`` such that the buckets step // w over [lo, hi] number <= max_points."""
    w = max(size, math.ceil((hi - lo + 1) / max_points / size) * size)
    while hi // w - lo // w + 1 > max_points:
        w += size
    return w


def plan(lo: int, hi: int, max_points: int) -> int:
    """Bucket width w for at most max_points buckets over [lo, hi], a multiple of a block size if it can."""
    finest = max((s for s in BLOCK_SIZES if s <= math.ceil((hi - lo + 1) / max_points)), default=1)
    return bucket_width(lo, hi, max_points, finest)


def best_block_size(lo: int, hi: int, w: int) -> int:
    """The block size that reads the fewest rows for [lo, hi]: whole blocks plus raw rows at both ends
    (only sizes that divide w, so that a block never straddles two buckets; 1 = raw rows only)."""

    def rows(size: int) -> int:
        first, end = -(-lo // size) * size, (hi + 1) // size * size  # whole blocks cover [first, end)
        if first >= end:
            return hi - lo + 1
        return (end - first) // size + (first - lo) + (hi + 1 - end)

    return min((s for s in (1, *BLOCK_SIZES) if w % s == 0), key=rows)


def envelope_sql(n_layers: int, lo: int, hi: int, w: int) -> tuple[str, dict]:
    """One statement returning COLUMNS for buckets of w steps over [lo, hi] (params :run, :l0, ...)."""
    size = best_block_size(lo, hi, w)
    ids = "(" + ", ".join(f":l{i}" for i in range(n_layers)) + ")"
    parts, params = [], {}
    edges = [(lo, hi)]
    if size > 1:
        b_lo, b_hi = -(-lo // size), (hi + 1) // size - 1  # blocks wholly inside [lo, hi]
        if b_lo <= b_hi:
            parts.append(
                f"""SELECT layer_id, block * {size} / :w AS bucket, norm_min AS mn, norm_max AS mx,
                       norm_sum AS sm, norm_count AS n
                   FROM grad_norm_blocks
                   WHERE run_id = :run AND size = {size} AND layer_id IN {ids}
                       AND block BETWEEN :b_lo AND :b_hi"""
            )
            params.update(b_lo=b_lo, b_hi=b_hi)
            edges = [(lo, b_lo * size - 1), ((b_hi + 1) * size, hi)]
    for i, (a, b) in enumerate(edges):
        if a <= b:
            parts.append(
                f"""SELECT layer_id, step / :w AS bucket, norm AS mn, norm AS mx, coalesce(norm, 0.0) AS sm,
                       norm IS NOT NULL AS n
                   FROM grad_norms
                   WHERE run_id = :run AND layer_id IN {ids} AND step BETWEEN :a{i} AND :b{i}"""
            )
            params.update({f"a{i}": a, f"b{i}": b})
    sql = f"""SELECT layer_id, max(bucket * :w, :lo) AS step, min(bucket * :w + :w - 1, :hi) AS step_end,
                     min(mn) AS norm_min, max(mx) AS norm_max,
                     CASE WHEN sum(n) > 0 THEN total(sm) / sum(n) END AS norm_mean, sum(n) AS count
              FROM ({" UNION ALL ".join(parts)})
              GROUP BY layer_id, bucket ORDER BY layer_id, bucket"""
    params.update(lo=lo, hi=hi, w=w)
    return sql, params


class EnvelopeCache:
    """Per-query results, reused for the buckets that a growing run can no longer change.

    Assumes recorded steps are not rewritten once read (the writer only appends on a live run); call
    ``clear()`` after rewriting history. Bounded LRU; thread-safe.
    """

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key, w: int, lo: int, hi: int):
        """(cached frame of complete buckets, first step still to read) or None."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
        cw, clo, chi, frame = hit
        if cw != w or clo != lo or chi > hi:
            return None
        tail = max(lo, chi // w * w)  # the last cached bucket may have been incomplete: read it again
        return frame[frame["step"] < tail], tail

    def put(self, key, w: int, lo: int, hi: int, frame) -> None:
        with self._lock:
            self._entries[key] = (w, lo, hi, frame)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
