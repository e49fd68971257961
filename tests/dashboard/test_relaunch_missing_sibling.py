"""A process that recorded several runs is relaunched with one parent per run, its k-th tracker taking the
k-th (``GRADWATCH_PARENT_RUN=1,3``). When one of its runs is not in the database (deleted, or written to
another file), that rule gives the trackers after it the wrong parents. The tracker records no position
in its process, so the page can tell only one case before launching: a run deleted between two runs of
the process leaves its id unused (it may have been another process's, so it asks, rather than refuse).
The other cases show once the relaunch has run: its process recorded more runs than it relaunched, which
its job says (it used to read "exited", the tracker's warning left in the log)."""

import functools
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from dashboard_helpers import open_page, record_script, texts
from polling import wait_for
from sqlite_rows import rows

from dashboard.jobs import Launcher
from dashboard.launch import relaunch_spec, same_process
from dashboard.siblings import missing_between, slots
from tracker.store import Store

_wait = functools.partial(wait_for, timeout=120.0, interval=0.05)


def test_the_ids_missing_between_the_runs_of_one_process():
    runs = [dict(id=i) for i in (3, 5, 9)]
    assert missing_between(runs, [1, 2, 3, 4, 5, 9, 10]) == [6, 7, 8]  # 4: another run, still there
    assert missing_between(runs, range(1, 11)) == []
    assert missing_between(runs[:1], [3]) == []  # one run: nothing is between
    # Before the first run or after the last one, a deleted run leaves no trace (ids are max + 1).
    assert missing_between(runs[:2], [3, 5]) == [4]


def test_the_runs_of_one_process_by_their_trackers_places():
    def run(i, place=None):
        notes = {"_gradwatch": {"position": place}} if place else {"lr": 0.1}
        return dict(id=i, config=json.dumps(notes))

    assert slots([run(1)]) == [run(1)]  # one tracker: the first, which records no place
    assert slots([run(1), run(2, 2)]) == [run(1), run(2, 2)]
    assert slots([run(1), run(3, 3)]) == [run(1), None, run(3, 3)]
    assert slots([run(2, 2)]) == [None, run(2, 2)]  # the first tracker's run is elsewhere
    assert slots([run(1), run(2)]) is None  # recorded before trackers noted their places
    assert slots([run(1, 2), run(2, 2)]) is None  # two claim one place: nothing to go by
    assert slots([dict(id=1, config="{not json"), run(2, 2)]) == [dict(id=1, config="{not json"), run(2, 2)]


def _database(tmp_path: Path, *, delete: int | None, other_pid: bool = False) -> Path:
    """gen (#1), mid (#2) and disc (#3), recorded by this process (``other_pid``: #2 by another), then
    ``delete`` removed as a user would, with sqlite3."""
    (tmp_path / "gan.py").write_text("")
    db = tmp_path / "g.db"
    with Store.open(db, create=True) as store:
        for name in ("gen", "mid", "disc"):
            pid = 1 if other_pid and name == "mid" else os.getpid()
            run = store.create_run(
                name=name, argv=["gan.py"], cwd=str(tmp_path), python=sys.executable, pid=pid
            )
            store.writer(run).close(status="finished")
    if delete is not None:
        con = sqlite3.connect(db)
        with con:
            con.execute("DELETE FROM runs WHERE id = ?", (delete,))
        con.close()
    return db


def _page(app, db: Path):
    at = open_page(app(db), "views/launch.py", launch_from=1)
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.5").run()
    assert not at.exception and not at.error, texts(at)
    return at


def test_a_run_deleted_between_the_runs_of_the_process_is_said_before_launching(tmp_path, app):
    db = _database(tmp_path, delete=2)
    with Store.open(db, readonly=True) as store:
        runs = store.runs().to_dict("records")
    assert [r["id"] for r in same_process(runs[0], runs)] == [1, 3]  # the premise: #2 is gone
    at = _page(app, db)
    warning = texts(at, "warning")
    assert (
        "Run #2, created between runs of this process (#1 and #3), is no longer in this database" in warning
    )
    assert "would continue disc (#3)" in warning
    [command] = [c.value for c in at.code if "GRADWATCH_CLIP" in c.value]
    assert "GRADWATCH_PARENT_RUN=1,3 " in command  # shown, so it can be run by hand without the lineage
    assert at.button(key="launch_go").disabled
    at.checkbox(key="launch_gap_ok_1-3").check().run()
    assert not at.button(key="launch_go").disabled


