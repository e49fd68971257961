"""Runs: every run in the database, filter them, pick runs to open, compare or relaunch.

With no database (or no run in it yet) this page is the start page: what gradwatch is and a button that
launches a small demo run, so a new user sees live gradients within seconds.
"""

import importlib.util

import streamlit as st

from dashboard import state, summary
from dashboard.launch import trainer_spec
from dashboard.text import code_span

STATUSES = ("running", "finished", "failed", "stopped", "crashed")
# What the demo (the trainer) needs beyond the dashboard: pyproject.toml's `trainer` extra.
TRAINER_EXTRA = ("torchaudio", "soundfile", "espeakng_loader", "numpy", "tqdm")


def missing_trainer_extra() -> list[str]:
    """The trainer's packages this Python (the one the demo runs with) cannot import."""
    return [name for name in TRAINER_EXTRA if importlib.util.find_spec(name) is None]


def demo_spec():
    return trainer_spec(
        name="demo",
        db=state.db_path(),
        clip="norm:1.0",
        extra_args=["--preset", "demo"],
    )


def start_page() -> None:
    st.title("Welcome to gradwatch")
    if state.explain_missing_directory():
        return
    st.markdown(
        f"""
No run has been recorded in {code_span(state.db_path())} yet.

gradwatch records, at every optimizer step, the L2 norm of each layer's gradient, the global norm, every
clipping decision and any NaN/Inf, into this SQLite file. This dashboard shows them live, compares runs,
and relaunches any run with other clipping.

* **Try it now:** the button below trains the seed CNN on the built-in spoken-keyword corpus (generated
  offline with eSpeak NG) with `norm:1.0` clipping, about 15 seconds on two CPU cores.
* **Your own script:** wrap your loop with {code_span(f'GradTracker(model, db="{state.db_path().name}")')}
  and call `tracker.step()` right before `optimizer.step()`.
* **Another database:** `gradwatch-dashboard --db PATH` (or set `$GRADWATCH_DB`).
"""
    )
    spec = demo_spec()
    st.code(spec.display(), language="bash", wrap_lines=True)
    missing = missing_trainer_extra()
    if missing:  # (it would start, and fail on its first import)
        st.info(
            f"The demo run needs the trainer, and this environment lacks {', '.join(missing)}: install "
            "gradwatch with its trainer extra (`pip install 'gradwatch[trainer]'`), then reload this page."
        )
    jobs = [j for j in state.launcher().jobs if j.spec.name == "demo"]
    # on_click runs before the rerun, so the button below is already disabled once the demo runs.
    st.button(
        "Launch a demo run",
        type="primary",
        key="demo",
        on_click=_launch_demo,
        disabled=bool(missing) or any(j.state == "running" for j in jobs),
    )
    if st.session_state.get("demo_error"):
        st.error(f"Could not start the demo run: {st.session_state['demo_error']}")
    if jobs:
        _wait_for_demo()


def _launch_demo() -> None:
    (job,) = state.launcher().submit([demo_spec()])
    st.session_state["demo_error"] = job.error


@st.fragment(run_every=1.0)
def _wait_for_demo() -> None:
    # Polls until the demo's run appears in the database, then opens it on the Run page.
    jobs = [j for j in state.launcher().jobs if j.spec.name == "demo"]
    job = jobs[-1] if jobs else None
    if job is not None:
        st.info(
            f"Demo run: {job.state} (pid {job.pid}). The first steps appear after the corpus is generated."
        )
        from dashboard.jobs import log_tail

        tail = log_tail(job.log_path, max_lines=8)
        if tail:
            st.code(tail, language="text")
    runs = state.recorded_runs()
    if runs is not None and len(runs):
        if st.button("Open the demo run", key="open_demo"):
            st.session_state["open_run"] = int(runs["id"].iloc[0])
            st.switch_page("views/run.py")


def runs_page() -> None:
    runs = state.recorded_runs()
    if runs is None or not len(runs):
        start_page()
        return

    st.title("Runs")
    table = summary.runs_table(runs)
    c1, c2, c3 = st.columns([2, 2, 2])
    text = c1.text_input("Filter by name, clip or id", key="runs_filter", placeholder="e.g. norm or kws")
    statuses = c2.multiselect("Status", list(STATUSES), key="runs_status")
    tasks = sorted({t for t in table["task"].dropna()}) if "task" in table else []
    task = c3.multiselect("Task", tasks, key="runs_task") if tasks else []
    shown = summary.filter_runs(table, text=text, statuses=statuses, tasks=task)

    st.caption(
        f"{len(shown)} of {len(table)} runs. Select rows to compare them, or one row to open or relaunch it. "
        "`crashed`: the run was not closed and its process is gone (on this machine), or sends no "
        "heartbeat any more (on another machine)."
    )
    event = st.dataframe(
        shown,
        key="runs_table",
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        width="stretch",
        column_config=summary.column_config(shown),
    )
    selected = [int(shown["id"].iloc[i]) for i in event.selection.rows] if event else []
    st.session_state["selected_runs"] = selected

    b1, b2, b3, _ = st.columns([1, 1, 1, 3])
    # Not key="open_run": that is the session-state request the Run page reads, written just below (a
    # widget's own key cannot be written once the widget exists).
    if b1.button("Open run", disabled=len(selected) != 1, key="open_selected_run"):
        st.session_state["open_run"] = selected[0]
        st.switch_page("views/run.py")
    if b2.button("Compare selected", disabled=len(selected) < 1, key="compare_runs"):
        st.session_state["compare_ids"] = selected
        st.switch_page("views/compare.py")
    if b3.button("Relaunch…", disabled=len(selected) != 1, key="relaunch_run"):
        st.session_state["launch_from"] = selected[0]
        st.switch_page("views/launch.py")


runs_page()
