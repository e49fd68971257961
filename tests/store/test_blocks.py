"""grad_norm_blocks, maintained by the writer, equals an aggregate computed from the raw rows."""

import math
import random

import numpy as np
import pytest

from tests.store.helpers import make_norms, raw_sql, record_run
from tracker.store import BLOCK_SIZES


def blocks_oracle(norms: dict, size: int) -> dict:
    """{(layer, block): (min, max, sum, count)} over finite-or-inf (non-NaN) norms, with numpy."""
    arr = np.array([norms[s] for s in sorted(norms)], dtype=float)
    steps = np.array(sorted(norms))
    out = {}
    for block in np.unique(steps // size):
        sel = arr[steps // size == block]
        for lid in range(arr.shape[1]):
            col = sel[:, lid][~np.isnan(sel[:, lid])]
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
    assert actual.keys() == expected.keys()
    for key, (mn, mx, sm, n) in expected.items():
        a = actual[key]
        assert (a[0], a[1], a[3]) == (mn, mx, n), key
        assert a[2] == pytest.approx(sm, rel=1e-12) or (math.isinf(sm) and a[2] == sm), key


@pytest.mark.parametrize("flush_every", [0, 7, 1])  # one batch; batches ending mid-block; a batch per step
def test_blocks_match_numpy(store, db_path, flush_every):
    norms = make_norms(600, 5, seed=flush_every, nonfinite_every=37)
    run_id = record_run(store, norms, flush_every=flush_every)
    for size in BLOCK_SIZES:
        assert_blocks_equal(stored_blocks(db_path, run_id, size), blocks_oracle(norms, size))


def test_out_of_order_and_repeated_steps_are_recomputed_exactly(store, db_path):
    run_id = store.create_run(name="shuffled")
    rng = random.Random(3)
    final = {}
    w = store.writer(run_id)
    order = list(range(300)) + [rng.randrange(300) for _ in range(100)]  # then 100 steps again, new values
    rng.shuffle(order)
    for i, step in enumerate(order):
        final[step] = [rng.lognormvariate(0, 1) for _ in range(3)]
        w.add_step(step=step, norms=final[step])
        if i % 50 == 49:
            w.flush()
    w.close()
    for size in BLOCK_SIZES:
        assert_blocks_equal(stored_blocks(db_path, run_id, size), blocks_oracle(final, size))


def test_layer_with_only_nan_norms_in_a_block(store, db_path):
    run_id = store.create_run(name="all-nan")
    w = store.writer(run_id)
    for step in range(20):
        w.add_step(step=step, norms=[float("nan") if step < 16 else 1.0 * step, 2.0])
        if step == 10:
            w.flush()
    w.close()
    blocks = stored_blocks(db_path, run_id, 16)
    assert blocks[(0, 0)] == (None, None, 0.0, 0)
    assert blocks[(0, 1)] == (16.0, 19.0, 16.0 + 17 + 18 + 19, 4)
    assert stored_blocks(db_path, run_id, 256)[(0, 0)] == (16.0, 19.0, 70.0, 4)