def test_no_warning_when_the_run_between_is_another_processs(tmp_path, app):
    at = _page(app, _database(tmp_path, delete=None, other_pid=True))
    assert "no longer in this database" not in texts(at, "warning")
    [command] = [c.value for c in at.code if "GRADWATCH_CLIP" in c.value]
    assert "GRADWATCH_PARENT_RUN=1,3 " in command and not at.button(key="launch_go").disabled


# A GAN's script with three trackers; the first time (no relaunch), the discriminator's writes to a file
# of its own (db= passed), so the database holds gen (#1) and aux (#2) alone, with no gap between them.
GAN = """
import os, torch
from tracker import GradTracker
torch.set_num_threads(1)
gen = torch.nn.Linear(2, 3)
disc = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
aux = torch.nn.Bilinear(3, 3, 1)
trackers = [
    GradTracker(gen, run="gen", clip="none"),
    GradTracker(disc, run="disc", clip="none", db="other.db"),
    GradTracker(aux, run="aux", clip="none"),
]
h = gen(torch.randn(8, 2))
(disc(h).mean() + aux(h, h).mean()).backward()
for tracker in trackers:
    tracker.step()
    tracker.finish()
"""


def _launched(tmp_path: Path, db: Path, spec):
    """Run ``spec`` to its end: the job, the runs it recorded (id, name, parent id) and every run's layers."""
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert job.error is None and _wait(lambda: job.popen.poll() is not None)
    layers = dict(rows(db, "SELECT run_id, group_concat(name) FROM layers GROUP BY run_id"))
    return job, rows(db, "SELECT id, name, parent_id FROM runs WHERE id > 2 ORDER BY id"), layers


@pytest.mark.slow
def test_a_relaunch_leaves_the_place_of_a_run_not_in_the_database_empty(tmp_path, monkeypatch, app):
    db, runs = record_script(tmp_path, monkeypatch, GAN)
    assert [r["name"] for r in runs] == ["gen", "aux"]
    # Each tracker recorded its place in the process: the 2nd's run (disc) is not here, and no id says so.
    assert slots(runs) == [runs[0], None, runs[1]] and missing_between(runs, [1, 2]) == []
    at = open_page(app(db), "views/launch.py", launch_from=1)
    assert "Its 2nd tracker recorded a run this database does not hold" in texts(at, "info")
    spec = relaunch_spec(runs[0], name="gen b", db=db, clip="norm:0.5", config_dir=tmp_path, siblings=runs)
    assert spec.env["GRADWATCH_PARENT_RUN"] == "1,,2"
    assert json.loads(spec.env["GRADWATCH_RUN"]) == ["gen b", None, "aux · norm:0.5"]
    # The oracle, read with sqlite3: each new run has its parent's layers; disc's is a run of its own.
    job, children, layers = _launched(tmp_path, db, spec)
    assert [(name, parent) for _, name, parent in children] == [
        ("gen b", 1),
        ("disc", None),
        ("aux · norm:0.5", 2),
    ]
    assert layers[children[0][0]] == layers[1] and layers[children[2][0]] == layers[2]
    assert job.state == "exited", job.state


@pytest.mark.slow
def test_a_relaunch_of_runs_recorded_without_places_says_when_its_process_recorded_more(
    tmp_path, monkeypatch
):
    db, runs = record_script(tmp_path, monkeypatch, GAN)
    con = sqlite3.connect(db)  # as a tracker older than the places recorded them
    with con:
        con.execute("UPDATE runs SET config = json_remove(config, '$._gradwatch.position')")
    con.close()
    with Store.open(db, readonly=True) as store:
        runs = store.runs().to_dict("records")
    assert slots(runs) is None
    spec = relaunch_spec(runs[0], name="gen b", db=db, clip="norm:0.5", config_dir=tmp_path, siblings=runs)
    # Nothing tells the page that disc is missing: no id between the two.
    assert spec.env["GRADWATCH_PARENT_RUN"] == "1,2" and missing_between(runs, [1, 2]) == []
    # The oracle, read with sqlite3: the discriminator's tracker continued aux (#2), whose layers it has
    # not, and aux's own tracker recorded a run without a parent.
    job, children, layers = _launched(tmp_path, db, spec)
    assert [(name, parent) for _, name, parent in children] == [
        ("gen b", 1),
        ("aux · norm:0.5", 2),
        ("aux", None),
    ]
    assert layers[children[1][0]] != layers[2]  # the wrong parent
    assert layers[children[2][0]] == layers[2]  # aux's tracker
    assert job.state.startswith("exited; its process recorded 3 runs, one more than the 2 it relaunches"), (
        job.state
    )
    assert f"`aux` (#{children[2][0]}, no parent)" in job.state
