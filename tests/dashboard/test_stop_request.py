"""Stopping a run from its page: SIGTERM to the process, the request recorded, the run ends "stopped", and
the dashboard keeps its view of the file.

The dashboard reads through one cached read-only connection. A Store opened and closed in the same process
(to write the stop request) used to drop that connection's POSIX locks: the training process, exiting after
the SIGTERM, then believed it was the last connection and deleted the WAL under the reader, which never saw
a new row again, on any page, until the server restarted.
"""

import contextlib
import sqlite3
import subprocess
import sys

import streamlit as st
from dashboard_helpers import STOPPABLE, dataframe_with, texts

# Another process records a whole run afterwards.
LATER = """
import sys
from tracker.store import Store
with Store.open(sys.argv[1]) as store:
    run = store.create_run(name="later")
    writer = store.writer(run)
    writer.add_step(step=0, norms=[], total_norm=2.0)
    writer.close(status="finished")
"""


def _runs_table(at):
    st.cache_data.clear()  # the runs list is cached for 2 s, as a user would wait
    at.switch_page("views/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return dataframe_with(at, "clip_rate").set_index("name")


def test_the_dashboard_keeps_reading_after_a_stop(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        at = app(db).run().switch_page("views/run.py").run()
        run_id = int(at.session_state["run_pick"])
        at.button(key=f"stop_{run_id}").click().run()
        assert "Sent SIGTERM" in texts(at, "info") and "could not record" not in texts(at, "info")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    table = _runs_table(at)
    assert table.loc["long", "status"] == "stopped"

    subprocess.run([sys.executable, "-c", LATER, str(db)], check=True, timeout=60)
    table = _runs_table(at)
    assert set(table.index) == {"long", "later"}
    assert table.loc["later", "status"] == "finished"
    with contextlib.closing(sqlite3.connect(db)) as conn:  # and the stop request was recorded
        assert conn.execute("SELECT stop_requested_at FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
