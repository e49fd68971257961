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
    if mode == "sigterm-with":  # the documented `with` form: its __exit__ closes the run, not atexit
        with GradTracker(model, db=db, run=mode) as tracker:
            for i in range(10**9):
                model(torch.ones(2, 3)).sum().backward()
                tracker.step()
                if i == 1:
                    print("READY", flush=True)
                time.sleep(0.01)
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


# Typed at an interactive prompt (python -i reading stdin, as the REPL or a notebook): every traceback shown
# sets sys.last_value, which stays until the next one.
_SESSION = """\
import torch
from tracker import GradTracker
model = torch.nn.Linear(3, 1)
tracker = GradTracker(model, db={db!r}, run="repl")
{before}
for _ in range(3):
    model(torch.ones(2, 3)).sum().backward()
    _ = tracker.step()

{after}
"""


@pytest.mark.parametrize(
    "before, after, status, error",
    [
        ("pritn('typo')", "", "finished", None),  # a typo, then training: the run ended well
        ("", "raise ValueError('after training')", "failed", "after training"),  # the last thing shown
        ("", "", "finished", None),
    ],
)
def test_an_interactive_sessions_earlier_traceback_does_not_fail_the_run(
    db_path, before, after, status, error
):
    session = _SESSION.format(db=str(db_path), before=before, after=after)
    proc = subprocess.run(
        [sys.executable, "-i", "-q"], input=session, capture_output=True, text=True, env=ENV, timeout=120
    )
    assert ("NameError" in proc.stderr) == bool(before), proc.stderr
    got_status, got_error, n_steps = _run_row(db_path)
    assert (got_status, n_steps) == (status, 3)
    assert (got_error is None) if error is None else (error in got_error)


@pytest.mark.parametrize("mode", ["sigterm", "sigterm-with"])
def test_sigterm_from_the_dashboard_marks_the_run_stopped(tmp_path, db_path, mode):
    # (inside `with`, the run used to be closed with error "SystemExit")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(db_path)],
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


# Two trackers alive at once (a GAN's generator and discriminator), finished in the order given by argv[3]:
# "12" finishes the one made first, then the other; "21" the other way round. Modes:
#   one-left: only the first of the order is finished; SIGTERM must still stop the run left open.
#   none-left: both are finished; SIGTERM must meet the handler that was there before the trackers.
#   user-handler: as none-left, with the script's own handler installed before the trackers.
TWO_TRACKERS = textwrap.dedent(
    """
    import signal, sys, time, torch
    from tracker import GradTracker

    mode, db, order = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "user-handler":
        def own(signum, frame):
            print("own handler", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, own)
    before = signal.getsignal(signal.SIGTERM)
    models = {"1": torch.nn.Linear(3, 1), "2": torch.nn.Linear(3, 1)}
    trackers = {k: GradTracker(m, db=db, run=f"t{k}") for k, m in models.items()}
    first, second = order
    trackers[first].finish()
    if mode != "one-left":
        trackers[second].finish()
        assert signal.getsignal(signal.SIGTERM) is before, signal.getsignal(signal.SIGTERM)
    print("READY", flush=True)
    while True:
        models[second](torch.ones(2, 3)).sum().backward()
        if mode == "one-left":
            trackers[second].step()
        time.sleep(0.01)
    """
)


def _sigterm_after_ready(tmp_path, db_path, *args):
    script = tmp_path / "two.py"
    script.write_text(TWO_TRACKERS)
    proc = subprocess.Popen(
        [sys.executable, str(script), *args[:1], str(db_path), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        line = proc.stdout.readline().strip()
        if line == "READY":
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert line == "READY", err
    return proc.returncode, out, err


def _runs(db):
    con = sqlite3.connect(db)
    try:
        return {n: (s, e) for n, s, e in con.execute("SELECT name, status, error FROM runs")}
    finally:
        con.close()


@pytest.mark.parametrize("order", ["12", "21"])
def test_sigterm_stops_the_run_left_when_another_tracker_finished(tmp_path, db_path, order):
    # Used to fail: finishing one tracker reset SIGTERM to the default for the process, so the run still
    # open was killed (exit -15) and stayed "running".
    code, _, err = _sigterm_after_ready(tmp_path, db_path, "one-left", order)
    assert code == 128 + signal.SIGTERM, err
    finished, left = f"t{order[0]}", f"t{order[1]}"
    assert _runs(db_path) == {finished: ("finished", None), left: ("stopped", "SIGTERM")}


@pytest.mark.parametrize("order", ["12", "21"])
def test_finishing_every_tracker_puts_back_the_default(tmp_path, db_path, order):
    # (the script asserts that the handler is SIG_DFL again; SIGTERM then kills the process as by default)
    code, _, err = _sigterm_after_ready(tmp_path, db_path, "none-left", order)
    assert code == -signal.SIGTERM, err
    assert _runs(db_path) == {"t1": ("finished", None), "t2": ("finished", None)}


def test_a_handler_installed_before_the_trackers_is_left_to_handle_sigterm(tmp_path, db_path):
    code, out, err = _sigterm_after_ready(tmp_path, db_path, "user-handler", "21")
    assert code == 7 and "own handler" in out, err
    assert _runs(db_path) == {"t1": ("finished", None), "t2": ("finished", None)}
