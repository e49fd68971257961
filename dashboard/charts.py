"""Plotly figure builders: pure functions of DataFrames, no Streamlit and no database.

Every series is reduced to at most ``max_points`` points with the spike-keeping min/max envelope (markers
of steps, such as NaN/Inf steps, are sampled evenly over the whole run), and drawn with WebGL
(``Scattergl``) once it is large, so a 100k-step run renders as fast as a 1k-step one.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.downsample import minmax_envelope, minmax_indices
from dashboard.text import escape_markdown

__all__ = [
    "MAX_POINTS",
    "WEBGL_FROM",
    "flow_figure",
    "global_norm_figure",
    "heatmap_figure",
    "layer_line",
    "layer_norms_figure",
    "metric_figure",
    "missing_note",
    "module_of",
    "overlay_figure",
    "RUN_COLORS",
    "run_colors",
    "span_text",
]

MAX_POINTS = 2000  # per trace, after downsampling
WEBGL_FROM = 1000  # points; below this SVG is crisper and cheaper than a WebGL context
# plotly's default qualitative palette (plotly.colors.qualitative.Plotly), given explicitly so that a run's
# colour does not depend on which traces a chart happens to have.
RUN_COLORS = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
              "#FF97FF", "#FECB52")  # fmt: skip

# Layout shared by every chart: uirevision keeps legend toggles across live refreshes.
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), uirevision="keep", legend=dict(orientation="h", y=-0.2))


def _label(text) -> str:
    """A recorded name (layer, metric, run) as a legend shows it: plotly renders a subset of HTML in legend
    and hover text (<b>, <a href>, <br>), so a run named "<b>x</b>" would lose its tags; entities show as
    typed."""
    return html.escape(str(text), quote=False)


def _scatter(x, y, **kwargs):
    cls = go.Scattergl if len(x) >= WEBGL_FROM else go.Scatter
    return cls(x=x, y=y, **kwargs)


def span_text(first, last) -> list[str]:
    """What each point stands for, as its hover says it: ``step 5`` for one step, ``steps 1000–1099`` for a
    bucket of the store's min/max blocks (drawn at its first step)."""
    pairs = zip(first, last, strict=True)
    return [f"step {int(a)}" if a == b else f"steps {int(a)}–{int(b)}" for a, b in pairs]


# The hover of a point with ``customdata`` (span, stat): "steps 1000–1099<br>max norm 3.2".
_HOVER = "%{customdata[0]}<br>%{customdata[1]} %{y:~.4g}"


def _line(x, y, max_points, hover=None, **kwargs):
    """A line of at most ``max_points`` points (the min/max envelope). ``hover``: per point, the steps it
    stands for and what its value is (``("steps 1000–1099", "max norm")``, :func:`layer_line`), thinned with
    the points, so that each kept point keeps its own."""
    keep = minmax_indices(x, y, max_points)
    if hover is not None:
        kwargs.update(customdata=np.asarray(hover, dtype=object)[keep].tolist(), hovertemplate=_HOVER)
    return _scatter(np.asarray(x)[keep], np.asarray(y, dtype=float)[keep], mode="lines", **kwargs)


