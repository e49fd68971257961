"""grad_norm_blocks holds exactly the complete blocks, each equal to numpy over the raw norms.

A block of ``size`` steps is complete once the run's last step reaches its last step; the writer must have
written every complete block that has rows, and no other (no partial block, whatever the batching).
"""

import math
import random
import sqlite3

import numpy as np
import pytest

from tests.store.helpers import make_norms, raw_sql, record_run
from tracker.store import BLOCK_SIZES, Store


def blocks_oracle(norms: dict, size: int, last_step: int | None = None) -> dict:
    """{(layer, block): (min, max, sum, count)} over non-NaN norms, with numpy, for the blocks complete at
    ``last_step`` (default: the largest step in ``norms``). ``norms[step][layer]``; None = no row."""
    last = max(norms) if last_step is None else last_step
    steps = np.array(sorted(norms), dtype=np.int64)
    width = max(len(v) for v in norms.values())
    arr = np.array(
        [[np.nan if v is None else v for v in norms[s]] + [np.nan] * (width - len(norms[s])) for s in steps],
        dtype=float,
    )
    present = np.array([[v is not None for v in norms[s]] + [False] * (width - len(norms[s])) for s in steps])
    out = {}
    for block in np.unique(steps // size):
        if (int(block) + 1) * size - 1 > last:
            continue  # not complete
        sel = steps // size == block
        for lid in range(width):
            if not present[sel, lid].any():
                continue  # no row of this layer in the block: no block row
            col = arr[sel, lid][~np.isnan(arr[sel, lid])]
            out[(lid, int(block))] = (
                (float(col.min()), float(col.max()), float(col.sum()), len(col))
                if len(col)
                else (None, None, 0.0, 0)
            )
    return out


def stored_blocks(db_path, run_id, size):
    rows = raw_sql(
        db_path,
        "SELECT layer_id, block, norm_min, norm_max, norm_sum, norm_count FROM grad_norm_blocks "
        "WHERE run_id = ? AND size = ?",
        (run_id, size),
    )
    return {(lid, b): (mn, mx, sm, n) for lid, b, mn, mx, sm, n in rows}


def assert_blocks_equal(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)  # no partial block, no complete block missing
    for key, (mn, mx, sm, n) in expected.items():
        a = actual[key]
        assert (a[0], a[1], a[3]) == (mn, mx, n), key
        assert a[2] == pytest.approx(sm, rel=1e-12) or (math.isinf(sm) and a[2] == sm), key


def assert_all_sizes(db_path, run_id, norms, last_step=None):
    for size in BLOCK_SIZES:
        assert_blocks_equal(stored_blocks(db_path, run_id, size), blocks_oracle(norms, size, last_step))


def write(writer, norms: dict, order, flush_every: int = 0):
    for i, step in enumerate(order):
        writer.add_step(step=step, norms=norms[step])
        if flush_every and i % flush_every == flush_every - 1:
            writer.flush()


# one batch; batches of 7 steps (ending mid-block); a batch per step
@pytest.mark.parametrize("flush_every", [0, 7, 1])
def test_complete_blocks_match_numpy_and_no_partial_block(store, db_path, flush_every):
    norms = make_norms(1100, 5, seed=flush_every, nonfinite_every=37)
    run_id = record_run(store, norms, flush_every=flush_every)
    assert_all_sizes(db_path, run_id, norms)
    assert stored_blocks(db_path, run_id, 1024)  # 1,100 steps: the first 1024-block is complete


def test_blocks_appear_in_the_transaction_that_completes_them(store, db_path):
    norms = make_norms(80, 2, seed=4)
    run_id = store.create_run(name="stepwise")
    w = store.writer(run_id)
    for step in range(80):
        w.add_step(step=step, norms=norms[step])
        w.flush()
        seen = {k: v for k, v in norms.items() if k <= step}
        assert_all_sizes(db_path, run_id, seen)
    w.close()  # close() writes no partial block either
    assert_all_sizes(db_path, run_id, norms)


def test_sparse_steps_complete_a_block_when_a_later_step_arrives(store, db_path):
    # every=10: block [0, 15] holds steps 0 and 10 and is complete once step 20 (>= 15) is written.
    run_id = store.create_run(name="sparse", every=10)
    rng = random.Random(8)
    norms = {}
    w = store.writer(run_id)
    for step in range(0, 2100, 10):
        norms[step] = [rng.lognormvariate(0, 1) for _ in range(3)]
        w.add_step(step=step, norms=norms[step])
        if step in (10, 20):
            w.flush()
            assert bool(stored_blocks(db_path, run_id, 16)) == (step == 20)
        elif step % 170 == 0:
            w.flush()
    w.close()
    assert_all_sizes(db_path, run_id, norms)
    assert (0, 0) in stored_blocks(db_path, run_id, 16) and stored_blocks(db_path, run_id, 16)[(0, 0)][3] == 2


def test_out_of_order_and_repeated_steps_are_recomputed_exactly(store, db_path):
    run_id = store.create_run(name="shuffled")
    rng = random.Random(3)
    final = {}
    w = store.writer(run_id)
    order = list(range(1100)) + [rng.randrange(1100) for _ in range(300)]  # 300 steps again, new values
    rng.shuffle(order)
    for i, step in enumerate(order):
        final[step] = [rng.lognormvariate(0, 1) for _ in range(3)]
        w.add_step(step=step, norms=final[step])
        if i % 50 == 49:
            w.flush()
    # then rewrite a few steps of complete blocks one transaction each, with a spike to be seen at every size
    for step in (5, 300, 1023):
        final[step] = [1e6 + step, 0.5, float("nan")]
        w.add_step(step=step, norms=final[step])
        w.flush()
    w.close()
    assert_all_sizes(db_path, run_id, final)


def test_layer_with_only_nan_norms_in_a_block(store, db_path):
    run_id = store.create_run(name="all-nan")
    w = store.writer(run_id)
    for step in range(64):
        w.add_step(step=step, norms=[float("nan") if step < 16 else 1.0 * step, 2.0])
        if step == 10:
            w.flush()
    w.close()
    blocks = stored_blocks(db_path, run_id, 16)
    assert blocks[(0, 0)] == (None, None, 0.0, 0)  # rows exist (all NULL): a row with count 0
    assert blocks[(0, 1)] == (16.0, 31.0, float(sum(range(16, 32))), 16)
    assert stored_blocks(db_path, run_id, 64)[(0, 0)] == (16.0, 63.0, float(sum(range(16, 64))), 48)


def test_a_layer_that_stops_getting_gradients_before_a_resume_still_gets_its_blocks(db_path):
    # layer 2 has rows in steps 0..5 only; the resumed writer is never handed it (frozen after the resume)
    norms = {step: [1.0 + step, 2.0 + step] + ([3.0 + step] if step < 6 else []) for step in range(100)}
    with Store.open(db_path) as s:
        run_id = s.create_run(name="resumed")
        with s.writer(run_id) as w:
            write(w, norms, range(6))  # layer 2 has rows in block 0 only; block 0 is not complete yet
    with Store.open(db_path) as s:  # a new process resumes the run: a fresh writer on the same run
        with s.writer(run_id) as w:
            write(w, norms, range(6, 100), flush_every=9)
    assert_all_sizes(db_path, run_id, norms)
    assert stored_blocks(db_path, run_id, 16)[(2, 0)] == (3.0, 8.0, float(sum(range(3, 9))), 6)


def test_a_writer_reopened_on_an_existing_run_rewrites_and_extends_exactly(db_path):
    norms = make_norms(700, 4, seed=21, nonfinite_every=53)
    with Store.open(db_path) as s:
        run_id = s.create_run(name="resume")
        with s.writer(run_id) as w:
            write(w, norms, range(500), flush_every=37)
    rewritten = make_norms(700, 4, seed=22)
    for step in range(450, 700):  # resumed from a checkpoint at step 450: steps 450..499 written again
        norms[step] = rewritten[step]
    with Store.open(db_path) as s:
        with s.writer(run_id) as w:
            write(w, norms, range(450, 700), flush_every=13)
    assert_all_sizes(db_path, run_id, norms)


def test_a_big_step_jump_writes_only_blocks_with_rows(store, db_path):
    # A resume at step 10**15 after step 10: the blocks in between are complete and empty; a loop over
    # them would never end. Then a step inside the gap arrives late: its (complete) blocks are written.
    jump = 10**15
    norms = {step: [0.5 + step, 2.0] for step in range(11)}
    norms.update({jump + i: [7.0, 8.0 + i] for i in range(20)})
    run_id = store.create_run(name="jump")
    w = store.writer(run_id)
    write(w, norms, sorted(norms), flush_every=11)
    w.flush()
    assert_all_sizes(db_path, run_id, norms)
    norms[5000] = [9.0, 9.0]
    write(w, norms, [5000])
    w.close()
    assert_all_sizes(db_path, run_id, norms)
    assert len(stored_blocks(db_path, run_id, 16)) == 2 * 3  # blocks 0, 312 and jump // 16, two layers


def test_files_with_partial_blocks_of_the_old_writer_still_read_and_resume_exactly(db_path):
    # The previous writer also kept the last, incomplete block of each size as an exact partial aggregate.
    # Such a file must read exactly, and a resumed run must replace those rows once their block completes.
    norms = make_norms(600, 3, seed=31, nonfinite_every=41)
    with Store.open(db_path) as s:
        run_id = record_run(s, {k: v for k, v in norms.items() if k < 300}, flush_every=50)
    conn = sqlite3.connect(db_path)
    with conn:
        for size in BLOCK_SIZES:
            for (lid, block), agg in blocks_oracle(
                {k: v for k, v in norms.items() if k < 300}, size, last_step=10**9
            ).items():
                if (block + 1) * size - 1 > 299:  # the partial blocks the old writer left in the file
                    conn.execute(
                        "INSERT INTO grad_norm_blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, size, lid, block, *agg),
                    )
    conn.close()
    with Store.open(db_path, readonly=True) as r:
        check_envelope(r, run_id, {k: v for k, v in norms.items() if k < 300})
    with Store.open(db_path) as s:
        with s.writer(run_id) as w:
            write(w, norms, range(300, 600), flush_every=23)
    with Store.open(db_path, readonly=True) as r:
        check_envelope(r, run_id, norms)
    for size in BLOCK_SIZES:  # every complete block is exact; old partial rows remain only beyond step 599
        stored = stored_blocks(db_path, run_id, size)
        complete = {k: v for k, v in stored.items() if (k[1] + 1) * size - 1 <= 599}
        assert_blocks_equal(complete, blocks_oracle(norms, size))


def check_envelope(reader, run_id, norms):
    last = max(norms)
    for max_points in (7, 40, 2000):
        df = reader.grad_norm_envelope(run_id, None, max_points=max_points)
        assert df.groupby("layer_id")["count"].sum().tolist() == [
            sum(not math.isnan(norms[s][lid]) for s in norms) for lid in range(3)
        ]
        for row in df.itertuples():
            vals = np.array([norms[s][row.layer_id] for s in range(row.step, row.step_end + 1)])
            vals = vals[~np.isnan(vals)]
            assert row.count == len(vals) and row.step_end <= last
            np.testing.assert_equal(
                [row.norm_min, row.norm_max], [vals.min(), vals.max()] if len(vals) else [math.nan] * 2
            )


# ---- blocks aggregated from the payload (blocks.blocks_in_memory) and the ranges left to SQL


def test_blocks_in_memory_are_numpys_for_the_blocks_only_the_payload_fills():
    from tracker.store.blocks import blocks_in_memory

    norms = make_norms(100, 3, seed=11, nonfinite_every=40)  # steps 39 and 79 hold a NaN and an Inf
    payload = [(s, norms[s], None) for s in range(20, 100)]  # the file already holds steps 0..19
    rows, covered = blocks_in_memory(7, payload, 16, prev_last=19, new_last=99)
    # Block 1 (16..31) has rows in the file, block 6 (96..111) is not complete, 2 and 4 hold a NaN step.
    assert covered == {3, 5}
    oracle = blocks_oracle({s: norms[s] for s in range(48, 96)}, 16)
    got = {(lid, b): (mn, mx, sm, n) for run, size, lid, b, mn, mx, sm, n in rows}
    assert {r[:2] for r in rows} == {(7, 16)}
    assert_blocks_equal(got, {k: v for k, v in oracle.items() if k[1] in covered})


def test_blocks_in_memory_of_sparse_steps_and_a_jump():
    from tracker.store.blocks import blocks_in_memory

    norms = {s: [float(s), 1.0 / (s + 1)] for s in [*range(0, 200, 10), 10**12]}  # every=10, then a jump
    rows, covered = blocks_in_memory(1, [(s, v, None) for s, v in norms.items()], 16, -1, 10**12)
    assert covered == {s // 16 for s in norms if s < 10**12}  # the jump's own block is not complete
    got = {(lid, b): (mn, mx, sm, n) for run, size, lid, b, mn, mx, sm, n in rows}
    assert_blocks_equal(got, blocks_oracle({s: v for s, v in norms.items() if s < 10**12}, 16, 10**12))


@pytest.mark.parametrize(
    "payload, why",
    [
        ([(s, [1.0, 2.0], None) for s in [*range(16), 5]], "a step twice"),
        ([(s, [1.0, 2.0], None if s else [0, 1]) for s in range(16)], "the same layers, named two ways"),
        ([(s, [1.0, 2.0] if s else [1.0], None) for s in range(16)], "a layer missing at one step"),
        ([(s, [1.0, None], None) for s in range(16)], "a layer without gradient"),
    ],
)
def test_blocks_in_memory_leave_doubtful_blocks_to_sql(payload, why):
    from tracker.store.blocks import blocks_in_memory

    assert blocks_in_memory(1, payload, 16, prev_last=-1, new_last=16) == ([], set()), why


def _blocks_of(ranges, size):
    return {b for lo, hi in ranges for b in range(lo // size, hi // size + 1)}


def test_without_blocks_is_the_set_difference_and_never_walks_empty_blocks():
    from tracker.store.blocks import without_blocks

    rng = random.Random(3)
    for _ in range(300):
        size = rng.choice([4, 16])
        ranges, start = [], rng.randrange(3)
        for _ in range(rng.randrange(1, 4)):
            lo = start + rng.randrange(3)
            hi = lo + rng.randrange(1, 6)
            ranges.append((lo * size, hi * size + size - 1))
            start = hi + 2
        covered = {rng.randrange(20) for _ in range(rng.randrange(8))}
        out = without_blocks(ranges, size, covered)
        assert _blocks_of(out, size) == _blocks_of(ranges, size) - covered
        assert all(lo % size == 0 and (hi + 1) % size == 0 and lo <= hi for lo, hi in out)
    huge = without_blocks([(16, 16 * 10**13 - 1)], 16, {1, 5})
    assert huge == [(32, 79), (96, 16 * 10**13 - 1)]


def _comparable(rows):
    return sorted((r[:3], "nan" if r[3] != r[3] else r[3]) for r in rows)  # NaN != NaN


def test_norm_rows_are_the_payloads_rows_in_any_grouping():
    from tracker.store.blocks import norm_rows

    rng = random.Random(5)
    payload = []
    for step in range(60):
        norms = [rng.random() for _ in range(4)]
        if step % 13 == 5:
            norms[1] = None  # no gradient: no row
        if step % 17 == 3:
            norms[2] = float("nan")  # stored as NULL
        ids = [10, 11, 12, 13] if step >= 40 else None  # the same 4 layers under other ids from step 40
        payload.append((step, norms, ids))
    payload += [(7, [0.5] * 4, None), (61, [0.25] * 3, None)]  # a rewrite, then fewer layers
    naive = [
        (9, lid, step, v)
        for step, norms, ids in payload
        for lid, v in zip(ids or range(len(norms)), norms, strict=True)
        if v is not None
    ]
    got = list(norm_rows(9, payload))
    assert _comparable(got) == _comparable(naive)
    # executemany's INSERT OR REPLACE keeps the last row of a (layer, step): the rewrite of step 7 must
    # come after the first step 7.
    assert [r for r in got if r[2] == 7][-4:] == [(9, lid, 7, 0.5) for lid in range(4)]
