"""Build relaunch commands and manage the training processes the dashboard starts.

Commands are argument lists, never shell strings: a clip spec like ``norm:1.0+noise(0.01)`` or a run name
with spaces reaches the child exactly as typed. Each process writes stdout and stderr to its own log file and
gets its own session, so closing the dashboard (or a Ctrl-C in its terminal) does not kill a training run;
stopping is an explicit SIGTERM, which the trainer and the tracker turn into a clean ``stopped`` run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The tracker reads these variables (tracker/env.py): one definition of the names on both sides.
from tracker.env import CLIP_ENV, DB_ENV, PARENT_ENV, RUN_ENV

__all__ = [
    "CLIP_ENV",
    "DB_ENV",
    "PARENT_ENV",
    "RUN_ENV",
    "STOP_EXIT_CODES",
    "Job",
    "LaunchSpec",
    "Launcher",
    "RESUMABLE",
    "external_spec",
    "is_trainer_run",
    "log_tail",
    "parse_sweep",
    "record_stop",
    "relaunch_spec",
    "resume_checkpoint",
    "resume_spec",
    "stop_pid",
    "tracker_notes",
    "trainer_spec",
]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one process: argv list, working directory and extra environment."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    parent_id: int | None = None
    clip: str | None = None
    config_file: str | None = None  # written just before starting (trainer relaunches)
    config: Mapping | None = None
    resumes: int | None = None  # the run this command continues from its checkpoint (resume_spec)

    def display(self) -> str:
        """The exact command, as a user would type it in a POSIX shell (for display only; we never run it)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        cmd = shlex.join(self.argv)
        return f"cd {shlex.quote(self.cwd)} && {env + ' ' if env else ''}{cmd}"


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
    :func:`relaunch_spec` does).
    """
    argv: list[str] = [python, "-m", "trainer"]
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
    )


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


def relaunch_spec(
    run: Mapping,
    *,
    name: str,
    db: str | os.PathLike,
    clip: str,
    config_dir: str | os.PathLike,
    overrides: Mapping[str, object] | None = None,
) -> LaunchSpec:
    """The command that relaunches a recorded run with another clip setting.

    Trainer runs replay their recorded config through ``--config``; any other script is re-executed with its
    recorded argv, Python and working directory, with the clip setting passed through ``GRADWATCH_CLIP``.
    An override of None removes the recorded value (``max_steps: None``: no step limit): it is written as
    null into the replayed config, since the trainer has no flag that unsets an option.
    The result depends only on the arguments, so the command a page shows is the one its button runs.
    """
    if is_trainer_run(run):
        overrides = dict(overrides or {})
        unset = {dest: None for dest, value in overrides.items() if value is None}
        config = _replayed(_config(run)) | unset
        flags = {dest: value for dest, value in overrides.items() if value is not None}
        return trainer_spec(
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
    if overrides:
        raise ValueError(
            f"run {run.get('id')!r} is not a trainer run: only the clip setting can be changed "
            f"(got options {sorted(overrides)!r})"
        )
    return external_spec(run, name=name, db=db, clip=clip)


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
    return Path(config_dir) / f"{_safe(name)}-{kind}{digest}.json"


def _run_cwd(run: Mapping) -> str:
    """The run's working directory when it still exists, else the dashboard's."""
    cwd = run.get("cwd")
    return str(cwd) if cwd and os.path.isdir(cwd) else os.getcwd()


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
        path = os.path.join(str(run["cwd"]), path)
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
    return dataclasses.replace(spec, resumes=int(run["id"]))


# The tracker's own notes inside runs.config (docs/schema.md: requested_clip, tied, orig_argv, ...).
NOTES_KEY = "_gradwatch"


def tracker_notes(run: Mapping) -> dict:
    """The tracker's notes recorded in ``runs.config["_gradwatch"]`` ({} when there are none)."""
    notes = _config(run).get(NOTES_KEY)
    return dict(notes) if isinstance(notes, Mapping) else {}


