"""The Compare page overlays runs aligned by step, adds a relaunch's parent/children, and diffs configs."""

import sqlite3

import numpy as np
import pytest
import streamlit as st
from dashboard_helpers import NAN_STEP, dataframe_with, figure, open_page, trace, values

from dashboard import charts
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
    assert sorted(diff.index) == ["clip", "lr"]
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
