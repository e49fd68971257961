"""Launch: relaunch a recorded run with other clipping (and other trainer options), or a sweep of clip
settings with a concurrency limit; watch the logs; stop runs with SIGTERM.

Every clip spec is validated by the tracker's own parser, and the trainer options by the trainer's rules
(``dashboard/options.py``), before anything starts; the exact command is shown first, and is the one the
button runs, with what it changes in the dashboard's environment (the run's recorded variables). A run
recorded by a process that recorded several (a GAN's two trackers) is relaunched with them, each as a child
of its own. Processes are started with argument lists (never a shell) and log to files next to the
database. The form's inputs are ``dashboard.launchform`` (kept across pages by ``dashboard.formstate``), the
list of launched jobs ``dashboard.jobpanel``; the Launch button and its double-click guard are here.
"""

import time

import streamlit as st

from dashboard import data, state
from dashboard.clipform import RecordedModel, check_clip
from dashboard.commands import replayed_environment
from dashboard.formstate import consume_prefill, forget_unless, kept_widget, set_kept
from dashboard.jobpanel import jobs_panel
from dashboard.launch import is_trainer_run, parse_sweep, relaunch_name, relaunch_spec, tracker_notes
from dashboard.launchform import clip_help, clip_input, option_inputs
from dashboard.options import MODEL_OPTIONS, option_errors
from dashboard.siblings import missing_between, same_process, slots
from dashboard.text import code_span, escape_markdown


def _config_note(overrides: dict) -> None:
    """Say what the replayed config file changes that the command line does not show."""
    unset = [dest for dest, value in overrides.items() if value is None]
    if unset:
        st.caption(
            "Set to null in the replayed config file (the trainer has no flag for it): "
            + ", ".join(code_span(dest) for dest in unset)
            + (" — no step limit." if "max_steps" in unset else ".")
        )


# Changes to the dashboard's environment written into the command shown; more are counted and listed apart.
ENV_SHOWN = 8


def _environment_note(run: dict, trainer: bool) -> None:
    """Say with which environment a relaunch runs: the one its run recorded (what differs from the
    dashboard's, ``unset X`` for a variable the run did not have: in the command shown when they are few,
    else counted and listed here), or the dashboard's when the run recorded none or another machine's or
    user's (:func:`dashboard.commands.replayed_environment`)."""
    changes, why = replayed_environment(run, own_python=trainer)
    if changes is None:
        reason = {
            "not recorded": "was not recorded (a run from before gradwatch recorded it, or one started with "
            "`GRADWATCH_RECORD_ENV=0`, which its relaunch keeps)",
            "another machine": f"was recorded on another machine ({code_span(run.get('host'))}): its "
            "HOME, PATH or devices are not this one's",
            "another user": "was recorded by another user (its HOME or USER is not the dashboard's)",
        }[why]
        st.caption(f"Run #{run['id']}'s environment {reason}: the dashboard's environment is used.")
        return
    if not changes:
        st.caption(
            f"Runs with the environment variables run #{run['id']} recorded: the dashboard's are the same."
        )
        return
    differ = (
        f"{len(changes)} differ from the dashboard's ({len(changes.set)} set, {len(changes.unset)} unset)"
    )
    if len(changes) <= ENV_SHOWN:
        st.caption(
            f"Runs with the environment variables run #{run['id']} recorded: {differ}, written before the "
            "command (`unset` for those the run did not have)."
        )
        return
    st.markdown(f"Runs with the environment variables run #{run['id']} recorded: **{differ}**.")
    with st.expander(f"The {len(changes)} changes to the dashboard's environment"):
        st.code("\n".join(changes.words()), language="bash", wrap_lines=True)


def _show_commands(specs: list) -> None:
    """The commands a launch runs. With more than ``ENV_SHOWN`` changes to the dashboard's environment,
    the command shown first leaves them out, to stay readable: pasted into a shell it would run with the
    shell's environment, not the run's, so the complete command (what the button runs, with every change)
    follows in an expander, to copy."""
    changes = specs[0].changes
    if changes is None or len(changes) <= ENV_SHOWN:
        st.code("\n\n".join(s.display() for s in specs), language="bash", wrap_lines=True)
        return
    short = "\n\n".join(s.display(recorded_env=False) for s in specs)
    st.code(short, language="bash", wrap_lines=True)
    st.caption(
        f"Shown without the {len(changes)} changes to the dashboard's environment (listed above), which the "
        "launch makes: to run it yourself, copy the complete command below."
    )
    several = "complete commands" if len(specs) > 1 else "complete command"
    with st.expander(f"The {several}, with the {len(changes)} environment changes"):
        st.code("\n\n".join(s.display() for s in specs), language="bash", wrap_lines=True)


