"""A database the dashboard cannot read gives a clear message with how to fix it, on every page, never a
traceback; and the file is left untouched."""

import hashlib
import sqlite3
import subprocess
import sys

import pytest
from dashboard_helpers import APP, texts

from tests.store.helpers import damage_last_leaf, foreign_database

PAGES = ("views/runs.py", "views/run.py", "views/compare.py", "views/launch.py")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_message_on_every_page(at, *needles):
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        message = texts(at, "error")
        for needle in needles:
            assert needle in message, (page, message)
        assert "How to fix" in message


def test_corrupt_file(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    db.write_bytes(b"this is not a database\n" * 100)
    before = _digest(db)
    at = app(db).run()
    _assert_message_on_every_page(at, "is not a SQLite database", str(db))
    assert _digest(db) == before


def test_truncated_sqlite_file(recorded, app):
    data = recorded.path.read_bytes()
    recorded.path.write_bytes(data[:200])  # a valid header, then nothing: corrupt
    at = app(recorded.path).run()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception
        assert "How to fix" in texts(at, "error") or at.title[0].value.startswith("Welcome")


def test_a_database_damaged_in_its_data_pages(recorded, app):
    # Header and schema readable, the runs table's pages not: the store's DatabaseCorrupt, with how to
    # recover what can be read (the generic "is not a SQLite database" would be wrong here).
    with sqlite3.connect(recorded.path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # (every row in the main file, which is damaged)
    damage_last_leaf(recorded.path, "runs")
    before = _digest(recorded.path)
    at = app(recorded.path).run()
    _assert_message_on_every_page(at, "is damaged", ".recover")
    assert _digest(recorded.path) == before


def test_foreign_sqlite_database(tmp_path, app):
    db = foreign_database(tmp_path / "other.db")
    before = _digest(db)
    at = app(db).run()
    _assert_message_on_every_page(at, "not one written by gradwatch", "customers")
    assert _digest(db) == before


def test_newer_schema(recorded, app):
    # Simulate a file written by a future gradwatch: same tables, a higher schema version.
    with sqlite3.connect(recorded.path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    at = app(recorded.path).run()
    _assert_message_on_every_page(at, "newer version of gradwatch", "schema version 99")


# Another program holding the file, e.g. a `sqlite3` shell: it takes its lock, says so, and keeps it until
# told to go (a line on stdin).
HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive mode":
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE runs SET name = name")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@pytest.mark.parametrize("lock", ["exclusive mode", "exclusive transaction"])
def test_locked_database(recorded, app, lock):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(recorded.path), lock], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        at = app(recorded.path).run()
        assert not at.exception
        if lock == "exclusive mode":
            # PRAGMA locking_mode = EXCLUSIVE and a write: even WAL readers are shut out.
            assert "is locked by another process" in texts(at, "error")
        else:
            # A write transaction alone (even BEGIN EXCLUSIVE) does not block readers of a WAL file.
            assert not at.error and at.title[0].value == "Runs"
    finally:
        holder.communicate("\n", timeout=60)
    # Once the lock is gone the same session reads normally.
    at.run()
    assert not at.error and at.title[0].value == "Runs"


@pytest.mark.parametrize("how", ["flag", "env", "default"])
def test_database_path_resolution(tmp_path, how):
    from dashboard.db import resolve_db_path

    argv = ["--db", "from-flag.db"] if how == "flag" else []
    env = {"GRADWATCH_DB": "from-env.db"} if how in ("flag", "env") else {}
    expected = {"flag": "from-flag.db", "env": "from-env.db", "default": "gradwatch.db"}[how]
    assert resolve_db_path(argv, env, tmp_path) == tmp_path / expected


def test_arguments_left_over_after_db_are_refused_not_dropped(app, recorded, tmp_path, monkeypatch):
    # `make dashboard DB=/tmp/my runs/x.db` unquoted gives `--db /tmp/my runs/x.db`: the first word was
    # opened (an empty "my" database, whose demo button would create it) and the rest dropped silently.
    from dashboard.db import resolve_db_path

    with pytest.raises(ValueError, match=r"'runs/x\.db'.*spaces must be quoted"):
        resolve_db_path(["--db", "/tmp/my", "runs/x.db"], {}, tmp_path)
    at = app(recorded.path)
    monkeypatch.setattr(sys, "argv", [str(APP), "--db", str(tmp_path / "my"), "runs/x.db"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "runs/x" in texts(at, "error") and "quoted" in texts(at, "error")  # (markdown-escaped)
    assert not (tmp_path / "my").exists()
