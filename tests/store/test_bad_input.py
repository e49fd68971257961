"""Each bad input gives a named error that says what to do, and leaves the user's file as it was."""

import os
import sqlite3
import subprocess
import sys

import pytest

from tests.store.helpers import foreign_database, newer_schema_database, run_without_root_overrides
from tracker.store import (
    DatabaseLocked,
    DatabaseNotFound,
    DirectoryNotFound,
    ForeignDatabase,
    NotADatabase,
    ReadOnlyStore,
    SchemaTooNew,
    Store,
)


def test_missing_directory(tmp_path):
    with pytest.raises(DirectoryNotFound, match="mkdir -p"):
        Store.open(tmp_path / "nope" / "gw.db")
    assert not (tmp_path / "nope").exists()


def test_missing_database_without_create_creates_nothing(tmp_path):
    path = tmp_path / "gw.db"
    with pytest.raises(DatabaseNotFound, match="does not exist"):
        Store.open(path, create=False)
    with pytest.raises(DatabaseNotFound):
        Store.open(path, readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_empty_file_without_create(tmp_path):
    path = tmp_path / "gw.db"
    path.touch()
    with pytest.raises(DatabaseNotFound, match="no gradwatch tables"):
        Store.open(path, readonly=True)
    assert path.read_bytes() == b""


def test_not_a_database_is_left_untouched(tmp_path):
    path = tmp_path / "notes.db"
    garbage = os.urandom(4096)
    path.write_bytes(garbage)
    for kw in ({}, {"create": False}, {"readonly": True}):
        with pytest.raises(NotADatabase, match="not an SQLite database"):
            Store.open(path, **kw)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no -wal / -shm left behind


def test_a_directory_is_not_a_database(tmp_path):
    with pytest.raises(NotADatabase, match="is a directory"):
        Store.open(tmp_path)


def test_foreign_sqlite_database_is_refused_and_unchanged(tmp_path):
    path = foreign_database(tmp_path / "shop.db")
    before = path.read_bytes()
    for kw in ({}, {"readonly": True}):
        with pytest.raises(ForeignDatabase, match="customers"):
            Store.open(path, **kw)
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_newer_schema_is_refused(db_path):
    newer_schema_database(db_path)
    before = db_path.read_bytes()
    with pytest.raises(SchemaTooNew, match="schema version 99.*Upgrade gradwatch"):
        Store.open(db_path)
    assert db_path.read_bytes() == before
    assert [p.name for p in db_path.parent.iterdir()] == [db_path.name]  # no -wal / -shm left behind
    with pytest.raises(SchemaTooNew):
        Store.open(db_path, readonly=True)  # (a read-only connection leaves SQLite's empty -wal / -shm)
    assert db_path.read_bytes() == before


def test_readonly_store_refuses_writes_and_does_not_change_the_file(db_path):
    Store.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode = DELETE")  # someone else's choice; a reader must not change it
    conn.close()
    with Store.open(db_path, readonly=True) as s:
        assert s.runs().empty
        with pytest.raises(ReadOnlyStore):
            s.create_run(name="x")
        with pytest.raises(ReadOnlyStore):
            s.writer(1)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    with pytest.raises(ValueError, match="readonly"):
        Store.open(db_path, create=True, readonly=True)


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_database_locked_by_another_process(db_path):
    Store.open(db_path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db_path), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with Store.open(db_path, busy_timeout=0.2) as s:  # WAL: opening and reading still work
            assert s.runs().empty
            with pytest.raises(DatabaseLocked, match="busy_timeout"):
                s.create_run(name="blocked")
    finally:
        holder.kill()
        holder.wait()
    with Store.open(db_path) as s:  # the lock is gone with the process; nothing was half-written
        assert s.runs().empty


OPEN_STORE = """
import sys
from tracker.store import Store
try:
    with Store.open(sys.argv[1]) as store:
        store.create_run(name="unprivileged")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
else:
    print("recorded")
"""


def test_readonly_location(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = run_without_root_overrides(OPEN_STORE, locked / "gw.db")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("ReadOnlyLocation: ") and "is not writable by this user" in out.stdout
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_readonly_database_file_is_refused_without_leaving_files(tmp_path):
    path = tmp_path / "gw.db"
    Store.open(path).close()
    path.chmod(0o444)
    before = path.read_bytes()
    out = run_without_root_overrides(OPEN_STORE, path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"ReadOnlyLocation: Cannot open {path} for writing: {path} is read-only for this user. "
        "Fix the permissions (e.g. chmod u+w) or record into a writable location."
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.db"]
