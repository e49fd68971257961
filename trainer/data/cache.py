"""On-disk cache folders: where they live, how they are named, how they are written safely, and how the stale
ones of a real corpus are removed.

A cache entry is a folder ``<root>/<name>/`` written by one process under an exclusive file lock,
``<root>/<name>.lock``, so several processes (DDP ranks, two trainers) asking for the same corpus generate it
once and never read a half-written folder. A real corpus's features are keyed by its files (sizes and
modification times): every edit makes a new folder, and ``remove_stale`` removes the folders of the corpus's
earlier states (told by the ``corpus.json`` each holds) once unused for a day (``UNUSED_FOR_S``), and what
failed loads left, under the same lock, so never one that another process is reading or writing. A folder
that is not provably gradwatch's (an empty one, one holding any other file, or a ``corpus.json`` that is not
gradwatch's) is never removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = [
    "default_cache_dir",
    "params_hash",
    "locked",
    "write_atomically",
    "write_about",
    "remove_stale",
    "removed_words",
    "REPORTED_BYTES",
]

ABOUT = "corpus.json"  # in a real corpus's cache folder: which corpus (source, path, settings) it holds
# Folders of real corpora (features only, keyed by the files): those remove_stale may remove.
_REAL_CORPUS = re.compile(r"(speech_commands|transcripts)-[0-9a-f]{12}")
# What a load that failed or was killed leaves in one: lock files (older trainers), corpus.json, unfinished
# features. A folder so named holding anything else is not taken for a leftover (it may be a user's).
_LEFT_BY_A_LOAD = re.compile(r"features-[0-9a-f]+\.(lock|pt\.tmp-\d+)|corpus\.json(\.tmp-\d+)?")
_SOURCES = ("speech_commands", "transcripts")  # the "source" of a corpus.json gradwatch wrote
# A cache of the corpus in another state is removed only once unused (neither read nor written) this long:
# machines sharing a cache folder (an NFS home) with their own copies of a corpus at the same path but with
# other file dates would otherwise remove each other's cache on every load, and compute it again.
UNUSED_FOR_S = 24 * 3600
REPORTED_BYTES = 100 * 10**6  # removals of stale caches from this size on are worth a line in the output


def default_cache_dir() -> Path:
    """``$GRADWATCH_CACHE/corpora`` if set (and not blank), else ``$XDG_CACHE_HOME/gradwatch/corpora`` (the
    XDG base directory rule: an absolute path only), else ``~/.cache/gradwatch/corpora``."""
    base = os.environ.get("GRADWATCH_CACHE", "").strip()  # (set but blank counts as unset)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if base:
        root = Path(base).expanduser()
    elif os.path.isabs(xdg):
        root = Path(xdg) / "gradwatch"
    else:
        root = Path.home() / ".cache" / "gradwatch"
    return root / "corpora"


def params_hash(params: dict) -> str:
    """12 hex digits identifying a JSON-able parameter dict (key order does not matter)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextmanager
