"""Launch: relaunch a recorded run with other clipping (and other trainer options), or a sweep of clip
settings with a concurrency limit; watch the logs; stop runs with SIGTERM.

Every clip spec is validated by the tracker's own parser, and the trainer options by the trainer's rules
(``dashboard/options.py``), before anything starts; the exact command is shown first, and is the one the
button runs. Processes are started with argument lists (never a shell) and log to files next to the
database.
"""

import math
import time

import pandas as pd
import streamlit as st

from dashboard import data, state
from dashboard.clipform import STRATEGIES, build_spec, check_clip, form_values, number_text, read_number
from dashboard.launch import (
    STOP_EXIT_CODES,
    is_trainer_run,
    log_tail,
    parse_sweep,
    relaunch_spec,
    tracker_notes,
)
from dashboard.options import MODEL_OPTIONS, OPTIONS
from dashboard.options import option_errors as _option_errors
from dashboard.text import code_span, escape_markdown
from tracker.clipping import validate_clip

KEPT = "launch_kept"  # {widget key: its last value}; not a widget's key, so Streamlit keeps it (see _widget)
CLIP_KEYS = "clip_"  # the clip form's widget keys start with this
PREFILLED_FOR = "launch_prefilled_for"  # the source run the clip form was last filled from


def _widget(make, label: str, key: str, default=None, **kwargs):
    """Draw a form widget that keeps its value when it is not drawn for a while.

    Streamlit drops a widget's value from the session while the widget is not drawn (on another page: the
    sidebar, the browser's Back; under another strategy; in the other clip mode), or keeps an older value
    set before it was drawn. So the value is kept in ``KEPT`` (no widget's key), updated by the widget's
    change callback, which runs before the rerun, and given back to the widget on every run: the source run
    and a typed spec survive (otherwise the source fell back to the newest run, and a click relaunched the
    wrong one)."""
    kept = st.session_state.setdefault(KEPT, {})
    if key in kept:
        st.session_state[key] = kept[key]
    elif key not in st.session_state and default is not None:
        st.session_state[key] = default
    value = make(label, key=key, on_change=_keep, args=(key,), **kwargs)
    kept[key] = value
    return value


def _keep(key: str) -> None:
    st.session_state.setdefault(KEPT, {})[key] = st.session_state[key]


def _set(key: str, value) -> None:
    """Set a form widget's value (before it is drawn), kept as :func:`_widget` keeps it."""
    st.session_state[key] = value
    st.session_state.setdefault(KEPT, {})[key] = value


def _clear_clip_form() -> None:
    kept = st.session_state.setdefault(KEPT, {})
    for key in [k for k in list(st.session_state) if str(k).startswith(CLIP_KEYS)]:
        del st.session_state[key]
    for key in [k for k in kept if k.startswith(CLIP_KEYS)]:
        del kept[key]


def _consume_prefill(runs: pd.DataFrame) -> None:
    """Apply one-shot requests from other pages (Relaunch button, suggested threshold)."""
    source = st.session_state.pop("launch_from", None)
    if source is not None and source in set(runs["id"]):
        _set("launch_source", int(source))
    clip = st.session_state.pop("launch_clip", None)
    if clip is not None:
        _clear_clip_form()
        st.session_state[PREFILLED_FOR] = st.session_state.get("launch_source")
        _set("clip_mode", "Raw spec")
        _set("clip_raw", clip)


def _prefill_clip(run: dict) -> None:
    """Start the clip form from the source run's recorded clipping, once per source run: what the user then
    types is kept (:func:`_widget`) until another source run is picked."""
    if st.session_state.get(PREFILLED_FOR) == run["id"]:
        return
    _clear_clip_form()  # another run's typed values must not show under this one
    st.session_state[PREFILLED_FOR] = run["id"]
    recorded = run.get("clip") or "none"
    _set("clip_raw", recorded)
    values = form_values(recorded) if validate_clip(recorded) is None else None
    if values is None:
        _set("clip_mode", "Raw spec")
        return
    _set("clip_mode", "Strategy")
    _set("clip_strategy", values["strategy"])
    for name, value in values["params"].items():
        _set(f"clip_{values['strategy']}_{name}", value if isinstance(value, str) else number_text(value))
    _set("clip_noise", values["noise_eta"] is not None)
    if values["noise_eta"] is not None:
        _set("clip_noise_eta", number_text(values["noise_eta"]))
        _set("clip_noise_gamma", number_text(values["noise_gamma"]))


