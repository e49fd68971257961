"""The Runs page lists every run with what the store recorded; an empty or missing database shows the start
page with the demo button."""

import sqlite3

import numpy as np
import pytest
from dashboard_helpers import N_STEPS, dataframe_with

from tracker.store import Store


def test_every_run_with_status_clip_steps_clip_rate_metrics_and_parent(recorded, app):
    at = app(recorded.path).run()
    assert not at.exception
    assert at.title[0].value == "Runs"
    table = dataframe_with(at, "clip_rate").set_index("name")
    assert set(table.index) == {"base", "child"}
    assert table.loc["child", "id"] == recorded.ids["child"]
    assert table.loc["child", "parent"] == recorded.ids["base"]
    assert table.loc["child", "clip"] == "norm:0.5" and table.loc["base", "clip"] == "none"
    assert table["status"].tolist() == ["finished", "finished"]
    assert table.loc["child", "steps"] == N_STEPS
    assert table.loc["child", "clip_rate"] == pytest.approx(recorded.clipped["child"].mean())
    for run in ("base", "child"):
        last_step, last_val = recorded.metrics[run]["val_acc"][-1]
        assert table.loc[run, "val_acc"] == pytest.approx(last_val)
        assert table.loc[run, "gen_gap"] == pytest.approx(recorded.metrics[run]["gen_gap"][-1][1])


def test_filter_by_text_and_status(recorded, app):
    at = app(recorded.path).run()
    at.text_input(key="runs_filter").input("norm").run()
    assert dataframe_with(at, "clip_rate")["name"].tolist() == ["child"]
    at.text_input(key="runs_filter").input("").run()
    at.multiselect(key="runs_status").select("running").run()
    assert dataframe_with(at, "clip_rate").empty


def test_open_the_selected_run(recorded, app):
    at = app(recorded.path).run()
    rows = dataframe_with(at, "clip_rate")["name"].tolist()
    # What a click on the row's selection box sends.
    at.session_state["runs_table"] = {"selection": {"rows": [rows.index("base")], "columns": []}}
    at.run()
    [button] = [b for b in at.button if b.label == "Open run"]
    assert not button.disabled
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == f"#{recorded.ids['base']} base"


def test_selected_runs_go_to_compare(recorded, app):
    at = app(recorded.path).run()
    at.session_state["compare_ids"] = [recorded.ids["child"]]
    at.switch_page("views/compare.py").run()
    assert at.multiselect(key="compare_pick").value == [recorded.ids["child"]]


def test_without_the_trainer_extra_the_demo_button_says_what_to_install(tmp_path, app, monkeypatch):
    # pip install 'gradwatch[dashboard]' alone: the demo started, then died on `import torchaudio`.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchaudio" else real(name, *a)
    )
    at = app(tmp_path / "gradwatch.db").run()
    assert not at.exception
    assert at.button(key="demo").disabled
    assert "lacks torchaudio" in at.info[0].value and "gradwatch[trainer]" in at.info[0].value


@pytest.mark.parametrize("kind", ["missing", "empty file", "no runs"])
def test_start_page_when_there_is_nothing_to_show(tmp_path, app, kind):
    db = tmp_path / "gradwatch.db"
    if kind == "empty file":
        db.touch()
    elif kind == "no runs":
        Store.open(db, create=True).close()
    at = app(db).run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Welcome to gradwatch"
    demo = at.button(key="demo")
    assert demo.label == "Launch a demo run" and not demo.disabled
    command = at.code[0].value
    assert "-m trainer" in command and "--preset demo" in command and str(db) in command
    # The other pages say what to do instead of failing.
    for page in ("views/run.py", "views/compare.py", "views/launch.py"):
        at.switch_page(page).run()
        assert not at.exception and "No " in at.info[0].value and "run" in at.info[0].value
    if kind == "missing":
        assert not db.exists()  # the dashboard never creates the database itself


def test_crashed_when_the_process_vanished(tmp_path, app):
    import subprocess
    import sys

    db = tmp_path / "gradwatch.db"
    # A real process records a running run and is then killed without closing it.
    code = (
        "import os, signal, sys\n"
        "from tracker.store import Store\n"
        "s = Store.open(sys.argv[1], create=True)\n"
        "s.create_run(name='killed')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(db)], timeout=60)
    assert proc.returncode == -9
    at = app(db).run()
    table = dataframe_with(at, "clip_rate")
    assert table["status"].tolist() == ["crashed"]
    # The file still says "running": crashed is derived when reading, never written by the dashboard.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"
    assert np.isnan(table["clip_rate"][0])


def test_database_in_a_missing_directory(tmp_path, app):
    db = tmp_path / "no" / "such" / "dir" / "gradwatch.db"
    at = app(db).run()
    assert not at.exception
    assert "does not exist" in at.error[0].value and "How to fix" in at.error[0].value
    assert not [b for b in at.button if b.key == "demo"]  # nothing to launch into
    # Every page says what is wrong, not "no run recorded yet".
    for page in ("views/run.py", "views/compare.py", "views/launch.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.info, (page, [i.value for i in at.info])
        assert f"`{db.parent}` does not exist" in at.error[0].value and "How to fix" in at.error[0].value
    assert not (tmp_path / "no").exists()


def test_duration_is_heartbeat_or_finish_minus_creation(recorded, app):
    with Store.open(recorded.path, readonly=True) as store:
        # Oracle: the raw timestamps of the run record (finished_at - created_at).
        child = store.run(recorded.ids["child"])
    at = app(recorded.path).run()
    table = dataframe_with(at, "clip_rate").set_index("name")
    assert table.loc["child", "duration_s"] == pytest.approx(child["finished_at"] - child["created_at"])