def _spread(n: int, max_points: int) -> np.ndarray:
    """The positions of at most ``max_points`` of ``n`` points, evenly spaced (the first and last kept)."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def module_of(name: str) -> str:
    """The module a parameter belongs to: ``encoder.layers.0.fc.weight`` -> ``encoder.layers.0.fc``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def global_norm_figure(
    steps: pd.DataFrame, *, log_y: bool = False, max_points: int = MAX_POINTS
) -> go.Figure:
    """Pre-clip global norm per step, post-clip norm, the clip threshold in force, and clipped steps marked.

    ``steps`` needs ``step`` and ``total_norm``; ``total_norm_after``, ``threshold`` and ``clipped`` are
    drawn when present (the steps table carries every clip decision, so no clip-event read is needed).
    """
    fig = go.Figure()
    if len(steps):
        fig.add_trace(_line(steps["step"], steps["total_norm"], max_points, name="global norm (pre-clip)"))
        if "total_norm_after" in steps and steps["total_norm_after"].notna().any():
            after = steps.dropna(subset=["total_norm_after"])
            fig.add_trace(
                _line(
                    after["step"],
                    after["total_norm_after"],
                    max_points,
                    name="after clipping",
                    line=dict(width=1, dash="dot"),
                )
            )
        if "threshold" in steps and steps["threshold"].notna().any():
            thr = steps.dropna(subset=["threshold"])
            fig.add_trace(
                _line(
                    thr["step"],
                    thr["threshold"],
                    max_points,
                    name="clip threshold",
                    line=dict(color="firebrick", dash="dash", width=1.5),
                )
            )
        clipped = steps[steps["clipped"].fillna(0).astype(bool)] if "clipped" in steps else steps.iloc[0:0]
        if len(clipped):
            x, y = minmax_envelope(clipped["step"].to_numpy(), clipped["total_norm"].to_numpy(), max_points)
            fig.add_trace(
                _scatter(
                    x,
                    y,
                    mode="markers",
                    name=f"clipped ({len(clipped):,} steps)",
                    marker=dict(color="firebrick", symbol="x", size=6),
                )
            )
        bad = steps[steps["nonfinite_count"].fillna(0) > 0] if "nonfinite_count" in steps else steps.iloc[0:0]
        if len(bad):
            # A NaN/Inf norm cannot be plotted (the line has a gap there): mark those steps at the top.
            finite = steps["total_norm"][np.isfinite(steps["total_norm"].astype(float))]
            top = float(finite.max()) if len(finite) else 1.0
            x = bad["step"].to_numpy()[_spread(len(bad), max_points)]
            fig.add_trace(
                _scatter(
                    x,
                    np.full(len(x), top),
                    mode="markers",
                    name=f"NaN/Inf gradients ({len(bad):,} steps)",
                    marker=dict(color="black", symbol="triangle-down", size=9),
                )
            )
    fig.update_layout(title="Global gradient norm", xaxis_title="step", yaxis_title="L2 norm", **_LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def layer_line(norms: pd.DataFrame) -> pd.DataFrame:
    """One layer's norms as ``step``, ``norm`` rows, sorted by step, with what each point's hover says:
    ``span`` (:func:`span_text`) and ``stat`` (``norm``, ``max norm`` or ``min norm``).

    Raw rows as they are. An envelope from the store's blocks (``norm_min``/``norm_max`` of the steps
    ``step``..``step_end``) as max then min per bucket, both at the bucket's first step, so that a single line
    still shows each bucket's extremes; their hover names the bucket's steps, since the store does not know at
    which of them the maximum was.
    """
    norms = norms.sort_values("step")
    first = norms["step"].to_numpy()
    if "norm" in norms:
        return pd.DataFrame(
            {"step": first, "norm": norms["norm"].to_numpy(), "span": span_text(first, first), "stat": "norm"}
        )
    last = norms["step_end"].to_numpy()
    stat = np.where(np.repeat(first == last, 2), "norm", np.tile(["max norm", "min norm"], len(norms)))
    return pd.DataFrame(
        {
            "step": np.repeat(first, 2),
            "norm": np.column_stack([norms["norm_max"].to_numpy(), norms["norm_min"].to_numpy()]).ravel(),
            "span": np.repeat(span_text(first, last), 2),
            "stat": stat,
        }
    )


def layer_norms_figure(norms: pd.DataFrame, *, max_points: int = MAX_POINTS) -> go.Figure:
    """Per-layer gradient norm over steps, log y, legend grouped by module.

    ``norms`` is long format with ``name`` and ``step`` and either ``norm`` (raw rows) or
    ``step_end``, ``norm_min`` and ``norm_max`` (an envelope from the store's blocks): a point's hover says
    the step it was recorded at, or the steps of the bucket whose maximum or minimum it is.
    """
    fig = go.Figure()
    for name, group in norms.groupby("name", sort=False):
        group = group.sort_values("step")
        module = module_of(str(name))
        common = dict(name=_label(name), legendgroup=module, legendgrouptitle_text=_label(module))
        line = layer_line(group)
        fig.add_trace(_line(line["step"], line["norm"], max_points, line[["span", "stat"]], **common))
    fig.update_layout(title="Per-layer gradient norms", xaxis_title="step", yaxis_title="L2 norm", **_LAYOUT)
    fig.update_yaxes(type="log")
    return fig


# Drawn over the heatmap's cells that held a non-finite gradient (no colour can say NaN or Inf).
_MARKS = {
    "NaN": dict(color="red", symbol="x", size=9),
    "Inf": dict(color="orange", symbol="triangle-up", size=9),
}


def _norm_text(log10_norm: float) -> str:
    if np.isnan(log10_norm):
        return "—"
    if np.isposinf(log10_norm):
        return "Inf"
    return "0" if np.isneginf(log10_norm) else f"{10.0**log10_norm:.4g}"


def heatmap_figure(heat: pd.DataFrame, marks: pd.DataFrame | None = None) -> go.Figure:
    """Layer x step heatmap of log10 gradient norm (the maximum of each step bucket).

    ``heat`` is long format: ``name``, ``step`` (bucket start), ``step_end`` (its last step; without it,
    each column is one step) and ``log10_norm``; layers keep their order of first appearance (model order).
    A cell's hover names its bucket's steps. A zero norm (log10 = -inf) is drawn one decade below the smallest
    non-zero norm, so it is the darkest cell, not a blank one; a blank cell is a bucket with nothing
    recorded, or only NaN. ``marks`` (``name``, ``step``, ``kind`` NaN or Inf) are drawn as markers over their
    cells.
    """
    names = list(dict.fromkeys(heat["name"]))
    table = heat.pivot_table(
        index="name", columns="step", values="log10_norm", aggfunc="max", dropna=False
    ).reindex(names)
    z = table.to_numpy(dtype=float)
    finite = z[np.isfinite(z)]
    zero = np.isneginf(z)
    floor = (finite.min() if len(finite) else 0.0) - 1.0
    shown = np.where(zero, floor, np.where(np.isfinite(z), z, np.nan))
    first = table.columns.to_numpy()
    last = heat.groupby("step")["step_end"].max().reindex(first).to_numpy() if "step_end" in heat else first
    spans = dict(zip(first, span_text(first, last), strict=True))
    stat = ["norm" if a == b else "max norm" for a, b in zip(first, last, strict=True)]
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=first,
            y=names,
            text=[list(spans.values())] * len(names),
            customdata=[[f"{s} {_norm_text(v)}" for s, v in zip(stat, row, strict=True)] for row in z],
            colorscale="Viridis",
            colorbar=dict(title="log10 ‖g‖"),
            hovertemplate="%{text}<br>%{y}<br>%{customdata}<extra></extra>",
            showlegend=False,
        )
    )
    for kind, group in (marks if marks is not None else pd.DataFrame(columns=["kind"])).groupby("kind"):
        fig.add_trace(
            go.Scatter(
                x=group["step"].to_numpy(),
                y=group["name"].to_numpy(),
                mode="markers",
                name=f"{kind} gradient",
                marker=_MARKS.get(str(kind), {}),
                customdata=[spans.get(step, f"step {step}") for step in group["step"]],
                hovertemplate=f"%{{customdata}}<br>%{{y}}<br>{kind} gradient<extra></extra>",
            )
        )
    fig.update_layout(
        showlegend=len(fig.data) > 1,  # the markers' names; plotly hides a legend of one entry
        title="log10 gradient norm, layer × step",
        xaxis_title="step",
        yaxis=dict(autorange="reversed"),
        height=max(300, 18 * len(names) + 120),
        **_LAYOUT,
    )
    return fig