def _number(col, label: str, key: str, default: float, problems: list[str]) -> float | None:
    """A number field of the clip form. A text field, not ``st.number_input``: a browser turns 1e400 in a
    number field into 0, which the tracker would refuse as "got 0.0"; as text it reaches
    ``read_number`` as typed, which names it out of range."""
    value, problem = read_number(label, _widget(col.text_input, label, key, number_text(default)))
    if problem:
        problems.append(problem)
    return value


def clip_input(run: dict, names=(), aliases=None) -> tuple[str | None, str | None]:
    """The clip spec from the form and the tracker's error message for it (None when valid). ``names`` and
    ``aliases``: the source run's recorded parameter names and tied aliases, checked as the tracker checks
    a model (an AGC ``exclude=`` matching no parameter is refused here, not after the job has started)."""
    _prefill_clip(run)
    mode = _widget(st.radio, "Clipping", "clip_mode", "Strategy", options=["Strategy", "Raw spec"],
                   horizontal=True)  # fmt: skip
    problems: list[str] = []
    if mode == "Raw spec":
        spec = _widget(st.text_input, "Clip spec", "clip_raw", "", help=_help())
    else:
        strategy = _widget(st.selectbox, "Strategy", "clip_strategy", "norm", options=list(STRATEGIES),
                           format_func=_describe)  # fmt: skip
        params = {}
        cols = st.columns(max(1, len(STRATEGIES[strategy]["params"])))
        for col, (name, (label, default)) in zip(cols, STRATEGIES[strategy]["params"].items(), strict=False):
            key = f"clip_{strategy}_{name}"
            if isinstance(default, str):
                params[name] = _widget(col.text_input, label, key, default)
            else:
                # No lower bound: a negative threshold must reach the tracker's validation, explained.
                params[name] = _number(col, label, key, default, problems)
        noise = _widget(
            st.checkbox, "Add annealed gradient noise (Neelakantan et al. 2015)", "clip_noise", False
        )
        eta = gamma = None
        if noise:
            n1, n2 = st.columns(2)
            eta = _number(n1, "eta", "clip_noise_eta", 0.01, problems)
            gamma = _number(n2, "gamma", "clip_noise_gamma", 0.55, problems)
        if problems:
            error = "\n\n".join(problems)
            st.error(error, icon=":material/warning:")
            return None, error
        spec = build_spec(strategy, params, noise_eta=eta, noise_gamma=gamma)
    canonical, error = check_clip(spec, names, aliases)
    if error:
        st.error(error, icon=":material/warning:")
        return spec, error
    st.caption(f"Valid: `{canonical}`")
    return canonical, None


def _describe(name: str) -> str:
    return f"{name} — {STRATEGIES[name]['about']}"


def _help() -> str:
    from tracker.clipping import CLIP_SPEC_HELP

    return CLIP_SPEC_HELP


def option_inputs(config: dict, prefix: str) -> dict:
    """Widgets for the trainer options, prefilled from the recorded config; returns only changed values
    (``max_steps: None`` when 0 removes a recorded limit)."""
    changed = {}
    cols = st.columns(4)
    for i, (dest, (label, kind)) in enumerate(OPTIONS.items()):
        col = cols[i % 4]
        recorded = config.get(dest)
        key = f"{prefix}_{dest}"
        if isinstance(kind, tuple):
            options = list(kind)
            if recorded is not None and recorded not in options:
                options.append(recorded)
            value = col.selectbox(label, options, index=options.index(recorded) if recorded in options else 0,
                                  key=key)  # fmt: skip
        elif kind is int:
            default = int(recorded) if recorded is not None else 0
            value = col.number_input(label, value=default, step=1, key=key)
            if dest == "max_steps" and value == 0:
                value = None
        else:
            default = float(recorded) if recorded is not None else 0.0
            value = col.number_input(label, value=default, key=key, format="%g")
        if value != recorded and not (value is None and recorded is None):
            if isinstance(value, float) and recorded is not None and math.isclose(value, float(recorded)):
                continue
            changed[dest] = value
    return changed


