"""The Compare page overlays runs aligned by step, adds a relaunch's parent/children, and diffs configs."""

import sqlite3

import numpy as np
import pytest
import streamlit as st
from dashboard_helpers import NAN_STEP, dataframe_with, figure, open_page, trace, values

from dashboard import charts, summary
from dashboard.text import escape_markdown
from tracker.store import Store


@pytest.fixture
def compare(recorded, app):
    return open_page(app(recorded.path), "views/compare.py", compare_ids=[recorded.ids["base"]])


def _label(recorded, run):
    return f"#{recorded.ids[run]} {run}"


def test_lineage_adds_the_child_and_overlays_global_norm_and_loss(compare, recorded):
    assert any("Added by lineage" in c.value and "child" in c.value for c in compare.caption)
    norm = figure(compare, "cmp_norm")
    for run in ("base", "child"):
        t = trace(norm, _label(recorded, run))
        np.testing.assert_allclose(values(t["x"]), np.arange(len(recorded.total[run])))
        np.testing.assert_allclose(values(t["y"]), recorded.total[run], equal_nan=True)
        np.testing.assert_allclose(values(trace(figure(compare, "cmp_loss"), _label(recorded, run))["y"]),
                                   recorded.loss[run])  # fmt: skip


def test_validation_metric_overlay(compare, recorded):
    assert compare.selectbox(key="compare_metric").value == "val_acc"
    fig = figure(compare, "cmp_metric")
    for run in ("base", "child"):
        t = trace(fig, _label(recorded, run))
        steps, vals = zip(*recorded.metrics[run]["val_acc"], strict=True)
        np.testing.assert_allclose(values(t["x"]), steps)
        np.testing.assert_allclose(values(t["y"]), vals)


def test_side_by_side_and_config_diff(compare, recorded):
    table = dataframe_with(compare, "clip_rate").set_index("name")
    assert table.loc["child", "clip_rate"] == pytest.approx(recorded.clipped["child"].mean())
    assert table.loc["base", "clip_rate"] == 0.0  # recorded steps, none clipped
    for run in ("base", "child"):
        assert table.loc[run, "gen_gap"] == pytest.approx(recorded.metrics[run]["gen_gap"][-1][1])
        assert table.loc[run, "val_acc"] == pytest.approx(recorded.metrics[run]["val_acc"][-1][1])
    diff = [el.value for el in compare.dataframe if _label(recorded, "base") in el.value.columns][0]
    # Only the keys that differ: the clip spec and the learning rate, not the task, model, epochs...
    assert list(diff.index) == [summary.CLIP_IN_FORCE, "lr"]
    assert diff.loc[summary.CLIP_IN_FORCE].tolist() == ["none", "norm:0.5"]
    assert diff.loc["lr", _label(recorded, "base")] == "0.001"
    assert diff.loc["lr", _label(recorded, "child")] == "0.002"


def test_without_lineage_only_the_picked_runs(compare, recorded):
    compare.checkbox(key="compare_lineage").uncheck().run()
    names = [t["name"] for t in figure(compare, "cmp_norm")["data"]]
    base = _label(recorded, "base")
    assert names == [base, f"{base}: NaN/Inf (1 steps)"]  # its NaN step is marked, not only a gap
    assert values(trace(figure(compare, "cmp_norm"), names[1])["x"]).tolist() == [NAN_STEP]
    assert any("identical" in c.value for c in compare.caption)


def _write(store, name: str, rows: list[tuple[int, float, float | None]], metrics=(), *, close=True) -> int:
    """A run with ``rows`` of (step, total_norm, loss) and ``metrics`` of (step, name, value)."""
    run = store.create_run(name=name)
    store.add_layers(run, [dict(id=0, name="w", shape=[2])])
    writer = store.writer(run)
    for step, norm, loss in rows:
        writer.add_step(step=step, norms=[norm], total_norm=norm, loss=loss)
    for step, metric, value in metrics:
        writer.add_metrics(step, {metric: value})
    if close:
        writer.close(status="finished")
    else:
        writer.flush()
    return run


def _colour(fig, name):
    return trace(fig, name)["line"]["color"]


