"""The command that started this process, recorded with each run so that the dashboard can start it again
with other clipping: the command line as typed, the folder it was started in, and whether torchrun ran it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["started_in", "typed_argv", "under_torchrun"]


def typed_argv() -> list[str] | None:
    """The command line as typed, when ``sys.argv`` lost part of it: ``-m pkg.train`` (replaced by the
    module's path, which then cannot run alone), ``-c code`` (argv is just ``["-c"]``), options such as -u.
    None when ``sys.argv`` says it all."""
    typed = list(getattr(sys, "orig_argv", [])[1:])
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