def external_spec(run: Mapping, *, name: str, db: str | os.PathLike, clip: str) -> LaunchSpec:
    """Re-execute an external script's recorded command with ``GRADWATCH_CLIP`` set.

    The command is the one typed after the interpreter (``sys.orig_argv[1:]``, recorded by the tracker when
    ``sys.argv`` cannot rerun it: ``python -m pkg.train``, ``python -c ...``, ``python -u train.py``), else
    ``runs.argv``."""
    typed = tracker_notes(run).get("orig_argv")
    typed = [str(a) for a in typed] if isinstance(typed, list) and typed else None
    argv = typed or _as_list(run.get("argv"))
    if not argv:
        raise ValueError(f"run {run.get('id')!r} has no recorded command (argv) to re-execute")
    python = run.get("python") or sys.executable
    _check_recorded_command(run, python, argv, typed=typed is not None)
    env = {
        CLIP_ENV: clip,
        DB_ENV: str(db),
        PARENT_ENV: str(int(run["id"])),
        RUN_ENV: name,
    }
    return LaunchSpec(
        name=name,
        argv=(python, *map(str, argv)),
        cwd=str(run.get("cwd") or os.getcwd()),
        env=env,
        parent_id=int(run["id"]),
        clip=clip,
    )


# Interpreter options that take the next argument (or the rest of their own: -Wignore).
_OPTION_ARGS = frozenset("WX")


def interpreter_target(argv: Sequence[str]) -> tuple[str, str | None]:
    """What a command line typed after ``python`` runs: ``("module", name)`` for ``-m name``, ``("code",
    None)`` for ``-c``, ``("script", path)``, or ``("stdin", None)`` for ``-`` and for no script at all (an
    interactive or piped session). Options before it (``-u``, ``-W arg``, ``-X opt``, ``-uB``) are skipped."""
    i = 0
    while i < len(argv):
        arg = str(argv[i])
        if arg == "-":
            return "stdin", None
        if arg == "--check-hash-based-pycs":
            i += 2
            continue
        if not arg.startswith("-") or arg == "--":
            if arg == "--":
                i += 1
                return ("script", str(argv[i])) if i < len(argv) else ("stdin", None)
            return "script", arg
        if arg.startswith("--"):  # --help, --version: no argument
            i += 1
            continue
        # A group of short options (-uB, -um pkg, -Wdefault): -c and -m end it, W and X take an argument.
        for j, letter in enumerate(arg[1:], start=1):
            rest = arg[j + 1 :]
            if letter in "cm":
                if letter == "c":
                    return "code", None
                name = rest or (str(argv[i + 1]) if i + 1 < len(argv) else None)
                return "module", name
            if letter in _OPTION_ARGS:
                i += 0 if rest else 1  # the argument is the rest of this one, else the next one
                break
        i += 1
    return "stdin", None


