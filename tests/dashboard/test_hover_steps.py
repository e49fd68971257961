"""A point's hover names the steps its value comes from: the step of a raw row, the range of steps of a bucket
of the store's min/max blocks (drawn at the bucket's first step), so a spike at step 12,345 is never said to
be at step 12,340; the oracle is the steps the spikes were written at."""

import math
import re

import numpy as np
import pytest
from dashboard_helpers import SPIKE_STEP, figure, open_page, open_tab, trace, values

from dashboard import charts
from tracker.store import Store

N_STEPS = 20_000  # x 3 layers = 60k rows: above the raw-read limit, so per-layer norms come from blocks
LAYER = 1  # enc.1.weight: the layer with the spikes
SPIKES = {3_007: 2e4, 12_345: 1e4, 17_991: 3e4}  # step: norm, none of them a bucket's first step
DIP = (8_888, 1e-6)  # a minimum, also inside a bucket
NAN = (5_555, 2)  # step, layer: a NaN gradient, marked on the heatmap


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    path = tmp_path_factory.mktemp("hover") / "large.db"
    norms = np.random.default_rng(5).lognormal(mean=0.0, sigma=0.2, size=(N_STEPS, 3))
    for step, value in SPIKES.items():
        norms[step, LAYER] = value
    norms[DIP[0], LAYER] = DIP[1]
    norms[NAN] = math.nan
    with Store.open(path, create=True) as store:
        run = store.create_run(name="large", clip="none")
        store.add_layers(run, [dict(id=i, name=f"enc.{i}.weight", shape=[2]) for i in range(3)])
        writer = store.writer(run)
        for step in range(N_STEPS):
            total = float(np.sqrt(np.nansum(norms[step] ** 2)))
            row = norms[step].tolist()
            bad = NAN[1] if step == NAN[0] else None
            writer.add_step(step=step, norms=row, total_norm=total, first_nonfinite_layer=bad)
            if step == NAN[0]:
                writer.add_nonfinite(step, [(NAN[1], True, False)])
        writer.close()
    return path, run, norms


def _span(text: str) -> tuple[int, int]:
    """(first, last) step of a hover's "step 5" or "steps 1000–1099"."""
    one = re.fullmatch(r"step (\d+)", text)
    if one:
        return int(one[1]), int(one[1])
    first, last = re.fullmatch(r"steps (\d+)–(\d+)", text).groups()
    return int(first), int(last)


def _hover_of(t: dict, value: float) -> list:
    """The hover data (span, stat) of the one point of line ``t`` that carries ``value``."""
    [i] = np.flatnonzero(np.isclose(values(t["y"]), value, rtol=1e-6, atol=0))
    return t["customdata"][i]


def _check_line(t: dict) -> None:
    """Each spike's point names a range of steps holding the spike, as a maximum; the dip's as a minimum;
    and every point's hover is its own (thinned with it): its range starts at the point's step."""
    assert len(values(t["y"])) <= charts.MAX_POINTS  # thinned: the store gave 2 points x 2,000 buckets
    for step, value in SPIKES.items():
        span, stat = _hover_of(t, value)
        first, last = _span(span)
        assert first <= step <= last and first < last, (step, span)
        assert stat == "max norm"
    span, stat = _hover_of(t, DIP[1])
    first, last = _span(span)
    assert first <= DIP[0] <= last and stat == "min norm"
    starts = [_span(span)[0] for span, _ in t["customdata"]]
    np.testing.assert_array_equal(starts, values(t["x"]))
    assert "%{customdata[0]}" in t["hovertemplate"] and "%{customdata[1]}" in t["hovertemplate"]


def test_a_layer_spikes_hover_names_the_steps_of_its_bucket(large, app):
    path, run, _ = large
    at = open_tab(open_page(app(path), "views/run.py"), "Layers")
    _check_line(trace(figure(at, "layer_norms"), f"enc.{LAYER}.weight"))


def test_the_compare_pages_layer_line_too(large):
    # The Compare page's reads of one layer of a large run (one layer of 20k steps is read raw: composed here
    # from the store's blocks as the page does above 50k steps).
    path, run, _ = large
    with Store.open(path) as store:
        blocks = store.grad_norm_envelope(run, [LAYER], None, None, charts.MAX_POINTS)
    fig = charts.overlay_figure({"#1 large": charts.layer_line(blocks)}, "norm", title="t")
    _check_line(trace(fig.to_plotly_json(), "#1 large"))


def test_a_heatmap_cells_hover_names_the_steps_of_its_bucket(large, app):
    path, run, _ = large
    fig = figure(open_tab(open_page(app(path), "views/run.py"), "Heatmap"), "heatmap")
    heat = fig["data"][0]
    z, x = values(heat["z"]), values(heat["x"])
    row = heat["y"].index(f"enc.{LAYER}.weight")
    for step, value in SPIKES.items():
        [col] = np.flatnonzero(np.isclose(z[row], math.log10(value)))
        first, last = _span(heat["text"][row][col])
        assert first == x[col] and first <= step <= last and first < last, (step, heat["text"][row][col])
        assert heat["customdata"][row][col] == f"max norm {value:.4g}"
    assert "%{text}" in heat["hovertemplate"]
    [mark] = [t for t in fig["data"] if t.get("name") == "NaN gradient"]
    [span] = mark["customdata"]
    first, last = _span(span)
    assert mark["y"] == [f"enc.{NAN[1]}.weight"] and first <= NAN[0] <= last and first < last


def test_raw_rows_name_their_own_step(recorded, app):
    # 60 steps x 3 layers: raw rows, one step per point.
    at = open_tab(open_page(app(recorded.path), "views/run.py", open_run=recorded.ids["base"]), "Layers")
    fig = figure(at, "layer_norms")
    for layer in range(3):
        t = trace(fig, ["conv1.weight", "conv1.bias", "fc.weight"][layer])
        assert [span for span, _ in t["customdata"]] == [f"step {s}" for s in values(t["x"]).astype(int)]
        assert {stat for _, stat in t["customdata"]} == {"norm"}
        span, _ = _hover_of(t, recorded.norms["base"][SPIKE_STEP, layer])
        assert span == f"step {SPIKE_STEP}"
    heat = figure(open_tab(at, "Heatmap"), "heatmap")["data"][0]
    assert heat["text"][0][SPIKE_STEP] == f"step {SPIKE_STEP}"
    assert heat["customdata"][0][0].startswith("norm ")  # one step: its norm, not a maximum


def test_the_global_norm_keeps_real_steps(large, app):
    # Drawn from raw rows (thinned with the min/max envelope): a kept point is a real step, with its own x.
    path, run, norms = large
    at = open_page(app(path), "views/run.py")
    t = trace(figure(at, "global_norm"), "global norm (pre-clip)")
    x, y = values(t["x"]), values(t["y"])
    assert len(y) <= charts.MAX_POINTS
    for step in SPIKES:
        [i] = np.flatnonzero(np.isclose(y, np.sqrt(np.nansum(norms[step] ** 2)), rtol=1e-6, atol=0))
        assert x[i] == step
