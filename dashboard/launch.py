"""The commands the dashboard launches: relaunches of recorded runs, resumes from a checkpoint, sweeps.

Commands are argument lists, never shell strings: a clip spec like ``norm:1.0+noise(0.01)`` or a run name
with spaces reaches the child exactly as typed. A spec depends only on its arguments (and the dashboard's
environment, which a relaunch changes into the one its run recorded), so the command a page shows is the one
its button runs. Starting them is ``dashboard.jobs``'s job; what one holds is ``dashboard.launchspec``'s.
Which runs one process recorded is ``dashboard.siblings``'s (``same_process`` is importable from here too),
the refusal of a torchrun run ``dashboard.torchrun``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dashboard.commands import check_recorded_command, recorded_path, replayed_environment
from dashboard.launchspec import LaunchSpec
from dashboard.siblings import same_process, slots
from dashboard.text import safe_file_name
from dashboard.torchrun import refuse_torchrun

# The tracker reads these variables (tracker/env.py): one definition of the names on both sides.
from tracker.command import RECORD_ENV_VAR
from tracker.env import CLIP_ENV, DB_ENV, PARENT_ENV, RUN_ENV

__all__ = [
    "CLIP_ENV",
    "DB_ENV",
    "PARENT_ENV",
    "RUN_ENV",
    "LaunchSpec",
    "RESUMABLE",
    "external_spec",
    "is_trainer_run",
    "parse_sweep",
    "relaunch_name",
    "relaunch_spec",
    "resume_checkpoint",
    "resume_spec",
    "same_process",
    "tracker_notes",
    "trainer_command",
    "trainer_spec",
]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def trainer_spec(
    *,
    name: str,
    db: str | os.PathLike,
    clip: str | None,
    config: Mapping | None = None,
    config_file: str | os.PathLike | None = None,
    parent_id: int | None = None,
    overrides: Mapping[str, object] | None = None,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
    cwd: str | os.PathLike | None = None,
) -> LaunchSpec:
    """``python -m trainer [--config F] [--<dest> v ...] --clip SPEC --db DB --run NAME [--parent-run ID]``.

    ``overrides`` maps trainer option dest names (as recorded in ``runs.config``) to values; ``True`` gives a
    bare flag, ``False``/``None`` are left out (to unset a replayed value, set it to None in ``config``, as
    :func:`relaunch_spec` does). The interpreter is :func:`trainer_command`'s.
    """
    argv: list[str] = trainer_command(python)
    if config_file is not None:
        argv += ["--config", str(config_file)]
    for dest, value in (overrides or {}).items():
        if value is None or value is False:
            continue
        argv.append(_flag(dest))
        if value is not True:
            argv.append(str(value))
    argv += list(extra_args)
    if clip is not None:
        argv += ["--clip", clip]
    argv += ["--db", str(db), "--run", name]
    if parent_id is not None:
        argv += ["--parent-run", str(parent_id)]
    return LaunchSpec(
        name=name,
        argv=tuple(argv),
        cwd=str(cwd or os.getcwd()),
        parent_id=parent_id,
        clip=clip,
        config_file=str(config_file) if config_file is not None else None,
        config=dict(config) if config is not None else None,
        db=str(db),
    )


def trainer_command(python: str = sys.executable) -> list[str]:
    """``python -P -m trainer``. ``-m`` would put the working folder first on ``sys.path``, where a
    ``trainer.py`` or ``tracker.py`` of the user's (a run's recorded folder) would run instead of gradwatch's;
    ``-P`` (Python 3.11) leaves it out. An interpreter older than 3.11, which gradwatch does not run on, is
    replaced by the dashboard's own."""
    if _version(python) < (3, 11):
        python = sys.executable
    return [python, "-P", "-m", "trainer"]


@functools.lru_cache(maxsize=16)
def _version(python: str) -> tuple[int, ...]:
    """``python``'s (major, minor) version; (3, 11) when it cannot tell (a missing interpreter: it is started
    as given, and the job says it could not start)."""
    if python == sys.executable:
        return tuple(sys.version_info[:2])
    try:
        done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                              text=True, timeout=20)  # fmt: skip
        version = tuple(int(part) for part in done.stdout.split())
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return (3, 11)
    return version if len(version) == 2 else (3, 11)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [value]
    return list(value)


def is_trainer_run(run: Mapping) -> bool:
    """True when the run was recorded by ``python -m trainer`` (or its console script)."""
    argv = _as_list(run.get("argv"))
    if not argv:
        return False
    first = str(argv[0]).replace("\\", "/")
    return (
        first.endswith("trainer/__main__.py")
        or first.endswith("trainer/cli.py")
        or Path(first).name == "gradwatch-train"
        or argv[:2] == ["-m", "trainer"]
    )


def relaunch_name(run: Mapping, clip: str | None) -> str:
    """The name a relaunch of ``run`` gets unless one is typed: ``<its name> · <clip spec>``."""
    return f"{run['name']} · {clip or ''}"


