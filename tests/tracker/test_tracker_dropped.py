"""A GradTracker dropped unfinished (a notebook cell that makes a model, an optimizer and a tracker, run
again) is garbage like any object: its model and optimizer state are freed, and its run is closed as the
process's exit would close it, with every step it measured."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest
import torch
from polling import wait_for
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker

# The checkout first on the path, so scripts import this tree's tracker however the env was installed.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")])))


def _run_script(tmp_path, source: str, timeout: float) -> subprocess.CompletedProcess:
    """``source`` (dedented) run as a script of its own with this tree's tracker; its output captured."""
    script = tmp_path / "cell.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)], env=_ENV, capture_output=True, text=True, timeout=timeout
    )


def _cell(db_path, run, *, attach, steps=5, handle_sigterm=False, **options):
    """What the notebook cell does: a new model, its optimizer, a tracker (every=3: steps left buffered)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters())
    tracker = GradTracker(
        model, db=db_path, run=run, every=3, clip="norm:0.5", handle_sigterm=handle_sigterm, **options
    )
    if attach:
        tracker.attach(opt)
    for _ in range(steps):
        model(torch.randn(3, 4)).sum().backward()
        if not attach:
            tracker.step()
        opt.step()
        opt.zero_grad()
    return model, opt, tracker


def _closed(db_path, run):
    got = _rows(db_path, "SELECT status FROM runs WHERE name = ?", run)
    return got and got[0][0] != "running"


@pytest.mark.parametrize("attach", [False, True])
def test_a_dropped_tracker_frees_its_model_and_closes_its_run(db_path, attach):
    model, opt, tracker = _cell(db_path, "first", attach=attach)
    gone = weakref.ref(model), weakref.ref(opt), weakref.ref(tracker)
    del model, opt, tracker  # the cell run again: its names now hold the new objects
    gc.collect()
    assert [r() for r in gone] == [None, None, None]
    assert wait_for(lambda: _closed(db_path, "first"), timeout=20.0, interval=0.05)
    run = _rows(
        db_path,
        "SELECT status, error, (SELECT group_concat(step) FROM steps WHERE run_id = runs.id),"
        " (SELECT group_concat(step) FROM clip_events WHERE run_id = runs.id) FROM runs WHERE name = 'first'",
    )
    # Logged steps 0 and 3, and a clip event for every step: step 4's was still on the device.
    assert run == [("finished", None, "0,3", "0,1,2,3,4")]


def test_a_dropped_tracker_after_a_traceback_reads_stopped(db_path, monkeypatch):
    _, _, tracker = _cell(db_path, "interrupted", attach=False, steps=2)
    # Ctrl-C stopped its loop in a notebook: the traceback shown sets sys.last_value, as at exit.
    monkeypatch.setattr(sys, "last_value", KeyboardInterrupt(), raising=False)
    del tracker
    gc.collect()
    assert wait_for(lambda: _closed(db_path, "interrupted"), timeout=20.0, interval=0.05)
    assert _rows(db_path, "SELECT status, error FROM runs") == [("stopped", "KeyboardInterrupt")]


def test_a_shared_grad_scaler_or_a_kept_handle_keeps_no_dropped_tracker_alive(db_path):
    # The scaler is made once, in an earlier cell; the cell making a model, optimizer and tracker attached
    # with it is run three times; its last line, `tracker.attach(...)`, is what a notebook keeps (Out[n]).
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    unwrapped = scaler.step
    gone, kept = [], []
    for cell in range(3):
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker = GradTracker(model, db=db_path, run=f"cell-{cell}", handle_sigterm=False)
        kept.append(tracker.attach(opt, scaler=scaler))
        scaler.scale(model(torch.randn(3, 4)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        gone.append((weakref.ref(model), weakref.ref(opt), weakref.ref(tracker)))
        del model, opt, tracker
    gc.collect()
    assert [[r() is None for r in refs] for refs in gone] == [[True] * 3] * 3
    assert wait_for(lambda: all(_closed(db_path, f"cell-{c}") for c in range(3)), timeout=20.0)
    assert (
        _rows(db_path, "SELECT status, (SELECT count(*) FROM steps s WHERE s.run_id = runs.id) FROM runs")
        == [("finished", 1)] * 3
    )
    assert "gone" in repr(kept[0]) and kept[0].attachment is None
    kept[0].remove()  # (nothing left to remove: no error)
    # The scaler's step is its own again once it has stepped through wrappers of attachments gone since.
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradTracker(model, db=db_path, run="last", handle_sigterm=False) as tracker:
        handle = tracker.attach(opt, scaler=scaler)
        assert scaler.step.wrapped == unwrapped  # one wrapper: the dead ones below it were left out
        handle.remove()
    assert scaler.step == unwrapped


def test_a_tracker_collected_while_its_thread_holds_a_lock_the_closing_takes_does_not_deadlock(db_path):
    # The collector runs finalizers wherever it runs: here while SIGTERM's bookkeeping lock is held (as
    # inside SigtermAsExit, whose signal.getsignal allocates). Closing there took that lock again: a hang.
    from tracker import lifetime

    model, opt, tracker = _cell(db_path, "cyclic", attach=True, steps=2, handle_sigterm=True)
    tracker._me = tracker  # only the cyclic collector frees it: the one below, automatic ones held off
    gc.disable()
    try:
        del model, opt, tracker
        done = threading.Event()

        def collect_holding_the_lock():
            with lifetime._lock:
                gc.collect()
            done.set()

        threading.Thread(target=collect_holding_the_lock, daemon=True).start()
        assert done.wait(timeout=20.0), "the collection hung"
    finally:
        gc.enable()
    assert wait_for(lambda: _closed(db_path, "cyclic"), timeout=20.0)


def test_a_finished_tracker_kept_around_keeps_no_parameter_or_gradient(db_path):
    model, opt, tracker = _cell(db_path, "kept", attach=True, extra_stats=True)
    tracker.finish()
    weight = model[0].weight
    held = weakref.ref(weight), weakref.ref(weight.grad if weight.grad is not None else weight)
    del model, opt, weight
    gc.collect()
    assert [r() for r in held] == [None, None]
    assert tracker.state_dict()["layers"] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_a_tracker_kept_or_finished_is_not_closed_again(db_path):
    model, opt, kept = _cell(db_path, "kept", attach=True, steps=1)
    del model, opt  # the optimizer's hook and the tracker hold each other, and the name holds the tracker
    gc.collect()
    assert not kept._finished
    model, opt, finished = _cell(db_path, "finished", attach=False, steps=1)
    finished.finish("failed", error="by hand")
    del model, opt, finished
    gc.collect()
    kept.finish()
    assert _rows(db_path, "SELECT name, status, error FROM runs ORDER BY id") == [
        ("kept", "finished", None),
        ("finished", "failed", "by hand"),
    ]


@pytest.mark.slow
def test_a_process_that_exits_right_after_dropping_a_tracker_closes_its_run(tmp_path, db_path):
    # The closing happens on a thread of its own (the collector may run in any thread): the interpreter
    # waits for it before exiting.
    proc = _run_script(
        tmp_path,
        f"""
            import gc, threading, torch
            from tracker import GradTracker
            model = torch.nn.Linear(3, 1)
            tracker = GradTracker(model, db={str(db_path)!r}, run="dropped", every=4, clip="norm:0.5")
            for _ in range(3):
                model(torch.ones(2, 3)).sum().backward()
                tracker.step()
            tracker.me = tracker  # only the cyclic collector frees it: here, in a daemon thread
            del tracker
            collector = threading.Thread(target=gc.collect, daemon=True)
            collector.start()
            collector.join()
            """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = _rows(db_path, "SELECT status, (SELECT group_concat(step) FROM clip_events) FROM runs")
    assert got == [("finished", "0,1,2")]


@pytest.mark.slow
def test_sigterm_after_a_dropped_tracker_is_closed_ends_the_process_as_without_gradwatch(tmp_path, db_path):
    # The run is closed by a thread that cannot put SIGTERM's default handler back (only the main thread
    # may): the handler left must not turn SIGTERM into a SystemExit that `except BaseException` swallows.
    proc = _run_script(
        tmp_path,
        f"""
            import gc, os, signal, sqlite3, time, torch
            from tracker import GradTracker
            model = torch.nn.Linear(3, 1)
            tracker = GradTracker(model, db={str(db_path)!r}, run="dropped")
            model(torch.ones(2, 3)).sum().backward()
            tracker.step()
            del tracker
            gc.collect()
            con = sqlite3.connect({str(db_path)!r})
            from tracker import lifetime
            while con.execute("SELECT status FROM runs").fetchone()[0] == "running" or lifetime._holders:
                time.sleep(0.05)  # (the hold is given back once the run is closed)
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            except BaseException:
                pass
            print("survived SIGTERM")
            """,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout, proc.stderr)
    assert _rows(db_path, "SELECT status FROM runs") == [("finished",)]


def test_the_sigterm_hold_is_given_back_only_once_the_run_is_closed(db_path, monkeypatch):
    # Given back first, a SIGTERM while the close waited for a lock killed the process: the run's last steps
    # and its status were lost (a Pool's terminate() on workers that dropped their trackers did it).
    from tracker import lifetime

    model, opt, tracker = _cell(db_path, "held", attach=True, steps=2, handle_sigterm=True)
    assert tracker._sigterm.installed
    writer, seen = tracker._remains.writer, []
    close = writer.close
    monkeypatch.setattr(writer, "close", lambda **kw: (seen.append(lifetime._holders), close(**kw))[1])
    tracker.finish()
    assert seen and seen[0] >= 1 and lifetime._holders == 0


def test_a_run_dropped_a_moment_ago_can_be_resumed_at_once(db_path, monkeypatch):
    # Its tracker is collected, its run queued for the closer: a resume used to find it "still running".
    from tracker import dropped

    close = dropped.close_run

    def slow_close(*args, **kwargs):  # a close that takes a moment (a busy file, a slow disk)
        time.sleep(0.5)
        return close(*args, **kwargs)

    monkeypatch.setattr(dropped, "close_run", slow_close)

    def train() -> list[dict]:
        states = []
        for k in range(3):
            model, opt, tracker = _cell(db_path, f"r{k}", attach=False, steps=2)
            states.append((model, tracker.state_dict()))
        return states  # the trackers are dropped here, unfinished

    for model, state in train():
        again = GradTracker(model, db=db_path, resume=state, every=3, clip="norm:0.5", handle_sigterm=False)
        again.finish()
    assert _rows(db_path, "SELECT DISTINCT status FROM runs") == [("finished",)]


def test_a_shared_scalers_wrapper_chain_stays_short_over_many_cells(db_path):
    # Each cell attaches while the previous cell's attachment is garbage not yet collected: only pruning
    # the top of the chain, it grew by one per cell (RecursionError after ~1000).
    scaler = torch.amp.GradScaler("cpu")
    for cell in range(30):
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker = GradTracker(model, db=db_path, run=f"c{cell}", handle_sigterm=False)
        tracker.attach(opt, scaler=scaler)
        gc.collect()  # (what the collector does now and then: the cell before the previous one is gone)
    depth, step = 0, scaler.step
    while hasattr(step, "wrapped"):
        depth, step = depth + 1, step.wrapped
    assert depth <= 3


@pytest.mark.slow
def test_pool_workers_keep_the_default_sigterm_and_a_chained_user_handler_survives(tmp_path, db_path):
    # A Pool ends its workers with SIGTERM (terminate(), leaving `with Pool`), often while a worker waits in
    # a lock, where a Python handler never runs: with gradwatch's installed, the pool waited forever.
    # And a handler of the user's that chains to the one it replaced must not be killed by gradwatch's.
    proc = _run_script(
        tmp_path,
        f"""
            import gc, multiprocessing, os, signal, sqlite3, time, torch
            from tracker import GradTracker, lifetime

            def task(k):
                model = torch.nn.Linear(3, 1)
                tracker = GradTracker(model, db={str(db_path)!r}, run=f"w{{k}}")
                return tracker._sigterm.installed, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

            if __name__ == "__main__":
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    print("WORKER", pool.map(task, [0]))
                model = torch.nn.Linear(3, 1)
                tracker = GradTracker(model, db={str(db_path)!r}, run="main")
                model(torch.ones(2, 3)).sum().backward()
                tracker.step()
                tracker._me = tracker
                del tracker
                threading = __import__("threading")
                collector = threading.Thread(target=gc.collect)  # (closed from the closer: not restored)
                collector.start(); collector.join()
                while lifetime._holders:
                    time.sleep(0.05)
                previous = signal.getsignal(signal.SIGTERM)
                def mine(signum, frame):
                    print("CHECKPOINT SAVED", flush=True)
                    if callable(previous):
                        previous(signum, frame)
                signal.signal(signal.SIGTERM, mine)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)
                print("STILL HERE", flush=True)
            """,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "WORKER [(False, True)]" in proc.stdout
    assert "CHECKPOINT SAVED" in proc.stdout and "STILL HERE" in proc.stdout
