"""The command that started this process, recorded with each run so that the dashboard can start it again
with other clipping: the command line as typed, the folder it was started in, its environment variables
(those that are not secrets or the terminal session's), and whether torchrun ran it.
"""

from __future__ import annotations

import os
import re
import site
import sys
from collections.abc import Mapping

__all__ = [
    "RECORD_ENV_VAR",
    "environment",
    "is_recorded_name",
    "is_secret_value",
    "started_in",
    "typed_argv",
    "under_torchrun",
]

RECORD_ENV_VAR = "GRADWATCH_RECORD_ENV"  # 0 / false / no / off: record no environment variable
_OFF = frozenset({"0", "false", "no", "off"})

# Never recorded: what looks like a secret (a database file gets shared), by name or by value. A name is
# split into words (HF_TOKEN: HF, TOKEN), so that TOKENIZERS_PARALLELISM, MAX_TOKENS, AUTHOR, PASSES or
# KEYBOARD_LAYOUT are kept; a few words are looked for anywhere in it (PGPASSWORD, MYAPIKEY).
_SECRET_WORDS = frozenset(
    "TOKEN SECRET SECRETS PASS PASSWORD PASSWD PWD PW PASSPHRASE KEY KEYS APIKEY CREDENTIAL CREDENTIALS "
    "CREDS AUTH COOKIE COOKIES PRIVATE SIGNATURE SIG JWT BEARER PAT WEBHOOK DSN SAS OTP SALT CONNECTION "
    "CONNSTR NETRC".split()
)
_SECRET_PARTS = re.compile(
    r"PASSWORD|PASSWD|PASSPHRASE|SECRET|APIKEY|API_KEY|ACCESSKEY|ACCESS_KEY|PRIVATEKEY|PRIVATE_KEY|"
    r"CREDENTIAL|WEBHOOK|AUTHTOKEN|ACCESSTOKEN|APITOKEN",
    re.I,
)
_SECRET_VALUE = re.compile(
    r"://(?:[^/\s@]*|[^/\s@]*:[^\s@]*)@"  # a URL with a user part (a password, a token); from "://" only:
    # a pattern that may start anywhere ("[a-z]+://") is quadratic in a long value
    r"|eyJ[\w-]{5,}\.[\w-]{5,}\."  # a JSON web token
    r"|-----BEGIN|\"private_key\""  # key material, a service account's JSON
    r"|(?:AccountKey|SharedAccessKey|SharedAccessSignature|Password|Pwd)=|[?&]sig="  # connection strings
    r"|hooks\.slack\.com|discord(?:app)?\.com/api/webhooks"  # a webhook URL is its own secret
    r"|\b(?:ghp|gho|ghu|ghs|github_pat|glpat|xox[abprs]|npm)_?[\w-]{16,}|\bhf_\w{20,}|\bsk-[\w-]{20,}"
    r"|\bAKIA[0-9A-Z]{16}|\bAIza[\w-]{30,}",
    re.I,
)
# Nor the terminal session's, the launchers' own, or what a relaunch sets itself: another session runs
# the relaunch, and these would point it at a dead display, agent, kernel, rendezvous or job allocation.
_SESSION_NAMES = frozenset(
    "PWD OLDPWD SHLVL _ TERM COLORTERM LS_COLORS LSCOLORS PS1 PS2 PS4 PROMPT_COMMAND DISPLAY WAYLAND_DISPLAY "
    "XAUTHORITY MAIL LINES COLUMNS TMUX TMUX_PANE STY WINDOW SHELL_SESSION_ID RANK LOCAL_RANK WORLD_SIZE "
    "LOCAL_WORLD_SIZE GROUP_RANK GROUP_WORLD_SIZE ROLE_NAME ROLE_RANK ROLE_WORLD_SIZE MASTER_ADDR "
    "MASTER_PORT NODE_RANK MAKEFLAGS MFLAGS MAKELEVEL "
    "MPLBACKEND WANDB_SERVICE TORCHINDUCTOR_CACHE_DIR".split()
)  # (the last three are set by a library in the process itself: Streamlit, wandb's service, torch)
_LONGEST = 4096  # characters: a longer value is not recorded (a relaunch's command line has a limit)
_SESSION_PREFIXES = (
    "GRADWATCH_", "SSH_", "DBUS_", "XDG_SESSION", "XDG_RUNTIME", "XDG_SEAT", "XDG_VTNR", "TERM_", "HIST",
    "TORCHELASTIC_", "JPY_", "JUPYTER_", "VSCODE_", "PYCHARM_", "KITTY_", "ITERM_", "WT_", "STREAMLIT_",
    "SLURM_", "OMPI_", "PMI_", "PMIX_", "MV2_", "I_MPI_",
)  # fmt: skip


