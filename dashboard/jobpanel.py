"""The Launch page's list of jobs: each job launched from this dashboard with its state, Stop and log tail,
and the other runs running on this machine, stoppable too.
"""

import streamlit as st

from dashboard import data, state
from dashboard.jobs import log_tail
from dashboard.stopping import STOP_EXIT_CODES
from dashboard.text import code_span, escape_markdown

__all__ = ["job_card", "jobs_panel", "running_runs_panel"]

JOB_NOTICES = "launch_job_notices"  # {job number: (message, the job's state when it was said)}
RUN_NOTICES = "launch_run_notices"  # {run id: what its Stop did}


def _stop_job(job, number: int) -> None:
    """Stop button callback: the same Stop as the Run page's when the job's run is known (state.stop_job).
    What happened is kept for the job's card until the job's state changes (a refresh every 2 s would
    otherwise wipe it at once)."""
    text = state.stop_job(job)
    st.session_state.setdefault(JOB_NOTICES, {})[number] = (text, job.state)


def _job_notice(number: int, job) -> str | None:
    notices = st.session_state.get(JOB_NOTICES, {})
    if number not in notices:
        return None
    text, said_when = notices[number]
    if job.state != said_when:  # the state line now says it: running → stopped, queued → cancelled
        del notices[number]
        return None
    return text


def _last_line(job, log: str) -> str:
    """The log's last non-blank line, usually the error (not the command line the log starts with)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1] if lines and lines[-1] != f"$ {job.spec.display()}" else ""


def _failure(job, log: str) -> str:
    code = job.returncode
    why = f"Exited with code {code}"
    if code in STOP_EXIT_CODES:  # a signal this dashboard did not send (a kill from a shell, a shutdown)
        why += " (stopped by a signal not sent from this dashboard)"
    last = _last_line(job, log)
    return why + (f": {escape_markdown(last)}" if last else "") + " — the end of its log is below."


def job_card(job, number: int) -> None:
    """One launched job: its state, Stop/Cancel, what the last Stop did, why it failed, its log tail."""
    c1, c2 = st.columns([5, 1])
    pid = f" · pid {job.pid}" if job.pid else ""
    c1.markdown(f"**{escape_markdown(job.spec.name)}** — {job.state}{pid}")
    if len(job.spec.lineage) > 1:  # a relaunch of a process that recorded several runs
        runs = ", ".join(f"{code_span(name)} (child of #{parent})" for parent, name in job.spec.lineage)
        c1.caption(f"One process relaunching {len(job.spec.lineage)} runs: {runs}")
    if job.state in ("running", "queued"):
        label = "Stop (SIGTERM)" if job.state == "running" else "Cancel"
        # A callback runs before the rerun, so this very render already shows the new state.
        c2.button(label, key=f"stop_job_{number}", on_click=_stop_job, args=(job, number))
    notice = _job_notice(number, job)
    if notice:
        st.info(notice)
    if job.error:
        st.error(escape_markdown(job.error))
    tail = log_tail(job.log_path, max_lines=15)
    if job.state == "stopped":
        st.caption(f"Stopped from this dashboard (SIGTERM); exit code {job.returncode}.")
    elif job.failed:  # the run did not go on: say why in a sentence that wraps, then the log
        st.error(_failure(job, tail))
    if tail:
        expanded = job.state == "running" or job.failed
        with st.expander(f"Log: {code_span(job.log_path)}", expanded=expanded):
            st.code(tail, language="text", wrap_lines=True)  # a long error line wraps instead of scrolling


def jobs_panel() -> None:
    launcher = state.launcher()
    if launcher.jobs:
        st.subheader("Launched from this dashboard")
    # Numbered by launch order (the list only grows), so a job keeps its widget keys and notice.
    for number, job in reversed(list(enumerate(launcher.jobs))):
        with st.container(border=True):
            job_card(job, number)
    running_runs_panel(launcher.running_pids())


def running_runs_panel(own_pids: set[int]) -> None:
    """Runs the database says are running on this machine (started anywhere): stoppable with SIGTERM."""
    store = state.get_store()
    if store is None:
        return
    runs = data.runs(store)
    running = [r for r in runs.to_dict("records") if state.can_stop(r) and int(r["pid"]) not in own_pids]
    notices = st.session_state.setdefault(RUN_NOTICES, {})
    for run_id in set(notices) - {int(row["id"]) for row in running}:
        del notices[run_id]  # kept while the run is listed (running); a resumed run starts afresh
    if not running:
        return
    st.subheader("Other runs running on this machine")
    for row in running:
        run_id = int(row["id"])
        c1, c2 = st.columns([5, 1])
        c1.markdown(f"#{run_id} **{escape_markdown(row['name'])}** · pid {int(row['pid'])}")
        c2.button("Stop (SIGTERM)", key=f"stop_run_{run_id}", on_click=_stop_run, args=(row,))
        if run_id in notices:
            st.info(notices[run_id])


def _stop_run(row: dict) -> None:
    st.session_state.setdefault(RUN_NOTICES, {})[int(row["id"])] = state.stop_recorded_run(row)
