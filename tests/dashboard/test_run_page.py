"""The Run page draws what the store holds: checked against the values the fixture wrote."""

import math
import os
import signal

import numpy as np
import pytest
from dashboard_helpers import (
    LAYERS,
    N_STEPS,
    NAN_LAYER,
    NAN_STEP,
    SPIKE_STEP,
    dataframe_with,
    figure,
    open_page,
    open_tab,
    texts,
    trace,
    values,
)

from tracker.store import Store


@pytest.fixture
def run_page(recorded, app):
    return open_page(app(recorded.path), "views/run.py", open_run=recorded.ids["child"])


def test_header_and_lineage(run_page, recorded):
    assert run_page.title[0].value == f"#{recorded.ids['child']} child"
    header = "\n".join(m.value for m in run_page.markdown)
    assert "norm:0.5" in header and f"relaunch of #{recorded.ids['base']} base" in header


def test_global_norm_threshold_and_clip_events(run_page, recorded):
    fig = figure(run_page, "global_norm")
    pre = trace(fig, "global norm (pre-clip)")
    np.testing.assert_allclose(values(pre["x"]), np.arange(N_STEPS))
    np.testing.assert_allclose(values(pre["y"]), recorded.total["child"], equal_nan=True)
    assert np.nanmax(values(pre["y"])) == pytest.approx(recorded.total["child"][SPIKE_STEP])
    np.testing.assert_allclose(values(trace(fig, "clip threshold")["y"]), 0.5)
    clipped = recorded.clipped["child"]
    marks = trace(fig, f"clipped ({clipped.sum():,} steps)")
    np.testing.assert_array_equal(values(marks["x"]), np.flatnonzero(clipped))
    nan_marks = trace(fig, "NaN/Inf gradients (1 steps)")
    assert values(nan_marks["x"]).tolist() == [NAN_STEP]


def test_per_layer_norms_log_scale_grouped_by_module(run_page, recorded):
    fig = figure(open_tab(run_page, "Layers"), "layer_norms")
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert sorted(t["name"] for t in fig["data"]) == sorted(LAYERS)  # all 3 <= top-k
    for i, name in enumerate(LAYERS):
        t = trace(fig, name)
        assert t["legendgroup"] == name.rsplit(".", 1)[0]
        np.testing.assert_allclose(values(t["y"]), recorded.norms["child"][:, i], equal_nan=True)


def test_heatmap_is_log10_of_layer_norms(run_page, recorded):
    fig = figure(open_tab(run_page, "Heatmap"), "heatmap")
    heat = fig["data"][0]
    assert list(heat["y"]) == LAYERS
    z = values(heat["z"]).reshape(len(LAYERS), -1)
    # 60 steps < 200 columns: one step per column, so each cell is that step's norm.
    expected = np.log10(recorded.norms["child"].T)
    np.testing.assert_allclose(z, expected, rtol=1e-9, equal_nan=True)


def test_gradient_flow_at_the_last_step(run_page, recorded):
    fig = figure(open_tab(run_page, "Gradient flow"), "flow")
    bars = fig["data"][0]
    assert list(bars["x"]) == LAYERS
    np.testing.assert_allclose(values(bars["y"]), recorded.norms["child"][N_STEPS - 1])
    run_page.select_slider(key=f"flow_step_{recorded.ids['child']}").set_value(SPIKE_STEP).run()
    fig = figure(run_page, "flow")
    np.testing.assert_allclose(values(fig["data"][0]["y"]), recorded.norms["child"][SPIKE_STEP])


def test_loss_and_metrics(run_page, recorded):
    loss = figure(open_tab(run_page, "Loss & metrics"), "loss")
    np.testing.assert_allclose(values(loss["data"][0]["y"]), recorded.loss["child"])
    metrics = figure(run_page, "metrics")
    val_acc = trace(metrics, "val_acc")
    np.testing.assert_allclose(values(val_acc["x"]), [s for s, _ in recorded.metrics["child"]["val_acc"]])
    np.testing.assert_allclose(values(val_acc["y"]), [v for _, v in recorded.metrics["child"]["val_acc"]])


