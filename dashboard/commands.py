"""Whether a recorded command can run again, and what a command line typed after ``python`` runs.

A relaunch re-executes a run's recorded command with its recorded Python in its recorded folder. Python
started on a command that cannot run (a deleted folder, interpreter or script; only ``-c`` or ``-`` recorded,
not the code) would exit at once with code 2, and one that needs a person or a notebook (a debugger, a
Jupyter kernel) would end without recording anything, so the command is refused before it starts, with what
is missing and how to fix it (for the latter, the command to run by hand). It reads the file system; for
``python -m pkg.mod`` it also asks the recorded Python, in the recorded folder, whether it finds ``pkg`` (one
short process, its answer kept while the folder is unchanged, 30 s at most): a module may live in that folder
or be installed, which only that interpreter can tell; that Python runs with the environment the relaunch
gives it (:func:`environment_changes`: the variables the run recorded, ``PYTHONPATH`` among them).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dashboard.text import code_span, printable
from tracker.command import RECORD_ENV_VAR, environment, is_recorded_name
from tracker.env import CLIP_ENV

__all__ = [
    "EnvChanges",
    "check_recorded_command",
    "environment_changes",
    "hand_command",
    "interpreter_target",
    "program_words",
    "recorded_path",
    "shell_quote",
]


# Interpreter options that take the next argument (or the rest of their own: -Wignore).
_OPTION_ARGS = frozenset("WX")


def interpreter_target(argv: Sequence[str]) -> tuple[str, str | None]:
    """What a command line typed after ``python`` runs: ``("module", name)`` for ``-m name``, ``("code",
    None)`` for ``-c``, ``("script", path)``, or ``("stdin", None)`` for ``-`` and for no script at all (an
    interactive or piped session). Options before it (``-u``, ``-W arg``, ``-X opt``, ``-uB``) are skipped."""
    kind, name, _ = _target(argv)
    return kind, None if kind == "code" else name


def _target(argv: Sequence[str]) -> tuple[str, str | None, int]:
    """:func:`interpreter_target` and where the program's own arguments begin in ``argv``."""
    i = 0
    while i < len(argv):
        arg = str(argv[i])
        if arg == "-":
            return "stdin", None, i + 1
        if arg == "--check-hash-based-pycs":
            i += 2
            continue
        if not arg.startswith("-") or arg == "--":
            if arg == "--":
                i += 1
                return ("script", str(argv[i]), i + 1) if i < len(argv) else ("stdin", None, i)
            return "script", arg, i + 1
        if arg.startswith("--"):  # --help, --version: no argument
            i += 1
            continue
        # A group of short options (-uB, -um pkg, -Wdefault): -c and -m end it, W and X take an argument.
        for j, letter in enumerate(arg[1:], start=1):
            rest = arg[j + 1 :]
            if letter in "cm":
                if rest:  # -mpkg.train, -cprint(1)
                    return ("code" if letter == "c" else "module"), rest, i + 1
                name = str(argv[i + 1]) if i + 1 < len(argv) else None
                return ("code" if letter == "c" else "module"), name, i + 2
            if letter in _OPTION_ARGS:
                i += 0 if rest else 1  # the argument is the rest of this one, else the next one
                break
        i += 1
    return "stdin", None, i


def program_words(argv: Sequence[str], *, typed: bool) -> list[str]:
    """What follows ``python`` without its own options: ``["train.py", args...]`` or ``["-m", "pkg.train",
    args...]`` (what ``torchrun`` takes after its options). ``typed``: as for :func:`check_recorded_command`.
    """
    if not typed:
        return [str(a) for a in argv]
    kind, name, rest = _target(argv)
    program = {"module": ["-m", name], "code": ["-c", name]}.get(kind, [name or "-"])
    return [*map(str, program), *map(str, argv[rest:])]


# A byte that is not UTF-8, as the store writes it in a TEXT column (docs/schema.md: ``caf\xe9``). Only
# bytes 0x80-0xff are ever escaped (ASCII is always valid UTF-8), in lower case (Python's backslashreplace).
_ESCAPED_BYTE = re.compile(rb"\\x([89a-f][0-9a-f])")


def recorded_path(text):
    """The path a recorded ``runs.cwd`` or ``runs.python`` names, as the OS wants it: the store writes a byte
    that is not UTF-8 as the four characters ``\\xNN``; they are turned back into that byte, held the way
    Python holds such a path (``os.fsdecode``: a surrogate escape), so ``os.path`` and ``subprocess`` reach
    the very folder. A path that exists as written (a name really holding ``\\xe9``) is kept as it is.
    None stays None."""
    if text is None:
        return None
    text = str(text)
    raw = _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogateescape"))
    if raw == text.encode("utf-8", "surrogateescape") or os.path.exists(text):
        return text
    return os.fsdecode(raw)


