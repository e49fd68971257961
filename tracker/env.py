"""Where the tracker's settings come from when the environment overrides the program.

``GRADWATCH_DB`` chooses the database when the program passes none (and, in a relaunch, whatever it passes:
the parent run id names a run of that file). ``GRADWATCH_CLIP`` replaces whatever clip
setting the program passes: this is how the dashboard relaunches anyone's script with other clipping and no
code change, so the run records that the environment decided (``clip_source="env"``).
``GRADWATCH_RUN`` and ``GRADWATCH_PARENT_RUN`` likewise replace the run name and the parent run id, so such a
relaunch is recorded under the name the dashboard chose and linked to the run it came from. A process that
recorded several runs (a GAN's two trackers) is relaunched with one parent id per run, in the order it
created them (``GRADWATCH_PARENT_RUN=4,5``), and as many names (``GRADWATCH_RUN`` a JSON list): its k-th
tracker continues the k-th.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
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
    "resolve_lineage",
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
    ids = _parent_ids()
    if ids is None:
        return parent_id
    if len(ids) > 1:
        raise ValueError(
            f"{PARENT_ENV} lists several runs: use resolve_lineage(), which takes one per tracker"
        )
    return ids[0]


_created = 0  # enabled trackers this process has created: each one's position in it is its count (1, 2, ...)
_created_lock = threading.Lock()


def resolve_lineage(run: str | None, parent_id: int | None) -> tuple[str | None, int | None, int]:
    """(run name, parent id, position) of a new tracker: the name and parent are the program's, unless the
    environment says otherwise; ``position`` is the tracker's place among those this process created
    (1 for the first), which the run records (``_gradwatch.position``, from 2 on) for a relaunch to match.

    With one parent id in ``$GRADWATCH_PARENT_RUN``, every tracker of the process takes it and the name in
    ``$GRADWATCH_RUN``. With a list (``4,5``: a relaunch of a process that recorded several runs),
    ``$GRADWATCH_RUN`` is a JSON list of as many names and the k-th tracker created takes the k-th of each;
    an empty place (``4,,6`` with ``null`` for its name: a run of that process this database does not hold)
    and one beyond the list keep the program's name and parent (the latter with a warning). ``ValueError``
    names the variable when they do not fit."""
    global _created
    with _created_lock:
        _created += 1
        position = _created
    ids = _parent_ids()
    if ids is None or len(ids) == 1:
        return resolve_run_name(run), ids[0] if ids else parent_id, position
    raw = os.environ.get(RUN_ENV, "").strip()
    try:
        names = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        names = None
    fits = isinstance(names, list) and len(names) == len(ids)
    if not fits or not all(
        isinstance(n, str) if i is not None else n is None for n, i in zip(names, ids, strict=True)
    ):
        example = '["gen · norm:0.5", "disc · norm:0.5"]'
        raise ValueError(
            f"{PARENT_ENV} lists {len(ids)} runs, so {RUN_ENV} must be a JSON list of {len(ids)} names, null "
            f"where {PARENT_ENV} has an empty place (e.g. {RUN_ENV}='{example}'), got {raw!r}"
        )
    k = position - 1
    if k >= len(ids):
        warnings.warn(
            f"{PARENT_ENV}={os.environ[PARENT_ENV].strip()}: this relaunch creates more trackers than the "
            f"process it relaunches recorded runs ({len(ids)}); this one records a run of its own, with no "
            "parent.",
            stacklevel=3,
        )
        return run, parent_id, position
    if ids[k] is None:  # (that run of the process is not in this database: this one is a run of its own)
        return run, parent_id, position
    return names[k].strip() or run, ids[k], position


def _parent_ids() -> list[int | None] | None:
    """The ids in ``$GRADWATCH_PARENT_RUN``; None for an empty place in a list (``4,,6``)."""
    value = os.environ.get(PARENT_ENV, "").strip()
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")]
    several = len(parts) > 1
    if not all(
        (p.isascii() and p.isdigit() and int(p) >= 1) or (several and not p) for p in parts
    ) or not any(parts):
        raise ValueError(
            f"{PARENT_ENV}={value!r}: expected a run id (a positive integer), e.g. {PARENT_ENV}=3, or a "
            f"comma-separated list of them, e.g. {PARENT_ENV}=3,4 (an empty place for a run not in the "
            f"database: {PARENT_ENV}=3,,5)"
        )
    return [int(p) if p else None for p in parts]


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
