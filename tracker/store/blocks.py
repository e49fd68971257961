"""grad_norms rows from logged steps, and the complete grad_norm_blocks a transaction must (re)compute.

A block of ``size`` steps (``block = step // size``, steps ``[block * size, (block + 1) * size - 1]``) is
*complete* once the run's last recorded step reaches its last step. The writer writes a block exactly once,
in the transaction whose steps complete it, computed in SQL from what the file holds (size 16 from
``grad_norms``, each larger size from the complete blocks of the next smaller one); a step that arrives
again or out of order makes it recompute the complete blocks that hold it. Partial blocks are never
written, so the aggregates cost nothing on the ~15 of 16 transactions that complete no block.
The functions here only decide *which* steps; the SQL they feed lives next to them (the store is the only
part that knows SQL) and is run by the writer.
"""

import math
from itertools import repeat

__all__ = [
    "StepNorms",
    "norm_rows",
    "blocks_in_memory",
    "without_blocks",
    "INSERT_BLOCKS",
    "count_rows",
    "block_ranges",
    "LAYERS_WITH_ROWS",
    "BLOCKS_FROM_ROWS",
    "ONE_BLOCK_FROM_ROWS",
    "BLOCKS_FROM_BLOCKS",
]

# (step, norms, layer_ids): norms[i] is the L2 norm of layer layer_ids[i] (layer_ids None = 0..len-1);
# a None norm means "no gradient this step" (no row); NaN is stored as NULL (SQLite has no NaN).
StepNorms = tuple[int, list, list | None]

# The layer ids that have grad_norms rows in run :run, as a loose index scan: one seek per layer on the
# (run_id, layer_id, step) key instead of a scan of all the run's rows (SELECT DISTINCT would scan them).
LAYERS_WITH_ROWS = """
WITH RECURSIVE ids(id) AS (
    SELECT (SELECT min(layer_id) FROM grad_norms WHERE run_id = :run)
    UNION ALL
    SELECT (SELECT min(layer_id) FROM grad_norms WHERE run_id = :run AND layer_id > ids.id)
    FROM ids WHERE ids.id IS NOT NULL
)
SELECT id FROM ids WHERE id IS NOT NULL
"""

# Blocks of :size over steps [:lo, :hi] (whole blocks) from the raw rows, for the layers listed in {ids}
# (an IN list: SQLite seeks each layer's range on the primary key). A block with no rows gets no row;
# a block whose rows are all NULL (NaN) gets norm_count 0 and NULL min/max.
BLOCKS_FROM_ROWS = """
INSERT OR REPLACE INTO grad_norm_blocks
    (run_id, size, layer_id, block, norm_min, norm_max, norm_sum, norm_count)
SELECT :run, :size, layer_id, step / :size, min(norm), max(norm), total(norm), count(norm)
FROM grad_norms
WHERE run_id = :run AND layer_id IN {ids} AND step BETWEEN :lo AND :hi
GROUP BY layer_id, step / :size
"""
# The same for a range of exactly one block, the usual case: grouping by layer alone follows the primary
# key's order, so SQLite needs no temporary B-tree (measured: ~25% less CPU per block).
ONE_BLOCK_FROM_ROWS = BLOCKS_FROM_ROWS.replace("GROUP BY layer_id, step / :size", "GROUP BY layer_id")

# Block rows aggregated in Python (blocks_in_memory), in the column order of the statements above.
INSERT_BLOCKS = """
INSERT OR REPLACE INTO grad_norm_blocks
    (run_id, size, layer_id, block, norm_min, norm_max, norm_sum, norm_count)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

# Blocks of :size from the complete blocks of the next smaller size :part (blocks [:b_lo, :b_hi] of it).
BLOCKS_FROM_BLOCKS = """
INSERT OR REPLACE INTO grad_norm_blocks
    (run_id, size, layer_id, block, norm_min, norm_max, norm_sum, norm_count)
SELECT :run, :size, layer_id, block / (:size / :part),
       min(norm_min), max(norm_max), total(norm_sum), sum(norm_count)