def relaunch_spec(
    run: Mapping,
    *,
    name: str,
    db: str | os.PathLike,
    clip: str,
    config_dir: str | os.PathLike,
    overrides: Mapping[str, object] | None = None,
    siblings: Sequence[Mapping] = (),
) -> LaunchSpec:
    """The command that relaunches a recorded run with another clip setting.

    Trainer runs replay their recorded config through ``--config``; any other script is re-executed with its
    recorded argv, Python and working directory, with the clip setting passed through ``GRADWATCH_CLIP``.
    Both run with the environment variables the run recorded (``runs.env``, :func:`environment_changes`),
    where it recorded them. ``siblings``: the runs the same process recorded (:func:`same_process`); a
    script's command then relaunches each as a child of its own, in the order the process created them,
    each named :func:`relaunch_name` (``run`` itself ``name``). (The trainer records one run per process.)
    An override of None removes the recorded value (``max_steps: None``: no step limit): it is written as
    null into the replayed config, since the trainer has no flag that unsets an option.
    The result depends only on the arguments, so the command a page shows is the one its button runs.
    """
    if is_trainer_run(run):
        overrides = dict(overrides or {})
        unset = {dest: None for dest, value in overrides.items() if value is None}
        config = _replayed(_config(run)) | unset
        flags = {dest: value for dest, value in overrides.items() if value is not None}
        spec = trainer_spec(
            name=name,
            db=db,
            clip=clip,
            config=config,
            config_file=_config_file(config_dir, name, config),
            parent_id=int(run["id"]),
            overrides=flags,
            # The dashboard's own interpreter: it has the trainer installed (the recorded one may be gone).
            python=sys.executable,
            cwd=_run_cwd(run),
        )
        changes, why = replayed_environment(run, own_python=True)
        # A run that recorded no environment (GRADWATCH_RECORD_ENV off): its relaunch records none either.
        off = {RECORD_ENV_VAR: "0"} if why == "not recorded" else {}
        return dataclasses.replace(spec, changes=changes, env=dict(spec.env) | off)
    if overrides:
        raise ValueError(
            f"run {run.get('id')!r} is not a trainer run: only the clip setting can be changed "
            f"(got options {sorted(overrides)!r})"
        )
    group = same_process(run, siblings)
    placed = slots(group) or group  # by the trackers' places in the process, where they recorded them

    def named(r: Mapping) -> str:
        return name if int(r["id"]) == int(run["id"]) else relaunch_name(r, clip)

    lineage = [(None, None) if r is None else (int(r["id"]), named(r)) for r in placed]
    return external_spec(run, name=name, db=db, clip=clip, lineage=lineage)


def _config(run: Mapping) -> dict:
    config = run.get("config") or {}
    return json.loads(config) if isinstance(config, str) else dict(config)


# Set by the new command line, not replayed: the run's own lineage and destination, and the checkpoint
# flags (a relaunch is a new run; a resume passes them explicitly).
_NOT_REPLAYED = {"config", "clip", "db", "run", "parent_run", "checkpoint", "checkpoint_every", "resume"}


def _replayed(config: Mapping) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_REPLAYED}


