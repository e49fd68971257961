"""Pure functions that turn logged steps into grad_norms rows and grad_norm_blocks partial aggregates.

Kept apart from the writer thread so they can be tested against numpy. Aggregates are kept in column
form (one list per statistic, aligned with the layer ids) so that the usual case — consecutive steps,
the same layers, every norm finite — runs in C-level builtins (``zip(*rows)``, ``map(min, ...)``) with
no Python loop per layer; NaN/Inf and missing layers take a per-value path.
"""

import math
from itertools import repeat

__all__ = ["StepNorms", "norm_rows", "count_rows", "norm_blocks"]

# (step, norms, layer_ids): norms[i] is the L2 norm of layer layer_ids[i] (layer_ids None = 0..len-1);
# a None norm means "no gradient this step" (no row); NaN is stored as NULL (SQLite has no NaN).
StepNorms = tuple[int, list, list | None]


def _is_clean(norms) -> bool:
    """All norms present and finite (sum is C-level; a None raises, NaN/Inf propagate)."""
    try:
        return math.isfinite(sum(norms))
    except TypeError:
        return False


def _column_aggregate(seg, clean: bool):
    """(mins, maxs, sums, counts) over the steps of ``seg``, one entry per layer; NaN/None left out."""
    if clean:
        cols = list(zip(*(n for _, n, _ in seg), strict=True))
        return list(map(min, cols)), list(map(max, cols)), list(map(sum, cols)), [len(seg)] * len(cols)
    width = len(seg[0][1])
    mins, maxs, sums, counts = [None] * width, [None] * width, [0.0] * width, [0] * width
    for _, norms, _ in seg:
        for j, v in enumerate(norms):
            if v is None or v != v:
                continue
            v = float(v)
            if counts[j]:
                mins[j] = min(mins[j], v)
                maxs[j] = max(maxs[j], v)
            else:
                mins[j] = maxs[j] = v
            sums[j] += v
            counts[j] += 1
    return mins, maxs, sums, counts


def _merge(aggs: list):
    """Merge column aggregates of the same layers (min/max None where the count is 0)."""
    try:
        return (
            list(map(min, *(a[0] for a in aggs))),
            list(map(max, *(a[1] for a in aggs))),
            list(map(sum, zip(*(a[2] for a in aggs), strict=True))),
            list(map(sum, zip(*(a[3] for a in aggs), strict=True))),
        )
    except TypeError:  # a None min/max (a layer with no finite norm in one part)
        mins, maxs = [], []
        for lo_parts, hi_parts in zip(
            zip(*(a[0] for a in aggs), strict=True), zip(*(a[1] for a in aggs), strict=True), strict=True
        ):
            lo = [v for v in lo_parts if v is not None]
            hi = [v for v in hi_parts if v is not None]
            mins.append(min(lo) if lo else None)
            maxs.append(max(hi) if hi else None)
        return (
            mins,
            maxs,
            list(map(sum, zip(*(a[2] for a in aggs), strict=True))),
            list(map(sum, zip(*(a[3] for a in aggs), strict=True))),
        )


def norm_rows(run_id: int, payload: list[StepNorms]):
    """An iterator of grad_norms rows (run_id, layer_id, step, norm), made lazily for executemany.

    Lazily, because zip hands back the same tuple object when its consumer let go of it (executemany
    does, once the row is bound): a million rows then cost no tuple allocations and no GC passes.
    """
    for step, norms, ids in payload:
        if ids is None:
            ids = range(len(norms))
        if _is_clean(norms):
            yield from zip(repeat(run_id), ids, repeat(step), norms)
        else:
            yield from (
                (run_id, lid, step, float(v)) for lid, v in zip(ids, norms, strict=True) if v is not None
            )


def count_rows(payload: list[StepNorms]) -> int:
    """Number of rows norm_rows yields (norms that are not None)."""
    return sum(len(n) if _is_clean(n) else sum(v is not None for v in n) for _, n, _ in payload)


def norm_blocks(run_id: int, payload: list[StepNorms], sizes: tuple[int, ...]) -> list[tuple]:
    """grad_norm_blocks rows for ``payload`` (steps in any order): tuples (run_id, size, layer_id, block,
    norm_min, norm_max, norm_sum, norm_count), one per (size, layer, block) touched, aggregating only
    the given steps — partial blocks that the caller merges with what the file already holds.
    ``sizes`` ascending, each a multiple of the first.
    """
    # (block, layer ids) -> list of column aggregates, at the smallest size
    parts: dict[tuple[int, tuple], list] = {}
    size0 = sizes[0]
    seg: list = []
    seg_key = None
    clean_seg = True
    for entry in payload:
        step, norms, ids = entry
        ids = tuple(range(len(norms))) if ids is None else tuple(ids)
        key = (step // size0, ids)
        if key != seg_key and seg:
            parts.setdefault(seg_key, []).append(_column_aggregate(seg, clean_seg))
            seg, clean_seg = [], True
        seg_key = key
        seg.append(entry)
        clean_seg = clean_seg and _is_clean(norms)
    if seg:
        parts.setdefault(seg_key, []).append(_column_aggregate(seg, clean_seg))

    level = {key: (aggs[0] if len(aggs) == 1 else _merge(aggs)) for key, aggs in parts.items()}
    blocks: list[tuple] = []
    for size in sizes:
        if size != size0:
            grouped: dict[tuple[int, tuple], list] = {}
            for (block, ids), agg in level.items():
                grouped.setdefault((block // (size // size0), ids), []).append(agg)
            current = {key: (aggs[0] if len(aggs) == 1 else _merge(aggs)) for key, aggs in grouped.items()}
        else:
            current = level
        for (block, ids), (mins, maxs, sums, counts) in current.items():
            blocks.extend(zip(repeat(run_id), repeat(size), ids, repeat(block), mins, maxs, sums, counts))
    return blocks
