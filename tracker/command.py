"""The command that started this process, recorded with each run so that the dashboard can start it again
with other clipping: the command line as typed, the folder it was started in, its environment variables
(those that are not secrets or the terminal session's), and whether torchrun ran it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

__all__ = ["RECORD_ENV_VAR", "environment", "is_recorded_name", "started_in", "typed_argv", "under_torchrun"]

RECORD_ENV_VAR = "GRADWATCH_RECORD_ENV"  # "0": record no environment variable

# Never recorded: what looks like a secret (a database file gets shared), by name or by value (a URL with a
# password in it). Matched anywhere in the name, case-insensitively: API_KEY, HF_TOKEN, PGPASSWORD, ...
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASS|KEY|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|SIGNATURE|CERT", re.I
)
_SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# Nor the terminal session's, the launchers' own, or what a relaunch sets itself: another session runs
# the relaunch, and these would point it at a dead display, agent, kernel or rendezvous.
_SESSION_NAMES = frozenset(
    "PWD OLDPWD SHLVL _ TERM COLORTERM LS_COLORS LSCOLORS PS1 PS2 PS4 PROMPT_COMMAND DISPLAY WAYLAND_DISPLAY "
    "XAUTHORITY MAIL LINES COLUMNS TMUX TMUX_PANE STY WINDOW SHELL_SESSION_ID RANK LOCAL_RANK WORLD_SIZE "
    "LOCAL_WORLD_SIZE GROUP_RANK GROUP_WORLD_SIZE ROLE_NAME ROLE_RANK ROLE_WORLD_SIZE MASTER_ADDR "
    "MASTER_PORT".split()
)
_SESSION_PREFIXES = (
    "GRADWATCH_", "SSH_", "DBUS_", "XDG_SESSION", "XDG_RUNTIME", "XDG_SEAT", "XDG_VTNR", "TERM_", "HIST",
    "TORCHELASTIC_", "JPY_", "JUPYTER_", "VSCODE_", "PYCHARM_", "KITTY_", "ITERM_", "WT_", "STREAMLIT_",
)  # fmt: skip


def is_recorded_name(name: str) -> bool:
    """Whether a variable of this name is recorded with a run (when set), so restored by a relaunch."""
    return not (_SECRET_NAME.search(name) or name in _SESSION_NAMES or name.startswith(_SESSION_PREFIXES))


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The variables recorded with a run: all but secrets and the session's (``is_recorded_name``), sorted;
    None when ``GRADWATCH_RECORD_ENV=0``. A relaunch replays them: a script that reads LR or DATA_DIR
    from its environment, or needs PYTHONPATH, runs as it ran, not with the dashboard's."""
    environ = os.environ if environ is None else environ
    if environ.get(RECORD_ENV_VAR, "").strip() == "0":
        return None
    return {
        name: value
        for name, value in sorted(environ.items())
        if is_recorded_name(name) and not _SECRET_VALUE.search(value)
    }


def typed_argv() -> list[str] | None:
    """The command line as typed, when ``sys.argv`` lost part of it: ``-m pkg.train`` (replaced by the
    module's path, which then cannot run alone), ``-c code`` (argv is just ``["-c"]``), options such as -u.
    None when ``sys.argv`` says it all."""
    typed = list(getattr(sys, "orig_argv", [])[1:])
    if "--multiprocessing-fork" in typed:
        # A child started by multiprocessing's "spawn" (torch.multiprocessing.spawn, DataLoader workers): its
        # command line runs multiprocessing's stub, and sys.argv is its parent's, which is what reruns it.
        return None
    return typed if typed and typed != list(sys.argv) else None


def started_in() -> str:
    """The folder the process was started in, which the recorded command line is relative to.

    Not ``os.getcwd()`` alone: a program may change folders before it creates its tracker (Hydra before 1.2
    runs the task in ``outputs/<date>/<time>``), and the script's relative path would then name nothing.
    A script run as ``python path/to/train.py`` has ``__main__.__file__`` = start folder + ``/`` + that
    path; ``python -m pkg.train`` puts its start folder first on ``sys.path`` (unless -P/-I).
    """
    main = sys.modules.get("__main__")
    path, spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    argv0 = sys.argv[0] if sys.argv else ""
    if spec is None and isinstance(path, str) and os.path.isabs(path) and argv0 and not os.path.isabs(argv0):
        if path.endswith(os.sep + argv0):
            return path[: -len(argv0) - 1] or os.sep
    origin = getattr(spec, "origin", None)
    if isinstance(origin, str) and not sys.flags.safe_path and not sys.flags.isolated and sys.path:
        # Only when the module was found there: the program may have put a folder of its own first since.
        first = sys.path[0]
        if os.path.isabs(first) and origin.startswith(os.path.join(first, "")):
            return first
    return os.getcwd()


def under_torchrun() -> bool:
    """True in a process that torchrun (torch.distributed.run, torchelastic) started: a relaunch must go
    through torchrun too, also with one process (``--nproc-per-node 1``: world size 1)."""
    return "TORCHELASTIC_RUN_ID" in os.environ