def _config_file(config_dir: str | os.PathLike, name: str, config: Mapping, kind: str = "") -> Path:
    """Where the replayed config is written: named after its content, not the time, so the command shown
    before a click and the one run by it are the same (the same content is the same file)."""
    text = json.dumps(config, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Path(config_dir) / f"{safe_file_name(name)}-{kind}{digest}.json"


def _run_cwd(run: Mapping) -> str:
    """The run's working directory when it still exists, else the dashboard's."""
    cwd = recorded_path(run.get("cwd"))
    return cwd if cwd and os.path.isdir(cwd) else os.getcwd()


# A run that ended early can be continued. A finished one cannot: resuming it would train its last epoch
# again and rewrite its resumed_from_step.
RESUMABLE = ("stopped", "failed", "crashed")


def resume_checkpoint(run: Mapping) -> str | None:
    """The checkpoint a trainer run can be continued from: its ``--checkpoint`` file, when the run is
    stopped, failed or crashed and the file exists (None otherwise). Not for a run of several processes
    (torchrun): the dashboard starts one, and the trainer refuses a checkpoint saved by another count."""
    if run.get("status") not in RESUMABLE or not is_trainer_run(run):
        return None
    if int(run.get("world_size") or 1) > 1:
        return None
    path = _config(run).get("checkpoint")
    if not path:
        return None
    if not os.path.isabs(path) and run.get("cwd"):
        path = os.path.join(recorded_path(run["cwd"]), path)
    return path if os.path.isfile(path) else None


def resume_spec(run: Mapping, *, db: str | os.PathLike, config_dir: str | os.PathLike) -> LaunchSpec:
    """The command that continues a stopped, failed or crashed trainer run from its checkpoint: the same run
    (``--checkpoint PATH --resume``, no parent), its recorded config replayed. Raises ValueError when the
    run has no checkpoint to continue from."""
    checkpoint = resume_checkpoint(run)
    if checkpoint is None:
        raise ValueError(f"run {run.get('id')!r} has no checkpoint file to resume from")
    name = str(run.get("name") or f"run-{run.get('id')}")
    recorded = _config(run)
    config = _replayed(recorded)
    spec = trainer_spec(
        name=name,
        db=db,
        # As given to the trainer (the checkpoint compares settings as given), not the canonical runs.clip.
        clip=recorded.get("clip") or run.get("clip") or "none",
        config=config,
        config_file=_config_file(config_dir, name, config, "resume-"),
        # Saving as often as the run did: --checkpoint-every is only valid with --checkpoint.
        overrides={"checkpoint": checkpoint, "resume": True}
        | ({"checkpoint_every": recorded["checkpoint_every"]} if recorded.get("checkpoint_every") else {}),
        python=sys.executable,
        cwd=_run_cwd(run),
    )
    changes, _ = replayed_environment(run, own_python=True)
    return dataclasses.replace(spec, resumes=int(run["id"]), changes=changes)


# The tracker's own notes inside runs.config (docs/schema.md: requested_clip, tied, orig_argv, ...).
NOTES_KEY = "_gradwatch"


def tracker_notes(run: Mapping) -> dict:
    """The tracker's notes recorded in ``runs.config["_gradwatch"]`` ({} when there are none)."""
    notes = _config(run).get(NOTES_KEY)
    return dict(notes) if isinstance(notes, Mapping) else {}


def external_spec(
    run: Mapping,
    *,
    name: str,
    db: str | os.PathLike,
    clip: str,
    lineage: Sequence[tuple[int | None, str | None]] = (),
) -> LaunchSpec:
    """Re-execute an external script's recorded command with ``GRADWATCH_CLIP`` set, and the environment
    variables it recorded (:func:`environment_changes`).

    The command is the one typed after the interpreter (``sys.orig_argv[1:]``, recorded by the tracker when
    ``sys.argv`` cannot rerun it: ``python -m pkg.train``, ``python -c ...``, ``python -u train.py``), else
    ``runs.argv``. The recorded folder and Python are the real paths (:func:`recorded_path`: a name that is
    not UTF-8 was recorded escaped). A run of torchrun is refused (:mod:`dashboard.torchrun`).
    ``lineage``: (parent id, name) of each run of a process that recorded several (``run`` among them), in
    the order it created them: ``GRADWATCH_PARENT_RUN`` lists the ids, ``GRADWATCH_RUN`` the names (JSON),
    and the k-th tracker of the new process continues the k-th run; ``(None, None)`` at a place whose run
    this database does not hold (an empty place: that tracker records a run of its own).
    """
    typed = tracker_notes(run).get("orig_argv")
    typed = [str(a) for a in typed] if isinstance(typed, list) and typed else None
    argv = typed or _as_list(run.get("argv"))
    if not argv:
        raise ValueError(f"run {run.get('id')!r} has no recorded command (argv) to re-execute")
    python = recorded_path(run.get("python")) or sys.executable
    cwd = recorded_path(run.get("cwd")) or os.getcwd()
    lineage = tuple((None, None) if i is None else (int(i), str(n)) for i, n in lineage)
    lineage = lineage if len(lineage) > 1 else ()
    parents = ",".join("" if i is None else str(i) for i, _ in lineage) or str(int(run["id"]))
    names = json.dumps([n for _, n in lineage], ensure_ascii=False) if lineage else name
    env = {CLIP_ENV: clip, DB_ENV: str(db), PARENT_ENV: parents, RUN_ENV: names}
    changes, why = replayed_environment(run)
    if why == "not recorded":  # (GRADWATCH_RECORD_ENV off: its relaunch records none either)
        env[RECORD_ENV_VAR] = "0"
    as_typed, noted = typed is not None, tracker_notes(run).get("torchrun") is True
    refuse_torchrun(run, python, argv, noted=noted, typed=as_typed, cwd=cwd, env=env, changes=changes)
    check_recorded_command(run, python, argv, typed=as_typed, env=env, changes=changes)
    return LaunchSpec(
        name=name,
        argv=(python, *map(str, argv)),
        cwd=cwd,
        env=env,
        parent_id=int(run["id"]),
        clip=clip,
        db=str(db),
        changes=changes,
        lineage=lineage,
    )


def parse_sweep(text: str, validate) -> list[str]:
    """Clip specs from a sweep box (one per line; blank lines and ``#`` comments ignored).

    ``validate`` is the tracker's ``validate_clip``/``parse_clip``-like callable returning the canonical spec
    or raising ValueError. Raises ValueError naming every bad line, so nothing is launched from a sweep with
    one typo in it.
    """
    specs: list[str] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            specs.append(validate(line))
        except ValueError as exc:
            errors.append(f"line {number} ({line!r}): {exc}")
    if errors:
        raise ValueError("invalid sweep: " + "; ".join(errors))
    if not specs:
        raise ValueError("the sweep is empty: write one clip spec per line, e.g. 'norm:1.0'")
    if len(set(specs)) != len(specs):
        dupes = sorted({s for s in specs if specs.count(s) > 1})
        raise ValueError(f"the sweep lists the same clip spec more than once: {dupes!r}")
    return specs
