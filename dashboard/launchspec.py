"""What one launch starts: a ``LaunchSpec`` holds a process's argument list, working folder and environment
(the dashboard's, changed into the one its run recorded, then the relaunch's own variables), and what the
job is to record (its parent runs and names), so that ``dashboard.jobs`` can start it and tell afterwards
whether it did. ``dashboard.launch`` builds them; ``display()`` is the command as a person would type it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dashboard.commands import EnvChanges, hand_command
from tracker.env import CLIP_ENV, PARENT_ENV, RUN_ENV

__all__ = ["LaunchSpec"]


# Set by the launch alone: one exported in the dashboard's own shell would silently override the clip
# setting or the lineage of every run it launches.
_OWN_VARIABLES = (CLIP_ENV, PARENT_ENV, RUN_ENV)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one process: argv list, working directory and environment (the
    dashboard's, changed into the run's recorded one, then ``env``)."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    parent_id: int | None = None
    clip: str | None = None
    config_file: str | None = None  # written just before starting (trainer relaunches)
    config: Mapping | None = None
    resumes: int | None = None  # the run this command continues from its checkpoint (resume_spec)
    db: str | None = None  # the database its run is recorded in (what tells whether it recorded one)
    # The dashboard's environment changed into the run's recorded one; None: not recorded (older runs).
    changes: EnvChanges | None = None
    # (parent id, name) of each run a relaunch of a process that recorded several is to record, in the
    # order it created them, (None, None) at a place whose run the database does not hold; () for one run
    # (``parent_id``, ``name``).
    lineage: tuple[tuple[int | None, str | None], ...] = ()

    @property
    def expected(self) -> tuple[tuple[int, str], ...]:
        """(parent id, name) of each run this command is to record as a relaunch (none for a resume)."""
        if self.lineage:
            return tuple((i, n) for i, n in self.lineage if i is not None)
        return () if self.parent_id is None else ((self.parent_id, self.name),)

    @property
    def empty_places(self) -> int:
        """How many of the relaunched process's trackers are to record runs of their own (empty places)."""
        return sum(i is None for i, _ in self.lineage)

    def child_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The process's environment, given the dashboard's."""
        inherited = {k: v for k, v in environ.items() if k not in _OWN_VARIABLES}
        return (self.changes or EnvChanges()).applied(inherited) | dict(self.env)

    def display(self, *, recorded_env: bool = True) -> str:
        """The exact command, as a user would type it in a POSIX shell (for display only; we never run it).
        Printable whatever it holds: a byte that is not UTF-8 or a control character is written ``$'\\xNN'``
        (:func:`dashboard.commands.shell_quote`). ``recorded_env=False`` leaves out the changes to the
        dashboard's environment: shorter to read, but not the command run (a page shows both)."""
        return hand_command(self.cwd, self.env, self.argv, self.changes if recorded_env else None)