def test_nonfinite_event_names_the_first_offending_layer(run_page):
    message = texts(open_tab(run_page, "Non-finite"), "error")
    assert f"step {NAN_STEP}" in message and f"`{LAYERS[NAN_LAYER]}`" in message and "NaN" in message
    table = dataframe_with(run_page, "has_nan")
    assert table[["step", "name"]].values.tolist() == [[NAN_STEP, LAYERS[NAN_LAYER]]]


def test_suggested_threshold_follows_the_stated_rules(run_page, recorded):
    open_tab(run_page, "Suggested threshold")
    norms = recorded.total["child"]
    finite = norms[np.isfinite(norms)]
    median = np.median(finite)
    robust = median + 3 * 1.4826 * np.median(np.abs(finite - median))
    table = dataframe_with(run_page, "would have clipped")
    np.testing.assert_allclose(table["threshold"], [robust, np.percentile(finite, 10)])
    assert "median" in table["rule"][0] and "AutoClip" in table["rule"][1]


def test_suggestion_prefills_the_launch_page(run_page, recorded):
    open_tab(run_page, "Suggested threshold")
    button = [b for b in run_page.button if b.key == "use_robust"][0]
    button.click().run()
    assert run_page.session_state["launch_source"] == recorded.ids["child"]
    assert run_page.session_state["clip_raw"] == button.label.removeprefix("Launch with ")
    assert run_page.title[0].value == "Launch"


def test_only_the_open_tab_renders(run_page):
    assert [el.proto.id.rsplit("-", 1)[1] for el in run_page.get("plotly_chart")] == ["global_norm"]
    open_tab(run_page, "Heatmap")
    assert [el.proto.id.rsplit("-", 1)[1] for el in run_page.get("plotly_chart")] == ["heatmap"]


def test_pause_toggle(run_page, recorded):
    toggle = run_page.toggle(key=f"live_{recorded.ids['child']}")
    assert toggle.value is False  # a finished run does not refresh
    toggle.set_value(True).run()
    assert not run_page.exception and figure(run_page, "global_norm")


def test_a_finished_run_without_steps_says_so(tmp_path, app):
    db = tmp_path / "empty-run.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(name="nothing")
        store.writer(run).close(status="finished")
    at = app(db).run().switch_page("views/run.py").run()
    assert not at.exception
    assert "recorded no step" in texts(at, "info") and "Waiting" not in texts(at, "info")


def test_heatmap_draws_zero_norms_and_marks_nan_and_inf(tmp_path, app):
    db = tmp_path / "odd-norms.db"
    names = ["a.weight", "b.weight", "c.weight"]
    norms = np.full((10, 3), 2.0)
    norms[2, 0], norms[4, 1], norms[6, 2] = 0.0, math.inf, math.nan
    with Store.open(db, create=True) as store:
        run = store.create_run(name="odd")
        store.add_layers(run, [dict(id=i, name=n, shape=[2]) for i, n in enumerate(names)])
        writer = store.writer(run)
        for step, row in enumerate(norms):
            writer.add_step(step=step, norms=row.tolist(), total_norm=float(np.sqrt((row**2).sum())))
        writer.add_nonfinite(4, [(1, False, True)])  # as the tracker records them
        writer.add_nonfinite(6, [(2, True, False)])
        writer.close()
    at = open_page(app(db), "views/run.py")
    fig = figure(open_tab(at, "Heatmap"), "heatmap")
    z = values(fig["data"][0]["z"]).reshape(3, 10)
    assert z[0, 2] == pytest.approx(np.log10(2.0) - 1)  # zero: drawn, a decade below the smallest norm
    assert np.isnan(z[1, 4]) and np.isnan(z[2, 6])  # no colour for them: marked instead
    np.testing.assert_allclose(z[~np.isnan(z) & (np.arange(10) != 2)], np.log10(2.0))
    for kind, layer, step in (("NaN", "c.weight", 6), ("Inf", "b.weight", 4)):
        marks = trace(fig, f"{kind} gradient")
        assert values(marks["x"]).tolist() == [step] and list(marks["y"]) == [layer]


