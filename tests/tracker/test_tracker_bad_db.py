"""GradTracker(model, db=...) with a database it must not use: the store's named error, a message that says
what is wrong and what to do, and the user's file as it was, byte for byte."""

import os
import re

import pytest
import torch
from sqlite_rows import rows
from torch import nn

from tests.store.helpers import (
    damage_last_leaf,
    foreign_database,
    newer_schema_database,
    run_without_root_overrides,
)
from tracker import GradTracker
from tracker.store import DatabaseCorrupt, DirectoryNotFound, ForeignDatabase, NotADatabase, SchemaTooNew


def _model():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_missing_directory(tmp_path):
    db = tmp_path / "runs" / "gw.db"
    with pytest.raises(DirectoryNotFound) as info:
        GradTracker(_model(), db=db, run="r")
    message = str(info.value)
    assert f"directory {tmp_path / 'runs'} does not exist" in message
    assert f"mkdir -p {tmp_path / 'runs'}" in message  # what to do about it
    assert _files(tmp_path) == []  # nothing created, not even the directory


def test_not_a_database_is_left_untouched(tmp_path):
    db = tmp_path / "notes.db"
    garbage = os.urandom(4096)
    db.write_bytes(garbage)
    with pytest.raises(NotADatabase, match=re.escape(f"{db} is not an SQLite database")) as info:
        GradTracker(_model(), db=db, run="r")
    assert "left it untouched" in str(info.value) and "choose a new file name" in str(info.value)
    assert db.read_bytes() == garbage
    assert _files(tmp_path) == ["notes.db"]  # no -wal / -shm / -journal left behind


def test_database_of_another_application_is_left_untouched(tmp_path):
    db = foreign_database(tmp_path / "shop.db")
    before = db.read_bytes()
    with pytest.raises(
        ForeignDatabase, match=re.escape(f"{db} is an SQLite database of another application")
    ) as info:
        GradTracker(_model(), db=db, run="r")
    assert "customers" in str(info.value) and "pass a new file name" in str(info.value)
    assert db.read_bytes() == before
    assert _files(tmp_path) == ["shop.db"]
    assert rows(db, "PRAGMA journal_mode") == [("delete",)]  # not switched to WAL
    assert rows(db, "SELECT name FROM customers") == [("Ada",)]


def test_newer_schema_is_left_untouched(tmp_path):
    db = newer_schema_database(tmp_path / "gw.db")
    before = db.read_bytes()
    with pytest.raises(SchemaTooNew, match=re.escape(f"{db} has schema version 99")) as info:
        GradTracker(_model(), db=db, run="r")
    assert "Upgrade gradwatch" in str(info.value) and "record into a new file" in str(info.value)
    assert db.read_bytes() == before
    assert _files(tmp_path) == ["gw.db"]
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_damaged_data_pages_are_named_and_no_run_is_added(tmp_path):
    db = tmp_path / "gw.db"
    _recorded(db, "first")
    damage_last_leaf(db, "layers")  # the header and schema still read: only the data is damaged
    before = db.read_bytes()
    for _ in range(2):
        with pytest.raises(DatabaseCorrupt) as info:
            GradTracker(_model(), db=db, run="r")
        assert f"{db} is damaged" in str(info.value) and ".recover" in str(info.value)
    assert db.read_bytes() == before
    assert _files(tmp_path) == ["gw.db"]  # closed: no -wal / -shm of an open connection
    assert rows(db, "SELECT name FROM runs") == [("first",)]  # no new "running" run per attempt


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_leading_tilde_is_the_home_directory(tmp_path, monkeypatch, how):
    home, elsewhere = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)  # where a literal "~" directory would be looked for
    if how == "environment":
        monkeypatch.setenv("GRADWATCH_DB", "~/runs.db")  # as a quoted shell assignment leaves it
    tracker = GradTracker(_model(), db="~/runs.db" if how == "argument" else None, run="r")
    tracker.finish()
    assert _files(home) == ["runs.db"] and _files(elsewhere) == []
    assert rows(home / "runs.db", "SELECT name, status FROM runs") == [("r", "finished")]


