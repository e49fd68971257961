"""Reads for the dashboard, each checked against numpy / plain Python over the raw data."""

import math

import numpy as np
import pytest

from tests.store.helpers import make_norms, record_run
from tracker.store import RunNotFound, Store


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 3,000-step × 6-layer run (with NaN/Inf), written in batches that end mid-block."""
    path = tmp_path_factory.mktemp("reader") / "gw.db"
    norms = make_norms(3000, 6, seed=11, nonfinite_every=101)
    with Store.open(path) as s:
        run_id = record_run(s, norms, flush_every=333)
    store = Store.open(path, readonly=True)
    yield store, run_id, norms
    store.close()


def envelope_oracle(norms, layer, lo, hi):
    vals = np.array([norms[s][layer] for s in range(lo, hi + 1)], dtype=float)
    vals = vals[~np.isnan(vals)]
    return (vals.min(), vals.max(), len(vals)) if len(vals) else (math.nan, math.nan, 0)


@pytest.mark.parametrize(
    "start,end,max_points",
    [
        (None, None, 50),
        (None, None, 2000),
        (5, 2990, 37),
        (100, 130, 1000),
        (17, 2503, 300),
        (0, 2999, 3000),
        (2000, 9999, 64),  # past the last step: the envelope ends at the last step (blocks beyond: none)
    ],
)
def test_envelope_is_exact_and_bounded(big, start, end, max_points):
    store, run_id, norms = big
    layers = [0, 3, 5]
    df = store.grad_norm_envelope(run_id, layers, start, end, max_points)
    lo, hi = 0 if start is None else start, 2999 if end is None else min(end, 2999)
    for layer in layers:
        part = df[df["layer_id"] == layer]
        assert 0 < len(part) <= max_points
        # buckets tile [lo, hi] without gaps or overlaps (every step is logged in this run)
        assert part["step"].iloc[0] == lo and part["step_end"].iloc[-1] == hi
        assert (part["step"].to_numpy()[1:] == part["step_end"].to_numpy()[:-1] + 1).all()
        for row in part.itertuples():
            mn, mx, n = envelope_oracle(norms, layer, row.step, row.step_end)
            assert row.count == n
            np.testing.assert_equal([row.norm_min, row.norm_max], [mn, mx])


def test_envelope_of_a_growing_run_stays_exact(db_path):
    # The store reuses the buckets it already read and reads the tail again: after each batch of new
    # steps the envelope must still equal numpy over all the raw rows.
    norms = make_norms(1500, 3, seed=5, nonfinite_every=97)
    with Store.open(db_path) as s:
        run_id = s.create_run(name="live")
        w = s.writer(run_id)
        reader = Store.open(db_path, readonly=True)
        for end in (37, 300, 301, 777, 1024, 1499):
            for step in range(int(reader.steps(run_id)["step"].max() + 1) if end != 37 else 0, end + 1):
                w.add_step(step=step, norms=norms[step], total_norm=float(step % 97))
            w.flush()
            steps_env = reader.step_envelope(run_id, max_points=40)
            assert steps_env["n"].sum() == end + 1 and len(steps_env) <= 40
            for row in steps_env.itertuples():
                assert row.total_norm_max == max(s % 97 for s in range(row.step, row.step_end + 1))
            for max_points in (40, 2000):
                df = reader.grad_norm_envelope(run_id, [0, 2], max_points=max_points)
                for row in df.itertuples():
                    mn, mx, n = envelope_oracle(norms, row.layer_id, row.step, row.step_end)
                    assert row.count == n
                    np.testing.assert_equal([row.norm_min, row.norm_max], [mn, mx])
                assert df.groupby("layer_id")["count"].sum().tolist() == [
                    sum(not math.isnan(norms[st][lid]) for st in range(end + 1)) for lid in (0, 2)
                ]
        w.close()
        reader.close()


def test_heatmap_is_the_bucket_maximum_for_every_layer(big):
    store, run_id, norms = big
    df = store.heatmap(run_id, max_columns=40)
    assert set(df["layer_id"]) == set(range(6))
    per_layer = df.groupby("layer_id").size()
    assert (per_layer <= 40).all() and per_layer.nunique() == 1  # same bucket edges for every layer
    for row in df.sample(60, random_state=0).itertuples():
        np.testing.assert_equal(row.norm_max, envelope_oracle(norms, row.layer_id, row.step, row.step_end)[1])


def test_steps_incremental_and_step_envelope(big):
    store, run_id, norms = big
    assert list(store.steps(run_id, after_step=2995)["step"]) == [2996, 2997, 2998, 2999]
    assert list(store.steps(run_id, start=10, end=12)["step"]) == [10, 11, 12]
    env = store.step_envelope(run_id, max_points=100)
    assert len(env) <= 100 and env["n"].sum() == 3000
    totals = {s: math.sqrt(sum(v * v for v in row)) for s, row in norms.items()}
    for row in env.itertuples():
        vals = np.array([totals[s] for s in range(row.step, row.step_end + 1)])
        finite = vals[~np.isnan(vals)]
        np.testing.assert_equal(row.total_norm_max, finite.max() if len(finite) else math.nan)


def test_raw_grad_norms_and_step_norms(big):
    store, run_id, norms = big
    df = store.grad_norms(run_id, [2], after_step=2989)
    assert list(df["step"]) == list(range(2990, 3000))
    np.testing.assert_equal(df["norm"].to_numpy(), np.array([norms[s][2] for s in range(2990, 3000)]))
    flow = store.step_norms(run_id, 100)  # step 100 has a NaN (layer 4) and an Inf (layer 5)
    assert flow.attrs["step"] == 100
    np.testing.assert_equal(flow["norm"].to_numpy(), np.array(norms[100]))
    assert list(flow["name"]) == [f"block{i // 2}.w{i}" for i in range(6)]
    assert list(flow["module"]) == [f"block{i // 2}" for i in range(6)]
    assert store.step_norms(run_id).attrs["step"] == 2999


def test_runs_summary(db_path):
    with Store.open(db_path) as s:
        parent = s.create_run(name="parent", config={"lr": 0.1}, clip="norm:1.0")
        child = s.create_run(name="child", parent_id=parent, clip="norm:0.5")
        w = s.writer(parent)
        clipped = [step % 4 == 0 for step in range(40)]
        for step in range(40):
            w.add_step(step=step, norms=[1.0], clipped=clipped[step])
            w.add_clip_events([dict(step=step, strategy="norm", threshold=1.0, clipped=clipped[step])])
            if step == 21:  # a look while it runs; the next look must add only the newer rows
                w.flush()
                live = s.runs().set_index("id")
                assert live.loc[parent, "n_steps"] == 22 and live.loc[parent, "last_step"] == 21
                assert live.loc[parent, "clip_rate"] == pytest.approx(sum(clipped[:22]) / 22)
        w.add_metrics(10, {"val_acc": 0.5})
        w.add_metrics(39, {"val_acc": 0.8, "val_loss": 0.3})
        w.add_nonfinite(7, [(0, True, False)])
        w.close("finished")
        runs = s.runs().set_index("id")
        assert runs.loc[parent, "n_steps"] == 40 and runs.loc[parent, "last_step"] == 39
        assert runs.loc[parent, "clip_rate"] == pytest.approx(sum(clipped) / 40)
        assert runs.loc[parent, "final_val_acc"] == 0.8 and runs.loc[parent, "final_val_loss"] == 0.3
        assert runs.loc[parent, "first_nonfinite_step"] == 7
        assert runs.loc[parent, "config"] == {"lr": 0.1}
        assert runs.loc[parent, "status"] == "finished"
        assert runs.loc[child, "status"] == "running"  # this process, fresh heartbeat
        assert list(s.children(parent)["id"]) == [child]
        assert s.children(child).empty
        assert s.run(child)["parent_id"] == parent
        with pytest.raises(RunNotFound, match="999"):
            s.run(999)
        with pytest.raises(RunNotFound):
            s.create_run(name="orphan", parent_id=999)
        m = s.metrics([parent], after_step=10)
        assert sorted(zip(m["name"], m["step"], m["value"], strict=True)) == [
            ("val_acc", 39, 0.8),
            ("val_loss", 39, 0.3),
        ]
        assert len(s.clip_events(parent, after_step=35)) == 4
        assert list(s.nonfinite(parent)["has_nan"]) == [True]
        s.request_stop(child)
        assert s.run(child)["stop_requested_at"] is not None


def test_empty_run_reads_have_columns(store):
    run_id = store.create_run(name="empty")
    for df in (
        store.steps(run_id),
        store.grad_norm_envelope(run_id, [0]),
        store.heatmap(run_id),
        store.step_envelope(run_id),
        store.clip_events(run_id),
        store.metrics(run_id),
        store.step_norms(run_id),
        store.layers(run_id),
    ):
        assert df.empty and len(df.columns) > 0


def test_envelope_of_a_short_run_without_registered_layers_has_every_layer(store):
    # Layers are found from grad_norms when the program never registered them (a short run has no
    # complete 1024-step block to name them).
    norms = make_norms(40, 3, seed=9)
    run_id = store.create_run(name="no-layers")
    with store.writer(run_id) as w:
        for step, row in norms.items():
            w.add_step(step=step, norms=row, layer_ids=[2, 5, 9])
    df = store.grad_norm_envelope(run_id, max_points=10)
    assert sorted(set(df["layer_id"])) == [2, 5, 9]
    for lid, col in zip([2, 5, 9], range(3), strict=True):
        assert df[df["layer_id"] == lid]["count"].sum() == 40
        assert df[df["layer_id"] == lid]["norm_max"].max() == max(norms[s][col] for s in norms)
    assert list(store.step_norms(run_id)["layer_id"]) == [2, 5, 9]


def test_a_cell_that_is_not_json_reads_as_empty_not_as_an_error(db_path):
    # A config or env written by hand (or damaged) used to raise JSONDecodeError on every dashboard page.
    import sqlite3

    with Store.open(db_path) as s:
        run = s.create_run(name="r", config={"lr": 0.1}, env={"LR": "1"})
    with sqlite3.connect(db_path) as con:
        con.execute("UPDATE runs SET config = '{not json', env = '[1, 2]', argv = 'x' WHERE id = ?", (run,))
    with Store.open(db_path, readonly=True) as reader:
        row = reader.run(run)
    assert (row["config"], row["env"], row["argv"]) == ({}, [1, 2], [])