FROM grad_norm_blocks
WHERE run_id = :run AND size = :part AND layer_id IN {ids} AND block BETWEEN :b_lo AND :b_hi
GROUP BY layer_id, block / (:size / :part)
"""


def _is_clean(norms) -> bool:
    """All norms present and finite (sum is C-level; a None raises, NaN/Inf propagate)."""
    try:
        return math.isfinite(sum(norms))
    except TypeError:
        return False


# Below this many steps in a row, going layer by layer costs more (a zip per layer) than it saves.
_LAYER_MAJOR_FROM = 8


def norm_rows(run_id: int, payload: list[StepNorms]):
    """An iterator of grad_norms rows (run_id, layer_id, step, norm), made lazily for executemany.

    Runs of 8 or more consecutive clean steps (every norm present and finite) over the same layers come
    layer by layer, so that SQLite appends each layer's rows to one place of the (run_id, layer_id, step)
    key in turn instead of visiting every layer's place once per step (measured: 5-10% less CPU per row in
    a transaction of many steps, docs/benchmarks.md). Lazily, because zip hands back the same tuple object
    when its consumer let go of it (executemany does, once the row is bound): a million rows then cost no
    tuple allocations and no GC passes.
    """
    i = 0
    while i < len(payload):
        step, norms, ids = payload[i]
        if not _is_clean(norms):
            if ids is None:
                ids = range(len(norms))
            yield from (
                (run_id, lid, step, float(v)) for lid, v in zip(ids, norms, strict=True) if v is not None
            )
            i += 1
            continue
        j = i + 1
        while j < len(payload) and _same_layers(payload[j], norms, ids) and _is_clean(payload[j][1]):
            j += 1
        lids = range(len(norms)) if ids is None else ids
        if j - i < _LAYER_MAJOR_FROM:
            for step, norms, _ in payload[i:j]:
                yield from zip(repeat(run_id), lids, repeat(step), norms)
        else:
            steps = [p[0] for p in payload[i:j]]
            by_layer = zip(*(p[1] for p in payload[i:j]), strict=True)  # per layer: the steps' norms
            for lid, column in zip(lids, by_layer, strict=True):
                yield from zip(repeat(run_id), repeat(lid), steps, column)
        i = j


def _same_layers(entry: StepNorms, norms: list, ids: list | None) -> bool:
    other_norms, other_ids = entry[1], entry[2]
    return len(other_norms) == len(norms) and (other_ids is ids or other_ids == ids)


def count_rows(payload: list[StepNorms]) -> int:
    """Number of rows norm_rows yields (norms that are not None)."""
    return sum(len(n) if _is_clean(n) else sum(v is not None for v in n) for _, n, _ in payload)


def block_ranges(size: int, prev_last: int, new_last: int, rewritten=()) -> list[tuple[int, int]]:
    """Step ranges ``(lo, hi)``, each made of whole blocks of ``size``, whose blocks a transaction must
    (re)write when it moves the run's last step from ``prev_last`` (-1: none yet) to ``new_last`` and writes
    again the steps ``rewritten`` (those <= prev_last): the blocks complete now that were not complete
    before, and the blocks already complete that hold a rewritten step. Sorted, disjoint, adjacent ranges
    merged. The newly complete blocks are one range whatever the jump (step 10 then step 1_000_000), so
    no caller loops over empty blocks: SQL reads only the rows that exist in it.
    """
    ranges: list[tuple[int, int]] = []

    def add(lo: int, hi: int) -> None:
        if ranges and ranges[-1][1] + 1 == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))

    # Complete before this transaction: its last step, (b + 1) * size - 1, was <= prev_last.
    for b in sorted({s // size for s in rewritten if (s // size + 1) * size - 1 <= prev_last}):
        add(b * size, b * size + size - 1)
    first, end = (prev_last + 1) // size * size, (new_last + 1) // size * size  # newly complete: [first, end)
    if first < end:
        add(first, end - 1)
    return ranges


def blocks_in_memory(run_id: int, payload: list[StepNorms], size: int, prev_last: int, new_last: int):
    """The complete blocks of ``size`` that this transaction's steps alone fill, aggregated from the payload
    in Python: ``(rows for INSERT_BLOCKS, the set of block indexes they cover)``.

    Reading a transaction's rows back in SQL costs more than inserting them did (a bulk write spent ~30% of
    its CPU there, docs/benchmarks.md), and the payload already holds them. A block qualifies when it starts
    after ``prev_last`` (so the file holds none of its rows), ends at or before ``new_last`` (complete), and
    its payload steps are clean (every norm present and finite), over the same layers, each step once. Any
    other block is left to the SQL statements, which read what the file holds.
    """
    first, last = prev_last // size + 1, (new_last + 1) // size - 1  # blocks after prev_last, complete
    if first > last:
        return [], set()
    by_block: dict[int, list[StepNorms]] = {}
    for entry in payload:
        b = entry[0] // size
        if first <= b <= last:
            by_block.setdefault(b, []).append(entry)
    rows, covered = [], set()
    for b, entries in by_block.items():
        _, norms, ids = entries[0]
        if len({e[0] for e in entries}) != len(entries) or not all(
            _same_layers(e, norms, ids) and _is_clean(e[1]) for e in entries
        ):
            continue
        columns = zip(*(e[1] for e in entries), strict=True)  # per layer: its norms over the block's steps
        for lid, col in zip(range(len(norms)) if ids is None else ids, columns, strict=True):
            rows.append((run_id, size, lid, b, min(col), max(col), sum(col), len(col)))
        covered.add(b)
    return rows, covered


def without_blocks(ranges: list[tuple[int, int]], size: int, covered: set[int]) -> list[tuple[int, int]]:
    """``ranges`` (whole blocks of ``size``, as block_ranges gives them) minus the blocks in ``covered``.
    Costs O(len(covered)) per range, never O(blocks in the range): a range can span 10^13 empty blocks."""
    out = []
    for lo, hi in ranges:
        start = lo
        for b in sorted(x for x in covered if lo <= x * size <= hi):
            if b * size > start:
                out.append((start, b * size - 1))
            start = (b + 1) * size
        if start <= hi:
            out.append((start, hi))
    return out