def _check_recorded_command(run: Mapping, python: str, argv: list, *, typed: bool = False) -> None:
    """Raise ValueError, saying what is missing and how to fix it, when the recorded command cannot run
    again: its working folder, its Python or its script (a ``.py`` path, resolved against the recorded
    working folder) is gone, or only ``-c`` / ``-`` was recorded (the code itself never was). Python would
    otherwise start and exit at once with code 2. ``typed``: ``argv`` is the command line as typed after
    the interpreter (``sys.orig_argv[1:]``), else ``sys.argv``."""
    run_id = run.get("id")
    cwd = run.get("cwd")
    if cwd and not os.path.isdir(cwd):
        raise ValueError(
            f"The recorded working folder {cwd} of run #{run_id} no longer exists, so its command "
            "cannot be run there again. Restore that folder (with the script in it) and reload this page, "
            "or relaunch a run recorded where the script now lives."
        )
    if os.path.isabs(python) and not os.path.exists(python):
        raise ValueError(
            f"The recorded Python {python} of run #{run_id} no longer exists (a deleted virtual "
            "environment?). Recreate it at that path, or relaunch a run recorded with an existing Python."
        )
    if typed:
        kind, script = interpreter_target(argv)
    else:  # sys.argv: the script, or what is left of -c / - / an interactive session
        first = str(argv[0])
        kind, script = (
            ("code", None) if first == "-c" else ("stdin", None) if first in ("-", "") else ("script", first)
        )
    if kind == "code" and not typed:
        raise ValueError(
            f'Run #{run_id} was started with `python -c ...`, and only "-c" was recorded (sys.argv), not '
            "the code, so its command cannot be run again. Put the code in a script (or a module run with "
            "`python -m`), run it once with the tracker, and relaunch that run: a current gradwatch records "
            "the command as typed."
        )
    if kind == "stdin":
        raise ValueError(
            f"Run #{run_id} was started from standard input or an interactive session (recorded command "
            f"{shlex.join(map(str, argv))!r}): there is no script to run again. Put the code in a script, "
            "run it once with the tracker, and relaunch that run."
        )
    if kind == "module" and not script:
        raise ValueError(f"The recorded command of run #{run_id} has `-m` without a module name.")
    if kind == "script" and script.endswith(".py"):
        path = script if os.path.isabs(script) or not cwd else os.path.join(str(cwd), script)
        if not os.path.isfile(path):
            raise ValueError(
                f"The recorded script {script} of run #{run_id} no longer exists ({path} is missing), "
                "so Python would exit at once. Put the script back at that path, or relaunch a run recorded "
                "where the script now lives."
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "run"


def log_tail(path: str | os.PathLike, max_lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last lines of a log file (reads only its end: logs of long runs grow large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    # tqdm redraws with carriage returns: keep only the last state of each line.
    lines = [line.rsplit("\r", 1)[-1] for line in data.decode("utf-8", "replace").splitlines()]
    return "\n".join(lines[-max_lines:])


# Run in a child process: opening a Store reads the file's header with a plain open() and close(), and closing
# any descriptor of a file drops every POSIX lock this process holds on it, those of the dashboard's cached
# read-only connection included. A training process that closes after that finds no other reader, deletes
# the WAL and the -shm under that connection, which from then on never sees a new row.
_RECORD_STOP = """
import sys
from tracker.store import Store, StoreError
try:
    with Store.open(sys.argv[1], create=False) as store:
        store.request_stop(int(sys.argv[2]))
except StoreError as exc:
    sys.exit(str(exc))
"""


def record_stop(db: str | os.PathLike, run_id: int, *, timeout: float = 60.0) -> str | None:
    """Record a stop request for ``run_id`` (``runs.stop_requested_at``) from a short-lived child process,
    never in this one (see ``_RECORD_STOP``). Returns None when recorded, else why it was not."""
    repo = Path(__file__).resolve().parents[1]  # makes `tracker` importable without an installed package
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RECORD_STOP, str(db), str(int(run_id))],
            cwd=repo,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {done.returncode}"
    return None


def stop_pid(pid: int) -> bool:
    """Send SIGTERM to ``pid``; False when there is no such process (it already ended)."""
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


# How a process stopped by a signal exits: 128 + the signal's number (the tracker's SystemExit(143) on
# SIGTERM, 130 after Ctrl-C), or minus it when the signal killed it before any handler ran.
STOP_EXIT_CODES = frozenset({0, 128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT})


# A launch of the same command as one this recent (or still running) asks for a confirmation first.
RECENT_S = 60.0


def _new_log(path: Path):
    """``(path, file)``: a log file created for this job alone (``path``, else ``path`` with ``-2``, ``-3``,
    ... before its suffix). Two launches of one name within the same second, from one dashboard or two,
    would otherwise write into one file, each job's log showing the other's lines."""
    candidate, n = path, 1
    while True:
        try:
            return candidate, open(candidate, "xb")
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")


@dataclass
class Job:
    """One launch: queued, then running, then exited (or stopped, when asked to)."""

    spec: LaunchSpec
    log_path: Path
    sweep: str | None = None
    popen: subprocess.Popen | None = None
    started_at: float | None = None
    error: str | None = None  # why it could not start
    cancelled: bool = False  # removed from the queue before it started
    stop_requested: bool = False  # this dashboard sent it SIGTERM (its Stop button, or the Run page's)

    @property
    def state(self) -> str:
        if self.error is not None:
            return "failed to start"
        if self.popen is None:
            return "cancelled" if self.cancelled else "queued"
        code = self.popen.poll()
        if code is None:
            return "running"
        if self.stop_requested and code in STOP_EXIT_CODES:
            return "stopped"  # ended as asked: 143 is the tracker's exit code for a SIGTERM stop
        return "exited" if code == 0 else f"exited ({code})"

    @property
    def failed(self) -> bool:
        """Exited non-zero without being asked to stop: the run did not go on, its log says why."""
        return self.state.startswith("exited (")

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended (None before)."""
        return self.popen.poll() if self.popen is not None else None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None


class Launcher:
    """Starts processes from a queue with at most ``limit`` running per sweep.

    One instance per dashboard process (shared by all browser sessions), so a sweep keeps advancing while no
    page is open: a watcher thread per process starts the next queued job when one exits.
    """

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.jobs: list[Job] = []
        self._limits: dict[str, int] = {}  # concurrency limit per group (a sweep, or one single launch)
        self._singles = 0
        self._lock = threading.Lock()

    def submit(self, specs: Sequence[LaunchSpec], *, limit: int | None = None, sweep: str | None = None):
        """Queue ``specs`` and start as many as the concurrency ``limit`` (per sweep) allows."""
        if limit is not None and limit < 1:
            raise ValueError(f"the concurrency limit must be at least 1, got {limit!r}")
        try:
            # No parents=True: the logs sit next to the database, whose directory must already exist.
            self.log_dir.mkdir(exist_ok=True)
        except OSError as exc:  # e.g. the database sits in a read-only directory
            failed = [Job(spec=spec, log_path=self.log_dir / "-", sweep=sweep) for spec in specs]
            for job in failed:
                job.error = f"cannot create the log directory {self.log_dir}: {exc}"
            with self._lock:
                self.jobs.extend(failed)
            return failed
        if sweep is None:  # a single launch is its own group: it never waits for other launches
            self._singles += 1
            sweep = f"single-{self._singles}"
        new = []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i, spec in enumerate(specs):
            log = self.log_dir / f"{stamp}-{i:02d}-{_safe(spec.name)}.log"
            new.append(Job(spec=spec, log_path=log, sweep=sweep))
        with self._lock:
            self._limits[sweep] = limit or len(specs)
            self.jobs.extend(new)
        self._pump()
        return new

    def _pump(self) -> None:
        with self._lock:
            to_start = []
            for sweep, limit in self._limits.items():
                group = [j for j in self.jobs if j.sweep == sweep]
                running = sum(j.state == "running" for j in group)
                queued = [j for j in group if j.state == "queued"]
                to_start += queued[: max(0, limit - running)]
            for job in to_start:
                self._start(job)

    def _start(self, job: Job) -> None:
        spec = job.spec
        try:
            if spec.config_file is not None:
                Path(spec.config_file).parent.mkdir(parents=True, exist_ok=True)
                Path(spec.config_file).write_text(json.dumps(spec.config or {}, indent=2, default=str))
            # A GRADWATCH_CLIP exported in the dashboard's own shell would silently override the clip
            # setting of every run it launches: only the spec's own environment may set these.
            inherited = {k: v for k, v in os.environ.items() if k not in (CLIP_ENV, PARENT_ENV, RUN_ENV)}
            env = {**inherited, **spec.env}
            job.log_path, log = _new_log(job.log_path)
            with log:
                log.write(f"$ {spec.display()}\n".encode())
                log.flush()
                # A list argv and no shell: nothing in a spec or a name is ever interpreted by a shell.
                job.popen = subprocess.Popen(
                    list(spec.argv),
                    cwd=spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            job.started_at = time.time()
        except OSError as exc:
            job.error = f"{type(exc).__name__}: {exc}"
            return
        threading.Thread(
            target=self._watch, args=(job,), daemon=True, name=f"gradwatch-watch-{job.pid}"
        ).start()

    def _watch(self, job: Job) -> None:
        job.popen.wait()
        self._pump()

    def stop(self, job: Job) -> bool:
        """SIGTERM a running job (the trainer finishes its step, flushes and records ``stopped``); a queued
        job is cancelled instead. False when the job had already ended."""
        with self._lock:
            if job.popen is None:
                if job.error is None and not job.cancelled:
                    job.cancelled = True
                    return True
                return False
        if job.popen.poll() is not None:
            return False
        job.stop_requested = True  # before the signal: a fast exit is already a stop
        job.popen.send_signal(signal.SIGTERM)
        return True

    def mark_stopping(self, pid: int) -> None:
        """Note that the running job with ``pid`` is being sent SIGTERM from elsewhere in the dashboard (the
        Run page's Stop signals the recorded run's pid), so that its exit reads as a stop."""
        for job in self.jobs:
            if job.pid == pid and job.state == "running":
                job.stop_requested = True

    def same_command(self, spec: LaunchSpec, *, within_s: float = RECENT_S) -> list[Job]:
        """Jobs of this dashboard with the command ``spec`` (its argv, folder and environment) that are
        queued or running, or started less than ``within_s`` seconds ago: launching ``spec`` again is
        then most likely a double click, not a second run wanted."""
        now = time.time()
        return [
            j
            for j in self.jobs
            if (j.spec.argv, j.spec.cwd, dict(j.spec.env)) == (spec.argv, spec.cwd, dict(spec.env))
            and (j.state in ("queued", "running") or (j.started_at or 0) > now - within_s)
        ]

    def running_pids(self) -> set[int]:
        return {j.pid for j in self.jobs if j.state == "running"}
