"""BackgroundWriter: what goes in comes out, row for row, with the documented conversions."""

import math
import sqlite3
import time

import pytest

from tests.store.helpers import make_norms, raw_sql, record_run
from tracker.store import DiskFull, WriterClosed, WriterFailed


def test_norms_round_trip_with_nan_as_null(store, db_path):
    norms = make_norms(50, 7, nonfinite_every=10)
    run_id = record_run(store, norms)
    rows = raw_sql(db_path, "SELECT step, layer_id, norm FROM grad_norms WHERE run_id = ?", (run_id,))
    assert len(rows) == 50 * 7
    for step, lid, norm in rows:
        expected = norms[step][lid]
        if math.isnan(expected):
            assert norm is None  # SQLite has no NaN; documented as NULL
        else:
            assert norm == expected
    steps = raw_sql(
        db_path, "SELECT step, nonfinite_count FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
    )
    assert [s for s, _ in steps] == list(range(50))
    assert {s: n for s, n in steps} == {s: sum(not math.isfinite(v) for v in norms[s]) for s in range(50)}


def test_step_fields_extras_and_missing_layers(store, db_path):
    run_id = store.create_run(name="fields")
    w = store.writer(run_id)
    w.add_step(
        step=3,
        norms=[0.5, None, 2.0],  # layer 1 had no gradient this step: no row
        layer_ids=[10, 11, 12],
        total_norm=2.06,
        total_norm_after=1.0,
        loss=0.25,
        clipped=True,
        coef=0.485,
        threshold=1.0,
        skipped=False,
        first_nonfinite_layer=None,
        extra={"weight_norm": [1.0, 2.0, 3.0], "max_abs": [0.1, None, 0.3]},
        time=123.5,
    )
    w.close("finished")
    assert raw_sql(db_path, "SELECT layer_id, norm FROM grad_norms ORDER BY layer_id") == [
        (10, 0.5),
        (12, 2.0),
    ]
    assert raw_sql(
        db_path,
        "SELECT step, time, loss, total_norm, total_norm_after, clipped, coef, threshold, skipped FROM steps",
    ) == [(3, 123.5, 0.25, 2.06, 1.0, 1, 0.485, 1.0, 0)]
    assert raw_sql(
        db_path, "SELECT layer_id, weight_norm, update_ratio, max_abs FROM grad_stats ORDER BY 1"
    ) == [
        (10, 1.0, None, 0.1),
        (11, 2.0, None, None),
        (12, 3.0, None, 0.3),
    ]


def test_events_metrics_and_final_status(store, db_path):
    run_id = store.create_run(name="events")
    w = store.writer(run_id)
    w.add_clip_events(
        [dict(step=s, strategy="norm", threshold=1.0, norm_before=2.0, norm_after=1.0, coef=0.5, clipped=True,
              n_clipped=4, n_tensors=4) for s in range(3)]
    )  # fmt: skip
    w.add_nonfinite(2, [(1, True, False), (4, False, True)])
    w.add_metrics(5, {"val_acc": 0.5, "val_loss": 1.0})
    w.add_metrics(5, {"val_acc": 0.75})  # same step and name: replaced (upsert)
    w.close("failed", error="RuntimeError: boom")
    assert raw_sql(db_path, "SELECT count(*), sum(clipped), sum(n_clipped) FROM clip_events") == [(3, 3, 12)]
    assert raw_sql(db_path, "SELECT step, layer_id, has_nan, has_inf FROM nonfinite ORDER BY 2") == [
        (2, 1, 1, 0),
        (2, 4, 0, 1),
    ]
    assert raw_sql(db_path, "SELECT name, value FROM metrics ORDER BY name") == [
        ("val_acc", 0.75),
        ("val_loss", 1.0),
    ]
    status, error, finished = raw_sql(db_path, "SELECT status, error, finished_at FROM runs")[0]
    assert (status, error) == ("failed", "RuntimeError: boom") and finished is not None


def test_closed_writer_refuses_rows_and_bad_values_are_named(store):
    run_id = store.create_run(name="closed")
    w = store.writer(run_id)
    with pytest.raises(ValueError, match="max_abs_grad"):
        w.add_step(step=0, norms=[1.0], extra={"max_abs_grad": [1.0]})
    with pytest.raises(ValueError, match="len\\(layer_ids\\)=2"):
        w.add_step(step=0, norms=[1.0], layer_ids=[0, 1])
    with pytest.raises(ValueError, match="'crashed'"):
        w.close("crashed")
    w.close("stopped")
    with pytest.raises(WriterClosed) as info:
        w.add_step(step=1, norms=[1.0])
    # Neutral: a GradTracker user never calls Store.writer(); callers add their own advice.
    assert str(info.value) == f"writer for run {run_id} is closed (the run has ended)"


def test_enqueue_is_unbounded_by_default_and_bounded_queue_counts_drops(store, db_path):
    run_id = store.create_run(name="queue")
    unbounded = store.writer(run_id)
    for step in range(2000):
        unbounded.add_step(step=step, norms=[1.0, 2.0])
    unbounded.close()
    assert unbounded.dropped == 0
    assert raw_sql(db_path, "SELECT count(*) FROM grad_norms")[0][0] == 4000
    # Opt-in bound: another connection holds the write lock, so the thread waits (busy timeout) with at
    # most a batch in hand; everything beyond max_queue=1 waiting items is dropped and counted.
    bounded = store.writer(run_id, max_queue=1)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    for step in range(2000, 2200):
        bounded.add_step(step=step, norms=[1.0, 2.0])
        if step == 2000:
            time.sleep(0.2)  # let the thread pick up the first item and block on the lock
    holder.execute("COMMIT")
    holder.close()
    bounded.close()
    written = raw_sql(db_path, "SELECT count(*) FROM steps WHERE step >= 2000")[0][0]
    assert bounded.dropped > 0
    assert written + bounded.dropped == 200


def test_thread_error_surfaces_on_the_caller(store, db_path):
    run_id = store.create_run(name="doomed")
    w = store.writer(run_id)
    w.add_step(step=0, norms=[1.0])
    w.flush()
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE grad_norms")  # sabotage from another connection: the next batch fails
    conn.commit()
    conn.close()
    w.add_step(step=1, norms=[1.0])
    with pytest.raises(WriterFailed, match="grad_norms") as info:
        w.flush(timeout=30)
    assert info.value.__cause__ is not None
    with pytest.raises(WriterFailed):
        w.add_step(step=2, norms=[1.0])


def test_a_full_disk_during_a_run_is_named(store, db_path):
    run_id = store.create_run(name="full")
    w = store.writer(run_id)
    w.add_step(step=0, norms=[1.0])
    w.flush()
    # SQLITE_FULL, as on a full disk: the writer's connection may not grow the file any more.
    pages = w._conn.execute("PRAGMA page_count").fetchone()[0]
    w._conn.execute(f"PRAGMA max_page_count = {pages}")
    for step in range(1, 200):
        w.add_step(step=step, norms=[1.0] * 50)
    with pytest.raises(WriterFailed) as info:
        w.flush(timeout=30)
    assert isinstance(info.value.__cause__, DiskFull)
    message = str(info.value)
    assert f"the disk holding {db_path} is full" in message and "Free some space" in message
