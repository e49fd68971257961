"""A run whose process is alive on this machine but whose heartbeat is stale (its writer waits for another
process's write lock) reads running: its Run page says why the heartbeat stopped, and keeps Stop."""

import re
import sqlite3

from dashboard_helpers import open_page, run_fragments

from tracker.store import Store


def _status_texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "warning", "error") for e in getattr(at, kind))


def test_a_stale_heartbeat_of_a_live_process_says_the_database_is_probably_locked(tmp_path, app):
    path = tmp_path / "gradwatch.db"
    with Store.open(path, create=True) as store:  # both recorded with this process's pid and this machine
        held = store.create_run(name="held")
        beating = store.create_run(name="beating")
    with sqlite3.connect(path) as conn:  # its last heartbeat 75 s ago, as under a held lock
        conn.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 75 WHERE id = ?", (held,))
    at = open_page(app(path), "views/run.py", open_run=held)
    for refresh in (None, run_fragments, lambda at: at.run()):  # the first render, a live refresh, a rerun
        if refresh is not None:
            refresh(at)
        assert not at.exception, [e.value for e in at.exception]
        shown = _status_texts(at)
        assert "status **running**" in shown
        late = re.search(r"No heartbeat for (\d+) s", shown)
        assert late and 75 <= int(late.group(1)) <= 120, shown
        assert "locked by another process" in shown and "written once the lock is released" in shown
        assert [b for b in at.button if b.key == f"stop_{held}"], "Stop is offered: the process runs"
    at.selectbox(key="run_pick").set_value(beating).run()
    shown = _status_texts(at)
    assert "status **running**" in shown and "No heartbeat" not in shown
