"""One row per run for the Runs and Compare pages: status, clip, steps, clip rate, final metrics, parent.

Pure functions of the store's ``runs()`` frame (which already carries per-run summaries and final metrics).
"""

from __future__ import annotations

import json
import shlex

import pandas as pd
import streamlit as st

from dashboard.data import FINAL_METRICS, config_of

__all__ = ["CLIP_IN_FORCE", "column_config", "compared_config", "config_diff", "filter_runs", "runs_table"]


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The Runs page table from ``store.runs()``: one row per run, in the order given."""
    table = pd.DataFrame(
        {
            "id": runs["id"].astype(int),
            "name": runs["name"],
            "status": runs["status"],
            "task": [config_of(r).get("task") for r in runs.to_dict("records")],
            "model": [config_of(r).get("model") for r in runs.to_dict("records")],
            "clip": runs["clip"],
            "steps": runs["n_steps"].astype("Int64"),
            "clip_rate": runs["clip_rate"].astype(float),
            "parent": runs["parent_id"].astype("Int64"),
            "created": pd.to_datetime(runs["created_at"], unit="s", utc=True),
            "duration_s": runs["duration_s"].astype(float),
        }
    )
    for name in FINAL_METRICS:
        if f"final_{name}" in runs:
            table[name] = runs[f"final_{name}"].to_numpy()
    return table


def filter_runs(table: pd.DataFrame, *, text: str = "", statuses=(), tasks=()) -> pd.DataFrame:
    """Rows whose name, clip or id contains ``text`` (case-insensitive), with the given statuses/tasks."""
    mask = pd.Series(True, index=table.index)
    text = (text or "").strip().lower()
    if text:
        haystack = (
            table["name"].astype(str) + " " + table["clip"].astype(str) + " #" + table["id"].astype(str)
        ).str.lower()
        mask &= haystack.str.contains(text, regex=False)
    if statuses:
        mask &= table["status"].isin(list(statuses))
    if tasks:
        mask &= table["task"].isin(list(tasks))
    return table[mask].reset_index(drop=True)


def column_config(table: pd.DataFrame) -> dict:
    cfg = {
        "id": st.column_config.NumberColumn("id", format="%d", width="small"),
        "clip_rate": st.column_config.ProgressColumn(
            "clip rate", min_value=0.0, max_value=1.0, format="percent"
        ),
        "parent": st.column_config.NumberColumn("parent", format="%d", width="small"),
        "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "duration_s": st.column_config.NumberColumn("duration", format="%.0f s"),
    }
    for name in FINAL_METRICS:
        if name in table:
            cfg[name] = st.column_config.NumberColumn(name, format="%.4g")
    return cfg


# Keys that name a run rather than configure it (they always differ): left out of the diff.
IDENTITY_KEYS = frozenset({"run", "parent_run", "config", "quiet"})


def config_diff(configs: dict[str, dict]) -> pd.DataFrame:
    """Keys whose values differ between runs (rows) × runs (columns); keys equal everywhere are left out."""
    # In order of first appearance: the clip in force first, then the script's keys as it wrote them.
    keys = [k for k in dict.fromkeys(k for c in configs.values() for k in c) if k not in IDENTITY_KEYS]
    missing = object()
    rows = {}
    for key in keys:
        values = [c.get(key, missing) for c in configs.values()]
        encoded = {
            json.dumps(v, sort_keys=True, default=str) if v is not missing else "<missing>" for v in values
        }
        if len(encoded) > 1:
            rows[key] = ["—" if v is missing else ("" if v is None else str(v)) for v in values]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(configs)) if rows else pd.DataFrame()


# Rows of the Compare page's configuration diff that are not keys of the script's own config.
CLIP_IN_FORCE = "clip in force (runs.clip)"
CLIP_SOURCE = "clip set by"
SCRIPT_CLIP = "clip (the script's config)"
# The tracker's notes (runs.config["_gradwatch"], docs/schema.md), each a row of its own.
NOTE_ROWS = {
    "requested_clip": "clip the script asked for (before GRADWATCH_CLIP)",
    "tied": "tied weights (alias → recorded name)",
    "orig_argv": "command as typed (after python)",
}


def compared_config(run: dict) -> dict:
    """What the Compare page diffs for one run: the clip actually in force (``runs.clip``) and where it came
    from, the script's own config keys, and the tracker's notes as rows of their own.

    The script's ``config["clip"]`` is what it asked for, which ``GRADWATCH_CLIP`` may have overridden: it
    is shown under its own name, never in place of the clip in force, and only where it differs from it."""
    config = config_of(run)
    notes = config.pop("_gradwatch", None)
    row = {CLIP_IN_FORCE: run.get("clip") or "none", CLIP_SOURCE: run.get("clip_source")}
    script_clip = config.pop("clip", None)
    if script_clip is not None and script_clip != row[CLIP_IN_FORCE]:
        row[SCRIPT_CLIP] = script_clip
    row.update(config)
    for key, value in (notes or {}).items() if isinstance(notes, dict) else []:
        if key == "tied" and isinstance(value, dict):
            value = ", ".join(f"{a} → {b}" for a, b in sorted(value.items()))
        elif key == "orig_argv" and isinstance(value, list):
            value = shlex.join(map(str, value))
        row[NOTE_ROWS.get(key, f"tracker note: {key}")] = value
    return row
