"""What the pages read, through ``tracker.store`` only (no SQL here), shaped for the charts.

Live series are read incrementally: the frames seen so far are kept in session state with the last step
read, and each refresh asks the store only for rows after it. Large per-layer series come from the store's
precomputed min/max blocks (``grad_norm_envelope``), so a 10M-row run never gets scanned.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

__all__ = [
    "FINAL_METRICS",
    "clip_rate_over_time",
    "config_of",
    "db_key",
    "flow",
    "heatmap",
    "heatmap_marks",
    "incremental",
    "layer_norms",
    "layers",
    "logged_loss",
    "metrics",
    "nonfinite",
    "run_labels",
    "runs",
    "steps",
]

# Metrics shown as "final" columns on the Runs and Compare pages, when a run has them (design.md §5).
FINAL_METRICS = (
    "val_acc", "test_acc", "val_cer", "test_cer", "val_wer", "test_wer", "val_loss", "train_loss", "gen_gap",
    "gen_gap_loss",
)  # fmt: skip

# Raw per-layer rows are read when a selection has at most this many rows; above, the min/max blocks.
RAW_NORM_ROWS = 50_000


def config_of(run) -> dict:
    """The recorded config as a dict (``store.runs()`` parses it; a JSON string is accepted too)."""
    config = run.get("config") if hasattr(run, "get") else None
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            return {}
    return dict(config or {})


@st.cache_data(ttl=2, show_spinner=False)
def _runs(db: str, _store) -> pd.DataFrame:
    return _store.runs()


def runs(store) -> pd.DataFrame:
    """Every run with its derived status (``crashed`` from a stale heartbeat), newest first."""
    frame = _runs(db_key(store), store).copy()
    if len(frame) and "created_at" in frame:
        frame = frame.sort_values("created_at", ascending=False, kind="stable")
    return frame.reset_index(drop=True)


def run_labels(frame: pd.DataFrame) -> dict[int, str]:
    """``{run id: "#id name"}`` for select boxes."""
    return {int(r.id): f"#{int(r.id)} {r.name}" for r in frame.itertuples()}


@st.cache_data(ttl=60, show_spinner=False)
def _layers(db: str, run_id: int, _store) -> pd.DataFrame:
    return _store.layers(run_id)


def layers(store, run_id: int) -> pd.DataFrame:
    """The run's layers (``id``, ``name``, ...) in model order."""
    return _layers(db_key(store), int(run_id), store).sort_values("id").reset_index(drop=True)


def incremental(
    kind: str, source: str, run_id: int, fetch, *, key=("step",), generation=None
) -> pd.DataFrame:
    """All rows of one run's series, reading only rows after the last step seen by this session.

    ``fetch(after_step)`` returns the new rows. The last step is fetched again each time (and duplicates
    dropped on ``key``) because a metric can be logged at a step after that step's first rows were read.
    ``source``: the store's :func:`db_key`; when it changes, the file was replaced or rewritten, and
    everything is read again from the new one. ``generation``: the run's ``resumed_at``; when it changes,
    the run was continued from a checkpoint and its rows from that step on were replaced, so everything is
    read again too.
    """
    cache = st.session_state.setdefault("_incremental", {})
    slot = cache.get((kind, run_id))
    if slot is None or slot[2:] != (generation, source):
        frame = fetch(-1)
    else:
        old, last = slot[:2]
        new = fetch(last - 1)
        frame = old if not len(new) else pd.concat([old, new], ignore_index=True)
        if len(new):
            frame = frame.drop_duplicates(subset=list(key), keep="last").reset_index(drop=True)
    last = int(frame["step"].max()) if len(frame) else -1
    cache[(kind, run_id)] = (frame, last, generation, source)
    return frame


def generation(runs: pd.DataFrame, run_id: int):
    """The run's ``resumed_at`` in a ``runs()`` frame (None: never resumed, or a file without the column)."""
    if "resumed_at" not in runs:
        return None
    value = runs.loc[runs["id"] == run_id, "resumed_at"]
    return None if value.empty or pd.isna(value.iloc[0]) else float(value.iloc[0])


def _numbers(frame: pd.DataFrame, text=()) -> pd.DataFrame:
    """``frame`` with its columns, except ``text``, as numbers: a read whose rows all hold NULL (a NaN norm or
    loss) gives an object column of None, which would turn the whole series into objects once appended."""
    objects = [c for c in frame.columns if frame[c].dtype == object and c not in text]
    return frame.astype({c: float for c in objects}) if objects else frame


def steps(store, run_id: int, generation=None) -> pd.DataFrame:
    """Per-step rows: step, total_norm (pre-clip), total_norm_after, loss, clipped, threshold, ... all
    numbers, NaN for NULL (a NaN norm or loss). ``generation``: see :func:`incremental`."""
    return incremental(
        "steps",
        db_key(store),
        run_id,
        lambda after: _numbers(store.steps(run_id, after_step=after)),
        generation=generation,
    )


def logged_loss(steps: pd.DataFrame) -> pd.DataFrame:
    """The steps that have a loss: SQLite stores a NaN loss as NULL, like a loss never passed, so a NULL
    loss counts as NaN only at a step whose gradients were non-finite (a NaN loss gives NaN gradients);
    elsewhere the step had no loss."""
    if "loss" not in steps:
        return steps.iloc[0:0]
    nonfinite = steps["nonfinite_count"].fillna(0) > 0 if "nonfinite_count" in steps else False
    return steps[steps["loss"].notna() | nonfinite]