def flow_figure(flow: pd.DataFrame, step: int) -> go.Figure:
    """Gradient flow at one step: one bar per layer (model order), log y; non-finite layers in red."""
    norms = flow["norm"].astype(float)
    finite = np.isfinite(norms)
    colors = np.where(finite, "steelblue", "firebrick")
    # A bar cannot show NaN/Inf on a log axis: draw non-finite layers at the largest finite height, in red.
    top = norms[finite].max() if finite.any() else 1.0
    fig = go.Figure(
        go.Bar(
            x=flow["name"],
            y=np.where(finite, norms, top),
            marker_color=colors,
            customdata=norms.astype(str),
            hovertemplate="%{x}<br>norm %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(title=f"Gradient flow at step {step}", yaxis_title="L2 norm", **_LAYOUT)
    fig.update_yaxes(type="log")
    fig.update_xaxes(tickangle=-45)
    return fig


def metric_figure(
    frame: pd.DataFrame,
    *,
    title: str,
    y: str = "value",
    color: str = "name",
    max_points: int = MAX_POINTS,
    log_y: bool = False,
) -> go.Figure:
    """One line per value of ``color`` (a metric name, or a run), ``step`` on x."""
    fig = go.Figure()
    for key, group in frame.groupby(color, sort=False):
        group = group.sort_values("step")
        mode = "lines+markers" if len(group) <= 50 else "lines"
        trace = _line(group["step"], group[y], max_points, name=_label(key))
        trace.mode = mode
        fig.add_trace(trace)
    fig.update_layout(title=title, xaxis_title="step", **_LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def run_colors(labels) -> dict[str, str]:
    """One colour per run for a whole page, by the run's position in ``labels`` (plotly's palette, cycled),
    so that a run missing from one chart shifts no other run's colour on it."""
    return {label: RUN_COLORS[i % len(RUN_COLORS)] for i, label in enumerate(labels)}


def overlay_figure(
    series: dict[str, pd.DataFrame],
    y: str,
    *,
    title: str,
    log_y: bool = False,
    max_points: int = MAX_POINTS,
    colors: dict[str, str] | None = None,
) -> go.Figure:
    """Overlay one column of several runs, aligned by step: ``series`` maps a run label to its frame.

    ``colors`` maps a label to its colour (:func:`run_colors`). A NaN or Inf value is a gap in its run's
    line; those steps are marked ▼ at the top of the chart in the run's colour, so a run whose values are
    all NaN still shows (as markers only). A frame with ``span`` and ``stat`` columns (:func:`layer_line`)
    has them in its points' hover.
    """
    fig = go.Figure()
    colors = colors or {}
    nonfinite, tops = [], []
    for label, frame in series.items():
        if y not in frame or not len(frame):
            continue
        frame = frame.sort_values("step")  # NaN rows stay: a gap marks a non-finite step
        vals = frame[y].astype(float).to_numpy()
        finite = np.isfinite(vals)
        color = colors.get(label)
        hover = frame[["span", "stat"]] if {"span", "stat"} <= set(frame) else None
        if finite.any():
            tops.append(float(vals[finite].max()))
            style = dict(line=dict(color=color)) if color else {}
            trace = _line(frame["step"], vals, max_points, hover, name=_label(label), legendgroup=str(label),
                          **style)  # fmt: skip
            if len(frame) <= 50:
                trace.mode = "lines+markers"
            fig.add_trace(trace)
        if not finite.all():
            nonfinite.append((label, frame[~finite], color, hover is not None))
    top = max(tops) if tops else 1.0
    for label, bad, color, spans in nonfinite:
        shown = bad.iloc[_spread(len(bad), max_points)]
        hover = {}
        if spans:
            hover = dict(customdata=shown["span"].tolist(), hovertemplate="%{customdata}<br>NaN/Inf")
        fig.add_trace(
            _scatter(
                shown["step"].to_numpy(),
                np.full(len(shown), top),
                mode="markers",
                name=f"{_label(label)}: NaN/Inf ({len(bad):,} steps)",
                legendgroup=str(label),
                marker=dict(color=color or "black", symbol="triangle-down", size=9),
                **hover,
            )
        )
    fig.update_layout(title=title, xaxis_title="step", **_LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def missing_note(series: dict[str, pd.DataFrame], y: str, labels: list[str]) -> str | None:
    """Which of ``labels`` an :func:`overlay_figure` of ``y`` cannot draw as a line, and why, as Markdown for
    a caption under the chart (None when every one is drawn)."""
    nothing, nonfinite = [], []
    for label in labels:
        frame = series.get(label)
        if frame is None or y not in frame or not len(frame):
            nothing.append(label)
        elif not np.isfinite(frame[y].astype(float)).any():
            nonfinite.append(label)
    parts = []
    if nothing:
        parts.append("nothing recorded for " + ", ".join(escape_markdown(label) for label in nothing))
    if nonfinite:
        parts.append(
            "no finite value for "
            + ", ".join(escape_markdown(label) for label in nonfinite)
            + " (every step NaN or Inf: marked ▼)"
        )
    return ("Not drawn as a line: " + "; ".join(parts) + ".") if parts else None
