"""The runs one process recorded (a GAN's generator and discriminator, one tracker each), and what this
database can tell of those it is missing.

A relaunch of such a process lists their ids (``GRADWATCH_PARENT_RUN=1,2``) and its k-th tracker continues
the k-th run (``tracker.env.resolve_lineage``). The tracker records no position in its process, nor how many
trackers it had: which runs belong together is told by host, pid and process start time alone. So a run of
the process that is not in this database (written to another file, or deleted) leaves no trace in it,
except one: the store gives each new run the next id after the largest (SQLite's ``max(rowid) + 1``), so a
run deleted between two runs of the process leaves its id unused. Whether it was this process's run or
another process's cannot be told; one deleted after the process's last run, or written to another file,
leaves nothing at all (the job then says, once it exits, that its process recorded more runs than it
relaunched: ``dashboard.jobs``). That was so of runs recorded before the tracker noted each tracker's place
in its process (``_gradwatch.position``); for those recorded since, :func:`slots` tells exactly which places
are empty, and the relaunch leaves them empty (``GRADWATCH_PARENT_RUN=,2``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

__all__ = ["missing_between", "same_process", "slots"]


def same_process(run: Mapping, runs: Iterable[Mapping]) -> list[dict]:
    """The runs of ``runs`` that the process which recorded ``run`` recorded (``run`` among them), in the
    order it created them (their ids): a GAN's generator and discriminator. A process is its host, pid and
    start time (``pid_started_at``: the same pid with another start time is another process, the pid
    reused); a run without a start time (recorded before it was, or off Linux) is alone."""
    mine = _process(run)
    group = {int(r["id"]): dict(r) for r in runs if mine is not None and _process(r) == mine}
    group[int(run["id"])] = dict(run)
    return [group[i] for i in sorted(group)]


def missing_between(group: Iterable[Mapping], ids: Iterable[int]) -> list[int]:
    """The run ids between the first and the last run of ``group`` (:func:`same_process`) that no run of
    the database (``ids``: all its run ids) holds: runs deleted since, any of which may have been one of
    the process's own. Empty for a group of one run."""
    mine = sorted(int(r["id"]) for r in group)
    if len(mine) < 2:
        return []
    present = {int(i) for i in ids}
    return [i for i in range(mine[0] + 1, mine[-1]) if i not in present]


def slots(group: Iterable[Mapping]) -> list[dict | None] | None:
    """The runs of ``group`` (:func:`same_process`) by their tracker's place in the process, ``None`` at a
    place whose run this database does not hold (a GAN's generator run written to another file): what a
    relaunch lists, so that each new tracker continues its own run and the one at an empty place records
    a run of its own. The tracker records its place from the second on (``_gradwatch.position``); None when
    that cannot tell: no run of the group recorded one (an older tracker's runs), or two claim one place."""
    group = [dict(r) for r in group]
    places = [_position(r) for r in group]
    if all(p is None for p in places) and len(group) > 1:
        return None
    by_place: dict[int, dict] = {}
    for run, place in zip(group, places, strict=True):
        place = place or 1  # (the first tracker records none)
        if place in by_place:
            return None
        by_place[place] = run
    return [by_place.get(k) for k in range(1, max(by_place) + 1)]


def _position(run: Mapping) -> int | None:
    config = run.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    notes = config.get("_gradwatch") if isinstance(config, Mapping) else None
    place = notes.get("position") if isinstance(notes, Mapping) else None
    return place if isinstance(place, int) and not isinstance(place, bool) and place >= 2 else None


def _process(run: Mapping) -> tuple | None:
    host, pid, started = run.get("host"), run.get("pid"), run.get("pid_started_at")
    if host is None or pid is None or started is None or any(_nan(v) for v in (pid, started)):
        return None
    return str(host), int(pid), float(started)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
