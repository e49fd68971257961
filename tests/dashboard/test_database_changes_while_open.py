"""A page left open while its database file is deleted, replaced or rewritten in place says what a reload
would say: never a traceback, and never the old file's rows shown as the new file's.

The live panels are fragments that refresh by themselves every 2 s without the page around them:
``run_fragments`` reruns them alone, as a browser's timer does."""

import contextlib
import os

import numpy as np
import pytest
from dashboard_helpers import figure, open_page, run_fragments, texts, trace, values
from screenshots import CHROMIUM

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


def test_a_database_overwritten_in_place_with_another_gradwatch_file_shows_that_files_run(tmp_path, app):
    # `cp backup.db gradwatch.db`: the same inode, another valid file. The cached connection read its old
    # pages and said "damaged" until the server restarted, though a fresh connection read the file fine.
    path, other = tmp_path / "gradwatch.db", tmp_path / "backup.db"
    _write(path, "old", [1.0] * 10)
    _write(other, "restored", [7.0, 8.0, 9.0])
    at = open_page(app(path), "views/run.py")
    assert _metric(at, "Steps recorded") == "10"
    with open(other, "rb") as src, open(path, "r+b") as dst:  # copied over it, as cp does
        dst.write(src.read())
        dst.truncate()
    run_fragments(at)
    assert not at.exception and not texts(at, "error"), texts(at, "error")
    assert _metric(at, "Steps recorded") == "3"
    assert [t.value for t in at.title] == ["#1 restored"]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_compare_keeps_working_when_the_database_is_replaced_again_and_again(tmp_path):
    # The same run id with another label in each file: Streamlit's multiselect state failed to serialize a
    # selection whose label changed twice (TypeError on the page, no chart until a reload). In a browser:
    # AppTest does not serialize widget states the way the frontend does.
    from playwright.sync_api import sync_playwright
    from screenshots import CHROMIUM_ARGS, serve

    path = tmp_path / "gradwatch.db"
    files = {name: tmp_path / f"{name}.db" for name in ("orig-A", "other-B")}
    for name, file in files.items():
        _write(file, name, [1.0] * (4 if name == "orig-A" else 3))
    _write(path, "orig-A", [1.0] * 4)
    with serve(path, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/compare?runs=1")
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
        lineage = page.get_by_text("Add parents and children")
        for name in ("other-B", "orig-A", "other-B"):
            _remove(path)
            with open(files[name], "rb") as src, open(path, "wb") as dst:  # a new file (inode) at the path
                dst.write(src.read())
            lineage.click()  # any rerun of the page
            page.get_by_text(f"#1 {name}").first.wait_for(timeout=30_000)
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
            assert page.locator("[data-testid='stException']").count() == 0, name
        browser.close()


@pytest.mark.parametrize("page", ["views/run.py", "views/compare.py"])
def test_a_page_that_said_no_run_yet_shows_the_run_recorded_since(tmp_path, app, page):
    # `rm gradwatch.db*`, then a new run: the open page stayed on "No run recorded yet" until a reload.
    path = tmp_path / "gradwatch.db"
    at = open_page(app(path), page, compare_ids=[1])
    assert NO_RUN in texts(at, "info")
    run_fragments(at)  # nothing yet: the page waits (AppTest then holds the fragment's output alone)
    assert not at.exception and not at.title
    _write(path, "new", [1.0, 2.0])
    run_fragments(at)  # its next look: the whole page is drawn
    assert not at.exception, [e.value for e in at.exception]
    assert NO_RUN not in texts(at, "info")
    assert figure(at, "global_norm" if page == "views/run.py" else "cmp_norm")
