"""Which database the dashboard reads, and friendly messages when it cannot.

Resolution order (the same default as the tracker and the trainer):
``gradwatch-dashboard --db PATH`` (``streamlit run dashboard -- --db PATH``), else ``$GRADWATCH_DB``,
else ``./gradwatch.db``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dashboard.text import code_span, escape_markdown

__all__ = ["DEFAULT_DB", "friendly_error", "resolve_db_path"]

DEFAULT_DB = "gradwatch.db"


def resolve_db_path(argv: Sequence[str], environ: Mapping[str, str], cwd: str | os.PathLike) -> Path:
    """The database path from the script arguments, the environment, or the default, made absolute."""
    parser = argparse.ArgumentParser(prog="streamlit run dashboard --", add_help=False)
    parser.add_argument("--db")
    args, extra = parser.parse_known_args(list(argv))
    if extra:
        # Most often a path with spaces split by a shell (`make dashboard DB=...` unquoted): opening its
        # first word would show, or create, another database without a word.
        raise ValueError(
            f"unexpected argument{'s' if len(extra) > 1 else ''} after `--`: "
            f"{' '.join(repr(a) for a in extra)}. The dashboard takes one option, `--db PATH`; a path with "
            'spaces must be quoted (`--db "my runs/x.db"`), or set `$GRADWATCH_DB` instead.'
        )
    raw = args.db or environ.get("GRADWATCH_DB") or DEFAULT_DB
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = Path(cwd) / path
    return path


# Error class name -> (what happened, how to fix it). Keyed by name so this module needs no store import.
_HINTS = {
    "NotADatabase": (
        "is not a SQLite database (it may be corrupt, or another kind of file).",
        "Point the dashboard at a gradwatch database: `gradwatch-dashboard --db PATH`, "
        "or move this file away and start a new run.",
    ),
    "ForeignDatabase": (
        "is a SQLite database, but not one written by gradwatch.",
        "Use a separate file for gradwatch: `gradwatch-dashboard --db gradwatch.db`. "
        "The dashboard never modifies this file.",
    ),
    "SchemaTooNew": (
        "was written by a newer version of gradwatch than this dashboard understands.",
        "Upgrade gradwatch in this environment (`pip install --upgrade /path/to/gradwatch`, "
        "or in a checkout `git pull && make dashboard`).",
    ),
    "SchemaTooOld": (
        "was written by an older version of gradwatch whose schema this version does not migrate.",
        "Open it with the gradwatch release that wrote it, or record new runs into a new file.",
    ),
    "DatabaseLocked": (
        "is locked by another process (an exclusive lock or a long write transaction).",
        "Wait for the other process to finish, or close the program holding the lock, then reload the page.",
    ),
    "DirectoryNotFound": (
        "is in a directory that does not exist.",
        "Check the path given with `--db` or `$GRADWATCH_DB`.",
    ),
    "DatabaseCorrupt": (
        "is damaged: some of its pages cannot be read.",
        "Recover what can be read into a new file (`sqlite3 damaged.db .recover | sqlite3 recovered.db`) "
        "and open that with `--db`, or record new runs into a new file.",
    ),
    "ReadOnlyDirectory": (
        "is in a folder you cannot write, and SQLite must create its `-shm` file there even to read it.",
        "Make the folder writable for you, or copy the `.db` (with its `-wal`, if any) to a folder you can "
        "write and open the copy with `--db`.",
    ),
    "LeftoverJournal": (
        "does not exist, but the `-wal`/`-shm` files of a deleted database of that name are beside it.",
        "Close any program still using the old database, then move those files away (or delete them if "
        "you do not need the old runs), or choose another path with `--db`.",
    ),
    "DiskFull": (
        "is on a disk that is full.",
        "Free some space on that disk, or record into a database on another disk.",
    ),
    "ReadOnlyLocation": (
        "is in a location that cannot be written.",
        "Choose a writable location with `--db PATH` or `$GRADWATCH_DB`.",
    ),
    "DatabaseNotFound": (
        "does not exist yet.",
        "Start a run (for example with the demo button) or point `--db` at an existing database.",
    ),
}


def friendly_error(path: str | os.PathLike, exc: BaseException) -> str:
    """A message for ``st.error``: what is wrong with the database at ``path`` and how to fix it."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _HINTS:
            what, fix = _HINTS[cls.__name__]
            details = escape_markdown(exc)
            return f"The database {code_span(path)} {what}\n\n**How to fix:** {fix}\n\n_Details: {details}_"
    return (
        f"The database {code_span(path)} could not be read: {type(exc).__name__}: {escape_markdown(exc)}\n\n"
        "**How to fix:** check that the file is a gradwatch database "
        "and that no other program is rewriting it."
    )