def test_a_run_has_one_colour_on_every_chart(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:
        # "no-loss" has no loss and no metric: on those charts the other run must keep its own colour.
        first = _write(store, "no-loss", [(s, 1.0 + s, None) for s in range(5)])
        second = _write(store, "full", [(s, 2.0, 1.0 / (s + 1)) for s in range(5)], [(4, "val_acc", 0.5)])
    at = open_page(app(db), "views/compare.py", compare_ids=[first, second])
    norm, loss, metric = (figure(at, k) for k in ("cmp_norm", "cmp_loss", "cmp_metric"))
    a, b = f"#{first} no-loss", f"#{second} full"
    assert _colour(norm, a) != _colour(norm, b)
    assert _colour(loss, b) == _colour(metric, b) == _colour(norm, b)
    assert [t["name"] for t in loss["data"]] == [b]


def test_runs_without_finite_values_or_steps_are_marked_and_named(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    nan = float("nan")
    with Store.open(db, create=True) as store:
        ok = _write(store, "ok", [(s, 1.0, 0.5) for s in range(4)])
        bad = _write(store, "only-nan", [(s, nan, nan) for s in range(6)])
        empty = _write(store, "empty", [])
    at = open_page(app(db), "views/compare.py", compare_ids=[ok, bad, empty])
    # The oracle: the file itself (SQLite stores a NaN as NULL).
    with sqlite3.connect(db) as con:
        query = "SELECT step FROM steps WHERE run_id = ? AND total_norm IS NULL ORDER BY step"
        nan_steps = [r[0] for r in con.execute(query, (bad,))]
    assert nan_steps == list(range(6))
    marks = trace(figure(at, "cmp_norm"), f"#{bad} only-nan: NaN/Inf (6 steps)")
    assert values(marks["x"]).tolist() == nan_steps
    assert values(marks["y"]).tolist() == [1.0] * 6  # at the top of the finite values
    assert marks["marker"]["color"] == charts.RUN_COLORS[1]  # its own colour: second in the pick
    notes = "\n".join(c.value for c in at.caption if c.value.startswith("Not drawn"))
    assert "no finite value for " + escape_markdown(f"#{bad} only-nan") in notes
    assert "nothing recorded for " + escape_markdown(f"#{empty} empty") in notes
    assert escape_markdown(f"#{ok} ok") not in notes


def test_the_pick_survives_navigating_away_and_back(compare, recorded):
    child = recorded.ids["child"]
    compare.multiselect(key="compare_pick").set_value([child]).run()
    compare.switch_page("views/runs.py").run()
    compare.switch_page("views/compare.py").run()
    assert not compare.exception
    assert compare.multiselect(key="compare_pick").value == [child]


def test_live_follows_a_running_run_picked_later_unless_turned_off(compare, recorded):
    assert compare.toggle(key="compare_live").value is False  # two finished runs
    with Store.open(recorded.path) as store:
        running = _write(store, "running", [(0, 1.0, 0.5)], close=False)
        st.cache_data.clear()  # the runs list is cached for 2 s, as a user would wait
        compare.run()
        assert compare.toggle(key="compare_live").value is False  # not picked yet
        picked = [recorded.ids["base"], running]
        compare.multiselect(key="compare_pick").set_value(picked).run()
        assert not compare.exception
        assert compare.toggle(key="compare_live").value is True
        compare.toggle(key="compare_live").set_value(False).run()  # the user's choice holds from now on
        compare.multiselect(key="compare_pick").set_value([running]).run()
        assert compare.toggle(key="compare_live").value is False


def test_the_clip_in_force_is_shown_not_the_one_the_script_asked_for(tmp_path, app):
    # Two runs of one script that asks for norm:5 in its config; the second was relaunched with
    # GRADWATCH_CLIP=norm:0.5, so norm:0.5 was in force. The tracker's notes say so too.
    db = tmp_path / "gradwatch.db"
    asked = {"clip": "norm:5", "lr": 0.1, "seed": 0}
    typed = ["-m", "pkg.train", "--fast"]
    with Store.open(db, create=True) as store:
        first = store.create_run(name="asked", config=asked, clip="norm:5", clip_source="argument")
        store.writer(first).close()
        notes = {"requested_clip": "norm:5", "orig_argv": typed, "tied": {"head.weight": "embed.weight"}}
        second = store.create_run(name="relaunched", config={**asked, "_gradwatch": notes}, clip="norm:0.5",
                                  clip_source="env", parent_id=first)  # fmt: skip
        store.writer(second).close()
    at = open_page(app(db), "views/compare.py", compare_ids=[first, second])
    a, b = f"#{first} asked", f"#{second} relaunched"
    diff = [el.value for el in at.dataframe if a in el.value.columns][0]
    assert diff.loc[summary.CLIP_IN_FORCE, a] == "norm:5" and diff.loc[summary.CLIP_IN_FORCE, b] == "norm:0.5"
    assert diff.loc["clip set by", a] == "argument" and diff.loc["clip set by", b] == "env"
    # The script's own config["clip"] differs from the clip in force only in the relaunch: its own row.
    assert diff.loc["clip (the script's config)", b] == "norm:5"
    assert diff.loc["clip (the script's config)", a] == "—"
    assert diff.loc["clip the script asked for (before GRADWATCH_CLIP)", b] == "norm:5"
    assert diff.loc["command as typed (after python)", b] == "-m pkg.train --fast"
    assert diff.loc["tied weights (alias → recorded name)", b] == "head.weight → embed.weight"
    assert "lr" not in diff.index and "seed" not in diff.index and "_gradwatch" not in diff.index
    assert diff.index[0] == summary.CLIP_IN_FORCE


def test_one_layers_norm_per_run_and_a_run_without_that_layer_is_named(recorded, app):
    from dashboard_helpers import LAYERS

    with Store.open(recorded.path) as store:
        other = _write(store, "other-model", [(s, 1.0, 0.5) for s in range(5)])  # its one layer is "w"
    ids = [recorded.ids["base"], recorded.ids["child"], other]
    at = open_page(app(recorded.path), "views/compare.py", compare_ids=ids)
    assert at.selectbox(key="compare_layer").value == LAYERS[0]  # the first layer of the first run
    assert at.selectbox(key="compare_layer").options == [*LAYERS, "w"]
    at.selectbox(key="compare_layer").set_value("fc.weight").run()
    fig = figure(at, "cmp_layer")
    for run in ("base", "child"):
        t = trace(fig, _label(recorded, run))
        np.testing.assert_allclose(values(t["x"]), np.arange(len(recorded.total[run])))
        np.testing.assert_allclose(values(t["y"]), recorded.norms[run][:, 2], equal_nan=True)
        # fc.weight's NaN step is marked in the run's colour, as on the other charts.
        assert values(trace(fig, f"{_label(recorded, run)}: NaN/Inf (1 steps)")["x"]).tolist() == [NAN_STEP]
    assert f"#{other} other-model" not in [t["name"] for t in fig["data"]]
    notes = "\n".join(c.value for c in at.caption)
    assert "No layer named `fc.weight` in: " + escape_markdown(f"#{other} other-model") in notes


def _rolling_share(clipped: np.ndarray, window: int) -> np.ndarray:
    """The oracle: the share of clipped steps among the last ``window`` (fewer at the start), by cumsums."""
    sums = np.concatenate([[0], np.cumsum(clipped.astype(float))])
    ends = np.arange(1, len(clipped) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def test_clip_threshold_and_clip_rate_over_time_per_run(compare, recorded):
    from dashboard.views.compare import CLIP_WINDOW

    threshold = figure(compare, "cmp_threshold")
    child = trace(threshold, _label(recorded, "child"))
    np.testing.assert_allclose(values(child["y"]), 0.5)
    assert len(values(child["x"])) == len(recorded.total["child"])
    assert [t["name"] for t in threshold["data"]] == [_label(recorded, "child")]  # base: clip none
    notes = "\n".join(c.value for c in compare.caption)
    assert "No clip threshold recorded for " + escape_markdown(_label(recorded, "base")) in notes
    rate = figure(compare, "cmp_clip_rate")
    for run in ("base", "child"):
        t = trace(rate, _label(recorded, run))
        np.testing.assert_allclose(values(t["y"]), _rolling_share(recorded.clipped[run], CLIP_WINDOW))
    assert recorded.clipped["child"].any() and not recorded.clipped["base"].any()