@dataclass(frozen=True)
class EnvChanges:
    """How a relaunch's environment differs from the dashboard's: the variables ``set`` to the run's
    recorded values, and those ``unset`` (the run did not have them)."""

    set: Mapping[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def applied(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` with these changes made."""
        return {k: v for k, v in environ.items() if k not in self.unset} | dict(self.set)

    def words(self) -> list[str]:
        """The changes as a person reads them: ``LR=0.5``, ``unset FOO``."""
        return [
            f"{shell_quote(k) if not _SHELL_NAME.fullmatch(k) else k}={shell_quote(v)}"
            for k, v in self.set.items()
        ] + [
            f"unset {shell_quote(k)}" for k in self.unset
        ]  # (shell_quote: a name no shell takes, or holding a byte that is not UTF-8, is shown quoted)

    def __len__(self) -> int:
        return len(self.set) + len(self.unset)


def environment_changes(recorded, environ: Mapping[str, str] | None = None) -> EnvChanges | None:
    """What a relaunch changes in the dashboard's environment (``environ``, else ``os.environ``) so that
    the command runs with the variables its run recorded (``runs.env``: a dict, or its JSON text): each
    recorded value that differs is set, and each variable the run would have recorded but did not have is
    unset. The others keep the dashboard's values: what is never recorded (``is_recorded_name``: secrets,
    the terminal session's variables, ``GRADWATCH_*``) and a value holding a URL with a password, which
    the run may have had too. Names and values are decoded as :func:`recorded_path` decodes a path (a byte
    that is not UTF-8 was recorded as ``\\xNN``). None when the run recorded no environment (before
    gradwatch recorded it, or ``GRADWATCH_RECORD_ENV=0``): the dashboard's is used as it is."""
    if isinstance(recorded, str):
        recorded = json.loads(recorded)
    if not isinstance(recorded, Mapping):
        return None
    environ = os.environ if environ is None else environ
    wanted = {recorded_path(str(k)): recorded_path(str(v)) for k, v in recorded.items()}
    wanted = {k: v for k, v in wanted.items() if is_recorded_name(k)}
    # What the tracker would record of the dashboard's environment (the same rules): absent from the run's.
    recordable = environment({k: v for k, v in environ.items() if k != RECORD_ENV_VAR}) or {}
    return EnvChanges(
        set={k: v for k, v in sorted(wanted.items()) if environ.get(k) != v},
        unset=tuple(sorted(k for k in recordable if k not in wanted)),
    )


def replayed_environment(run: Mapping, *, own_python: bool = False) -> tuple[EnvChanges | None, str | None]:
    """What a relaunch of ``run`` changes in the dashboard's environment (:func:`environment_changes`), and
    when it replays nothing, why: ``"not recorded"`` (NULL ``runs.env``: before gradwatch recorded it, or
    ``GRADWATCH_RECORD_ENV`` off), ``"another machine"`` (``runs.host`` is not this one: its HOME, PATH,
    TMPDIR or devices would be that machine's), ``"another user"`` (its HOME or USER is not the
    dashboard's). ``own_python``: the dashboard's interpreter runs it (the trainer), so the run's
    ``PYTHON*`` variables (another environment's paths, a PYTHONPATH that would defeat ``-P``) are not
    replayed."""
    recorded = run.get("env")
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except json.JSONDecodeError:
            recorded = None
    if not isinstance(recorded, Mapping):
        return None, "not recorded"
    host = run.get("host")
    if host and host != socket.gethostname():
        return None, "another machine"
    for name in ("HOME", "USER"):
        if name in recorded and name in os.environ and recorded_path(str(recorded[name])) != os.environ[name]:
            return None, "another user"
    if own_python:
        recorded = {k: v for k, v in recorded.items() if not str(k).startswith("PYTHON")}
    return environment_changes(recorded), None


def shell_quote(word: str) -> str:
    """``word`` as one word of a POSIX shell command, printable: ``shlex.quote``, except that a word holding
    a byte that is not UTF-8 (a surrogate escape, as Python holds one) or a control character is written in
    ``$'...'`` quotes (bash, zsh, ksh, POSIX 2024), each such byte or character as ``\\xNN``; a NUL, which
    no command can hold, likewise, so that it shows."""
    word = str(word)
    if word.isprintable() and not any("\udc80" <= c <= "\udcff" for c in word):
        return shlex.quote(word)
    out = []
    for c in word:
        if "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")  # the byte os.fsencode gives back
        elif c in "\\'":
            out.append("\\" + c)
        elif c.isprintable() or c == " ":
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "$'" + "".join(out) + "'"


def hand_command(
    cwd: str, env: Mapping[str, str], words: Sequence[str], changes: EnvChanges | None = None
) -> str:
    """``cd CWD && unset A B && K=V ... WORDS``: a command for a person to type, each word quoted
    (:func:`shell_quote`); ``changes`` (the run's recorded environment) before ``env``."""
    changes = changes or EnvChanges()
    assigned = {**changes.set, **env}
    command = " ".join(shell_quote(w) for w in words)
    if not all(map(_SHELL_NAME.fullmatch, [*changes.unset, *assigned])):
        # A name no shell takes in `NAME=value` or `unset` (`BASH_FUNC_module%%`, a dot, a byte that is not
        # UTF-8): env(1) sets and unsets any name, each a quoted word (nothing in it is run by the shell).
        parts = [f"-u {shell_quote(k)}" for k in changes.unset] + [
            shell_quote(f"{k}={v}") for k, v in assigned.items()
        ]
        return f"cd {shell_quote(cwd)} && env {' '.join(parts)} {command}"
    unset = f"unset {' '.join(changes.unset)} && " if changes.unset else ""
    pairs = " ".join(f"{k}={shell_quote(v)}" for k, v in assigned.items())
    return f"cd {shell_quote(cwd)} && {unset}{pairs + ' ' if pairs else ''}{command}"


_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# Debuggers that read their commands from the terminal: without one (a relaunch's standard input is empty)
# they quit at once, and the script records nothing.
DEBUGGERS = frozenset({"pdb", "ipdb", "pudb", "pdbpp", "debugpy"})  # (and their modules: pudb.run)
# What runs a Jupyter or IPython kernel (Colab's too): the code is in the notebook's cells, not in a command.
KERNELS = frozenset({"ipykernel_launcher", "ipykernel", "IPython", "colab_kernel_launcher"})
_KERNEL_FILE = re.compile(r"kernel-.*\.json")


def _kernel(kind: str, name: str | None, argv: Sequence[str]) -> bool:
    """Whether the command started a Jupyter/IPython kernel or an IPython shell: ``-m ipykernel_launcher
    -f .../kernel-<id>.json``, Colab's ``colab_kernel_launcher.py``, ``ipython``."""
    if kind == "module" and name and (name.split(".")[0] in KERNELS or name.startswith("google.colab")):
        return True
    if kind == "script" and name:
        base = os.path.basename(name)
        if base.removesuffix(".py") in KERNELS or base in ("ipython", "ipython3", "jupyter"):
            return True
    words = [str(a) for a in argv]
    pairs = zip(words, words[1:], strict=False)
    return any(a == "-f" and _KERNEL_FILE.fullmatch(os.path.basename(b)) for a, b in pairs)


def check_recorded_command(
    run: Mapping,
    python: str,
    argv: list,
    *,
    typed: bool = False,
    env: Mapping[str, str] | None = None,
    changes: EnvChanges | None = None,
) -> None:
    """Raise ValueError, saying what is missing and how to fix it, when the recorded command cannot run
    again: its working folder, its Python or its script (a ``.py`` path, resolved against the recorded
    working folder) is gone, or only ``-c`` / ``-`` was recorded (the code itself never was). Python would
    otherwise start and exit at once with code 2. Likewise a command that cannot run without a person or a
    notebook: under a debugger (``python -m pdb``: the command to run by hand is given, with ``env``, the
    relaunch's environment), or a Jupyter/IPython kernel. ``typed``: ``argv`` is the command line as typed
    after the interpreter (``sys.orig_argv[1:]``), else ``sys.argv``. ``python`` and the run's ``cwd`` are
    read with :func:`recorded_path`. ``changes``: the run's recorded environment
    (:func:`environment_changes`), which the ``-m`` module is looked for with (a ``PYTHONPATH=src``)."""
    problem = _problem(run, python, argv, typed=typed, env=env or {}, changes=changes or EnvChanges())
    if problem:
        raise ValueError(printable(problem))  # (paths and arguments may hold bytes that are not UTF-8)


def _problem(
    run: Mapping, python: str, argv: list, *, typed: bool, env: Mapping[str, str], changes: EnvChanges
) -> str | None:
    """What :func:`check_recorded_command` refuses the command for, else None."""
    run_id = run.get("id")
    shown_cwd = run.get("cwd")
    cwd = recorded_path(shown_cwd)
    python = recorded_path(python)
    if typed:
        kind, script = interpreter_target(argv)
    else:  # sys.argv: the script, or what is left of -c / - / an interactive session
        first = str(argv[0])
        kind, script = (
            ("code", None) if first == "-c" else ("stdin", None) if first in ("-", "") else ("script", first)
        )
    if kind == "module" and script and script.split(".")[0] in DEBUGGERS:
        by_hand = hand_command(cwd or ".", env, [python, *map(str, argv)], changes)
        return (
            f"Run #{run_id} was started under the debugger (`python -m {script} ...`): a relaunch runs "
            "without a terminal, so the debugger would read an empty standard input and quit before the "
            "script records anything. Run it yourself in a terminal, with the new clipping: "
            f"{code_span(by_hand)}; or relaunch a run of the script started without the debugger."
        )
    if _kernel(kind, script, argv):
        clip = env.get(CLIP_ENV, "norm:1.0")
        set_clip = f"import os; os.environ[{CLIP_ENV!r}] = {clip!r}"
        return (
            f"Run #{run_id} ran in a Jupyter or IPython kernel ({code_span(shlex.join(map(str, argv)))}): "
            "its code is in the notebook's cells, not in a command, so it cannot be relaunched from here. "
            f"In the notebook, run {code_span(set_clip)} before the cell that creates the GradTracker "
            "(or pass it clip=...), then run the cells again: the new run is recorded with that clipping."
        )
    if cwd and not os.path.isdir(cwd):
        return (
            f"The recorded working folder {shown_cwd} of run #{run_id} no longer exists, so its command "
            "cannot be run there again. Restore that folder (with the script in it) and reload this page, "
            "or relaunch a run recorded where the script now lives."
        )
    if os.path.isabs(python) and not os.path.exists(python):
        return (
            f"The recorded Python {python} of run #{run_id} no longer exists (a deleted virtual "
            "environment?). Recreate it at that path, or relaunch a run recorded with an existing Python."
        )
    if kind == "code" and not typed:
        return (
            f'Run #{run_id} was started with `python -c ...`, and only "-c" was recorded (sys.argv), not '
            "the code, so its command cannot be run again. Put the code in a script (or a module run with "
            "`python -m`), run it once with the tracker, and relaunch that run: a current gradwatch records "
            "the command as typed."
        )
    if kind == "stdin":
        return (
            f"Run #{run_id} was started from standard input or an interactive session (recorded command "
            f"{shlex.join(map(str, argv))!r}): there is no script to run again. Put the code in a script, "
            "run it once with the tracker, and relaunch that run."
        )
    if kind == "module" and not script:
        return f"The recorded command of run #{run_id} has `-m` without a module name."
    if kind == "module" and not _module_found(python, cwd or None, script, changes):
        return (
            f"The recorded module {script} of run #{run_id} cannot be found: {python} started in {shown_cwd} "
            f"finds no {script.split('.')[0]!r} (its folder moved or renamed, or uninstalled?), so Python "
            "would exit at once. Put it back where it was, or relaunch a run recorded where it now lives."
        )
    if kind == "script" and script.endswith(".py"):
        path = script if os.path.isabs(script) or not cwd else os.path.join(cwd, script)
        if not os.path.isfile(path):
            return (
                f"The recorded script {script} of run #{run_id} no longer exists ({path} is missing), "
                "so Python would exit at once. Put the script back at that path, or relaunch a run recorded "
                "where the script now lives."
            )
    return None


def _module_found(python: str, cwd: str | None, module: str, changes: EnvChanges) -> bool:
    """False only when ``python`` in ``cwd``, with the relaunch's environment, surely does not find
    ``module``'s top-level package."""
    try:  # renaming or moving a package folder changes its parent's mtime: a new answer
        changed = os.stat(cwd or ".").st_mtime_ns
    except OSError:
        changed = 0
    recorded = (tuple(changes.set.items()), changes.unset)
    return (
        _finds(python, cwd, module.split(".")[0], recorded, changed, int(time.monotonic() // 30)) is not False
    )


@functools.lru_cache(maxsize=64)
def _finds(
    python: str, cwd: str | None, package: str, recorded: tuple, _changed: int, _period: int
) -> bool | None:
    """Does ``python``, started in ``cwd`` as ``-m`` starts it (that folder first on sys.path) with the
    dashboard's environment changed as ``recorded`` says (:class:`EnvChanges`' set items and unset names),
    find the top-level ``package``? ``find_spec`` of a top-level name runs none of its code. None: cannot
    tell (the interpreter did not answer); the relaunch then goes ahead. The last two arguments expire the
    answer."""
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"
    env = EnvChanges(dict(recorded[0]), recorded[1]).applied(os.environ)
    try:
        done = subprocess.run(
            [python, "-c", probe, package], cwd=cwd, env=env, capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 3: False}.get(done.returncode)