def _trainer_run(store, tmp_path, name: str, status: str) -> int:
    checkpoint = tmp_path / f"{name}.ckpt"
    checkpoint.write_bytes(b"not a real checkpoint")
    run = store.create_run(
        name=name,
        config={"task": "keywords", "epochs": 2, "checkpoint": str(checkpoint), "clip": "none"},
        argv=["-m", "trainer", "--checkpoint", str(checkpoint)],
        cwd=str(tmp_path),
    )
    store.writer(run).close(status=status)
    return run


def test_resume_is_offered_for_a_stopped_run_only_and_then_follows_it_live(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:
        finished = _trainer_run(store, tmp_path, "finished-one", "finished")
        stopped = _trainer_run(store, tmp_path, "stopped-one", "stopped")
    at = open_page(app(db), "views/run.py", open_run=finished)
    assert not [b for b in at.button if b.label == "Resume from its checkpoint"]  # it would train again
    at.session_state["open_run"] = stopped
    at.run()
    assert at.toggle(key=f"live_{stopped}").value is False  # a stopped run does not refresh
    at.button(key=f"resume_{stopped}").click().run()
    pid = None
    try:
        assert not at.exception, [e.value for e in at.exception]
        notice = texts(at, "info")
        assert f"Resuming run #{stopped}" in notice
        pid = int(notice.split("(pid ")[1].split(";")[0])
        # The page now follows the run live, and offers no second resume while this one starts.
        assert at.toggle(key=f"live_{stopped}").value is True
        assert not [b for b in at.button if b.label == "Resume from its checkpoint"]
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def test_a_run_with_only_nan_steps_says_nan_instead_of_drawing_nothing(tmp_path, app):
    import sqlite3

    db = tmp_path / "nan.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(name="only-nan")
        store.add_layers(run, [dict(id=i, name=n, shape=[2]) for i, n in enumerate(["a.weight", "b.weight"])])
        writer = store.writer(run)
        for step in range(5):
            writer.add_step(step=step, norms=[math.nan, math.nan], total_norm=math.nan, loss=math.nan,
                            first_nonfinite_layer=0)  # fmt: skip
            writer.add_nonfinite(step, [(0, True, False), (1, True, False)])
        writer.close()
    # The oracle: the file, read with plain sqlite3 (SQLite stores NaN as NULL).
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*), COUNT(norm) FROM grad_norms").fetchone() == (10, 0)
        query = "SELECT COUNT(*), COUNT(loss), MIN(nonfinite_count) FROM steps"
        assert con.execute(query).fetchone() == (5, 0, 2)
    at = open_page(app(db), "views/run.py", open_run=run)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Last loss"] == "NaN" and metrics["Last global norm"] == "NaN"
    for tab, key in (("Layers", "layer_norms"), ("Gradient flow", "flow")):
        at = open_tab(at, tab)
        assert not at.exception, [e.value for e in at.exception]
        assert "Every recorded per-layer norm of this run is NaN" in texts(at, "info"), tab
        assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")], tab


def test_a_run_without_loss_says_so(tmp_path, app):
    db = tmp_path / "no-loss.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(name="no-loss")
        writer = store.writer(run)
        writer.add_step(step=0, norms=[], total_norm=1.0)
        writer.close()
    at = open_page(app(db), "views/run.py", open_run=run)
    assert {m.label: m.value for m in at.metric}["Last loss"] == "—"


