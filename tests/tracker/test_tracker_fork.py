"""A tracker inherited by a forked child (multiprocessing's "fork" start method, Hogwild training): the
writer thread does not come along, so the child's records used to vanish while every call returned."""

import multiprocessing
import os
import signal

import pytest
import torch
from sqlite_rows import rows
from torch import nn

from tracker import GradTracker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _train_in_child(model, tracker, errors):
    # The parent's tracker holds the SIGTERM handler; its copy here gives the hold back at the fork.
    errors.put(("sigterm default", None if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else "ours"))
    for call in ("step", "log", "finish"):
        try:
            if call == "step":
                model(torch.ones(2, 4)).sum().backward()
                tracker.step()
            elif call == "log":
                tracker.log({"acc": 1.0})
            else:
                tracker.finish()  # ends nothing of the parent's
            errors.put((call, None))
        except RuntimeError as exc:
            errors.put((call, str(exc)))


def test_a_forked_child_is_told_that_it_cannot_record_and_the_parent_run_is_untouched(db_path):
    model = nn.Linear(4, 2)
    tracker = GradTracker(model, db=db_path, run="parent", clip="norm:1.0")
    model(torch.ones(2, 4)).sum().backward()
    tracker.step()
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    child = context.Process(target=_train_in_child, args=(model, tracker, errors))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    said = dict(errors.get(timeout=5) for _ in range(4))
    assert said["sigterm default"] is None
    for call in ("step", "log"):
        assert f"created by process {os.getpid()}" in said[call] and "forked" in said[call]
        assert "'spawn' start method" in said[call]
    assert said["finish"] is None
    assert rows(db_path, "SELECT status FROM runs") == [("running",)]  # the child closed nothing
    model.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    tracker.step()  # the parent records on
    tracker.finish()
    assert rows(db_path, "SELECT step FROM steps ORDER BY step") == [(0,), (1,)]
    assert rows(db_path, "SELECT status FROM runs") == [("finished",)]
    assert rows(db_path, "SELECT COUNT(*) FROM metrics") == [(0,)]


def _own_tracker_in_child(db, errors):
    model = nn.Linear(4, 2)
    try:
        tracker = GradTracker(model, db=db, run="child")
    except ValueError as exc:
        errors.put(str(exc))
        return
    model(torch.ones(2, 4)).sum().backward()
    tracker.step()
    tracker.finish()
    errors.put(None)


def test_a_forked_child_records_its_own_run_only_into_another_file(tmp_path):
    # SQLite's lock state is per process: a child forked while the parent's writer was inside a transaction
    # inherited it as held, and its own connection to that file then failed with DatabaseLocked after 5 s,
    # in 4 to 6 runs out of 10. Refused always, in a sentence; another file works.
    shared, other = tmp_path / "shared.db", tmp_path / "other.db"
    model = nn.Linear(4, 2)
    parent = GradTracker(model, db=shared, run="parent")
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for db in (shared, other):
        child = context.Process(target=_own_tracker_in_child, args=(db, errors))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    refused, recorded = errors.get(timeout=5), errors.get(timeout=5)
    assert f"forked from process {os.getpid()}" in refused and "'spawn' start method" in refused
    assert recorded is None
    parent.finish()
    assert rows(shared, "SELECT name, status FROM runs") == [("parent", "finished")]
    assert rows(other, "SELECT name, status FROM runs") == [("child", "finished")]
    assert rows(other, "SELECT COUNT(*) FROM steps") == [(1,)]
