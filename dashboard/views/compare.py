"""Compare: overlay runs on global norm, loss and validation metrics (aligned by step), see how their
configurations differ, and put clip rate, final metrics and generalisation gap side by side.

A relaunch's parent and children are added automatically, so "what did changing the clipping do" is one
click away from either run.
"""

import pandas as pd
import streamlit as st

from dashboard import charts, data, state, summary
from dashboard.text import code_span, escape_markdown
from tracker.store import StoreError


def with_lineage(store, runs: pd.DataFrame, ids: list[int]) -> list[int]:
    """``ids`` plus the parent and the children of each (relaunches) listed in ``runs``, in a stable order."""
    out = list(ids)
    parents = dict(zip(runs["id"], runs["parent_id"], strict=True))
    for run_id in ids:
        parent = parents.get(run_id)
        if parent is not None and not pd.isna(parent) and int(parent) not in out:
            out.append(int(parent))
        children = store.children(run_id)
        for child in children["id"] if len(children) else []:
            # (a child made since ``runs`` was read, up to 2 s ago, is added at the next refresh)
            if int(child) not in out and int(child) in parents:
                out.append(int(child))
    return out


def _chart(where, figure, key: str, note: str | None) -> None:
    where.plotly_chart(figure, key=key)
    if note:
        where.caption(note)


def compare_panels(ids: list[int], labels: dict[int, str], source: str) -> None:
    """The live part of the page; ``source``: the ``data.db_key`` of the store the page was drawn from."""
    try:
        store = state.get_store()
        runs = None if store is None else data.runs(store)
        if runs is None or data.db_key(store) != source or not set(ids) <= set(runs["id"]):
            st.rerun()  # the file is gone, replaced or rewritten: the whole page again, as a reload shows
        steps = {labels[i]: data.steps(store, i, data.generation(runs, i)) for i in ids}
        losses = {label: data.logged_loss(frame) for label, frame in steps.items()}
        metrics = {labels[i]: data.metrics(store, i, data.generation(runs, i)) for i in ids}
    except StoreError as exc:
        state.show_store_error(exc)
        return

    # One colour per run on every chart of the page: by its position among the compared runs.
    shown = [labels[i] for i in ids]
    colors = charts.run_colors(shown)
    log_y = st.toggle("Log scale for norms", value=True, key="compare_log")
    left, right = st.columns(2)
    _chart(
        left,
        charts.overlay_figure(
            steps, "total_norm", title="Global gradient norm (pre-clip)", log_y=log_y, colors=colors
        ),
        "cmp_norm",
        charts.missing_note(steps, "total_norm", shown),
    )
    _chart(
        right,
        charts.overlay_figure(losses, "loss", title="Training loss", colors=colors),
        "cmp_loss",
        charts.missing_note(losses, "loss", shown),
    )

    names = sorted(set().union(*[set(m["name"]) for m in metrics.values() if len(m)]))
    if names:
        preferred = [n for n in ("val_acc", "val_cer", "val_loss", "val_wer") if n in names]
        default = preferred[0] if preferred else names[0]
        metric = st.selectbox("Metric", names, index=names.index(default), key="compare_metric")
        per_run = {
            label: m[m["name"] == metric].rename(columns={"value": metric})
            for label, m in metrics.items()
            if len(m)
        }
        _chart(
            st,
            charts.overlay_figure(per_run, metric, title=metric, colors=colors),
            "cmp_metric",
            charts.missing_note(per_run, metric, shown),
        )

    st.subheader("Per-layer norms")
    layer_panel(store, ids, labels, steps, log_y, colors)
    st.subheader("Clipping")
    clip_panel(steps, shown, log_y, colors)

    st.subheader("Side by side")
    table = summary.runs_table(runs[runs["id"].isin(ids)])
    table = table.set_index("id").loc[ids].reset_index()
    cols = [
        c for c in ["id", "name", "status", "clip", "steps", "clip_rate", *data.FINAL_METRICS] if c in table
    ]
    st.dataframe(table[cols], hide_index=True, key="cmp_table", column_config=summary.column_config(table))
    if "gen_gap" not in table:
        st.caption("No `gen_gap` metric recorded: the generalisation gap appears once runs log it.")

    st.subheader("Configuration differences")
    configs = {labels[i]: summary.compared_config(r) for i in ids
               for r in runs[runs["id"] == i].to_dict("records")}  # fmt: skip
    diff = summary.config_diff(configs)
    if len(diff):
        st.dataframe(diff, key="cmp_diff")
    else:
        st.caption("These runs have identical configurations.")


