"""The Run page's tabs: one panel per tab (global norm, layers, heatmap, gradient flow, loss and metrics,
non-finite events, suggested threshold), each reading what it draws for one run.

The page (``views/run.py``) renders only the open tab, inside its live fragment: a panel runs again at
every refresh of a running run, so the widgets it shows keep the user's pick in their own keys (a value=
given anew at each refresh would reset it). Drawing is ``dashboard.charts``', reading ``dashboard.data``'s.
"""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data
from dashboard.suggest import suggest_threshold
from dashboard.text import code_span

__all__ = [
    "ALL_NAN",
    "HEATMAP_COLUMNS",
    "TOP_K",
    "all_norms_nan",
    "flow_panel",
    "global_norm_panel",
    "heatmap_panel",
    "layers_panel",
    "metrics_panel",
    "nonfinite_panel",
    "suggestion_panel",
]

TOP_K = 8  # layers shown by default: the largest by max norm so far
HEATMAP_COLUMNS = 200


def global_norm_panel(steps: pd.DataFrame) -> None:
    log_y = st.toggle("Log scale", value=False, key="global_log")
    st.plotly_chart(charts.global_norm_figure(steps, log_y=log_y), key="global_norm")


def layers_panel(store, run_id: int, layers: pd.DataFrame, n_steps: int) -> None:
    if not len(layers):
        st.info("No layers recorded for this run.")
        return
    if all_norms_nan(store, run_id, layers):
        st.info(ALL_NAN)
        return
    names = dict(zip(layers["id"], layers["name"], strict=True))
    modules = sorted({charts.module_of(n).split(".")[0] for n in layers["name"]})
    prefix = st.selectbox("Module", ["(all)", *modules], key="layer_module") if len(modules) > 1 else "(all)"
    candidates = [i for i in layers["id"] if prefix == "(all)" or names[i].split(".")[0] == prefix]
    key = f"layer_pick_{run_id}_{prefix}"
    if key not in st.session_state:  # the default pick is made once; live refreshes keep the user's pick
        st.session_state[key] = [names[i] for i in _top_layers(store, run_id, layers, candidates)]
    picked = st.multiselect(
        f"Layers (default: the {TOP_K} with the largest norm so far)",
        [names[i] for i in candidates],
        key=key,
    )
    ids = [i for i in candidates if names[i] in set(picked)]
    frame = data.layer_norms(store, run_id, layers, ids, n_steps, charts.MAX_POINTS)
    st.plotly_chart(charts.layer_norms_figure(frame), key="layer_norms")
    norms = frame[[c for c in ("norm", "norm_max") if c in frame]].astype(float)
    if len(frame) and norms.isna().all().all():
        st.caption("Every recorded norm of the picked layers is NaN: there is no line to draw.")


ALL_NAN = (
    "Every recorded per-layer norm of this run is NaN: there is nothing to draw. "
    "The Non-finite tab lists the layers and steps."
)


def all_norms_nan(store, run_id: int, layers: pd.DataFrame) -> bool:
    """True when the run recorded per-layer norms and every one is NaN (from the heatmap's read: the
    maximum of a bucket is NaN only when all its norms are)."""
    heat = data.heatmap(store, run_id, layers, HEATMAP_COLUMNS)
    return bool(len(heat)) and bool(heat["log10_norm"].isna().all())


def _top_layers(store, run_id: int, layers: pd.DataFrame, candidates: list[int]) -> list[int]:
    heat = data.heatmap(store, run_id, layers, HEATMAP_COLUMNS)  # the same read as the heatmap tab
    if not len(heat):
        return candidates[:TOP_K]
    peak = heat[heat["layer_id"].isin(candidates)].groupby("layer_id")["log10_norm"].max()
    return list(peak.sort_values(ascending=False).index[:TOP_K])


def heatmap_panel(store, run_id: int, layers: pd.DataFrame) -> None:
    heat = data.heatmap(store, run_id, layers, HEATMAP_COLUMNS)
    if not len(heat):
        st.info("No per-layer norms recorded yet.")
        return
    marks = data.heatmap_marks(store, run_id, heat)
    st.plotly_chart(charts.heatmap_figure(heat, marks), key="heatmap")


def _flow_picked(run_id: int, latest: int) -> None:
    """The Step slider's callback: keep the step picked, or None (follow the run) when it is the latest."""
    step = st.session_state[f"flow_step_{run_id}"]
    st.session_state[f"flow_pick_{run_id}"] = None if step >= latest else step


def _at_or_before(logged: np.ndarray, step: int) -> int:
    """The last of the sorted ``logged`` steps at or before ``step`` (the first one when none is)."""
    return int(logged[max(np.searchsorted(logged, step, side="right") - 1, 0)])