def metrics(store, run_id: int, generation=None) -> pd.DataFrame:
    """Long format: step, name, value (a number, NaN for NULL)."""
    return incremental(
        "metrics",
        db_key(store),
        run_id,
        lambda after: _numbers(store.metrics([run_id], after_step=after), text=("name",)),
        key=("step", "name"),
        generation=generation,
    )


def nonfinite(store, run_id: int) -> pd.DataFrame:
    """Layers with NaN/Inf gradients: step, layer_id, name, has_nan, has_inf (first one first)."""
    return store.nonfinite(run_id)


def layer_norms(
    store, run_id: int, layer_frame: pd.DataFrame, layer_ids: list[int], n_steps: int, max_points: int
) -> pd.DataFrame:
    """Per-layer norms for ``layer_ids`` with a ``name`` column: raw rows (``norm``) for small selections,
    else the exact min/max envelope from the store's blocks (``norm_min``/``norm_max``)."""
    if not layer_ids or n_steps == 0:
        return pd.DataFrame(columns=["name", "step", "norm"])
    names = dict(zip(layer_frame["id"], layer_frame["name"], strict=True))
    if n_steps * len(layer_ids) <= RAW_NORM_ROWS:
        frame = store.grad_norms(run_id, layer_ids)
    else:
        frame = store.grad_norm_envelope(run_id, layer_ids, None, None, max_points)
    return frame.assign(name=frame["layer_id"].map(names))


@st.cache_data(ttl=2, show_spinner=False, max_entries=64)
def _heatmap(db: str, run_id: int, max_columns: int, _store) -> pd.DataFrame:
    return _store.heatmap(run_id, None, None, max_columns)


def heatmap(store, run_id: int, layer_frame: pd.DataFrame, max_columns: int) -> pd.DataFrame:
    """Long format ``layer_id``, ``name``, ``step`` (bucket start), ``log10_norm`` (max over the bucket).

    Cached for 2 s: the layer picker and the heatmap tab of one refresh share one read.
    """
    frame = _heatmap(db_key(store), int(run_id), int(max_columns), store)
    names = dict(zip(layer_frame["id"], layer_frame["name"], strict=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        log10 = np.log10(frame["norm_max"].astype(float))
    return frame.assign(name=frame["layer_id"].map(names), log10_norm=log10)


@st.cache_data(ttl=2, show_spinner=False, max_entries=64)
def _nonfinite_cells(db: str, run_id: int, _store) -> pd.DataFrame:
    events = _store.nonfinite(run_id)
    return events.drop_duplicates(subset=["layer_id", "step"])[["layer_id", "step", "has_nan", "has_inf"]]


def heatmap_marks(store, run_id: int, heat: pd.DataFrame) -> pd.DataFrame:
    """The heatmap cells that held a NaN or Inf gradient: ``name``, ``step`` (bucket start, as in ``heat``),
    ``kind`` (``NaN``, or ``Inf`` when the bucket had Inf but no NaN), from the store's non-finite events
    (a bucket's maximum leaves NaN out, so the heatmap alone cannot show them)."""
    empty = pd.DataFrame({"name": pd.Series(dtype=object), "step": pd.Series(dtype=int), "kind": []})
    if not len(heat):
        return empty
    events = _nonfinite_cells(db_key(store), int(run_id), store)
    events = events[events["layer_id"].isin(set(heat["layer_id"]))]
    if not len(events):
        return empty
    starts = np.sort(heat["step"].unique())
    bucket = starts[np.clip(np.searchsorted(starts, events["step"].to_numpy(), side="right") - 1, 0, None)]
    names = dict(zip(heat["layer_id"], heat["name"], strict=True))
    marks = pd.DataFrame(
        {
            "name": events["layer_id"].map(names).to_numpy(),
            "step": bucket,
            "nan": events["has_nan"].astype(bool).to_numpy(),
        }
    )
    # NaN wins in a bucket that had both: it is the one that poisons training.
    marks = marks.groupby(["name", "step"], sort=False, as_index=False)["nan"].any()
    return marks.assign(kind=np.where(marks.pop("nan"), "NaN", "Inf"))


def db_key(store) -> str:
    """Cache key of a store: its file path, and which of the Stores opened on that path it is
    (``state.get_store`` numbers them: a replaced or rewritten file gets a new one), so that rows read from
    one file are never served for another at the same path. A Store opened elsewhere: its path."""
    return getattr(store, "cache_key", None) or str(store.path)


def flow(store, run_id: int, step: int) -> pd.DataFrame:
    """Per-layer norms at ``step`` (or the last logged step before it), in model order: layer_id, name,
    norm, has_nan, has_inf; the step actually shown is in ``attrs["step"]``."""
    return store.step_norms(run_id, step)


def clip_rate_over_time(steps: pd.DataFrame, window: int) -> pd.DataFrame:
    """``step``, ``clip_rate``: the share of the last ``window`` logged steps (fewer at the start) that were
    clipped, from the steps' ``clipped`` column (empty when the run recorded no step)."""
    if not len(steps) or "clipped" not in steps:
        return pd.DataFrame({"step": pd.Series(dtype=int), "clip_rate": pd.Series(dtype=float)})
    clipped = steps["clipped"].fillna(0).astype(float)
    rate = clipped.rolling(window, min_periods=1).mean()
    return pd.DataFrame({"step": steps["step"].to_numpy(), "clip_rate": rate.to_numpy()})
