"""How a run ends when the program does: real subprocesses that exit, crash, get interrupted or SIGTERMed."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each test starts a Python that imports torch (~5 s on 2 busy cores)

SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from tracker import GradTracker

    mode, db = sys.argv[1], sys.argv[2]
    model = torch.nn.Linear(3, 1)
    tracker = GradTracker(model, db=db, run=mode)  # no `with`, no finish(): the tracker must cope
    for _ in range(2):
        model(torch.ones(2, 3)).sum().backward()
        tracker.step()
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "error":
        raise ValueError("bad batch")
    if mode == "sigterm":
        print("READY", flush=True)
        while True:
            model(torch.ones(2, 3)).sum().backward()
            tracker.step()
            time.sleep(0.01)
    """
)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The checkout first on the path, so the script imports this tree's tracker however the env was installed.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
ENV.pop("GRADWATCH_CLIP", None)


def _run_row(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT status, error, (SELECT count(*) FROM steps) FROM runs").fetchone()
    finally:
        con.close()


@pytest.mark.parametrize(
    "mode, code, status, error",
    [
        ("exit", 0, "finished", None),
        (
            "interrupt",
            -signal.SIGINT,
            "stopped",
            "KeyboardInterrupt",
        ),  # Python re-raises SIGINT on the way out
        ("error", 1, "failed", "bad batch"),
    ],
)
def test_status_at_interpreter_exit(tmp_path, db_path, mode, code, status, error):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(db_path)], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == code, proc.stderr
    got_status, got_error, n_steps = _run_row(db_path)
    assert (got_status, n_steps) == (status, 2)
    assert (got_error is None) if error is None else (error in got_error)


def test_sigterm_from_the_dashboard_marks_the_run_stopped(tmp_path, db_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), "sigterm", str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    status, error, n_steps = _run_row(db_path)
    assert status == "stopped" and error == "SIGTERM" and n_steps >= 2