def _spec_for(run: dict, clip: str, name: str, overrides: dict, group: list[dict]):
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
        siblings=group,
    )


def single_launch(
    run: dict, trainer: bool, models: list[RecordedModel], group: list[dict], allowed: bool = True
) -> None:
    clip, clip_error = clip_input(run, models)
    overrides, option_problems = {}, []
    if trainer:
        with st.expander("Trainer options (changed values are passed as flags)", expanded=True):
            overrides = option_inputs(data.config_of(run), "opt")
            option_problems = option_errors(overrides, data.config_of(run))
            for problem in option_problems:
                st.error(problem, icon=":material/warning:")
    auto_name = relaunch_name(run, clip)
    typed = kept_widget(st.text_input, "New run name (optional)", "launch_name", "", placeholder=auto_name)
    name = typed.strip() or auto_name
    if clip_error or option_problems:
        st.button("Launch", disabled=True, key="launch_go")
        return
    try:
        spec = _spec_for(run, clip, name, overrides, group)
    except ValueError as exc:
        st.error(str(exc), icon=":material/warning:")
        return
    st.markdown("**Command**")
    _show_commands([spec])
    _config_note(overrides)
    if launch_button(spec, allowed):
        (job,) = state.launcher().submit([spec])
        if job.error:
            st.error(f"Could not start: {escape_markdown(job.error)}")
        else:
            # Not "its run appears": a script may end without recording one (the job below then says so).
            st.success(
                f"Started {code_span(spec.name)} (pid {job.pid}). Its run appears on the Runs page once the "
                "script creates its tracker; should it end without recording a run, its job below says so."
            )


def launch_button(spec, allowed: bool = True) -> bool:
    """The Launch button; True when it was clicked and the launch should go ahead (never unless
    ``allowed``).

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
    blocked = not allowed or (bool(same) and not again)
    clicked = st.button("Launch", type="primary", key="launch_go", disabled=blocked)
    return clicked and not blocked


def sweep_launch(
    run: dict, trainer: bool, models: list[RecordedModel], group: list[dict], allowed: bool = True
) -> None:
    text = st.text_area(
        "Clip specs, one per line",
        key="sweep_text",
        placeholder="none\nnorm:0.5\nnorm:1.0\nautoclip:10\nzclip:2.5",
        help=clip_help(),
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
        clips = parse_sweep(text, lambda line: _accepted(line, models))
        specs = [_spec_for(run, clip, relaunch_name(run, clip), overrides, group) for clip in clips]
    except ValueError as exc:
        st.error(str(exc), icon=":material/warning:")
        return
    st.markdown(f"**{len(specs)} commands**, at most {int(limit)} at a time")
    _show_commands(specs)
    _config_note(overrides)
    if st.button(f"Launch sweep of {len(specs)}", type="primary", key="sweep_go", disabled=not allowed):
        sweep_id = f"sweep-{len(state.launcher().jobs)}"
        state.launcher().submit(specs, limit=int(limit), sweep=sweep_id)
        st.success(f"Queued {len(specs)} runs; {min(len(specs), int(limit))} started.")


def _accepted(spec: str, models: list[RecordedModel]) -> str:
    """The canonical spec, or ValueError with the tracker's message (for ``parse_sweep``)."""
    canonical, error = check_clip(spec, models)
    if error:
        raise ValueError(error)
    return canonical


def _recorded_model(run: dict) -> RecordedModel:
    """The run's recorded parameters (its layers: names, the trainable ones' dtypes) and tied aliases (the
    tracker's note ``tied``): what the tracker checks a clip spec against."""
    store = state.get_store()
    layers = data.layers(store, int(run["id"])) if store is not None else None
    tied = tracker_notes(run).get("tied")
    label = _label(run)
    if layers is None:
        return RecordedModel(run=label)
    trainable = layers[layers["trainable"]]
    return RecordedModel(
        names=tuple(str(n) for n in layers["name"]),
        aliases={str(k): str(v) for k, v in tied.items()} if isinstance(tied, dict) else {},
        dtypes={str(n): str(d) for n, d in zip(trainable["name"], trainable["dtype"], strict=True) if d},
        run=label,
    )


def _label(run: dict) -> str:
    return f"{run['name']} (#{int(run['id'])})"


