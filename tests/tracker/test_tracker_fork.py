"""A tracker inherited by a forked child (multiprocessing's "fork" start method, Hogwild training): the
writer thread does not come along, so the child's records used to vanish while every call returned."""

import multiprocessing
import os

import pytest
import torch
from sqlite_rows import rows
from torch import nn

from tracker import GradTracker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _train_in_child(model, tracker, errors):
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
    said = dict(errors.get(timeout=5) for _ in range(3))
    for call in ("step", "log"):
        assert f"created by process {os.getpid()}" in said[call] and "forked" in said[call]
        assert "Create a GradTracker in the child" in said[call]
    assert said["finish"] is None
    assert rows(db_path, "SELECT status FROM runs") == [("running",)]  # the child closed nothing
    model.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    tracker.step()  # the parent records on
    tracker.finish()
    assert rows(db_path, "SELECT step FROM steps ORDER BY step") == [(0,), (1,)]
    assert rows(db_path, "SELECT status FROM runs") == [("finished",)]
    assert rows(db_path, "SELECT COUNT(*) FROM metrics") == [(0,)]