# ---- read-only databases: opened in a child that the permission bits apply to, as root too -------------
RECORD = """
import sys
import torch
from tracker import GradTracker
model = torch.nn.Linear(3, 2)
try:
    tracker = GradTracker(model, db=sys.argv[1], run=sys.argv[2], handle_sigterm=False)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
else:
    with tracker:
        model(torch.ones(1, 3)).sum().backward()
        tracker.step()
    print("recorded")
"""


def _recorded(db, run: str) -> None:
    """A real gradwatch database with one finished run of one step, closed (no -wal / -shm)."""
    model = _model()
    with GradTracker(model, db=db, run=run, handle_sigterm=False) as tracker:
        model(torch.ones(1, 3)).sum().backward()
        tracker.step()


def _lock(db, what: str) -> None:
    if what in ("file", "both"):
        db.chmod(0o444)
    if what in ("directory", "both"):
        db.parent.chmod(0o555)


def _unlock(db) -> None:
    db.parent.chmod(0o755)
    db.chmod(0o644)


@pytest.mark.parametrize("what", ["file", "directory", "both"])
def test_readonly_database_is_refused_and_left_untouched(tmp_path, what):
    db = tmp_path / "gw.db"
    _recorded(db, "first")
    before = db.read_bytes()
    _lock(db, what)
    try:
        out = run_without_root_overrides(RECORD, db, "second")
    finally:
        _unlock(db)
    assert out.returncode == 0, out.stderr
    blocked = {"file": f"{db} is", "directory": f"{tmp_path} is", "both": f"{db}, {tmp_path} are"}[what]
    assert out.stdout.strip() == (
        f"ReadOnlyLocation: Cannot open {db} for writing: {blocked} read-only for this user. "
        "Fix the permissions (e.g. chmod u+w) or record into a writable location."
    )
    assert db.read_bytes() == before
    assert _files(tmp_path) == ["gw.db"]  # no -wal/-shm left behind
    assert rows(db, "SELECT name, status FROM runs") == [("first", "finished")]


@pytest.mark.parametrize("what", ["file", "directory"])
def test_fixing_the_permissions_as_told_is_enough(tmp_path, what):
    db = tmp_path / "gw.db"
    _recorded(db, "first")
    _lock(db, what)
    try:
        refused = run_without_root_overrides(RECORD, db, "second")
    finally:
        _unlock(db)  # what the message asks for
    assert refused.stdout.startswith("ReadOnlyLocation: "), (refused.stdout, refused.stderr)
    assert _files(tmp_path) == ["gw.db"]  # nothing of the refused attempt remains
    out = run_without_root_overrides(RECORD, db, "third")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "recorded", out.stdout
    runs = rows(
        db, "SELECT r.name, r.status, count(s.step) FROM runs r JOIN steps s ON s.run_id = r.id GROUP BY r.id"
    )
    assert runs == [("first", "finished", 1), ("third", "finished", 1)]


def test_finish_gives_up_on_a_lock_that_outlasts_its_wait_and_says_what_was_not_written(db_path, monkeypatch):
    # A forgotten sqlite3 shell holding a transaction used to keep finish() (and so the program's exit)
    # waiting for as long as it stayed open. (Shorter waits than the real ones: 0.2 s busy timeout, 2 s.)
    import sqlite3

    import tracker.tracker as tracker_module
    from tracker.store import DatabaseLocked, Store

    original = Store.writer
    monkeypatch.setattr(Store, "writer", lambda self, run_id, **o: original(self, run_id, busy_timeout=0.2))
    monkeypatch.setattr(tracker_module, "FINISH_LOCK_WAIT_S", 2.0)
    model = _model()
    tracker = GradTracker(model, db=db_path)
    x = torch.randn(4, 3)

    def train(steps):
        for _ in range(steps):
            model.zero_grad()
            model(x).square().mean().backward()
            tracker.step()

    train(2)
    tracker.flush()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        train(3)
        tracker.log({"val_acc": 0.5})
        with pytest.raises(DatabaseLocked, match=r"3 logged steps, 1 metric values and the final status"):
            tracker.finish()
    finally:
        other.rollback()
        other.close()
    # What it said: the file has the two steps before the lock, and the run is not marked finished.
    assert rows(db_path, "SELECT count(*) FROM steps") == [(2,)]
    assert rows(db_path, "SELECT status FROM runs") == [("running",)]
