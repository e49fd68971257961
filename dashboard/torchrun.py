"""A run that torchrun started cannot be relaunched from the dashboard: the command to run by hand instead.

The dashboard starts one plain process, and torch.distributed in it would stop at once (``environment
variable RANK expected``), so such a relaunch is refused before it starts, with the torchrun command that
runs it with the new clipping (the Resume button is not offered for such runs either).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dashboard.commands import EnvChanges, hand_command, program_words
from dashboard.text import code_span

__all__ = ["refuse_torchrun"]


def refuse_torchrun(
    run: Mapping,
    python: str,
    argv: Sequence,
    *,
    noted: bool,
    typed: bool,
    cwd: str,
    env: Mapping[str, str],
    changes: EnvChanges | None,
) -> None:
    """ValueError with the command to run by hand when the run was one of torchrun's processes. Told by
    ``world_size`` > 1, or by the tracker's note ``torchrun`` (``noted``: a torchrun run of one process has
    world size 1). ``typed``: ``argv`` is the command as typed after the interpreter
    (:func:`dashboard.commands.program_words`); ``env`` and ``changes``: the relaunch's variables and the
    run's recorded environment, written into the command."""
    world_size = int(run.get("world_size") or 1)
    if world_size <= 1 and not noted:
        return
    words = program_words(argv, typed=typed)
    by_hand = hand_command(cwd, env, ["torchrun", f"--nproc-per-node={world_size}", *words], changes)
    ran = f"ran as {world_size} processes" if world_size > 1 else "was started by torchrun"
    how = (
        f"Run it yourself with torchrun, with the new clipping: {code_span(by_hand)} (on several machines: "
        "on each, with the --nnodes, --node-rank and rendezvous options of the first time)"
    )
    if not noted:  # recorded before the tracker noted torchrun, or a script that starts its processes
        mine = hand_command(cwd, env, [python, *argv], changes)
        how += f"; a script that starts its processes itself (torch.multiprocessing) as {code_span(mine)}"
    raise ValueError(
        f"Run #{run.get('id')} {ran} (torch.distributed): the dashboard starts one plain process, which "
        f"would stop at once (torch.distributed expects torchrun's RANK and WORLD_SIZE). {how}."
    )
