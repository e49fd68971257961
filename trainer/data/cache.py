"""On-disk cache folders: where they live, how they are named, and how they are written safely.

A cache entry is a folder ``<root>/<name>/`` written by one process under an exclusive file lock into a
temporary sibling and renamed into place, so several processes (DDP ranks, two trainers) asking for the same
corpus generate it once and never read a half-written folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["default_cache_dir", "params_hash", "locked", "write_atomically"]


def default_cache_dir() -> Path:
    """``$GRADWATCH_CACHE/corpora`` if set, else ``~/.cache/gradwatch/corpora``."""
    base = os.environ.get("GRADWATCH_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "gradwatch"
    return root / "corpora"


def params_hash(params: dict) -> str:
    """12 hex digits identifying a JSON-able parameter dict (key order does not matter)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextmanager
def locked(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<root>/<name>.lock`` (blocks while another process holds it)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
