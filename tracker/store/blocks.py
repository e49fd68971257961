"""Pure functions that turn logged steps into grad_norms rows and grad_norm_blocks partial aggregates.

Kept apart from the writer thread so they can be tested against numpy. The fast path handles the usual
case (consecutive steps, the same layers, all norms finite) with C-level builtins over columns
(``zip(*rows)``, ``map(min, ...)``); anything else (NaN/Inf, missing layers) takes a per-value path.
"""

import math
from itertools import repeat

__all__ = ["StepNorms", "norm_rows_and_blocks", "merge_blocks"]

# (step, norms, layer_ids): norms[i] is the L2 norm of layer layer_ids[i] (layer_ids None = 0..len-1);
# a None norm means "no gradient this step" (no row); NaN is stored as NULL (SQLite has no NaN).
StepNorms = tuple[int, list, list | None]


def _segments(payload: list[StepNorms], size: int):
    """Consecutive entries of ``payload`` that share a block of ``size`` steps and a layer list."""
    start = 0
    for i in range(1, len(payload) + 1):
        if (
            i == len(payload)
            or payload[i][0] // size != payload[start][0] // size
            or (payload[i][2] is not payload[start][2] and payload[i][2] != payload[start][2])
            or len(payload[i][1]) != len(payload[start][1])
        ):
            yield payload[start:i]
            start = i


def _is_clean(norms) -> bool:
    """All norms present and finite (sum is C-level; a None raises, NaN/Inf propagate)."""
    try:
        return math.isfinite(sum(norms))
    except TypeError:
        return False


def norm_rows_and_blocks(run_id: int, payload: list[StepNorms], size: int):
    """grad_norms rows and block aggregates of ``size`` steps for steps in ascending order.

    Returns (rows, blocks): rows are (run_id, layer_id, step, norm) tuples; blocks is a dict
    {(layer_id, block): [min, max, sum, count]} over the non-NaN norms (count counts them; min/max are
    None when count is 0). Blocks may be partial: the caller merges them with what the file holds.
    """
    rows: list[tuple] = []
    blocks: dict[tuple[int, int], list] = {}
    for seg in _segments(payload, size):
        steps = [s for s, _, _ in seg]
        ids = seg[0][2] if seg[0][2] is not None else range(len(seg[0][1]))
        block = steps[0] // size
        if all(_is_clean(n) for _, n, _ in seg):
            cols = list(zip(*(n for _, n, _ in seg), strict=True))
            for lid, col, lo, hi, total in zip(
                ids, cols, map(min, cols), map(max, cols), map(math.fsum, cols), strict=True
            ):
                rows.extend(zip(repeat(run_id), repeat(lid), steps, col))
                _add(blocks, (lid, block), lo, hi, total, len(col))
            continue
        for step, norms, _ in seg:
            for lid, v in zip(ids, norms, strict=True):
                if v is None:
                    continue
                v = float(v)
                rows.append((run_id, lid, step, v))
                if v != v:  # NaN: stored as NULL, left out of the aggregates
                    _add(blocks, (lid, block), None, None, 0.0, 0)
                else:
                    _add(blocks, (lid, block), v, v, v, 1)
    return rows, blocks


def _add(blocks: dict, key, lo, hi, total, count) -> None:
    """Merge one partial aggregate into ``blocks[key]`` (min/max are None while count is 0)."""
    agg = blocks.get(key)
    if agg is None:
        blocks[key] = [lo, hi, total, count]
    elif count:
        if agg[3]:
            agg[0] = min(agg[0], lo)
            agg[1] = max(agg[1], hi)
        else:
            agg[0], agg[1] = lo, hi
        agg[2] += total
        agg[3] += count


def merge_blocks(blocks: dict, factor: int) -> dict:
    """Aggregate blocks of size s into blocks of size s * factor (same layer, block // factor)."""
    out: dict[tuple[int, int], list] = {}
    for (lid, block), (lo, hi, total, count) in blocks.items():
        _add(out, (lid, block // factor), lo, hi, total, count)
    return out
