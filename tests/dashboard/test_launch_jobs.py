"""The Launch page refuses a relaunch whose recorded command cannot run again (its folder, Python or script
is gone), shows a job that exited non-zero as an error with its log, and stops a job the way the Run page
does (SIGTERM and the request recorded in ``runs.stop_requested_at``)."""

import sqlite3
import sys
from pathlib import Path

from dashboard_helpers import STOPPABLE, open_page, texts
from polling import wait_for

from dashboard import state
from dashboard.launch import LaunchSpec
from dashboard.text import escape_markdown
from tracker.store import Store

REPO = Path(__file__).resolve().parents[2]


def _external_run(db: Path, cwd: Path, script: str = "train.py") -> int:
    with Store.open(db, create=True) as store:
        run = store.create_run(name="mine", argv=[script, "0.1"], cwd=str(cwd), python=sys.executable)
        store.writer(run).close(status="finished")
    return run


def _launch_page(app, db: Path, run: int):
    at = open_page(app(db), "views/launch.py", launch_from=run)
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:1.0").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _launch_buttons(at):
    return [b for b in at.button if b.key == "launch_go"]


def test_a_relaunch_whose_script_is_gone_is_refused_with_how_to_fix(tmp_path, app):
    (tmp_path / "proj").mkdir()
    db = tmp_path / "gradwatch.db"
    at = _launch_page(app, db, _external_run(db, tmp_path / "proj"))
    message = texts(at)
    assert "recorded script train.py" in message and str(tmp_path / "proj" / "train.py") in message
    assert "Put the script back" in message
    assert not _launch_buttons(at)  # nothing can be started
    (tmp_path / "proj" / "train.py").write_text("pass\n")
    at.run()
    assert not texts(at) and _launch_buttons(at)


