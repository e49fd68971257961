"""The processes the dashboard starts: a queue with a concurrency limit per sweep, one log file per job.

Each process gets its own session, so closing the dashboard (or a Ctrl-C in its terminal) does not kill a
training run; stopping is an explicit SIGTERM (``dashboard.stopping``). A job that cannot start says why and
is not tried again; one that exits without recording its run in the database (or one of its runs: a
relaunch of a process that recorded several) says so; so does one whose process recorded more runs than
it relaunches (the runs it continues may then be the wrong ones: ``dashboard.siblings``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dashboard.launchspec import LaunchSpec
from dashboard.stopping import STOP_EXIT_CODES
from dashboard.text import code_span, printable, safe_file_name
from tracker.store import Store, StoreError

__all__ = ["Job", "Launcher", "log_tail"]


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
    # What its database said once it exited: the run it recorded for each run it relaunches
    # (spec.expected), None where it recorded none; _UNKNOWN when that cannot be told (no database or
    # parent run to look for, a file that cannot be read).
    recorded: object = None
    # The other runs its process recorded since it started (Store.runs() rows): more trackers than runs
    # relaunched. Told with ``recorded``.
    unlisted: tuple = ()
    _looked: bool = False

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
        if code != 0:
            return f"exited ({code})"
        return _exit_state(self.recorded_runs(), self.spec.expected, self.unlisted, self.spec.empty_places)

    def recorded_runs(self):
        """The runs this job recorded (``Store.runs()`` rows), once it has exited: for each run it relaunches
        (``spec.expected``), a run of that parent created since it started, by its process or under its
        name, else None. ``_UNKNOWN`` when that cannot be told. Asked of the database once (with
        ``unlisted``)."""
        if not self._looked and self.popen is not None and self.popen.poll() is not None:
            self.recorded, self.unlisted = _find_runs(self)
            self._looked = True
        return self.recorded if self._looked else _UNKNOWN

    def recorded_run(self):
        """The run this job recorded as the relaunch of its own source run (``spec.parent_id``), as
        :meth:`recorded_runs` finds it: a row, None, or ``_UNKNOWN``."""
        runs = self.recorded_runs()
        if runs is _UNKNOWN:
            return _UNKNOWN
        for (parent, _), run in zip(self.spec.expected, runs, strict=True):
            if parent == self.spec.parent_id:
                return run
        return None

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


_UNKNOWN = "unknown"  # Job.recorded when the database cannot tell
_CLOCK_SLACK_S = 2.0  # created_at is the child's clock reading, started_at ours just after it started


def _find_runs(job: Job):
    """For each run the job relaunches (``spec.expected``: parent id and name), the newest run of that parent
    in the job's database that the job's process created, or that bears that name, since the job started;
    None where there is none. ``_UNKNOWN`` for a command whose run is not a relaunch's (a resume, the demo)
    or when the file cannot be read. With it, the other runs the job's process created since it started."""
    spec = job.spec
    if spec.db is None or not spec.expected or job.started_at is None:
        return _UNKNOWN, ()
    found = []
    since = job.started_at - _CLOCK_SLACK_S
    try:
        with Store.open(spec.db, readonly=True) as store:
            for parent, name in spec.expected:
                runs = store.children(parent)
                # The tracker records GRADWATCH_RUN stripped; a run its process made is its too (a name
                # it escaped).
                mine = runs[
                    (runs["created_at"] >= since)
                    & ((runs["pid"] == job.pid) | (runs["name"] == name.strip()))
                ]
                found.append(mine.iloc[-1].to_dict() if len(mine) else None)
            taken = {int(run["id"]) for run in found if run is not None}
            new = [int(i) for i, created in store.fingerprint() if created >= since and int(i) not in taken]
            others = store.runs(new) if new else None
    except (StoreError, OSError, sqlite3.Error):  # gone, unreadable, locked: say nothing rather than wrong
        return _UNKNOWN, ()
    if others is None:
        return found, ()
    # (The host too: another machine's process may have the same pid and write into this file.)
    others = others[(others["pid"] == job.pid) & (others["host"] == socket.gethostname())]
    return found, tuple(others.to_dict("records"))


NO_RUN = (
    "exited without recording a run: the script ended before it created its GradTracker, or created it "
    "disabled (enabled=False: a setting or environment variable of its own), or it needed what a relaunch "
    "does not give: input on its standard input (a config piped in, a prompt, a debugger), which is empty "
    "here. Its log may say which."
)