def option_errors(changed: dict, config: dict) -> list[str]:
    """What the trainer would refuse among the changed options (its own rules: ``dashboard.options``)."""
    return _option_errors(changed, config)


def _config_note(overrides: dict) -> None:
    """Say what the replayed config file changes that the command line does not show."""
    unset = [dest for dest, value in overrides.items() if value is None]
    if unset:
        st.caption(
            "Set to null in the replayed config file (the trainer has no flag for it): "
            + ", ".join(code_span(dest) for dest in unset)
            + (" — no step limit." if "max_steps" in unset else ".")
        )


def _spec_for(run: dict, clip: str, name: str, overrides: dict):
    config = data.config_of(run)
    if "model" in overrides:
        config = {k: v for k, v in config.items() if k not in MODEL_OPTIONS}
    return relaunch_spec(
        {**run, "config": config},
        name=name,
        db=state.db_path(),
        clip=clip,
        config_dir=state.log_dir(),
        overrides=overrides,
    )


def single_launch(run: dict, trainer: bool, names=(), aliases=None) -> None:
    clip, clip_error = clip_input(run, names, aliases)
    overrides, option_problems = {}, []
    if trainer:
        with st.expander("Trainer options (changed values are passed as flags)", expanded=True):
            overrides = option_inputs(data.config_of(run), "opt")
            option_problems = option_errors(overrides, data.config_of(run))
            for problem in option_problems:
                st.error(problem, icon=":material/warning:")
    auto_name = f"{run['name']} · {clip or ''}"
    typed = _widget(st.text_input, "New run name (optional)", "launch_name", "", placeholder=auto_name)
    name = typed.strip() or auto_name
    if clip_error or option_problems:
        st.button("Launch", disabled=True, key="launch_go")
        return
    try:
        spec = _spec_for(run, clip, name, overrides)
    except ValueError as exc:
        st.error(str(exc), icon=":material/warning:")
        return
    st.markdown("**Command**")
    st.code(spec.display(), language="bash", wrap_lines=True)
    _config_note(overrides)
    if launch_button(spec):
        (job,) = state.launcher().submit([spec])
        if job.error:
            st.error(f"Could not start: {escape_markdown(job.error)}")
        else:
            st.success(
                f"Started {code_span(spec.name)} (pid {job.pid}). "
                "Its run appears on the Runs page in a moment."
            )


def launch_button(spec) -> bool:
    """The Launch button; True when it was clicked and the launch should go ahead.

    When this dashboard launched the very same command (source run, spec, name) less than a minute ago, or
    it still runs, that is most likely a double click: the button waits for a tick in "Launch it again"
    (and a click that arrives anyway, the second of a double click, launches nothing)."""
    launcher = state.launcher()
    same = launcher.same_command(spec)
    again = False
    if same:
        job = same[-1]
        ago = f"{max(0, time.time() - job.started_at):.0f} s ago" if job.started_at else "just now"
        pid = f", pid {job.pid}" if job.pid else ""
        st.warning(
            f"This exact command was launched from this dashboard {ago} ({job.state}{pid}). Launching it "
            "again starts a second, identical run.",
            icon=":material/content_copy:",
        )
        # A new key after each launch: the tick is for one more launch, not for every one after it.
        again = st.checkbox("Launch it again", key=f"launch_again_{len(launcher.jobs)}")
    clicked = st.button("Launch", type="primary", key="launch_go", disabled=bool(same) and not again)
    return clicked and (not same or again)


