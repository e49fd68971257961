"""Checkpoints: what ``--checkpoint PATH`` saves and ``--resume`` continues from.

A checkpoint is saved after every epoch, every ``--checkpoint-every`` optimizer steps, and when training
stops early (a stop request, ``--max-steps``). It holds everything the steps after it depend on: the
weights, the optimizer, LR schedule and AMP scaler states, the random state, the position in the data
(``epoch``, and ``batch``: how many of that epoch's micro-batches were taken) and the tracker's
``state_dict()`` so the same run in the database goes on (``GradTracker(..., resume=...)``). Resumed with the
same settings, training takes the same steps as a run that never stopped (tested: the database rows and
weights match); a grown ``--epochs`` / ``--max-steps`` also moves the end of a decaying LR schedule. The same
settings are not always the same data: ``corpus`` holds each split's fingerprint (its files, their sizes and
modification times, labels or transcripts) and size, and a corpus changed on disk since is refused.

The position is exact without reading the data again: ``random["loader"]`` is the shuffling generator's
state at the start of the epoch, so the resumed epoch draws the same order, and its first ``batch``
batches of indices are skipped before any sample is loaded. ``random["torch"]`` (and ``"cuda"``) is the
global state at the save: mid-epoch it is restored after the epoch's loader iterator is made, which is
when the uninterrupted run had made it.

The file is written to ``PATH.tmp``, flushed to the disk (fsync) and renamed over ``PATH``: a job killed while
saving, or a machine losing power, leaves the previous checkpoint whole. It is read with
``torch.load(weights_only=True)``: tensors, numbers and strings only; before that, the CRC-32 that
``torch.save``'s zip archive keeps for each record is checked (``torch.load`` does not), so that bytes
damaged inside the tensors (a disk error, a bad copy) are refused instead of trained on; ~40 ms per 100 MB
(measured; torch.load itself takes ~150 ms).
"""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "MUST_MATCH",
    "check_compatible",
    "check_same_corpus",
    "check_world_size",
    "corpus_record",
    "load",
    "random_state",
    "rank_random_state",
    "restore_global_state",
    "restore_loader_state",
    "save",
]

FORMAT = "gradwatch-trainer-checkpoint-1"
# Settings a checkpoint cannot be continued under when they differ, checked before anything is loaded so that
# the refusal names them. Others (epochs and max_steps, which may grow; eval cadence, --every, device...)
# may change between the two processes.
MUST_MATCH = (
    # the data: other tensors or other batches
    "task",
    "data",
    "data_path",
    "sc_variant",
    "corpus_size",
    "data_seed",
    "specaugment",
    # the model's tensors and forward pass
    "model",
    "hidden_size",
    "num_layers",
    "rnn_type",
    "dropout",
    # the optimizer and LR schedule: their restored states carry the saved values, so a change would be
    # silently ignored (the LR restored from the checkpoint, not --lr)
    "optimizer",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "weight_decay",
    "momentum",
    # the batches and their order
    "batch_size",
    "grad_accum",
    "seed",
    # what the recorded run is: a run holds one clipping strategy (a fork may differ), and a --no-track
    # checkpoint has no recorded run to continue (nor does a tracked run go on unrecorded)
    "clip",
    "no_track",
)
# Compared only where the setting is used.
_ONLY_WITH = {"momentum": ("optimizer", "sgd")}


def random_state(loader_state: torch.Tensor | None) -> dict[str, Any]:
    """The global random state now, and ``loader_state``: the shuffling generator's state at the start of
    the epoch the checkpoint resumes in (None: the loader's order does not come from a generator)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_state is not None:
        state["loader"] = loader_state
    return state


def rank_random_state(saved: dict[str, Any], rank: int) -> dict[str, Any]:
    """This process's random state in ``saved``: its own under DDP (``random_per_rank``, one per rank: only
    rank 0 evaluates, and evaluation draws from the global generator), else the one saved."""
    per_rank = saved.get("random_per_rank")
    return per_rank[rank] if per_rank and rank < len(per_rank) else saved["random"]


def check_world_size(saved: dict[str, Any], world_size: int, path: str) -> None:
    """ValueError when the checkpoint was saved by another number of processes: its position in the data
    counts batches of one process's shard, and its random states are per process."""
    saved_size = int(saved.get("world_size", 1))
    if saved_size != world_size:
        how = (
            f"torchrun --nproc_per_node={saved_size} -m trainer ... --resume"
            if saved_size > 1
            else "python -m trainer ... --resume (one process)"
        )
        raise ValueError(
            f"the checkpoint {path!r} was saved by {saved_size} process{'es' if saved_size > 1 else ''}, and "
            f"this is {world_size}: its position in the data and random states are per process. Continue "
            f"it as it ran: {how}."
        )


