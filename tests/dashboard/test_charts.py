"""The figure builders, on frames shaped like the store's: what a reader of the chart is told is what the
frame holds."""

import html

import numpy as np
import pandas as pd

from dashboard.charts import global_norm_figure, layer_norms_figure, metric_figure, overlay_figure


def _trace(fig, prefix: str):
    [found] = [t for t in fig.data if t.name.startswith(prefix)]
    return found


def test_nan_markers_span_the_whole_run_when_there_are_more_than_max_points():
    n, first_bad = 20_000, 5_000  # NaN from step 5,000 to the end: 15,000 steps to mark
    total = np.where(np.arange(n) >= first_bad, np.nan, 1.0)
    steps = pd.DataFrame(
        {"step": np.arange(n), "total_norm": total, "nonfinite_count": (np.isnan(total)) * 3}
    )
    marks = _trace(global_norm_figure(steps, max_points=2000), "NaN/Inf gradients")
    x = np.asarray(marks.x)
    assert marks.name == "NaN/Inf gradients (15,000 steps)"
    assert len(x) <= 2000
    assert x[0] == first_bad and x[-1] == n - 1  # the first and the last NaN step are marked
    assert np.all(np.diff(x) > 0) and np.diff(x).max() <= 8  # evenly over the run: no gap of 10,000 steps
    assert set(x) <= set(range(first_bad, n))  # only NaN steps are marked


def test_every_nan_step_is_marked_when_they_are_few():
    steps = pd.DataFrame({"step": [0, 1, 2, 3], "total_norm": [1.0, np.nan, 2.0, np.inf],
                          "nonfinite_count": [0, 1, 0, 1]})  # fmt: skip
    marks = _trace(global_norm_figure(steps), "NaN/Inf gradients")
    assert list(marks.x) == [1, 3] and list(marks.y) == [2.0, 2.0]  # at the largest finite norm


def test_recorded_names_are_shown_as_typed_in_legends():
    # plotly renders <b>, <i>, <a href> and <br> in legend and hover text: a run named "<b>x</b>" would
    # show as a bold x. Escaped, the browser shows the characters typed (entities are decoded by plotly).
    name = "<b>run</b> & <a href='http://e.com'>x</a>"
    frame = pd.DataFrame({"step": [0, 1], "value": [1.0, 2.0], "name": [name, name]})
    assert [t.name for t in metric_figure(frame, title="m").data] == [html.escape(name, quote=False)]
    overlay = overlay_figure({name: frame}, "value", title="o")
    assert [t.name for t in overlay.data] == [html.escape(name, quote=False)]
    layers = pd.DataFrame({"step": [0, 1], "norm": [1.0, 2.0], "name": ["enc.<i>w</i>"] * 2})
    assert [t.name for t in layer_norms_figure(layers).data] == ["enc.&lt;i&gt;w&lt;/i&gt;"]