LAYER = "compare_layer"
CLIP_WINDOW = 50  # logged steps over which the clip rate over time is taken


def layer_panel(
    store, ids: list[int], labels: dict[int, str], steps: dict, log_y: bool, colors: dict
) -> None:
    """One layer's gradient norm, one line per run (the Run page's reads: raw rows for small runs, the
    store's min/max blocks for large ones); runs without a layer of that name are named under the chart."""
    frames = {i: data.layers(store, i) for i in ids}
    names = list(dict.fromkeys(str(n) for i in ids for n in frames[i]["name"]))
    if not names:
        st.info("None of these runs recorded per-layer norms.")
        return
    everywhere = [n for n in names if all(n in set(frames[i]["name"]) for i in ids)]
    if st.session_state.get(LAYER) not in names:  # first render, or the picked layer left with its run
        st.session_state[LAYER] = (everywhere or names)[0]
    layer = st.selectbox("Layer", names, key=LAYER, help="Layers of every compared run, in model order.")
    series, lacking = {}, []
    for i in ids:
        frame = frames[i]
        match = frame.loc[frame["name"] == layer, "id"]
        if not len(match):
            lacking.append(labels[i])
            continue
        norms = data.layer_norms(
            store, i, frame, [int(match.iloc[0])], len(steps[labels[i]]), charts.MAX_POINTS
        )
        series[labels[i]] = charts.layer_line(norms)
    figure = charts.overlay_figure(series, "norm", title=f"Gradient norm of {layer}", log_y=log_y,
                                   colors=colors)  # fmt: skip
    notes = []
    if lacking:
        notes.append(
            f"No layer named {code_span(layer)} in: " + ", ".join(escape_markdown(x) for x in lacking) + "."
        )
    missing = charts.missing_note(series, "norm", list(series))
    if missing:
        notes.append(missing)
    _chart(st, figure, "cmp_layer", " ".join(notes) or None)


def clip_panel(steps: dict, shown: list[str], log_y: bool, colors: dict) -> None:
    """Each run's clip threshold in force and its share of clipped steps over time, from the steps rows
    already read for the global norm chart (no further read)."""
    thresholds = {
        label: frame.dropna(subset=["threshold"]) for label, frame in steps.items() if "threshold" in frame
    }
    thresholds = {label: frame for label, frame in thresholds.items() if len(frame)}
    rates = {label: data.clip_rate_over_time(frame, CLIP_WINDOW) for label, frame in steps.items()}
    left, right = st.columns(2)
    unset = [label for label in shown if label not in thresholds]
    note = (
        "No clip threshold recorded for "
        + ", ".join(escape_markdown(label) for label in unset)
        + " (clip none, or a strategy that records none)."
        if unset
        else None
    )
    _chart(left, charts.overlay_figure(thresholds, "threshold", title="Clip threshold in force", log_y=log_y,
                                       colors=colors), "cmp_threshold", note)  # fmt: skip
    _chart(
        right,
        charts.overlay_figure(
            rates,
            "clip_rate",
            title=f"Share of steps clipped (last {CLIP_WINDOW} logged steps)",
            colors=colors,
        ),
        "cmp_clip_rate",
        charts.missing_note(rates, "clip_rate", shown),
    )


PICK = "compare_pick"  # the multiselect's key: Streamlit drops it while another page shows
LAST_PICK = "compare_last_pick"  # what was picked, kept across pages (as the Run page keeps its run)
PICK_DB = "compare_pick_db"  # the database (data.db_key) the pick's widget state was made on
LIVE = "compare_live"
LIVE_CHOICE = "compare_live_choice"  # the user's own setting of the toggle; None: follow the runs


