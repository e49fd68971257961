"""Each bad input gives a named error that says what to do, and leaves the user's file as it was."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from tests.store.helpers import (
    checkpointed,
    damage_last_leaf,
    foreign_database,
    newer_schema_database,
    raw_sql,
    run_without_root_overrides,
)
from tracker.store import (
    DatabaseCorrupt,
    DatabaseLocked,
    DatabaseNotFound,
    DirectoryNotFound,
    DiskFull,
    ForeignDatabase,
    LeftoverJournal,
    NotADatabase,
    ReadOnlyStore,
    SchemaTooNew,
    Store,
)
from tracker.store import store as store_module


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


def test_leftovers_of_a_deleted_database_are_refused_and_kept(tmp_path):
    # A dashboard (any reader) keeps the database open while a run finishes: -wal/-shm stay; then the user
    # deletes the .db to start afresh. A new file would get the old WAL replayed into it (corrupt, old runs).
    path = tmp_path / "gw.db"
    with Store.open(path) as s:
        s.create_run(name="old")
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    with Store.open(path) as s:
        s.create_run(name="old too")  # committed into the -wal, which the reader keeps alive
    path.unlink()
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(kept) == ["gw.db-shm", "gw.db-wal"]
    try:
        with pytest.raises(LeftoverJournal) as info:
            Store.open(path)
        message = str(info.value)
        assert f"{path}-wal, {path}-shm are still there" in message
        assert "deleted database" in message and "dashboard" in message
        assert "move them away" in message and "choose another database path" in message
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept  # nothing created or removed
    finally:
        reader.close()


def test_leftovers_appearing_while_the_file_is_made_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "gw.db"
    create_schema = store_module.create_schema

    def create_then_leftover(conn):  # the old database's WAL shows up between the check and the link
        create_schema(conn)
        (tmp_path / "gw.db-wal").write_bytes(b"old frames")

    monkeypatch.setattr(store_module, "create_schema", create_then_leftover)
    with pytest.raises(LeftoverJournal, match="gw.db-wal is still there"):
        Store.open(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.db-wal"]  # no .tmp files, no gw.db
    assert (tmp_path / "gw.db-wal").read_bytes() == b"old frames"


def _a_run_of_300_steps(db_path) -> int:
    """A file whose grad_norms and steps span several pages (the damage then hits a leaf, not the root)."""
    with Store.open(db_path) as s:
        run_id = s.create_run(name="old")
        w = s.writer(run_id)
        for step in range(300):
            w.add_step(step=step, norms=[1.0] * 20)
        w.close()
    return run_id


# cells_only: the page's last cell intact, so a max() read passes; the writer's first reads did not, after a
# run had been added that could then never be written.
@pytest.mark.parametrize("cells_only", [False, True], ids=["page", "cell-pointers"])
def test_damaged_data_pages_are_named_and_no_run_is_added(db_path, cells_only):
    run_id = _a_run_of_300_steps(db_path)
    checkpointed(db_path)
    damage_last_leaf(db_path, "grad_norms", cells_only=cells_only)
    before = db_path.read_bytes()
    with Store.open(db_path) as s:  # header and schema are fine: it opens
        for _ in range(2):
            with pytest.raises(DatabaseCorrupt) as info:
                s.create_run(name="new")
            assert isinstance(info.value, NotADatabase)  # what callers already catch
            assert f"{db_path} is damaged" in str(info.value)
            assert f"sqlite3 {db_path} .recover" in str(info.value) and "new file" in str(info.value)
    assert db_path.read_bytes() == before
    assert raw_sql(db_path, "SELECT id, name FROM runs") == [(run_id, "old")]


@pytest.mark.skipif(not (shutil.which("sqlite3") and shutil.which("sed")), reason="needs the sqlite3 shell")
def test_the_recovery_the_message_gives_saves_the_readable_rows(tmp_path):
    # The message used to give only `.recover`, which Debian 12's shell lacks ("SQL logic error"), and a
    # plain `.dump` of a damaged file ends in a ROLLBACK that loads nothing.
    db_path = tmp_path / "my runs.db"  # (a space: the command must be copyable as shown)
    run_id = _a_run_of_300_steps(db_path)
    checkpointed(db_path)
    damage_last_leaf(db_path, "grad_norms")
    with Store.open(db_path) as s, pytest.raises(DatabaseCorrupt) as info:
        s.create_run(name="new")
    command = str(info.value).split("with the sqlite3 shell: ")[1].split(" (a shell that has")[0]
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    recovered = tmp_path / "recovered.db"
    # The oracle: what plain sqlite3 reads of the damaged file before it meets the damage.
    with sqlite3.connect(db_path) as conn:
        readable = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
    assert raw_sql(recovered, "SELECT id, name FROM runs") == [(run_id, "old")]
    assert raw_sql(recovered, "SELECT count(*) FROM steps") == [(readable,)] == [(300,)]
    norms = raw_sql(recovered, "SELECT count(*) FROM grad_norms")[0][0]
    assert 0 < norms < 300 * 20  # what the damaged page held is lost, the rest is there
    with Store.open(recovered) as s:  # and gradwatch reads and writes the recovered file
        assert s.create_run(name="new") == run_id + 1


def test_a_writer_on_a_damaged_file_raises_the_named_error(db_path):
    run_id = _a_run_of_300_steps(db_path)
    damage_last_leaf(db_path, "steps")
    with Store.open(db_path) as s:
        with pytest.raises(DatabaseCorrupt, match=f"start writing run {run_id}"):
            s.writer(run_id)


def test_disk_full_while_creating_names_the_file_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    create_schema = store_module.create_schema

    def on_a_full_disk(conn):  # SQLITE_FULL, as on a full disk: the file may not grow past 2 pages
        conn.execute("PRAGMA max_page_count = 2")
        create_schema(conn)

    monkeypatch.setattr(store_module, "create_schema", on_a_full_disk)
    path = tmp_path / "gw.db"
    with pytest.raises(DiskFull) as info:
        Store.open(path)
    message = str(info.value)
    assert f"the disk holding {path} is full" in message and ".tmp" not in message
    assert "Free some space" in message and "another disk" in message
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_between_the_tables_and_the_file_leaves_nothing_at_the_path(tmp_path):
    # The tables fit in the new file's -wal but not again in the file: close() could not checkpoint, said
    # nothing, and a malformed file was linked into place (every later run into it failed, space or not).
    # A real full disk: a small tmpfs (root only), filled to leave room for the -wal and not the file.
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"x" * (free - 120_000))
        with pytest.raises(DiskFull, match="Free some space"):
            Store.open(disk / "new.db")
        assert sorted(os.listdir(disk)) == ["filler"]  # nothing at the path, no private file left
        (disk / "filler").unlink()
        with Store.open(disk / "new.db") as s:  # with space again, the path is free to use
            assert s.create_run(name="after") == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_path_and_working_directory_that_are_not_utf8(tmp_path, monkeypatch):
    folder = tmp_path / os.fsdecode(b"caf\xe9")  # a Latin-1 name: surrogate escapes in the str
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system accepts only UTF-8 names")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [str(folder / "train.py"), "--lr", "0.1"])
    path = folder / "gw.db"
    with Store.open(path) as s:
        run_id = s.create_run(name=f"run-{folder.name}")
    assert os.listdir(os.fsencode(folder)) == [b"gw.db"]  # the file the user named, byte for byte
    conn = sqlite3.connect(os.fsencode(path))
    (name, cwd, argv) = conn.execute("SELECT name, cwd, argv FROM runs WHERE id = ?", (run_id,)).fetchone()
    conn.close()
    shown = os.fsencode(folder).decode("utf-8", "backslashreplace")
    assert (name, cwd) == ("run-caf\\xe9", shown)
    assert json.loads(argv)[0] == str(folder / "train.py")  # JSON keeps the escapes: relaunchable as is


READ_ONLY = """
import sys
from tracker.store import Store
try:
    with Store.open(sys.argv[1], readonly=True) as store:
        print(len(store.runs()))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_a_reader_in_a_directory_it_cannot_write_is_told_why(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "gw.db"
    with Store.open(path) as s:
        s.create_run(name="colleague")  # closed: no -wal / -shm, which a WAL reader must create
    folder.chmod(0o555)
    try:
        out = run_without_root_overrides(READ_ONLY, path)
    finally:
        folder.chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ReadOnlyDirectory: "), out.stdout
    assert f"its directory {folder} is not writable" in out.stdout and "gw.db-shm" in out.stdout
    assert "copy gw.db" in out.stdout and "readonly=True" not in out.stdout
    assert list(folder.iterdir()) == [path]