def test_a_relaunch_whose_folder_is_gone_says_so_in_a_sentence(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    at = _launch_page(app, db, _external_run(db, tmp_path / "gone"))
    message = texts(at)
    assert f"recorded working folder {tmp_path / 'gone'}" in message and "no longer exists" in message
    assert "FileNotFoundError" not in message and not _launch_buttons(at)


def _failed_job(tmp_path, app, source: str):
    """The Launch page after relaunching a recorded script whose code is now ``source`` and which ended."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text(source)
    db = tmp_path / "gradwatch.db"
    at = _launch_page(app, db, _external_run(db, tmp_path / "proj"))
    _launch_buttons(at)[0].click().run()
    [job] = state._launcher(str(tmp_path / "gradwatch-logs")).jobs
    job.popen.wait(timeout=60)
    return at.run(), job


def test_a_job_that_exits_non_zero_is_an_error_with_its_log(tmp_path, app):
    at, _ = _failed_job(tmp_path, app, "import sys\nsys.exit('no data set here')\n")
    assert "Exited with code 1" in texts(at)
    assert any("no data set here" in c.value for c in at.code)


def test_stop_from_the_job_list_records_the_request(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    launcher = state._launcher(str(tmp_path / "gradwatch-logs"))
    [job] = launcher.submit([LaunchSpec(name="long", argv=(sys.executable, "-c", STOPPABLE, str(db)),
                                        cwd=str(REPO))])  # fmt: skip
    try:
        assert wait_for(lambda: "ready" in job.log_path.read_text().splitlines(), timeout=60, interval=0.1)
        at = open_page(app(db), "views/launch.py")
        [stop] = [b for b in at.button if b.label == "Stop (SIGTERM)"]
        stop.click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert job.popen.wait(timeout=60) == 0
    finally:
        if job.popen.poll() is None:
            job.popen.kill()
    # The oracle: the file, read with plain sqlite3.
    with sqlite3.connect(db) as con:
        [(status, requested, pid)] = con.execute("SELECT status, stop_requested_at, pid FROM runs").fetchall()
    assert pid == job.pid and status == "stopped"
    assert requested is not None  # as the Run page's Stop records it
    assert f"Sent SIGTERM to {job.pid}" in texts(at, "info")


def test_a_stopped_job_reads_as_stopped_and_the_stop_message_stays(tmp_path, app):
    db, release = tmp_path / "gradwatch.db", tmp_path / "release"
    launcher = state._launcher(str(tmp_path / "gradwatch-logs"))
    argv = (sys.executable, "-c", STOPPABLE, str(db), str(release), "143")  # ends as the tracker does
    [job] = launcher.submit([LaunchSpec(name="long", argv=argv, cwd=str(REPO))])
    try:
        assert wait_for(lambda: "ready" in job.log_path.read_text().splitlines(), timeout=60, interval=0.1)
        at = open_page(app(db), "views/launch.py")
        [stop] = [b for b in at.button if b.label == "Stop (SIGTERM)"]
        stop.click().run()
        sent = f"Sent SIGTERM to {job.pid}"
        assert sent in texts(at, "info")
        at.run()  # the 2 s refresh, while the job is still stopping: the message is still there
        assert job.state == "running" and sent in texts(at, "info")
        release.touch()
        assert job.popen.wait(timeout=60) == 143
    finally:
        release.touch()
        if job.popen.poll() is None:
            job.popen.kill()
    with sqlite3.connect(db) as con:  # the oracle: the file, read with plain sqlite3
        [(status, requested)] = con.execute("SELECT status, stop_requested_at FROM runs").fetchall()
    assert status == "stopped" and requested is not None
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # Exit code 143 after our SIGTERM is a stop, not a failure. (The page's one error is about the stand-in's
    # own run as a source to relaunch: started with `python -c`, its code was never recorded.)
    assert "Exited with code" not in texts(at, "error")
    card = "\n".join(m.value for m in at.markdown)
    assert "**long** — stopped" in card
    assert "Stopped from this dashboard (SIGTERM); exit code 143" in "\n".join(c.value for c in at.caption)


def test_a_failed_jobs_error_line_is_shown_wrapped(tmp_path, app):
    reason = "RuntimeError: " + " ".join(f"word{i}" for i in range(80))  # far wider than the page
    at, job = _failed_job(tmp_path, app, f"raise SystemExit({reason!r})\n")
    assert job.state == "exited (1)" and reason in job.log_path.read_text()
    assert f"Exited with code 1: {escape_markdown(reason)}" in texts(at)  # a sentence, which wraps
    [log] = [c for c in at.code if reason in c.value]
    assert log.proto.wrap_lines  # the log box wraps too, instead of scrolling sideways


# A recorded script that runs until it gets SIGTERM (or two minutes pass, so a failed test leaves nothing).
WAITING = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("waiting", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_second_click_on_the_same_launch_asks_first_and_each_job_has_its_own_log(tmp_path, app):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text(WAITING)
    db = tmp_path / "gradwatch.db"
    at = _launch_page(app, db, _external_run(db, tmp_path / "proj"))
    launcher = state._launcher(str(tmp_path / "gradwatch-logs"))
    try:
        _launch_buttons(at)[0].click().run()
        [first] = launcher.jobs
        assert first.state == "running"
        # The second click of a double click arrives on the button as drawn before the first launch.
        _launch_buttons(at)[0].click().run()
        assert len(launcher.jobs) == 1
        # And from then on the page says why the same command waits for a confirmation.
        assert "This exact command was launched from this dashboard" in texts(at, "warning")
        assert _launch_buttons(at)[0].disabled
        # Asked for, it starts a second job, which writes to a log of its own.
        [again] = [c for c in at.checkbox if c.label == "Launch it again"]
        again.check().run()
        _launch_buttons(at)[0].click().run()
        assert len(launcher.jobs) == 2
        assert wait_for(lambda: all("waiting" in j.log_path.read_text() for j in launcher.jobs), timeout=60)
        assert launcher.jobs[0].log_path != launcher.jobs[1].log_path
        for job in launcher.jobs:
            assert job.log_path.read_text().count("waiting") == 1
    finally:
        for job in launcher.jobs:
            launcher.stop(job)
            job.popen.wait(timeout=60)


def test_a_python_dash_c_run_recorded_without_its_code_is_refused_with_why(tmp_path, app):
    # Recorded before the tracker kept the command as typed: sys.argv of `python -c ...` is just ["-c"].
    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(name="inline", argv=["-c"], cwd=str(tmp_path), python=sys.executable)
        store.writer(run).close(status="finished")
    at = _launch_page(app, db, run)
    message = texts(at)
    assert f"Run #{run} was started with `python -c ...`" in message and "not the code" in message
    assert "Put the code in a script" in message
    assert not _launch_buttons(at) and not (tmp_path / "gradwatch-logs").exists()
