"""A process that recorded several runs (a GAN: a generator and a discriminator, one tracker each) is
relaunched run for run: one process, ``GRADWATCH_PARENT_RUN=1,2`` and ``GRADWATCH_RUN`` a JSON list of
their names, so that its k-th tracker continues the k-th run under its own name (both used to get the
name and the parent of the run picked). The clip spec is checked against every run's layers; after the
job exits, each expected run is looked for."""

import functools
import json
from pathlib import Path

import pytest
from dashboard_helpers import open_page, record_script, texts
from polling import wait_for

from dashboard import state
from dashboard.clipform import RecordedModel, check_clip
from dashboard.jobs import Launcher
from dashboard.launch import relaunch_spec, same_process
from tracker.store import Store

_wait = functools.partial(wait_for, timeout=120.0, interval=0.05)

# A GAN's training script: two models, two trackers; the generator has a `head`, the discriminator not.
# With a file "only-gen" in its folder it tracks the generator alone.
GAN = """
import os, torch
from tracker import GradTracker
torch.set_num_threads(1)
gen = torch.nn.ModuleDict({"body": torch.nn.Linear(2, 4), "head": torch.nn.Linear(4, 2)})
disc = torch.nn.ModuleDict({"body": torch.nn.Linear(2, 4), "out": torch.nn.Linear(4, 1)})
trackers = [GradTracker(gen, run="gen", clip="none")]
if not os.path.exists("only-gen"):
    trackers.append(GradTracker(disc, run="disc", clip="none"))
for _ in range(2):
    disc["out"](disc["body"](gen["head"](gen["body"](torch.randn(8, 2))))).mean().backward()
    for tracker in trackers:
        tracker.step()
    gen.zero_grad(); disc.zero_grad()
for tracker in trackers:
    tracker.finish()
"""


@pytest.fixture
def gan(tmp_path, monkeypatch) -> tuple[Path, list[dict]]:
    """The database and the two runs ``python gan.py`` recorded (gen #1, disc #2)."""
    db, runs = record_script(tmp_path, monkeypatch, GAN)
    assert [r["name"] for r in runs] == ["gen", "disc"]
    return db, runs


def _children(db: Path) -> list[dict]:
    with Store.open(db, readonly=True) as store:
        runs = store.runs()
        return runs[runs["parent_id"].notna()].to_dict("records")