def corpus_record(info: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps of its corpus (a loader's ``info``): each split's fingerprint (its files with
    their sizes and modification times, labels or transcripts) and size, for ``check_same_corpus``."""
    return {"fingerprint": dict(info["fingerprint"]), "counts": dict(info["counts"])}


def check_same_corpus(saved: dict[str, Any], info: dict[str, Any], path: str) -> str | None:
    """ValueError when the train split loaded now is not the one the checkpoint was saved with (its settings
    may be the same, the files on disk not): the position in the data and the order of the batches after it
    count train items of the corpus as it was. Returns a warning when only the val or test split changed
    (the position does not count them: training resumes, evaluated on other data than before), and for a
    checkpoint saved without the record (by an older trainer), which is resumed unchecked, as before."""
    record = saved.get("corpus")
    if record is None:
        return (
            f"--resume: the checkpoint {path!r} was saved by an older trainer, without a fingerprint of its "
            "corpus: whether the files on disk changed since cannot be checked (a changed corpus would put "
            "other utterances in the batches from its position on)"
        )
    was, now = record.get("fingerprint") or {}, info["fingerprint"]
    if was == now:
        return None
    counts = record.get("counts") or {}
    changed = {}
    for split in now:
        n0, n = counts.get(split), info["counts"][split]
        if n0 is not None and n0 != n:
            changed[split] = f"{split}: {n0} → {n} utterances"
        elif was.get(split) != now[split]:
            changed[split] = f"{split}: {n} utterances as before, but not the same files or labels"
    where = f"the corpus in {info['path']!r}" if "path" in info else "the built-in corpus"
    if "train" not in changed:
        return (
            f"--resume: {where} has changed since the checkpoint {path!r} was saved "
            f"({'; '.join(changed.values())}): the training data is the same, so training resumes where it "
            "was, but it is evaluated on other data than before the checkpoint (its scores on either side of "
            "the resume are not comparable)"
        )
    changed = list(changed.values())
    position = f"epoch {saved['epoch']}, batch {saved.get('batch', 0)}"
    raise ValueError(
        f"{where} has changed since the checkpoint {path!r} was saved ({'; '.join(changed)}): files were "
        "added, removed, moved, relabelled or rewritten (a new size or modification time counts). Its "
        f"position in the data ({position}) counts batches of the corpus as it was: resume with the corpus "
        "as it was then, or start a new run on this one with another --checkpoint path (or move this file "
        "away)."
    )


def restore_loader_state(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def restore_global_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What a checkpoint holds (save()'s caller, trainer/train.py), checked when loading so that a file edited or
# written by other code is refused in a sentence rather than a KeyError or TypeError halfway through resuming.
_HOLDS = {
    "config": dict,
    "epoch": int,
    "step": int,
    "metrics": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "gradwatch": dict,
    "random": dict,
}


def save(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file, on the disk, renamed over it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # To the path, not to an open file: interrupted (Ctrl-C) while writing into a Python file object,
        # torch's zip writer then fails on its own position and a RuntimeError replaces the KeyboardInterrupt.
        torch.save({"format": FORMAT, **checkpoint}, tmp)
        _fsync_path(tmp)  # (renamed before its bytes are on disk, a power loss could leave it empty)
    except BaseException:  # a second Ctrl-C, a full disk: the previous checkpoint stays, and no half file
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _fsync_path(path: Path) -> None:
    # (fsync flushes a file's pages whatever the mode it is opened in.) A file system that cannot flush on
    # demand (some FUSE and network mounts: EINVAL, ENOTSUP) gets the checkpoint as before, unflushed; any
    # other error (EIO: the bytes did not reach the disk) is raised.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable once the folder is flushed (POSIX); some file systems refuse it: no matter.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path``; None when there is no file (a first start). Raises ValueError when the
    file is not a trainer checkpoint or cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    damaged = _damaged_record(path)
    if damaged is not None:
        raise ValueError(
            f"the checkpoint {str(path)!r} is corrupt: its record {damaged!r} does not match the checksum "
            "saved with it (a disk error, or a damaged copy). Resume from another copy of it, or move it "
            "away to start afresh."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: pickle, zip or torch errors
        raise ValueError(f"cannot read the checkpoint {str(path)!r}: {_why_unreadable(path, e)}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint of this trainer (no {FORMAT!r} marker)")
    wrong = [
        f"{key!r} ({'missing' if key not in checkpoint else type(checkpoint[key]).__name__})"
        for key, kind in _HOLDS.items()
        if not isinstance(checkpoint.get(key), kind) or (kind is int and isinstance(checkpoint[key], bool))
    ]
    if "corpus" in checkpoint and not _is_corpus_record(checkpoint["corpus"]):  # (older ones have none)
        wrong.append(f"'corpus' ({type(checkpoint['corpus']).__name__})")
    if wrong:
        raise ValueError(
            f"{str(path)!r} has the marker of this trainer's checkpoints but not their contents: "
            f"{', '.join(wrong)} (edited, or written by other code). Use a checkpoint the trainer saved."
        )
    return checkpoint


_CORPUS_RECORD = ("fingerprint", "counts")


def _is_corpus_record(record: Any) -> bool:
    return isinstance(record, dict) and all(isinstance(record.get(k), dict) for k in _CORPUS_RECORD)


def _damaged_record(path: Path) -> str | None:
    """The first record of the zip archive whose bytes do not match its CRC-32, or None (also for a file
    that is no zip archive: torch.load then says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except Exception:  # noqa: BLE001 - not a zip archive, or one too broken to walk: torch.load says which
        return None


def _why_unreadable(path: Path, error: Exception) -> str:
    """What went wrong, in words: torch's own message is a bare key (``174812789``) for some foreign files,
    and for others advises ``weights_only=False``, which a checkpoint of this trainer never needs."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if size == 0:
        what = "the file is empty"
    elif head != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "it is not a checkpoint (not a file written by torch.save)"
    else:
        what = "the file is truncated or corrupt (a copy cut short, or a disk error)"
    return f"{what}; {size} bytes, torch.load raised {type(error).__name__}"


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """ValueError naming every setting in MUST_MATCH that differs between the checkpoint and this run.

    ``--clip`` may differ for a new run (``--parent-run ID``): the tracker then starts a run of its own from
    the checkpoint, linked to its parent, instead of continuing the recorded one."""
    fork = current.get("parent_run") is not None
    keys = [k for k in MUST_MATCH if not (fork and k == "clip") and (_used(k, saved) or _used(k, current))]
    differ = [
        f"--{k.replace('_', '-')} {_shown(saved.get(k))} → {_shown(current.get(k))}"
        for k in keys
        if _comparable(k, saved.get(k)) != _comparable(k, current.get(k))
    ]
    renamed = current.get("run") is not None and saved.get("run") not in (None, current.get("run"))
    if renamed and not fork and not current.get("no_track"):
        raise ValueError(
            f"--run {current['run']!r}: the checkpoint {path!r} continues run {saved['run']!r}, and a "
            f"continued run keeps its name (runs.name). Drop --run (or pass --run {saved['run']!r}), or add "
            "--parent-run ID to start a new run from the checkpoint under the new name."
        )
    if differ:
        hint = ""
        if saved.get("clip") != current.get("clip") and not fork:
            hint = " (another --clip from this checkpoint: add --parent-run ID to start a new run from it)"
        if saved.get("no_track") != current.get("no_track"):
            hint += (
                " (tracking must match: a checkpoint saved with --no-track has no recorded run to continue, "
                "and a recorded run cannot go on unrecorded)"
            )
        raise ValueError(
            f"the checkpoint {path!r} was saved with other settings ({'; '.join(differ)}){hint}. Continue it "
            "with the settings it was saved with, or start a new run with another --checkpoint path."
        )


def _used(key: str, config: dict[str, Any]) -> bool:
    if key not in _ONLY_WITH:
        return True
    other, value = _ONLY_WITH[key]
    return config.get(other) == value


def _comparable(key: str, value: Any) -> Any:
    # The trainer records data_path absolute; one recorded relative (by an older trainer) is taken from the
    # folder the resume runs in, as the dashboard's resume does (in the run's own folder).
    if key == "data_path" and isinstance(value, str):
        return os.path.realpath(os.path.expanduser(value))
    return value


def _shown(value: Any) -> str:
    return {True: "on", False: "off"}[value] if isinstance(value, bool) else repr(value)
