"""Run: one run's gradients, live while it trains.

Global norm with the threshold and clip events; per-layer norms; a layer x step heatmap; gradient flow at a
chosen step; loss and metrics; non-finite events; a suggested clipping threshold that prefills Launch (the
tabs' panels are ``dashboard.runtabs``). The status line, its Stop and Resume buttons and the panels
re-render every couple of seconds in a fragment (pause it to zoom: a re-render resets zoom) and read only
the rows after the last step they have seen.
"""

import math
import socket
import time

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import data, state
from dashboard.launch import resume_checkpoint, resume_spec
from dashboard.runtabs import (
    flow_panel,
    global_norm_panel,
    heatmap_panel,
    layers_panel,
    metrics_panel,
    nonfinite_panel,
    suggestion_panel,
)
from dashboard.text import code_span, escape_markdown
from tracker.store import StoreError

TAB_KEY = "run_tab"
RERUN_APP = "_run_rerun_app"  # set by a callback in the live fragment that changed state outside it


URL_RUN = "run"  # ?run=3: the run shown, in the page's address
URL_SEEN = "run_url_seen"  # the ?run= this page last wrote or followed


def pick_run(runs: pd.DataFrame) -> dict:
    labels = data.run_labels(runs)
    ids = list(labels)
    # One-shot request from another page ("Open run"), else a run named anew in the address (a link, a
    # reload), else keep the current pick, else the last run shown here, else the newest running.
    wanted = st.session_state.pop("open_run", None)
    linked, unknown = state.ids_from_url(URL_RUN, URL_SEEN, labels)
    if wanted in labels:
        st.session_state["run_pick"] = wanted
    elif linked:
        st.session_state["run_pick"] = linked[0]
    if st.session_state.get("run_pick") not in labels:
        # Widget state is dropped while another page shows: fall back to the last run shown here.
        running = runs[runs["status"] == "running"]
        fallback = int(running["id"].iloc[0]) if len(running) else ids[0]
        last = st.session_state.get("current_run")
        st.session_state["run_pick"] = last if last in labels else fallback
    if unknown and not linked:
        st.warning(
            f"The address asks for {state.unknown_ids_text(unknown)}, not in this database: showing "
            f"{escape_markdown(labels[st.session_state['run_pick']])} instead.",
            icon=":material/link_off:",
        )
    choice = st.selectbox("Run", ids, format_func=labels.get, key="run_pick")
    st.session_state["current_run"] = choice
    state.ids_to_url(URL_RUN, URL_SEEN, [choice])
    return runs[runs["id"] == choice].iloc[0].to_dict()


def header(run: dict) -> None:
    """What does not change while the run trains: its name and recorded configuration."""
    st.title(f"#{int(run['id'])} {escape_markdown(run['name'])}")
    with st.expander("Configuration and command"):
        st.json(data.config_of(run), expanded=False)
        st.caption(
            f"argv: {code_span(run.get('argv'))} · cwd: {code_span(run.get('cwd'))} · "
            f"python: {code_span(run.get('python'))}"
        )


