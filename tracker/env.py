"""Where the tracker's settings come from when the environment overrides the program.

``GRADWATCH_DB`` chooses the database when the program passes none (and, in a relaunch, whatever it passes:
the parent run id names a run of that file). ``GRADWATCH_CLIP`` replaces whatever clip
setting the program passes: this is how the dashboard relaunches anyone's script with other clipping and no
code change, so the run records that the environment decided (``clip_source="env"``).
``GRADWATCH_RUN`` and ``GRADWATCH_PARENT_RUN`` likewise replace the run name and the parent run id, so such a
relaunch is recorded under the name the dashboard chose and linked to the run it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLIP_ENV",
    "DB_ENV",
    "DEFAULT_DB",
    "PARENT_ENV",
    "RUN_ENV",
    "ClipChoice",
    "is_relaunch",
    "resolve_clip",
    "resolve_db",
    "resolve_parent",
    "resolve_run_name",
]

DB_ENV = "GRADWATCH_DB"
CLIP_ENV = "GRADWATCH_CLIP"
RUN_ENV = "GRADWATCH_RUN"
PARENT_ENV = "GRADWATCH_PARENT_RUN"
DEFAULT_DB = "gradwatch.db"


def resolve_db(db: str | os.PathLike[str] | None) -> Path:
    """The database path: ``db`` when given, else ``$GRADWATCH_DB``, else ``./gradwatch.db``. A leading ``~``
    is expanded, as the dashboard and a shell do (a quoted ``GRADWATCH_DB='~/runs.db'`` reaches us as is).

    In a relaunch (``$GRADWATCH_PARENT_RUN`` set) ``$GRADWATCH_DB``, when set, wins over ``db``: the parent
    id is a run of that file, which is the one the dashboard that started us reads. A script that passes
    its own path (possibly a copy of the file, or a path from another machine) would otherwise record the
    new run where the dashboard never shows it, linked to an unrelated run of the same id."""
    env = os.environ.get(DB_ENV)
    if db is not None and not (env and is_relaunch()):
        return Path(db).expanduser()
    return Path(env or DEFAULT_DB).expanduser()


def resolve_run_name(run: str | None) -> str | None:
    """``$GRADWATCH_RUN`` when set and non-empty (it wins, like ``GRADWATCH_CLIP``), else ``run``."""
    return os.environ.get(RUN_ENV, "").strip() or run


def is_relaunch() -> bool:
    """Whether this process was started as a relaunch of a recorded run (``$GRADWATCH_PARENT_RUN`` set)."""
    return bool(os.environ.get(PARENT_ENV, "").strip())


def resolve_parent(parent_id: int | None) -> int | None:
    """``$GRADWATCH_PARENT_RUN`` when set and non-empty (it wins), else ``parent_id``.

    Raises ``ValueError`` naming the variable when it is not a positive integer run id.
    """
    value = os.environ.get(PARENT_ENV, "").strip()
    if not value:
        return parent_id
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{PARENT_ENV}={value!r}: expected a run id (a positive integer), e.g. {PARENT_ENV}=3"
        )
    return int(value)


@dataclass(frozen=True)
class ClipChoice:
    """The strategy in force, where it came from, and what the program asked for (its spec string)."""

    strategy: Any
    source: str  # "argument" or "env"
    requested: str


def resolve_clip(clip: Any) -> ClipChoice:
    """Parse ``clip`` (a spec string or a strategy object), unless ``$GRADWATCH_CLIP`` is set and non-empty.

    Raises ``ValueError`` (``tracker.clipping.ClipSpecError``) naming the bad spec; for the environment
    variable the message also names the variable, since the user never typed it into the program.
    """
    from tracker.clipping import parse_clip

    requested = _parse(clip, parse_clip)
    override = os.environ.get(CLIP_ENV, "").strip()
    if not override:
        return ClipChoice(requested, "argument", requested.spec)
    try:
        strategy = parse_clip(override)
    except ValueError as e:
        raise type(e)(f"{CLIP_ENV}={override!r}: {e}") from None
    return ClipChoice(strategy, "env", requested.spec)


def _parse(clip: Any, parse_clip: Any) -> Any:
    if clip is None:
        return parse_clip("none")
    if isinstance(clip, str):
        return parse_clip(clip)
    if callable(getattr(clip, "clip_", None)) and isinstance(getattr(clip, "spec", None), str):
        return clip
    raise ValueError(
        f"clip must be a spec string (e.g. 'none', 'norm:1.0', 'autoclip:10') or a strategy from "
        f"tracker.clipping, got {clip!r}"
    )