def is_recorded_name(name: str) -> bool:
    """Whether a variable of this name is recorded with a run (when set), so restored by a relaunch."""
    if name in _SESSION_NAMES or name.startswith(_SESSION_PREFIXES) or _SECRET_PARTS.search(name):
        return False
    return not _SECRET_WORDS.intersection(re.split(r"[_.\-]+", name.upper()))


def is_secret_value(value: str) -> bool:
    """Whether a value looks like a secret whatever its name: a URL with a user part, a JSON web token, key
    material, a connection string's key, a webhook URL, a token of a well-known service (GitHub, GitLab,
    Slack, npm, Hugging Face, OpenAI, AWS, Google)."""
    return bool(_SECRET_VALUE.search(value))


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The variables recorded with a run: all but secrets and the session's (``is_recorded_name``,
    ``is_secret_value``), sorted; None when ``GRADWATCH_RECORD_ENV`` is 0, false, no or off. A relaunch
    replays them: a script that reads LR or DATA_DIR from its environment, or needs PYTHONPATH, runs as it
    ran, not with the dashboard's."""
    environ = os.environ if environ is None else environ
    if environ.get(RECORD_ENV_VAR, "").strip().lower() in _OFF:
        return None
    return {
        name: value
        for name, value in sorted(environ.items())
        if len(value) <= _LONGEST and is_recorded_name(name) and not is_secret_value(value)
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
    ``python path/to/train.py`` has ``__main__.__file__`` = start folder + ``/`` + that path (normalised in a
    spawned child); ``python app.pyz`` or ``python appdir`` has ``sys.path[0]`` = start folder + ``/`` + it;
    ``python -m pkg.train`` puts its start folder on ``sys.path``, as the entry the module was found in.
    """
    main = sys.modules.get("__main__")
    path, spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and not os.path.isabs(argv0):
        if spec is None and isinstance(path, str):
            start = _strip(path, argv0)
            if start is not None:
                return start
        if spec is not None and spec.name == "__main__" and sys.path:  # a folder or a zip file run
            start = _strip(sys.path[0], argv0)
            if start is not None:
                return start
    origin = getattr(spec, "origin", None)
    if spec is not None and spec.name != "__main__" and isinstance(origin, str):
        # -m: the sys.path entry the module was found in, by its dotted name. Not site-packages (an
        # installed package says nothing of the start folder), and not a folder above it that the program
        # put on sys.path since ("make the repo root importable").
        relative = os.path.join(*spec.name.split("."))
        installed = {os.path.normpath(p) for p in (*site.getsitepackages(), site.getusersitepackages())}
        # Nor, after the first entry (where -m puts the start folder), one of $PYTHONPATH: the module could
        # be found there from any folder.
        on_path = {os.path.normpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
        for k, entry in enumerate(sys.path):
            where = os.path.normpath(entry) if os.path.isabs(entry) else None
            if where is None or where in installed or (k > 0 and where in on_path):
                continue
            module = os.path.join(entry, relative)
            if os.path.normpath(origin) in (module + ".py", os.path.join(module, "__main__.py")):
                return entry
    return os.getcwd()


def _strip(path: str, relative: str) -> str | None:
    """The folder F with F/relative == path (both as written, or both normalised), or None."""
    if not os.path.isabs(path):
        return None
    for p, r in ((path, relative), (os.path.normpath(path), os.path.normpath(relative))):
        if not r.startswith(".." + os.sep) and p.endswith(os.sep + r):
            return p[: -len(r) - 1] or os.sep
    return None


def under_torchrun() -> bool:
    """True in a process that torchrun (torch.distributed.run, torchelastic) started: a relaunch must go
    through torchrun too, also with one process (``--nproc-per-node 1``: world size 1)."""
    return "TORCHELASTIC_RUN_ID" in os.environ