def status_panel(run: dict, runs: pd.DataFrame, stale_after: float) -> None:
    """Status, lineage, Stop and Resume, and why the run ended: part of the live fragment, so a run that
    finishes while its page is open stops saying "running" and offering Stop. ``stale_after``: the store's
    seconds without a heartbeat after which a running run is late (``Store.stale_after``)."""
    parent = run.get("parent_id")
    bits = [f"status **{run['status']}**", f"clip {code_span(run.get('clip') or 'none')}"]
    if run.get("clip_source") == "env":
        bits.append("(set by `GRADWATCH_CLIP`)")
    if parent is not None and not pd.isna(parent):
        names = dict(zip(runs["id"], runs["name"], strict=True))
        bits.append(f"relaunch of #{int(parent)} {escape_markdown(names.get(int(parent), ''))}")
    resumed = run.get("resumed_from_step")
    if resumed is not None and not pd.isna(resumed):  # continued from a checkpoint (GradTracker(resume=...))
        bits.append(f"resumed from step {int(resumed)}")
    st.markdown(" · ".join(bits))
    late, here = heartbeat_age(run), run.get("host") == socket.gethostname()
    if run["status"] == "running" and here and late > stale_after:
        # Read as running all the same: its process is alive on this machine (the store's derive_status).
        st.warning(
            f"No heartbeat for {late:,.0f} s, yet its process is alive on this machine: the database is "
            "probably locked by another process (a `sqlite3` shell, a DB browser with an open transaction, a "
            "backup). Training goes on: the rows wait in the process's memory and are written once the lock "
            "is released (docs/tracker.md, on locks). Close that program and the page catches up.",
            icon=":material/lock_clock:",
        )
    run_id = int(run["id"])
    if state.can_stop(run) and st.button("Stop this run (SIGTERM)", key=f"stop_{run_id}"):
        _notify(run, "info", state.stop_recorded_run(run))
    checkpoint = resume_checkpoint(run)
    resuming = [
        j for j in state.launcher().jobs if j.spec.resumes == run_id and j.state in ("running", "queued")
    ]
    if checkpoint is not None and not resuming:
        st.button(
            "Resume from its checkpoint",
            key=f"resume_{run_id}",
            help=f"python -m trainer ... --checkpoint {checkpoint} --resume: this run goes on from where the "
            "checkpoint was saved (what it recorded after that is replaced)",
            on_click=_resume,
            args=(run, checkpoint),
        )
    _show_notice(run)
    if run["status"] == "crashed" and not here and run.get("host") is not None:
        # Another machine's process: only its heartbeat tells, and a held lock stops it too.
        st.warning(
            f"This run is marked running on {code_span(run['host'])} but has sent no heartbeat for "
            f"{late:,.0f} s: its process most likely ended without closing the run (killed, out of memory, "
            "machine restarted), or the database has been locked by another process that long (the run then "
            "reads as running again once the lock is released). The data up to the last heartbeat is shown."
        )
    elif run["status"] == "crashed":
        st.warning(
            "This run is marked running, but its process on this machine is gone: it ended without closing "
            "the run (killed, out of memory, machine restarted). The data up to the last heartbeat is shown."
        )
    if run["status"] == "failed" and run.get("error"):
        st.error(f"The run failed: {escape_markdown(run['error'])}")


def heartbeat_age(run: dict) -> float:
    """Seconds since the run's last heartbeat (``runs.heartbeat_at``); 0 when it has none."""
    beat = run.get("heartbeat_at")
    return 0.0 if beat is None or pd.isna(beat) else max(0.0, time.time() - float(beat))


def _notice_key(run_id: int) -> str:
    return f"run_notice_{run_id}"


def _notify(run: dict, kind: str, text: str, job=None) -> None:
    """Keep a message about an action on ``run`` until its status changes (the status then says it all)."""
    st.session_state[_notice_key(int(run["id"]))] = dict(kind=kind, text=text, status=run["status"], job=job)


def _show_notice(run: dict) -> None:
    key = _notice_key(int(run["id"]))
    notice = st.session_state.get(key)
    if notice is None:
        return
    if notice["status"] != run["status"]:
        del st.session_state[key]
        return
    kind, text, job = notice["kind"], notice["text"], notice["job"]
    if job is not None:
        text += f" Job: {job.state}."
        if job.failed:  # a non-zero exit, not asked for: the run did not go on
            kind = "error"
    (st.error if kind == "error" else st.info)(text)


def _resume(run: dict, checkpoint: str) -> None:
    """Resume button callback: start the trainer on the checkpoint, then follow the run live (a callback may
    set the live toggle, which lives outside the fragment; the fragment then reruns the whole page)."""
    try:
        spec = resume_spec(run, db=state.db_path(), config_dir=state.log_dir())
    except ValueError as exc:
        _notify(run, "error", escape_markdown(exc))
        return
    [job] = state.launcher().submit([spec])
    if job.error:
        _notify(run, "error", f"Could not start: {escape_markdown(job.error)}")
        return
    _notify(
        run,
        "info",
        f"Resuming run #{int(run['id'])} from {code_span(checkpoint)} (pid {job.pid}; "
        f"log: {code_span(job.log_path)}).",
        job,
    )
    st.session_state[_live_key(int(run["id"]))] = True
    st.session_state[RERUN_APP] = True


