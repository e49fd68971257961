"""Large runs are drawn from at most ~2,000 points per trace without losing spikes; live pages read only
the rows after the last step they have seen."""

import math
import time

import numpy as np
import pytest
from dashboard_helpers import figure, open_tab, trace, values

from tracker.store import Store

N_STEPS = 20_000  # x 3 layers = 60k rows: above the raw-read limit, so per-layer norms come from blocks
SPIKE = (12_345, 1)  # step, layer


@pytest.fixture
def large(tmp_path):
    path = tmp_path / "large.db"
    rng = np.random.default_rng(3)
    norms = rng.lognormal(mean=0.0, sigma=0.2, size=(N_STEPS, 3))
    norms[SPIKE] = 1e4
    total = np.sqrt((norms**2).sum(axis=1))
    with Store.open(path, create=True) as store:
        run = store.create_run(name="large", clip="none")
        store.add_layers(run, [dict(id=i, name=f"enc.{i}.weight", shape=[2]) for i in range(3)])
        writer = store.writer(run)
        for step in range(N_STEPS):
            writer.add_step(step=step, norms=norms[step].tolist(), total_norm=float(total[step]), loss=1.0)
        writer.close()
    return path, norms, total


def test_large_run_is_downsampled_keeping_spikes(large, app):
    path, norms, total = large
    at = app(path).run().switch_page("views/run.py").run()
    assert not at.exception
    pre = trace(figure(at, "global_norm"), "global norm (pre-clip)")
    assert pre["type"] == "scattergl" and len(values(pre["y"])) <= 2000
    assert np.nanmax(values(pre["y"])) == pytest.approx(total.max())
    assert np.nanmin(values(pre["y"])) == pytest.approx(total.min())
    layers = figure(open_tab(at, "Layers"), "layer_norms")
    for i in range(3):
        t = trace(layers, f"enc.{i}.weight")
        y = values(t["y"])
        assert len(y) <= 2000
        # Exact extremes survive: they come from the store's min/max blocks, then the envelope.
        assert y.max() == pytest.approx(norms[:, i].max()) and y.min() == pytest.approx(norms[:, i].min())
    heat = figure(open_tab(at, "Heatmap"), "heatmap")["data"][0]
    assert len(heat["x"]) <= 200
    assert np.nanmax(values(heat["z"])) == pytest.approx(math.log10(1e4))


# One layer, "w": the smallest run a global-norm chart can be drawn from.
ONE_LAYER = [dict(id=0, name="w", shape=[1])]


def _one_layer_run(path, name):
    """(store, run id, writer) of a new running run of ONE_LAYER in a new file at ``path``."""
    store = Store.open(path, create=True)
    run = store.create_run(name=name, clip="none")
    store.add_layers(run, ONE_LAYER)
    return store, run, store.writer(run)


def test_live_refresh_reads_only_new_rows(tmp_path, app):
    path = tmp_path / "live.db"
    store, run, writer = _one_layer_run(path, "live")
    for step in range(10):
        writer.add_step(step=step, norms=[1.0 + step], total_norm=1.0 + step, loss=1.0)
    writer.flush()
    try:
        at = app(path).run().switch_page("views/run.py").run()
        assert len(values(trace(figure(at, "global_norm"), "global norm (pre-clip)")["y"])) == 10
        cache = at.session_state["_incremental"]
        key = next(k for k in cache if k[0] == "steps")
        assert cache[key][1] == 9  # the last step seen
        for step in range(10, 15):
            writer.add_step(step=step, norms=[1.0 + step], total_norm=1.0 + step, loss=1.0)
        writer.flush()
        at.run()  # what the live fragment does every 2 s
        y = values(trace(figure(at, "global_norm"), "global norm (pre-clip)")["y"])
        np.testing.assert_allclose(y, 1.0 + np.arange(15))
        assert at.session_state["_incremental"][key][1] == 14
        assert at.toggle(key=f"live_{run}").value is True  # a running run is live by default
    finally:
        writer.close()
        store.close()


def test_a_resumed_run_is_read_again_from_its_checkpoint(tmp_path, app):
    path = tmp_path / "resumed.db"
    store, run, writer = _one_layer_run(path, "resumable")
    for step in range(10):
        writer.add_step(step=step, norms=[1.0 + step], total_norm=1.0 + step, loss=1.0)
    writer.close(status="failed", error="preempted")
    try:
        at = app(path).run().switch_page("views/run.py").run()
        y = values(trace(figure(at, "global_norm"), "global norm (pre-clip)")["y"])
        np.testing.assert_allclose(y, 1.0 + np.arange(10))
        # Continued from a checkpoint at step 4: steps 4..9 of the failed attempt are gone, 4..6 redone.
        store.resume_run(run, from_step=4, layers=ONE_LAYER)
        writer = store.writer(run)
        for step in range(4, 7):
            writer.add_step(step=step, norms=[100.0 + step], total_norm=100.0 + step, loss=1.0)
        writer.flush()
        time.sleep(2.1)  # the runs list is cached for 2 s (the live fragment's period)
        at.run()
        y = values(trace(figure(at, "global_norm"), "global norm (pre-clip)")["y"])
        np.testing.assert_allclose(y, [1.0, 2.0, 3.0, 4.0, 104.0, 105.0, 106.0])
        assert any("resumed from step 4" in m.value for m in at.markdown)
    finally:
        writer.close()
        store.close()


def test_a_run_whose_norms_became_nan_keeps_its_page_across_refreshes(tmp_path, app):
    path = tmp_path / "diverged.db"
    store, run, writer = _one_layer_run(path, "diverged")
    for step in range(6):  # diverged at step 3: NaN norms and loss from then on (stored as NULL)
        value = math.nan if step >= 3 else 1.0 + step
        writer.add_step(step=step, norms=[value], total_norm=value, loss=value / 2)
    writer.flush()
    try:
        at = app(path).run().switch_page("views/run.py").run()
        # The first render, then live refreshes: they read rows from the last step seen, all NULL here.
        for _ in range(3):
            assert not at.exception, [e.value for e in at.exception]
            shown = {m.label: m.value for m in at.metric}
            # The latest values, NaN included (the last finite loss would hide the divergence).
            assert shown["Last global norm"] == "NaN" and shown["Last loss"] == "NaN"
            assert shown["Steps recorded"] == "6"
            at.run()
        y = values(trace(figure(at, "global_norm"), "global norm (pre-clip)")["y"])
        np.testing.assert_allclose(y, [1.0, 2.0, 3.0, np.nan, np.nan, np.nan])
    finally:
        writer.close()
        store.close()


def test_compare_draws_a_large_runs_layer_downsampled_keeping_its_spike(large, app):
    path, norms, _ = large
    at = app(path).run()
    at.session_state["compare_ids"] = [1]
    at.switch_page("views/compare.py").run()
    assert not at.exception
    at.selectbox(key="compare_layer").set_value("enc.1.weight").run()
    y = values(trace(figure(at, "cmp_layer"), "#1 large")["y"])
    assert len(y) <= 2000
    assert y.max() == pytest.approx(norms[:, 1].max()) and y.min() == pytest.approx(norms[:, 1].min())