def _exit_state(runs, expected, unlisted=(), empty_places=0) -> str:
    """The state of a job that exited with code 0, told by the runs it recorded (:func:`_find_runs`) for
    the runs it relaunches (``expected``: parent id and name each), and the other runs its process recorded
    (``unlisted``; ``empty_places`` of them are the runs of its own that trackers at empty places record)."""
    if runs is _UNKNOWN:
        return "exited"
    if all(run is None for run in runs):
        return NO_RUN
    missing = [f"#{parent}" for (parent, _), run in zip(expected, runs, strict=True) if run is None]
    if missing:
        return (
            f"exited without recording the relaunch of run {', '.join(missing)}: its process recorded "
            f"{len(runs) - len(missing)} of the {len(runs)} runs it relaunches: it created fewer trackers "
            "than the first time (a setting of its own? a relaunch's standard input is empty). Its log may "
            "say which."
        )
    if len(unlisted) > empty_places:
        return _more_trackers(runs, expected, unlisted)
    empty = [run for run in runs if not run.get("n_steps")]
    if empty:
        ids = ", ".join(f"#{int(run['id'])}" for run in empty)
        its = f"its run {ids} recorded" if len(runs) == 1 else f"of its runs, {ids} recorded"
        return (
            f"exited; {its} no step: the script created its GradTracker but "
            "never called its step() (nothing to train on? a relaunch's standard input is empty: a config "
            "read from it is missing)"
        )
    return "exited"


def _more_trackers(runs, expected, unlisted) -> str:
    """A relaunch whose process created more trackers than the runs it relaunches: the runs of the first
    time that this database holds were not all of its runs (one deleted, or written to another file), or
    the script now creates more. Which tracker recorded which run cannot be told, so neither can whether
    the lineage is right: its k-th tracker took the k-th run listed."""

    def said(run) -> str:
        parent = run.get("parent_id")
        none = parent is None or (isinstance(parent, float) and math.isnan(parent))
        lineage = "no parent" if none else f"child of #{int(parent)}"
        return f"{code_span(run['name'])} (#{int(run['id'])}, {lineage})"

    more = "one more" if len(unlisted) == 1 else f"{len(unlisted)} more"
    listed = ", ".join(f"#{parent}" for parent, _ in expected)
    return (
        f"exited; its process recorded {len(runs) + len(unlisted)} runs, {more} than the {len(runs)} it "
        f"relaunches ({listed}): {', '.join(said(r) for r in unlisted)}. It created more trackers than this "
        "database holds runs of the process it relaunched: if one of those is missing here (deleted, or "
        "written to another file), its new runs continue the wrong ones from there on (its k-th tracker "
        "took the k-th run listed). Compare each new run's layers with its parent's (Run page) to tell."
    )


def _not_started(exc: Exception, spec: LaunchSpec) -> str:
    """Why ``spec`` could not start (``exc``), and what to do about it."""
    if isinstance(exc, ValueError) and "null byte" in str(exc):
        where = (
            f"the run name {spec.name!r}"
            if "\x00" in spec.name
            else "the recorded command, its folder or its environment"
        )
        fix = "Launch it under another name." if "\x00" in spec.name else "It cannot run as recorded."
        return f"{type(exc).__name__}: {exc}: {where} holds a NUL character, which no process takes. {fix}"
    if isinstance(exc, UnicodeError):
        return (
            f"{type(exc).__name__}: {exc}: the command holds text that is no file name or argument this "
            "system can pass (a lone surrogate). Launch it under another name, or run it from a shell."
        )
    return f"{type(exc).__name__}: {exc}"


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
            log = self.log_dir / f"{stamp}-{i:02d}-{safe_file_name(spec.name)}.log"
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
                running = sum(j.popen is not None and j.popen.poll() is None for j in group)
                queued = [j for j in group if j.popen is None and j.error is None and not j.cancelled]
                to_start += queued[: max(0, limit - running)]
            for job in to_start:
                self._start(job)

    def _start(self, job: Job) -> None:
        spec = job.spec
        try:
            if spec.config_file is not None:
                Path(spec.config_file).parent.mkdir(parents=True, exist_ok=True)
                Path(spec.config_file).write_text(json.dumps(spec.config or {}, indent=2, default=str))
            env = spec.child_env(os.environ)
            job.log_path, log = _new_log(job.log_path)
            with log:
                log.write(f"$ {spec.display()}\n".encode())  # (display() is printable, whatever spec holds)
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
        except Exception as exc:  # whatever keeps this one job from starting (a NUL, an unwritable log...)
            # is its alone. Left queued, each later launch would try it again and fail: none would start.
            job.error = printable(_not_started(exc, spec))
            return
        threading.Thread(
            target=self._watch, args=(job,), daemon=True, name=f"gradwatch-watch-{job.pid}"
        ).start()

    def _watch(self, job: Job) -> None:
        job.popen.wait()
        self._pump()
        job.recorded_run()  # here rather than in a page's rendering: it opens the database

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

        def command(s: LaunchSpec):
            return s.argv, s.cwd, dict(s.env), s.changes

        return [
            j
            for j in self.jobs
            if command(j.spec) == command(spec)
            and (j.state in ("queued", "running") or (j.started_at or 0) > now - within_s)
        ]

    def running_pids(self) -> set[int]:
        return {j.pid for j in self.jobs if j.state == "running"}
