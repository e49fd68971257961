"""The Gradient flow tab's step, once picked, stays picked while the run trains and the page refreshes; left
alone (or set to the latest step), it follows the latest step. Its widget stays the same widget while the run
grows (test_browser.py checks what that is for: the keyboard focus stays on it)."""

import contextlib

import numpy as np
from dashboard_helpers import figure, open_page, open_tab, run_fragments, values

from tracker.store import Store

LAYERS = [dict(id=0, name="a", shape=[1]), dict(id=1, name="b", shape=[1])]


def _norms(step):
    return [1.0 + step, 100.0 + step]  # each step's bars are its own


def _add_steps(writer, steps):
    for step in steps:
        writer.add_step(step=step, norms=_norms(step), total_norm=float(np.hypot(*_norms(step))), loss=1.0)
    writer.flush()


def _shown(at, run):
    """(the slider's step, the bars drawn)"""
    return at.select_slider(key=f"flow_step_{run}").value, values(figure(at, "flow")["data"][0]["y"]).tolist()


@contextlib.contextmanager
def _live_run(tmp_path):
    """A run being written: yields (database path, run id, its writer); closes both after."""
    path = tmp_path / "gradwatch.db"
    store = Store.open(path, create=True)
    run = store.create_run(name="live")
    store.add_layers(run, LAYERS)
    writer = store.writer(run)
    try:
        yield path, run, writer
    finally:
        writer.close()
        store.close()


def test_the_picked_step_survives_live_refreshes(tmp_path, app):
    with _live_run(tmp_path) as (path, run, writer):
        _add_steps(writer, range(10))
        at = open_tab(open_page(app(path), "views/run.py"), "Gradient flow")
        assert _shown(at, run) == (9, _norms(9))  # not picked: the latest step
        at.select_slider(key=f"flow_step_{run}").set_value(3).run()
        assert _shown(at, run) == (3, _norms(3))
        _add_steps(writer, range(10, 15))
        run_fragments(at)  # a live refresh: the slider's range grew
        assert not at.exception, [e.value for e in at.exception]
        assert _shown(at, run) == (3, _norms(3))
        at.run()  # and a rerun of the whole page
        assert _shown(at, run) == (3, _norms(3))
        # Set back to the latest step, it follows the run again.
        at.select_slider(key=f"flow_step_{run}").set_value(14).run()
        _add_steps(writer, range(15, 20))
        run_fragments(at)
        assert _shown(at, run) == (19, _norms(19))


def test_the_step_widget_keeps_its_identity_while_the_run_grows(tmp_path, app):
    # A widget whose identity (element id) changes is a new widget in the browser: the old one, and the
    # keyboard focus on it, is gone. The choices are the logged steps (here every 5th).
    with _live_run(tmp_path) as (path, run, writer):
        _add_steps(writer, range(0, 50, 5))
        at = open_tab(open_page(app(path), "views/run.py"), "Gradient flow")
        before = at.select_slider(key=f"flow_step_{run}")
        assert list(before.options) == [str(s) for s in range(0, 50, 5)] and before.value == 45
        _add_steps(writer, range(50, 100, 5))
        run_fragments(at)
        after = at.select_slider(key=f"flow_step_{run}")
        assert after.value == 95 and len(after.options) == 20  # it followed the run, and its range grew
        assert after.id == before.id