def locked(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<root>/<name>.lock`` (blocks while another process holds it).

    The lock file is removed on release, so none is left behind; a process that was waiting on it then finds
    it gone and locks the next one (``_acquire``), which is also what makes removing a folder under its lock
    safe."""
    root.mkdir(parents=True, exist_ok=True)
    handle = _acquire(root / f"{name}.lock", wait=True)
    try:
        yield
    finally:
        _release(root / f"{name}.lock", handle)


def _acquire(path: Path, wait: bool) -> IO | None:
    """An open handle holding the exclusive lock of the file at ``path``; None if another process holds it
    and ``wait`` is false. A lock taken on a file that was removed (or replaced) meanwhile is not the lock of
    ``path``: it is dropped and taken again."""
    while True:
        handle = open(path, "a")  # noqa: SIM115 - held open until _release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return None
        except BaseException:
            handle.close()
            raise
        try:
            mine = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            mine = False
        if mine:
            return handle
        handle.close()


def _release(path: Path, handle: IO) -> None:
    try:
        path.unlink(missing_ok=True)  # (while held: whoever waits on it then takes the next one)
    finally:
        handle.close()


@contextmanager
def write_atomically(final: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success it replaces ``final`` in one rename."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_about(folder: Path, about: dict) -> None:
    """Write ``corpus.json`` (which corpus ``folder`` holds) into it if it has none, else mark it used now
    (its modification time); under its lock."""
    path = folder / ABOUT
    if path.exists():
        try:
            os.utime(path)  # when it was last used: remove_stale spares a cache used lately
        except OSError:  # (a read-only cache: it is only read)
            pass
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{ABOUT}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(about, sort_keys=True, default=str))
    os.replace(tmp, path)


def remove_stale(folder: Path, about: dict) -> tuple[int, int]:
    """Remove, next to ``folder`` (the cache of a real corpus as it is now), the cache folders of the same
    corpus (``about``: source, path and settings) in other states unused for ``UNUSED_FOR_S``, and those of
    real corpora holding no features (left by a load that failed or was killed). A folder another process
    holds the lock of (it is reading or writing it) is left alone. Returns ``(folders removed, bytes freed)``.

    Folders written before ``corpus.json`` existed are not known to be this corpus's: they stay, unless
    empty."""
    about = json.loads(json.dumps(about, sort_keys=True, default=str))  # (as read back from the file)
    removed, freed = 0, 0
    try:
        entries = [e for e in os.scandir(folder.parent) if _REAL_CORPUS.fullmatch(e.name) and e.is_dir()]
    except OSError:
        return 0, 0
    for entry in entries:
        other = Path(entry.path)
        if other.name == folder.name or not _is_stale(other, about):
            continue
        size = _remove_unused(other, about)
        if size is not None:
            removed, freed = removed + 1, freed + size
    return removed, freed


def removed_words(removed: dict) -> str:
    """``removed 2 stale feature cache(s): 861.2 MB freed`` for a loader's ``info["removed_caches"]``."""
    return f"removed {removed['folders']} stale feature cache(s): {removed['bytes'] / 1e6:,.1f} MB freed"


def _is_stale(folder: Path, about: dict) -> bool:
    """Whether ``folder`` holds the features of the corpus ``about`` in another state, or only what a failed
    load leaves (a ``corpus.json`` among it written by gradwatch). An empty folder is not stale: no load
    leaves one (a load makes the folder only to write into it), so it is someone else's."""
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return False
    ours = _read_about(folder)
    if ours is not None and ours == about:
        try:
            return time.time() - (folder / ABOUT).stat().st_mtime > UNUSED_FOR_S
        except OSError:
            return False
    leftovers = all(_LEFT_BY_A_LOAD.fullmatch(n) and (folder / n).is_file() for n in names)
    return bool(names) and leftovers and (ABOUT not in names or ours is not None)


def _read_about(folder: Path) -> dict | None:
    """The ``corpus.json`` of ``folder`` if gradwatch wrote it (its source, root and seed), else None: none,
    one cut short, or a file of that name that is someone else's."""
    try:
        about = json.loads((folder / ABOUT).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(about, dict) and about.get("source") in _SOURCES and {"root", "seed"} <= about.keys():
        return about
    return None


def _remove_unused(folder: Path, about: dict) -> int | None:
    """Remove ``folder`` if no other process holds its lock (nor, for a folder of an older trainer, the lock
    files inside it) and it is still stale once locked; returns the bytes freed, or None."""
    lock = folder.with_name(f"{folder.name}.lock")
    handle = _acquire(lock, wait=False)
    if handle is None:
        return None
    inner = []
    try:
        inner = [_acquire(p, wait=False) for p in folder.glob("*.lock")]
        if None in inner or not _is_stale(folder, about):
            return None
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return size
    except OSError:  # a file it cannot remove, say: what is left stays (an empty folder goes next time)
        return None
    finally:
        for h in inner:
            if h is not None:
                h.close()
        _release(lock, handle)
