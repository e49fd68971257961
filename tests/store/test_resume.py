"""Store.resume_run: what it deletes (against numpy and plain SQL), what it refuses, and older files.

The blocks oracle is test_blocks' numpy aggregation over the norms the file should hold.
"""

import os
import sqlite3

import pytest

from tests.store.helpers import make_norms, raw_sql, record_run
from tests.store.test_blocks import assert_all_sizes
from tracker.store import CannotResume, RunNotFound, Store

LAYERS = [dict(id=i, name=f"block{i // 2}.w{i}", shape=[2, 3]) for i in range(3)]
STEP_TABLES = ("steps", "grad_norms", "clip_events", "nonfinite", "metrics")


def _counts(db_path, run_id):
    return {
        t: raw_sql(db_path, f"SELECT count(*), max(step) FROM {t} WHERE run_id = ?", (run_id,))[0]
        for t in STEP_TABLES
    }


def _recorded(store, norms, name="run"):
    """A finished run with norms, clip events, non-finite flags and metrics at every step."""
    run_id = record_run(store, norms, name=name, nonfinite="record")
    writer = store.writer(run_id)
    for step in norms:
        writer.add_clip_events([dict(step=step, strategy="norm:1.0", threshold=1.0, clipped=step % 3 == 0)])
        writer.add_nonfinite(step, [(step % 3, True, False)])
        writer.add_metrics(step, {"acc": step / 100})
    writer.close("finished")
    return run_id


def test_resume_deletes_the_rows_from_its_step_on_and_the_blocks_that_hold_them(store, db_path):
    norms = make_norms(200, 3, seed=5)
    run = _recorded(store, norms)
    other = _recorded(store, make_norms(200, 3, seed=6), name="other")
    other_before = _counts(db_path, other)

    store.resume_run(run, from_step=70, layers=LAYERS)
    counts = _counts(db_path, run)
    assert counts["steps"] == (70, 69) and counts["grad_norms"] == (210, 69)
    assert counts["clip_events"] == counts["nonfinite"] == counts["metrics"] == (70, 69)
    # Blocks: those ending before step 70 stay (16-step blocks 0-3, the 64-step block 0), the rest go.
    kept = {k: v for k, v in norms.items() if k < 70}
    assert_all_sizes(db_path, run, kept, last_step=69)
    assert _counts(db_path, other) == other_before  # another run in the file is untouched
    status, resumed_from, pid = raw_sql(
        db_path, "SELECT status, resumed_from_step, pid FROM runs WHERE id = ?", (run,)
    )[0]
    assert (status, resumed_from, pid) == ("running", 70, os.getpid())

    # The resumed process records steps 70.. again, with other values: every block is rebuilt from them.
    again = make_norms(200, 3, seed=7)
    writer = store.writer(run)
    for step in range(70, 150):
        writer.add_step(step=step, norms=again[step])
    writer.close("finished")
    assert_all_sizes(db_path, run, {**kept, **{s: again[s] for s in range(70, 150)}})


def test_resume_refuses_a_live_run_another_model_and_a_bad_step(store, db_path):
    run = record_run(store, make_norms(20, 3))
    before = _counts(db_path, run)
    live = store.create_run(name="live")  # this process, fresh heartbeat
    with pytest.raises(CannotResume, match=f"still running \\(pid {os.getpid()}"):
        store.resume_run(live, from_step=0, layers=[])
    with pytest.raises(
        CannotResume, match="another model.*1: recorded block0.w1 \\[2, 3\\], now block0.w1 \\[3, 3\\]"
    ):
        store.resume_run(
            run,
            from_step=5,
            layers=[{**layer, "shape": [3, 3]} if layer["id"] == 1 else layer for layer in LAYERS],
        )
    with pytest.raises(CannotResume, match="another model"):
        store.resume_run(run, from_step=5, layers=LAYERS[:2])
    with pytest.raises(ValueError, match="from_step=-1"):
        store.resume_run(run, from_step=-1, layers=LAYERS)
    with pytest.raises(RunNotFound, match="run 42 is not in"):
        store.resume_run(42, from_step=0, layers=LAYERS)
    assert _counts(db_path, run) == before
    assert raw_sql(db_path, "SELECT status FROM runs WHERE id = ?", (run,)) == [("finished",)]


def test_a_file_from_before_the_resume_columns_gets_them_when_a_run_is_resumed(store, db_path):
    run = record_run(store, make_norms(40, 3))
    store.close()
    con = sqlite3.connect(db_path)
    con.execute("ALTER TABLE runs DROP COLUMN resumed_at")  # as files written before them are
    con.execute("ALTER TABLE runs DROP COLUMN resumed_from_step")
    con.commit()
    con.close()
    with Store.open(db_path, readonly=True) as reader:
        frame = reader.runs()  # readers do without them: a missing column reads as NULL (docs/schema.md)
        assert frame["n_steps"].tolist() == [40] and frame["resumed_at"].isna().all()
        assert reader.run(run)["resumed_at"] is None and reader.run(run)["resumed_from_step"] is None
        with Store.open(db_path) as writer_store:
            writer_store.resume_run(run, from_step=10, layers=LAYERS)
        frame = reader.runs()  # the reader that was open sees the new generation and counts afresh
        assert frame["resumed_from_step"].tolist() == [10] and frame["n_steps"].tolist() == [10]
    assert raw_sql(db_path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