def flow_panel(store, run_id: int, layers: pd.DataFrame, steps: pd.DataFrame) -> None:
    logged = np.unique(steps["step"].to_numpy(dtype=np.int64))
    lo, hi = int(logged[0]), int(logged[-1])
    chosen = hi
    if lo < hi:
        # The step picked is kept in its own key, and the widget set from it before each render (as the
        # layer picker's default is set once): a live refresh grows the range, which would reset a widget
        # given value= to the latest step. Unpicked, or picked at the latest, it follows the run.
        # A select_slider over the logged steps, not a slider: Streamlit (1.67) counts a keyed slider's
        # min and max in its identity, so the browser would recreate it at each refresh of a growing run,
        # and a user moving it with the arrow keys would lose the focus every 2 s; a keyed select_slider is
        # the same widget whatever its options.
        picked = st.session_state.get(f"flow_pick_{run_id}")
        key = f"flow_step_{run_id}"
        want = hi if picked is None else _at_or_before(logged, int(picked))
        if st.session_state.get(key) != want:  # set only when it moves: a value set is sent to the browser
            st.session_state[key] = want
        chosen = st.select_slider("Step", logged.tolist(), key=key, on_change=_flow_picked, args=(run_id, hi))
    flow = data.flow(store, run_id, chosen)
    if not len(flow):
        st.info(f"No per-layer norms recorded at or before step {chosen}.")
        return
    shown = int(flow.attrs.get("step", chosen))
    if shown != chosen:
        st.caption(f"Step {chosen} was not logged: showing the last logged step before it, {shown}.")
    if not np.isfinite(flow["norm"].astype(float)).any():
        # A bar cannot show NaN/Inf, and with no finite layer there is no height to draw them at.
        if all_norms_nan(store, run_id, layers):
            st.info(ALL_NAN)
        else:
            st.info(
                f"Every layer's gradient norm at step {shown} is NaN or Inf ({len(flow)} layers): there is "
                "no bar to draw. Pick another step, or see the Non-finite tab."
            )
        return
    st.plotly_chart(charts.flow_figure(flow, shown), key="flow")


def metrics_panel(steps: pd.DataFrame, metrics: pd.DataFrame) -> None:
    # NaN/Inf values are gaps in a line, marked ▼; a caption names the series with no finite value at all,
    # which would otherwise be an empty chart (as on the Compare page).
    left, right = st.columns(2)
    logged = data.logged_loss(steps)
    if len(logged):
        loss = {"train loss (per step)": logged}
        left.plotly_chart(charts.overlay_figure(loss, "loss", title="Loss"), key="loss")
        note = charts.missing_note(loss, "loss", list(loss))
        if note:
            left.caption(note)
    if len(metrics):
        names = sorted(metrics["name"].unique())
        default = [n for n in names if n.startswith(("val_", "train_", "test_")) and n != "train_loss"]
        picked = right.multiselect("Metrics", names, default=default or names[:4], key="metric_pick")
        series = {name: metrics[metrics["name"] == name] for name in picked}
        colors = charts.run_colors(names)  # a metric keeps its colour whatever else is picked
        figure = charts.overlay_figure(series, "value", title="Metrics", colors=colors)
        right.plotly_chart(figure, key="metrics")
        note = charts.missing_note(series, "value", picked)
        if note:
            right.caption(note)
    elif not len(logged):
        st.info("No loss or metrics recorded yet.")


def nonfinite_panel(store, run_id: int) -> None:
    events = data.nonfinite(store, run_id)
    if not len(events):
        st.success("No NaN or Inf gradient recorded.")
        return
    # Within a step, layers are in model order: the first row of the first step is where it started.
    first = events.iloc[0]
    st.error(
        f"First non-finite gradient at step {int(first['step'])}, "
        f"first offending layer: {code_span(first['name'])} "
        f"({'NaN' if first['has_nan'] else 'Inf'}). {events['step'].nunique():,} steps had non-finite layers."
    )
    st.dataframe(events, hide_index=True, key="nonfinite_table")


def suggestion_panel(run: dict, steps: pd.DataFrame) -> None:
    s = suggest_threshold(steps["total_norm"] if len(steps) else [])
    if s is None:
        st.info("No finite global norm recorded yet.")
        return
    st.markdown(
        f"Derived from the **{s.n:,} recorded pre-clip global norms** of this run (NaN/Inf left out):"
    )
    table = pd.DataFrame(
        {
            "rule": [
                f"spikes only: median + {s.k:g}·MAD (MAD × 1.4826 estimates σ)",
                f"AutoClip (Seetharaman et al. 2020): {s.percentile:g}th percentile",
            ],
            "threshold": [s.robust, s.autoclip],
            "would have clipped": [s.clip_rate_robust, s.clip_rate_autoclip],
        }
    )
    st.dataframe(
        table,
        hide_index=True,
        key="suggestion_table",
        column_config={
            "threshold": st.column_config.NumberColumn(format="%.4g"),
            "would have clipped": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.caption(
        f"median = {s.median:.4g}, scaled MAD = {s.mad:.4g}. A fixed `norm:` threshold from the first rule "
        "clips only the spikes. AutoClip's rule is meant to be applied adaptively (`autoclip:10` recomputes "
        "it every step from the history): as a fixed threshold it would clip most steps."
    )
    c1, c2 = st.columns(2)
    if c1.button(f"Launch with norm:{s.robust:.3g}", key="use_robust"):
        _prefill_launch(run, f"norm:{s.robust:.3g}")
    if c2.button(f"Launch with autoclip:{s.percentile:g}", key="use_autoclip"):
        _prefill_launch(run, f"autoclip:{s.percentile:g}")


def _prefill_launch(run: dict, spec: str) -> None:
    st.session_state["launch_from"] = int(run["id"])
    st.session_state["launch_clip"] = spec
    st.switch_page("views/launch.py")
