"""A GradTracker dropped unfinished (a notebook cell that makes a model, an optimizer and a tracker, run
again) is garbage like any object: its model and optimizer state are freed, and its run is closed as the
process's exit would close it, with every step it measured."""

import gc
import signal
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch
from polling import wait_for
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker


def _cell(db_path, run, *, attach, steps=5, sigterm=False):
    """What the notebook cell does: a new model, its optimizer, a tracker (every=3: steps left buffered)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters())
    tracker = GradTracker(model, db=db_path, run=run, every=3, clip="norm:0.5", handle_sigterm=sigterm)
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
    before = signal.getsignal(signal.SIGTERM)
    _, _, tracker = _cell(db_path, "interrupted", attach=False, steps=2, sigterm=True)
    assert signal.getsignal(signal.SIGTERM) is not before  # SIGTERM stops the run while it is open
    # Ctrl-C stopped its loop in a notebook: the traceback shown sets sys.last_value, as at exit.
    monkeypatch.setattr(sys, "last_value", KeyboardInterrupt(), raising=False)
    del tracker
    gc.collect()
    assert wait_for(lambda: _closed(db_path, "interrupted"), timeout=20.0, interval=0.05)
    assert _rows(db_path, "SELECT status, error FROM runs") == [("stopped", "KeyboardInterrupt")]
    assert signal.getsignal(signal.SIGTERM) is before  # and the handler that was there is back


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
    script = tmp_path / "cell.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc, torch
            from tracker import GradTracker
            model = torch.nn.Linear(3, 1)
            tracker = GradTracker(model, db={str(db_path)!r}, run="dropped", every=4, clip="norm:0.5")
            for _ in range(3):
                model(torch.ones(2, 3)).sum().backward()
                tracker.step()
            del tracker
            gc.collect()
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = _rows(db_path, "SELECT status, (SELECT group_concat(step) FROM clip_events) FROM runs")
    assert got == [("finished", "0,1,2")]
