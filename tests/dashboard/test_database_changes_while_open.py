"""A page left open while its database file is deleted, replaced or rewritten in place says what a reload
would say: never a traceback, and never the old file's rows shown as the new file's.

The live panels are fragments that refresh by themselves every 2 s without the page around them:
``run_fragments`` reruns them alone, as a browser's timer does."""

import contextlib
import os

import numpy as np
import pytest
from dashboard_helpers import figure, open_page, run_fragments, texts, trace, values

from tracker.store import Store

ONE_LAYER = [dict(id=0, name="w", shape=[1])]
NO_RUN = "No run recorded yet"


def _write(path, name, norms, *, close=True):
    """A new file at ``path`` with one run ``name`` whose step ``i`` has global norm ``norms[i]``; with
    ``close=False`` the run is left running: ``(store, writer)`` to close."""
    store = Store.open(path, create=True)
    run = store.create_run(name=name, clip="none")
    store.add_layers(run, ONE_LAYER)
    writer = store.writer(run)
    for step, norm in enumerate(norms):
        writer.add_step(step=step, norms=[norm], total_norm=norm, loss=1.0)
    writer.flush()
    if not close:
        return store, writer
    writer.close(status="finished")
    store.close()
    return None


def _remove(path):
    """Delete the database and its -wal/-shm, as `rm gradwatch.db*` does."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


def _metric(at, label):
    return {m.label: m.value for m in at.metric}[label]


@contextlib.contextmanager
def _running(path, norms):
    store, writer = _write(path, "live", norms, close=False)
    try:
        yield
    finally:
        writer.close()
        store.close()


@pytest.mark.parametrize("page", ["views/run.py", "views/compare.py"])
def test_a_deleted_database_says_no_run_recorded_yet_on_a_live_page(tmp_path, app, page):
    path = tmp_path / "gradwatch.db"
    with _running(path, [1.0] * 10):
        at = open_page(app(path), page, compare_ids=[1])
        assert figure(at, "global_norm" if page == "views/run.py" else "cmp_norm")
        _remove(path)
        run_fragments(at)  # the live panels' next refresh: the page is drawn again
        assert not at.exception, [e.value for e in at.exception]
        assert NO_RUN in texts(at, "info")
        at.run()  # a reload says the same
        assert not at.exception and NO_RUN in texts(at, "info")


def test_a_replaced_database_shows_the_new_files_run_only(tmp_path, app):
    path, other = tmp_path / "gradwatch.db", tmp_path / "other.db"
    _write(other, "new", [7.0, 8.0, 9.0])
    with _running(path, [1.0 + i for i in range(10)]):
        at = open_page(app(path), "views/run.py")
        assert at.title[0].value == "#1 live" and _metric(at, "Steps recorded") == "10"
        _remove(path)
        os.rename(other, path)  # another file moved into its path
        run_fragments(at)
        assert not at.exception, [e.value for e in at.exception]
        assert _metric(at, "Steps recorded") == "3" and _metric(at, "Status") == "finished"
        y = values(trace(figure(at, "global_norm"), "global norm (pre-clip)")["y"])
        np.testing.assert_allclose(y, [7.0, 8.0, 9.0])
        assert [t.value for t in at.title] == ["#1 new"]  # the header above the live panels too


PAGES = ("views/runs.py", "views/run.py", "views/compare.py", "views/launch.py")


def test_a_database_overwritten_in_place_is_not_read_from_the_old_connection(tmp_path, app):
    path = tmp_path / "gradwatch.db"
    _write(path, "old", [1.0] * 10)
    at = open_page(app(path), "views/run.py")
    assert _metric(at, "Steps recorded") == "10"
    with open(path, "r+b") as f:  # the same file (inode), its first 4 KiB overwritten
        f.write(b"garbage!" * 512)
    run_fragments(at)  # the open page's next refresh
    assert not at.exception and "is not a SQLite database" in texts(at, "error")
    for page in PAGES:  # every page of this session, and of a new one (a reload)
        for session in (at, app(path).run()):
            session.switch_page(page).run()
            assert not session.exception, (page, [e.value for e in session.exception])
            assert "is not a SQLite database" in texts(session, "error"), page


def test_a_database_truncated_in_place_reads_as_an_empty_file(tmp_path, app):
    path = tmp_path / "gradwatch.db"
    _write(path, "old", [1.0] * 10)
    at = open_page(app(path), "views/run.py")
    assert _metric(at, "Steps recorded") == "10"
    os.truncate(path, 0)
    run_fragments(at)
    assert not at.exception and NO_RUN in texts(at, "info")
    # What a first visit to an empty file shows: the start page, and no run on the other pages.
    at.switch_page("views/runs.py").run()
    assert at.title[0].value == "Welcome to gradwatch"
    for page in ("views/run.py", "views/compare.py"):
        at.switch_page(page).run()
        assert not at.exception and NO_RUN in texts(at, "info"), page
