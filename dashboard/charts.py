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

from dashboard.downsample import minmax_envelope
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


def _line(x, y, max_points, **kwargs):
    xs, ys = minmax_envelope(np.asarray(x), np.asarray(y, dtype=float), max_points)
    return _scatter(xs, ys, mode="lines", **kwargs)


def _spread(x: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` of ``x``, evenly spaced over all of it (the first and the last kept)."""
    if len(x) <= max_points:
        return x
    return x[np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))]


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
            x = _spread(bad["step"].to_numpy(), max_points)
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
    """One layer's norms as ``step``, ``norm`` rows, sorted by step: raw rows as they are; an envelope from
    the store's blocks (``norm_min``/``norm_max``) as max then min per bucket, so that a single line still
    shows each bucket's extremes."""
    norms = norms.sort_values("step")
    if "norm" in norms:
        return norms[["step", "norm"]]
    return pd.DataFrame(
        {
            "step": np.repeat(norms["step"].to_numpy(), 2),
            "norm": np.column_stack([norms["norm_max"].to_numpy(), norms["norm_min"].to_numpy()]).ravel(),
        }
    )


def layer_norms_figure(norms: pd.DataFrame, *, max_points: int = MAX_POINTS) -> go.Figure:
    """Per-layer gradient norm over steps, log y, legend grouped by module.

    ``norms`` is long format with ``name`` and ``step`` and either ``norm`` (raw rows) or
    ``norm_min``/``norm_max`` (an envelope from the store's blocks).
    """
    fig = go.Figure()
    for name, group in norms.groupby("name", sort=False):
        group = group.sort_values("step")
        module = module_of(str(name))
        common = dict(name=_label(name), legendgroup=module, legendgrouptitle_text=_label(module))
        line = layer_line(group)
        fig.add_trace(_line(line["step"], line["norm"], max_points, **common))
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

    ``heat`` is long format: ``name``, ``step`` (bucket start) and ``log10_norm``; layers keep their order of
    first appearance (model order). A zero norm (log10 = -inf) is drawn one decade below the smallest
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
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=table.columns.to_numpy(),
            y=names,
            customdata=[[_norm_text(v) for v in row] for row in z],
            colorscale="Viridis",
            colorbar=dict(title="log10 ‖g‖"),
            hovertemplate="step %{x}<br>%{y}<br>max norm %{customdata}<extra></extra>",
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
                hovertemplate=f"step %{{x}}<br>%{{y}}<br>{kind} gradient<extra></extra>",
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
    all NaN still shows (as markers only).
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
        if finite.any():
            tops.append(float(vals[finite].max()))
            style = dict(line=dict(color=color)) if color else {}
            trace = _line(frame["step"], vals, max_points, name=_label(label), legendgroup=str(label),
                          **style)  # fmt: skip
            if len(frame) <= 50:
                trace.mode = "lines+markers"
            fig.add_trace(trace)
        if not finite.all():
            nonfinite.append((label, frame["step"].to_numpy()[~finite], color))
    top = max(tops) if tops else 1.0
    for label, steps, color in nonfinite:
        x = _spread(steps, max_points)
        fig.add_trace(
            _scatter(
                x,
                np.full(len(x), top),
                mode="markers",
                name=f"{_label(label)}: NaN/Inf ({len(steps):,} steps)",
                legendgroup=str(label),
                marker=dict(color=color or "black", symbol="triangle-down", size=9),
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
