"""The Compare page overlays runs aligned by step, adds a relaunch's parent/children, and diffs configs."""

import numpy as np
import pytest
from dashboard_helpers import dataframe_with, figure, open_page, trace, values


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
    assert names == [_label(recorded, "base")]
    assert any("identical" in c.value for c in compare.caption)