def _run_with_losses(db, losses: list[float | None], nonfinite: set[int] = frozenset()) -> int:
    """A run of ``len(losses)`` steps with those losses (None: no loss passed; a NaN is stored as NULL);
    the steps in ``nonfinite`` have NaN gradients, as a NaN loss gives."""
    with Store.open(db, create=True) as store:
        run = store.create_run(name="sparse-loss")
        store.add_layers(run, [dict(id=0, name="a.weight", shape=[2])])
        writer = store.writer(run)
        for step, loss in enumerate(losses):
            bad = step in nonfinite
            writer.add_step(step=step, norms=[math.nan if bad else 1.0], total_norm=math.nan if bad else 1.0,
                            loss=loss, first_nonfinite_layer=0 if bad else None)  # fmt: skip
            if bad:
                writer.add_nonfinite(step, [(0, True, False)])
        writer.close()
    return run


def _last_logged_loss(db) -> str:
    """The oracle, from the file read with plain sqlite3: the loss of the last step that has one, a NULL loss
    counting as NaN at a step with NaN/Inf gradients (docs/dashboard.md)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT loss FROM steps WHERE loss IS NOT NULL OR nonfinite_count > 0 ORDER BY step DESC LIMIT 1"
        ).fetchone()
    return "—" if row is None else "NaN" if row[0] is None else f"{row[0]:.4g}"


def test_last_loss_is_the_last_logged_one_when_the_last_step_passed_none(tmp_path, app):
    # An external script that passes loss= every 5th step only: the last step has no loss.
    import sqlite3

    db = tmp_path / "every-5th.db"
    losses = [2.0 - step / 10 if step % 5 == 0 else None for step in range(13)]
    run = _run_with_losses(db, losses)
    with sqlite3.connect(db) as con:
        last = con.execute("SELECT loss, nonfinite_count FROM steps ORDER BY step DESC LIMIT 1").fetchone()
    assert last == (None, 0)  # a healthy step without a loss
    at = open_page(app(db), "views/run.py", open_run=run)
    shown = {m.label: m.value for m in at.metric}["Last loss"]
    assert shown == _last_logged_loss(db) == f"{2.0 - 10 / 10:.4g}"


def test_last_loss_is_nan_when_the_last_logged_one_is_a_nonfinite_step(tmp_path, app):
    db = tmp_path / "diverged.db"
    losses = [1.0, None, 0.9, None, math.nan, None]  # step 4: NaN loss and NaN gradients
    run = _run_with_losses(db, losses, nonfinite={4})
    at = open_page(app(db), "views/run.py", open_run=run)
    assert {m.label: m.value for m in at.metric}["Last loss"] == _last_logged_loss(db) == "NaN"


def test_a_metric_with_only_nan_values_is_marked_and_named(tmp_path, app):
    db = tmp_path / "nan-metric.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(name="nan-metric")
        writer = store.writer(run)
        for step in range(6):
            writer.add_step(step=step, norms=[], total_norm=1.0, loss=1.0)
        writer.add_metrics(2, {"val_loss": math.nan, "val_acc": 0.5})
        writer.add_metrics(5, {"val_loss": math.nan, "val_acc": 0.6})
        writer.close()
    at = open_page(app(db), "views/run.py", open_run=run)
    at = open_tab(at, "Loss & metrics")
    at.multiselect(key="metric_pick").set_value(["val_acc", "val_loss"]).run()
    fig = figure(at, "metrics")
    np.testing.assert_allclose(values(trace(fig, "val_acc")["y"]), [0.5, 0.6])
    marks = trace(fig, "val_loss: NaN/Inf (2 steps)")  # no line to draw: marked ▼ at each step
    assert values(marks["x"]).tolist() == [2, 5] and marks["marker"]["symbol"] == "triangle-down"
    note = "\n".join(c.value for c in at.caption)
    assert "no finite value for val\\_loss" in note and "val\\_acc" not in note