def _group_note(group: list[dict]) -> None:
    """Say that the runs the source run's process recorded are relaunched together (one process), and which
    of its trackers' runs this database does not hold (:func:`dashboard.siblings.slots`)."""
    placed = slots(group) or group
    empty = [k for k, r in enumerate(placed, 1) if r is None]
    if len(group) < 2 and not empty:
        return
    runs = ", ".join(f"{escape_markdown(r['name'])} (#{int(r['id'])})" for r in group)
    every = "both" if len(group) == 2 else f"all {len(group)}" if len(group) > 2 else "it is"
    text = (
        f"This process recorded {len(group)} run{'s' if len(group) > 1 else ''}{' here' if empty else ''}: "
        f"{runs}; "
        f"{every}{' are' if len(group) > 1 else ''} relaunched, each as a child of its own, in one process "
        "with the same clipping (its trackers, in the order it creates them, continue these runs in this "
        "order). The clip spec must fit each run's layers."
    )
    if empty:
        places = ", ".join(_ordinal(k) for k in empty)
        several = len(empty) > 1
        record = "they record runs of their own" if several else "it records a run of its own"
        text += (
            f" Its {places} tracker{'s' if several else ''} recorded a run this database does not hold "
            f"(written to another file, or deleted): in the relaunch, {record}, without a parent, under "
            "the script's name."
        )
    st.info(text, icon=":material/device_hub:")


def _ordinal(k: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")


def _gap_confirmed(group: list[dict], runs) -> bool:
    """Warn when runs created between the first and the last run of the process are missing from this
    database (deleted: :func:`dashboard.siblings.missing_between`): had one of them been the process's own,
    its trackers would continue the wrong runs from there on. True when the launch may go ahead: no such
    gap, or the tick that they were not its own (nothing recorded tells)."""
    if slots(group) is not None:  # (the trackers recorded their places: the empty ones are known exactly)
        return True
    missing = missing_between(group, runs["id"])
    if not missing:
        return True
    first = missing[0]
    nxt = next(r for r in group if int(r["id"]) > first)
    listed = ", ".join(f"#{i}" for i in missing[:5]) + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    )
    one = len(missing) == 1
    st.warning(
        f"Run{'' if one else 's'} {listed}, created between runs of this process (#{int(group[0]['id'])} "
        f"and #{int(group[-1]['id'])}), {'is' if one else 'are'} no longer in this database. "
        f"{'If it' if one else 'If one of them'} was one of this process's runs, this relaunch would give "
        "its new runs the wrong parents: its trackers continue the runs listed, in the order it creates "
        f"them, so the tracker that recorded #{first} would continue {escape_markdown(nxt['name'])} "
        f"(#{int(nxt['id'])}), under the name meant for its relaunch, and each tracker after it the run "
        "after its own (the last, a run of its own without a parent). Nothing recorded tells whether it "
        "was (the tracker records no position in its process). If not, tick below and relaunch; if it "
        "was, run the command below yourself instead, without `GRADWATCH_PARENT_RUN` and `GRADWATCH_RUN`: "
        "its runs are then recorded without parents, under the script's own names.",
        icon=":material/link_off:",
    )
    ids = "-".join(str(int(r["id"])) for r in group)
    label = f"#{first} was not" if one else "None of them was"
    return st.checkbox(f"{label} a run of this process: relaunch anyway", key=f"launch_gap_ok_{ids}")


URL_SOURCE = "source"  # ?source=3: the run to start from, in the page's address
URL_SEEN = "launch_url_seen"  # the ?source= this page last wrote or followed


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
    forget_unless("launch_source", labels)  # none picked yet, or the run was deleted
    consume_prefill(runs)
    linked, unknown = state.ids_from_url(URL_SOURCE, URL_SEEN, labels)
    if linked:  # a link, or a reload: its source run (the clip form then refills from it)
        set_kept("launch_source", linked[0])
    elif unknown:
        st.warning(
            f"The address asks for {state.unknown_ids_text(unknown)}, not in this database: pick the run "
            "to start from below.",
            icon=":material/link_off:",
        )
    source = kept_widget(
        st.selectbox, "Start from run", "launch_source", ids[0], options=ids, format_func=labels.get
    )
    state.ids_to_url(URL_SOURCE, URL_SEEN, [source])
    run = runs[runs["id"] == source].iloc[0].to_dict()
    trainer = is_trainer_run(run)
    # The trainer records one run per process (`python -m trainer` relaunches one); a script may record more.
    group = [run] if trainer else same_process(run, runs[runs["pid"] == run.get("pid")].to_dict("records"))
    models = [_recorded_model(r) for r in group]
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
    _environment_note(run, trainer)
    _group_note(group)
    allowed = _gap_confirmed(group, runs)
    single, sweep = st.tabs(["Single run", "Sweep"])
    with single:
        single_launch(run, trainer, models, group, allowed)
    with sweep:
        sweep_launch(run, trainer, models, group, allowed)
    live = st.toggle("Refresh logs", value=True, key="launch_live")
    st.fragment(jobs_panel, run_every=state.LIVE_INTERVAL_S if live else None)()


launch_page()