URL_RUNS = "runs"  # ?runs=2,3,4: the compared runs, in the page's address
URL_SEEN = "compare_url_seen"  # the ?runs= this page last wrote or followed


def pick_runs(runs: pd.DataFrame, labels: dict[int, str], db: str) -> list[int]:
    """The picked runs: a one-shot request from the Runs page, else the runs named in a new address
    (``?runs=2,3,4``: a link, or a reload, which starts a new session), else the current pick, else the
    last pick made on this page (navigating away and back, or the browser's Back), else the two newest runs.
    The address follows the pick, so it can be copied, bookmarked and reloaded. ``db``: the store's cache
    key (``data.db_key``)."""
    if st.session_state.get(PICK_DB) != db:
        # Another file at the path (replaced or rewritten): the same ids may now carry other labels, and
        # Streamlit's multiselect state fails to serialize a selection whose label changed twice
        # (TypeError). The widget's state is made afresh, keeping the ids that the new file has.
        kept = [i for i in st.session_state.pop(PICK, []) if i in labels]
        if PICK_DB in st.session_state:
            st.session_state[PICK] = kept
        st.session_state[PICK_DB] = db
    requested = [i for i in st.session_state.pop("compare_ids", []) if i in labels]
    linked, unknown = state.ids_from_url(URL_RUNS, URL_SEEN, labels)
    if requested:
        st.session_state[PICK] = requested
    elif linked:
        st.session_state[PICK] = linked
    elif PICK not in st.session_state:
        last = [i for i in st.session_state.get(LAST_PICK, []) if i in labels]
        st.session_state[PICK] = last if LAST_PICK in st.session_state else list(labels)[:2]
    if unknown:
        st.warning(
            f"The address asks for {state.unknown_ids_text(unknown)}, not in this database: "
            + ("showing the others it names." if linked else "showing the default pick instead."),
            icon=":material/link_off:",
        )
    picked = st.multiselect("Runs", list(labels), format_func=labels.get, key=PICK)
    st.session_state[LAST_PICK] = list(picked)
    state.ids_to_url(URL_RUNS, URL_SEEN, picked)
    return picked


def _live_chosen() -> None:
    st.session_state[LIVE_CHOICE] = bool(st.session_state[LIVE])


def live_toggle(runs: pd.DataFrame, ids: list[int]) -> bool:
    """On while any compared run is running, unless the user set the toggle: their setting then holds."""
    choice = st.session_state.get(LIVE_CHOICE)
    running = bool((runs[runs["id"].isin(ids)]["status"] == "running").any())
    # Set before the widget, every render: a toggle's value= is only read on its first render.
    st.session_state[LIVE] = running if choice is None else choice
    return st.toggle("Live updates", key=LIVE, on_change=_live_chosen,
                     help="Pause to zoom: a refresh resets zoom.")  # fmt: skip


def compare_page() -> None:
    store = state.get_store()
    runs = None if store is None else data.runs(store)
    if runs is None or not len(runs):
        if not state.explain_missing_directory():
            st.info("No run recorded yet: start one from the Runs page (demo) or the Launch page.")
            state.rerun_when_a_run_appears()
        return
    st.title("Compare runs")
    labels = data.run_labels(runs)
    picked = pick_runs(runs, labels, data.db_key(store))
    lineage = st.checkbox("Add parents and children (relaunches)", value=True, key="compare_lineage")
    ids = with_lineage(store, runs, picked) if lineage else list(picked)
    added = [labels[i] for i in ids if i not in picked]
    if added:
        st.caption("Added by lineage: " + ", ".join(escape_markdown(label) for label in added))
    if not ids:
        st.info("Pick at least one run.")
        return
    live = live_toggle(runs, ids)
    live_every = state.LIVE_INTERVAL_S if live else None
    st.fragment(compare_panels, run_every=live_every)(ids, labels, data.db_key(store))


compare_page()
