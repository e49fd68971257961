"""Helpers for the store tests: seeded data, a run written through the real writer, oracle reads."""

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tracker.store import Store

REPO = Path(__file__).resolve().parents[2]


def make_norms(n_steps: int, n_layers: int, seed: int = 0, nonfinite_every: int = 0):
    """{step: [norm per layer]} log-normal norms; every ``nonfinite_every`` steps one NaN and one Inf."""
    rng = random.Random(seed)
    out = {}
    for step in range(n_steps):
        norms = [rng.lognormvariate(0.0, 1.0) for _ in range(n_layers)]
        if nonfinite_every and step % nonfinite_every == nonfinite_every - 1:
            norms[step % n_layers] = float("nan")
            norms[(step + 1) % n_layers] = float("inf")
        out[step] = norms
    return out


def record_run(store: Store, norms: dict, *, name: str = "run", flush_every: int = 0, **run_kw) -> int:
    """A run with layers and the given per-step norms written through the real BackgroundWriter."""
    run_id = store.create_run(name=name, **run_kw)
    n_layers = len(next(iter(norms.values())))
    store.add_layers(run_id, [dict(id=i, name=f"block{i // 2}.w{i}", shape=[2, 3]) for i in range(n_layers)])
    writer = store.writer(run_id)
    for step, row in norms.items():
        writer.add_step(
            step=step, norms=row, total_norm=sum(v * v for v in row) ** 0.5, loss=1.0 / (1 + step)
        )
        if flush_every and step % flush_every == flush_every - 1:
            writer.flush()  # ends a transaction mid-block: partial blocks must merge correctly
    writer.close("finished")
    return run_id


def raw_sql(path, sql, params=()):
    """An independent read with plain sqlite3 (the oracle side of the tests)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def run_python(code: str, *args, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the repository importable."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


# Root ignores permission bits: it holds CAP_DAC_OVERRIDE (write anything) and CAP_DAC_READ_SEARCH (read
# anything). A child that drops both is held to the mode bits like anyone (as the owner of the test files,
# uid 0), and can still run this venv's interpreter under /root, which user nobody cannot even reach.
# They go from the permitted set too: as root, access(2) (os.access) consults that set, not the effective one.
WITHOUT_ROOT_OVERRIDES = """
import ctypes, os
if os.geteuid() == 0:
    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class _Sets(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]
    _libc = ctypes.CDLL(None, use_errno=True)
    _header, _sets = _Header(0x20080522, 0), (_Sets * 2)()  # _LINUX_CAPABILITY_VERSION_3: 2 x 32 bits
    if _libc.capget(ctypes.byref(_header), _sets) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for _name in ("effective", "permitted", "inheritable"):  # CAP_DAC_OVERRIDE = 1, CAP_DAC_READ_SEARCH = 2
        setattr(_sets[0], _name, getattr(_sets[0], _name) & ~(1 << 1 | 1 << 2))
    if _libc.capset(ctypes.byref(_header), _sets) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
"""


def run_without_root_overrides(code: str, *args) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (repository importable) held to file permissions, as root too."""
    if os.geteuid() == 0 and sys.platform != "linux":
        pytest.skip("as root, permission bits can only be made to apply here through Linux capabilities")
    return run_python(WITHOUT_ROOT_OVERRIDES + code, *args)


def foreign_database(path: Path) -> Path:
    """An SQLite file of another application (a ``customers`` table, one row), closed, journal "delete"."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    conn.commit()
    conn.close()
    return path


def newer_schema_database(path: Path) -> Path:
    """A gradwatch file whose schema version (99) is newer than this gradwatch's, closed."""
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    return path


def checkpointed(path: Path) -> None:
    """Every row of ``path`` moved from its -wal into the file itself, where damage_last_leaf writes: until
    it is done (a checkpoint that found the file busy, a closing connection on a loaded machine, leaves rows
    in the WAL, and the damage would hit stale pages that no read then uses). The connection is closed."""
    from polling import wait_for

    conn = sqlite3.connect(path)
    try:
        assert wait_for(
            lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, timeout=30
        )
    finally:
        conn.close()


def damage_last_leaf(path: Path, table: str, *, cells_only: bool = False) -> int:
    """Overwrite the last leaf page of ``table``'s B-tree (where new rows go) with garbage, leaving the
    header and the schema readable: a file corrupt in its data pages. ``cells_only``: only the start of its
    cell-pointer array (its last cell, which a max() reads, stays intact). Returns the page number."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    while data[(page - 1) * page_size] in (2, 5):  # an interior page: follow its right-most child
        start = (page - 1) * page_size
        page = int.from_bytes(data[start + 8 : start + 12], "big")
    if cells_only:  # (after the 8-byte leaf header: the first 200 of its cell pointers)
        data[(page - 1) * page_size + 8 : (page - 1) * page_size + 408] = b"\xff" * 400
    else:
        data[(page - 1) * page_size : page * page_size] = b"\xff" * page_size
    path.write_bytes(bytes(data))
    return page