def sweep_launch(run: dict, trainer: bool, names=(), aliases=None) -> None:
    text = st.text_area(
        "Clip specs, one per line",
        key="sweep_text",
        placeholder="none\nnorm:0.5\nnorm:1.0\nautoclip:10\nzclip:2.5",
        help=_help(),
    )
    limit = st.number_input(
        "Run at most this many at once", min_value=1, max_value=16, value=2, key="sweep_limit"
    )
    overrides = {}
    if trainer:
        with st.expander("Trainer options for every run of the sweep"):
            overrides = option_inputs(data.config_of(run), "sweep_opt")
            for problem in option_errors(overrides, data.config_of(run)):
                st.error(problem, icon=":material/warning:")
                return
    if not text.strip():
        st.info("Write one clip spec per line to preview the sweep.")
        return
    try:
        clips = parse_sweep(text, lambda line: _accepted(line, names, aliases))
        specs = [_spec_for(run, clip, f"{run['name']} · {clip}", overrides) for clip in clips]
    except ValueError as exc:
        st.error(str(exc), icon=":material/warning:")
        return
    st.markdown(f"**{len(specs)} commands**, at most {int(limit)} at a time")
    st.code("\n\n".join(s.display() for s in specs), language="bash", wrap_lines=True)
    _config_note(overrides)
    if st.button(f"Launch sweep of {len(specs)}", type="primary", key="sweep_go"):
        sweep_id = f"sweep-{len(state.launcher().jobs)}"
        state.launcher().submit(specs, limit=int(limit), sweep=sweep_id)
        st.success(f"Queued {len(specs)} runs; {min(len(specs), int(limit))} started.")


def _accepted(spec: str, names, aliases) -> str:
    """The canonical spec, or ValueError with the tracker's message (for ``parse_sweep``)."""
    canonical, error = check_clip(spec, names, aliases)
    if error:
        raise ValueError(error)
    return canonical


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
    runs = data.runs(store, str(state.db_path()))
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


def _recorded_names(run: dict) -> tuple[list[str], dict[str, str]]:
    """The source run's recorded parameter names (its layers) and tied aliases (alias -> recorded name, the
    tracker's note ``tied``): what the tracker checks a clip spec's names against."""
    store = state.get_store()
    layers = data.layers(store, str(state.db_path()), int(run["id"])) if store is not None else None
    names = [] if layers is None else [str(n) for n in layers["name"]]
    tied = tracker_notes(run).get("tied")
    return names, {str(k): str(v) for k, v in tied.items()} if isinstance(tied, dict) else {}


def launch_page() -> None:
    runs = state.recorded_runs()
    st.title("Launch")
    if runs is None or not len(runs):
        if state.explain_missing_directory():
            return
        st.info("No recorded run to start from yet: launch the demo from the Runs page first.")
        st.fragment(jobs_panel, run_every=state.LIVE_INTERVAL_S)()
        return
    labels = data.run_labels(runs)
    ids = list(labels)
    kept = st.session_state.setdefault(KEPT, {})
    if kept.get("launch_source") not in labels:  # none picked yet, or the run was deleted
        kept.pop("launch_source", None)
        st.session_state.pop("launch_source", None)
    _consume_prefill(runs)
    source = _widget(
        st.selectbox, "Start from run", "launch_source", ids[0], options=ids, format_func=labels.get
    )
    run = runs[runs["id"] == source].iloc[0].to_dict()
    names, aliases = _recorded_names(run)
    trainer = is_trainer_run(run)
    if trainer:
        st.caption(
            "Trainer run: its recorded configuration is replayed with `--config`. "
            f"Clip: {code_span(run.get('clip'))}"
        )
        if int(run.get("world_size") or 1) > 1:
            st.warning(
                f"This run used {int(run['world_size'])} processes (torchrun); the relaunch runs as one "
                "process. For the same setup, run the command below under `torchrun --nproc_per_node=N`."
            )
    else:
        st.caption(
            f"External script: its recorded command is re-executed in {code_span(run.get('cwd'))} with "
            f"`GRADWATCH_CLIP` set (recorded clip {code_span(run.get('clip'))}). Only the clipping can be "
            "changed."
        )
    single, sweep = st.tabs(["Single run", "Sweep"])
    with single:
        single_launch(run, trainer, names, aliases)
    with sweep:
        sweep_launch(run, trainer, names, aliases)
    live = st.toggle("Refresh logs", value=True, key="launch_live")
    st.fragment(jobs_panel, run_every=state.LIVE_INTERVAL_S if live else None)()


launch_page()
