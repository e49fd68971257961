"""A relaunch that cannot start fails alone, saying why: a run name holding a NUL character (the tracker
accepts one), a recorded argument that is not UTF-8. Later launches still start, and the Launch page shows
such a command, escaped, without crashing."""

import functools
import os
import sys
from pathlib import Path

from dashboard_helpers import open_page, texts
from polling import wait_for

from dashboard import state
from dashboard.jobs import Launcher, log_tail
from dashboard.launch import LaunchSpec, relaunch_spec
from tracker.store import Store

_wait = functools.partial(wait_for, timeout=60.0, interval=0.02)

# Somebody's script: writes the bytes of its arguments and of its folder (what a relaunch must give back).
ECHO = """
import os, sys
from pathlib import Path
Path(os.environ["OUT"]).write_bytes(b"\\n".join([os.fsencode(a) for a in sys.argv[1:]] + [os.getcwdb()]))
"""


def _recorded(db: Path, cwd: Path, *, name: str = "mine", argv=("train.py",)) -> dict:
    """A run as the tracker records it (the name as given, ``sys.argv`` as Python holds it); as read back.
    Each by a process of its own (a pid of no process: no start time), not one that recorded several."""
    with Store.open(db, create=True) as store:
        pid = 2**22 + len(store.runs())  # above Linux's pid_max
        run = store.create_run(name=name, argv=list(argv), cwd=str(cwd), python=sys.executable, pid=pid)
        store.writer(run).close(status="finished")
    with Store.open(db, readonly=True) as store:
        return store.run(run)


def _echo_project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "train.py").write_text(ECHO)
    return proj


def test_a_nul_in_the_run_name_fails_that_job_alone_and_later_launches_start(tmp_path, monkeypatch):
    db = tmp_path / "gradwatch.db"
    run = _recorded(db, _echo_project(tmp_path), name="\x00nul")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    launcher = Launcher(tmp_path / "gradwatch-logs")
    spec = relaunch_spec(run, name=f"{run['name']} · norm:0.5", db=db, clip="norm:0.5", config_dir=tmp_path)
    [bad] = launcher.submit([spec])  # raised ValueError ("embedded null byte") out of submit
    assert bad.state == "failed to start"
    assert "NUL character" in bad.error and "Launch it under another name" in bad.error
    assert "$'\\x00nul · norm:0.5'" in log_tail(bad.log_path)  # the command it was, printable
    # The next launch starts (the broken job used to stay queued and be tried, and raise, on every submit).
    good = LaunchSpec(name="next", argv=(sys.executable, "-c", "print('started')"), cwd=str(tmp_path))
    [after] = launcher.submit([good])
    assert _wait(lambda: after.state == "exited") and "started" in log_tail(after.log_path)
    assert bad.state == "failed to start" and bad.popen is None


def test_an_argument_that_is_not_utf8_reaches_the_relaunch_as_its_bytes(tmp_path, monkeypatch):
    db = tmp_path / "gradwatch.db"
    proj = _echo_project(tmp_path)
    # How Python holds the argument `train.py $'\xff\xfe'` in sys.argv, which the tracker records.
    run = _recorded(db, proj, argv=["train.py", os.fsdecode(b"\xff\xfe")])
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    spec = relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert spec.display().endswith("train.py $'\\xff\\xfe'")  # as typed in a shell to give those bytes
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])  # raised UnicodeEncodeError
    assert job.error is None and _wait(lambda: job.state != "running")
    assert out.read_bytes().split(b"\n") == [b"\xff\xfe", os.fsencode(str(proj))]


def _page(app, db: Path, run_id: int):
    at = open_page(app(db), "views/launch.py", launch_from=run_id)
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.5").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_launch_page_shows_such_commands_and_their_failure(tmp_path, app, monkeypatch):
    db = tmp_path / "gradwatch.db"
    proj = _echo_project(tmp_path)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    odd = _recorded(db, proj, argv=["train.py", os.fsdecode(b"\xff\xfe")])
    nul = _recorded(db, proj, name="\x00nul")
    at = _page(app, db, int(odd["id"]))  # crashed in st.code: a surrogate cannot be sent to the browser
    assert any("train.py $'\\xff\\xfe'" in c.value for c in at.code)
    at = _page(app, db, int(nul["id"]))
    assert any("GRADWATCH_RUN=$'\\x00nul · norm:0.5'" in c.value for c in at.code)
    at.button(key="launch_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Could not start" in texts(at) and "NUL character" in texts(at)
    # Another launch from the same page (another name) starts.
    at.text_input(key="launch_name").input("plain name").run()
    at.button(key="launch_go").click().run()
    assert not at.exception and any("Started `plain name`" in s.value for s in at.success)
    jobs = state._launcher(str(tmp_path / "gradwatch-logs")).jobs
    assert [j.state for j in jobs][0] == "failed to start" and jobs[1].error is None
    assert _wait(lambda: jobs[1].state != "running")