@pytest.mark.slow
def test_each_run_of_the_process_is_continued_by_its_own_tracker(tmp_path, gan):
    db, runs = gan
    disc = runs[1]  # picked on the page: the discriminator
    spec = relaunch_spec(
        disc, name="disc · norm:0.5", db=db, clip="norm:0.5", config_dir=tmp_path, siblings=runs
    )
    assert spec.env["GRADWATCH_PARENT_RUN"] == "1,2"  # in the order the process created them
    assert json.loads(spec.env["GRADWATCH_RUN"]) == ["gen · norm:0.5", "disc · norm:0.5"]
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert job.error is None and _wait(lambda: job.popen.poll() is not None)
    assert job.state == "exited", job.state
    # Was: both new runs named "disc · norm:0.5", both children of #2.
    children = {(int(r["parent_id"]), r["name"], r["clip"], r["clip_source"]) for r in _children(db)}
    assert children == {(1, "gen · norm:0.5", "norm:0.5", "env"), (2, "disc · norm:0.5", "norm:0.5", "env")}
    found = job.recorded_runs()
    assert [(int(r["parent_id"]), r["name"]) for r in found] == [
        (1, "gen · norm:0.5"),
        (2, "disc · norm:0.5"),
    ]
    assert job.recorded_run()["name"] == "disc · norm:0.5"  # the run picked
    # A run of a process that recorded one is relaunched alone, as before.
    alone = relaunch_spec(runs[0], name="x", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert alone.env["GRADWATCH_PARENT_RUN"] == "1" and alone.env["GRADWATCH_RUN"] == "x"


@pytest.mark.slow
def test_a_relaunch_that_records_fewer_runs_says_which_is_missing(tmp_path, gan):
    db, runs = gan
    (tmp_path / "only-gen").write_text("")
    spec = relaunch_spec(
        runs[0], name="gen again", db=db, clip="norm:0.5", config_dir=tmp_path, siblings=runs
    )
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert job.error is None and _wait(lambda: job.popen.poll() is not None)
    assert [r["name"] for r in _children(db)] == ["gen again"]  # the oracle: the database
    assert job.state.startswith("exited without recording the relaunch of run #2:"), job.state
    assert "1 of the 2 runs" in job.state


def _run(run_id, pid=4242, started=1000.0, host="box"):
    return dict(id=run_id, name=f"r{run_id}", host=host, pid=pid, pid_started_at=started)


def test_the_runs_of_one_process_are_those_of_its_host_pid_and_start_time():
    runs = [_run(5), _run(2), _run(3, started=2000.0), _run(4, host="other"), _run(6, pid=7)]
    assert [r["id"] for r in same_process(runs[0], runs)] == [2, 5]  # in the order they were created
    # The same pid started at another time is another process (the pid reused).
    assert [r["id"] for r in same_process(runs[2], runs)] == [3]
    # No start time recorded (before it was, or off Linux): cannot tell, so the run alone.
    nan = [_run(7, started=float("nan")), _run(8, started=float("nan"))]
    assert [r["id"] for r in same_process(nan[0], nan)] == [7]
    assert [r["id"] for r in same_process(_run(9, started=None), [_run(10, started=None)])] == [9]


def test_a_clip_spec_must_fit_every_run_relaunched():
    gen = RecordedModel(names=("body.weight", "head.weight"), run="gen (#1)")
    disc = RecordedModel(names=("body.weight", "out.weight"), run="disc (#2)")
    # Passed (the generator has a head), then the job died with ClipSpecError in the discriminator.
    canonical, error = check_clip("agc:0.01,exclude=head", [gen, disc])
    assert canonical is None and "for run disc (#2)" in error and "head" in error
    assert check_clip("agc:0.01,exclude=body", [gen, disc]) == ("agc:0.01,exclude=body", None)
    assert check_clip("agc:0.01,exclude=head", gen)[1] is None  # one model, as before


@pytest.mark.slow
def test_the_launch_page_relaunches_them_together(tmp_path, gan, app):
    db, runs = gan
    at = open_page(app(db), "views/launch.py", launch_from=2)
    assert (
        "This process recorded 2 runs: gen (#1), disc (#2); both are relaunched, each as a child of its own"
        in (texts(at, "info"))
    )
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("agc:0.01,exclude=head").run()
    assert "for run disc (#2)" in texts(at) and at.button(key="launch_go").disabled
    at.text_input(key="clip_raw").set_value("norm:0.5").run()
    assert not at.error, texts(at)
    [command] = [c.value for c in at.code if "GRADWATCH_CLIP" in c.value]
    assert """GRADWATCH_PARENT_RUN=1,2 GRADWATCH_RUN='["gen · norm:0.5", "disc · norm:0.5"]'""" in command
    # A sweep relaunches them together once per spec.
    at.text_area(key="sweep_text").input("norm:0.5\nagc:0.01,exclude=body").run()
    [sweep] = [c.value for c in at.code if c.value.count("GRADWATCH_CLIP") == 2]
    assert sweep.count("GRADWATCH_PARENT_RUN=1,2 ") == 2
    assert 'GRADWATCH_RUN=\'["gen · agc:0.01,exclude=body", "disc · agc:0.01,exclude=body"]\'' in sweep
    at.button(key="launch_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "One process relaunching 2 runs" in texts(at, "caption")
    [job] = state._launcher(str(tmp_path / "gradwatch-logs")).jobs
    assert _wait(lambda: job.popen.poll() is not None) and job.state == "exited", job.state
