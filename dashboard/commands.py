"""Whether a recorded command can run again, and what a command line typed after ``python`` runs.

A relaunch re-executes a run's recorded command with its recorded Python in its recorded folder. Python
started on a command that cannot run (a deleted folder, interpreter or script; only ``-c`` or ``-`` recorded,
not the code) would exit at once with code 2, so the command is refused before it starts, with what is missing
and how to fix it. It reads the file system; for ``python -m pkg.mod`` it also asks the recorded Python, in
the recorded folder, whether it finds ``pkg`` (one short process, its answer kept while the folder is
unchanged, 30 s at most): a module may live in that folder or be installed, which only that interpreter can
tell.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence

__all__ = ["check_recorded_command", "interpreter_target"]


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


def check_recorded_command(run: Mapping, python: str, argv: list, *, typed: bool = False) -> None:
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
    if kind == "module" and not _module_found(python, cwd or None, script):
        raise ValueError(
            f"The recorded module {script} of run #{run_id} cannot be found: {python} started in {cwd} "
            f"finds no {script.split('.')[0]!r} (its folder moved or renamed, or uninstalled?), so Python "
            "would exit at once. Put it back where it was, or relaunch a run recorded where it now lives."
        )
    if kind == "script" and script.endswith(".py"):
        path = script if os.path.isabs(script) or not cwd else os.path.join(str(cwd), script)
        if not os.path.isfile(path):
            raise ValueError(
                f"The recorded script {script} of run #{run_id} no longer exists ({path} is missing), "
                "so Python would exit at once. Put the script back at that path, or relaunch a run recorded "
                "where the script now lives."
            )


def _module_found(python: str, cwd: str | None, module: str) -> bool:
    """False only when ``python`` in ``cwd`` surely does not find ``module``'s top-level package."""
    try:  # renaming or moving a package folder changes its parent's mtime: a new answer
        changed = os.stat(cwd or ".").st_mtime_ns
    except OSError:
        changed = 0
    return _finds(python, cwd, module.split(".")[0], changed, int(time.monotonic() // 30)) is not False


@functools.lru_cache(maxsize=64)
def _finds(python: str, cwd: str | None, package: str, _changed: int, _period: int) -> bool | None:
    """Does ``python``, started in ``cwd`` as ``-m`` starts it (that folder first on sys.path), find the
    top-level ``package``? ``find_spec`` of a top-level name runs none of its code. None: cannot tell (the
    interpreter did not answer); the relaunch then goes ahead. The last two arguments expire the answer."""
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"
    try:
        done = subprocess.run([python, "-c", probe, package], cwd=cwd, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 3: False}.get(done.returncode)