def _live_key(run_id: int) -> str:
    return f"live_{run_id}"


def _number_text(value) -> str:
    """A metric's value: 4 significant digits, ``NaN``/``Inf`` spelt out (SQLite stores NaN as NULL)."""
    value = float("nan") if value is None else float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


def live_panels(run_id: int, source: str) -> None:
    """The live part of the page; ``source``: the ``data.db_key`` of the store the page was drawn from."""
    if st.session_state.pop(RERUN_APP, False):
        st.rerun()  # the whole page: a callback changed the live toggle, which is outside this fragment
    try:
        store = state.get_store()
        runs = None if store is None else data.runs(store)
        if runs is None or data.db_key(store) != source or run_id not in set(runs["id"]):
            st.rerun()  # the file is gone, replaced or rewritten: the whole page again, as a reload shows
        run = runs[runs["id"] == run_id].iloc[0].to_dict()
        gen = data.generation(runs, run_id)  # changes when the run is continued from a checkpoint
        steps = data.steps(store, run_id, gen)
        metrics = data.metrics(store, run_id, gen)
        layers = data.layers(store, run_id)
    except StoreError as exc:
        state.show_store_error(exc)
        return
    status_panel(run, runs, store.stale_after)
    # The store's clip rate counts every clip decision, also those of steps not logged (every > 1).
    clipped = run.get("clip_rate")
    clipped = float("nan") if clipped is None or pd.isna(clipped) else float(clipped)
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Status", run["status"])
    m2.metric("Steps recorded", f"{len(steps):,}")
    # The last logged loss, NaN included (the last finite one would hide a run that has diverged); a step
    # without a loss (a script that passes one every few steps) is skipped: data.logged_loss keeps a NULL
    # loss only at a step with NaN/Inf gradients, where it was a NaN. "—": no loss recorded.
    logged = data.logged_loss(steps)
    m3.metric("Last loss", _number_text(logged["loss"].iloc[-1]) if len(logged) else "—")
    m4.metric("Clip rate", "—" if np.isnan(clipped) else f"{clipped:.1%}")
    m5.metric("Last global norm", _number_text(steps["total_norm"].iloc[-1]) if len(steps) else "—")
    if not len(steps):
        if run["status"] == "running":
            st.info("Waiting for the first recorded step…")
        else:
            st.info(f"This run recorded no step: it ended ({run['status']}) before its first logged step.")
        return

    panels = {
        "Global norm": lambda: global_norm_panel(steps),
        "Layers": lambda: layers_panel(store, run_id, layers, len(steps)),
        "Heatmap": lambda: heatmap_panel(store, run_id, layers),
        "Gradient flow": lambda: flow_panel(store, run_id, layers, steps),
        "Loss & metrics": lambda: metrics_panel(steps, metrics),
        "Non-finite": lambda: nonfinite_panel(store, run_id),
        "Suggested threshold": lambda: suggestion_panel(run, steps),
    }
    # Lazy tabs: only the open one runs and is sent to the browser, so a live refresh of a large run
    # rebuilds one figure instead of seven.
    tabs = st.tabs(list(panels), key=TAB_KEY, on_change="rerun")
    for tab, panel in zip(tabs, panels.values(), strict=True):
        if tab.open:
            with tab:
                panel()


def run_page() -> None:
    store = state.get_store()
    runs = None if store is None else data.runs(store)
    if runs is None or not len(runs):
        if not state.explain_missing_directory():
            st.info("No run recorded yet: start one from the Runs page (demo) or the Launch page.")
            state.rerun_when_a_run_appears()
        return
    run = pick_run(runs)
    header(run)
    key = _live_key(int(run["id"]))
    # Live by default for a running run; set once per run, so a refresh keeps the user's choice, and a
    # Resume turns it on (a toggle given value= as well would warn when a callback sets it).
    st.session_state.setdefault(key, run["status"] == "running")
    live = st.toggle("Live updates", key=key, help="Pause to zoom: a refresh resets zoom.")
    interval = state.LIVE_INTERVAL_S if live else None
    st.fragment(live_panels, run_every=interval)(int(run["id"]), data.db_key(store))


run_page()
