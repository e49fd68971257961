"""A run recorded in a folder whose name is not valid UTF-8 (a Latin-1 ``café``) is relaunched there: the
store records such a byte as the text ``\\xNN`` (docs/schema.md), which the relaunch turns back into the
byte before it looks for the folder and starts the process in it."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from dashboard_helpers import open_page
from polling import wait_for

from dashboard.jobs import Launcher
from dashboard.launch import relaunch_spec, resume_checkpoint
from tracker.store import Store

_wait = functools.partial(wait_for, timeout=60.0, interval=0.02)

# Somebody's script, run from its folder: records a run as the tracker does (name and parent from a
# relaunch's environment) and, when relaunched, says where it ran. (The tracker without torch's start-up.)
SCRIPT = """
import os, sys
from tracker.env import resolve_parent, resolve_run_name
from tracker.store import Store
with Store.open(os.environ["GRADWATCH_DB"], create=True) as store:
    run = store.create_run(name=resolve_run_name("mine"), parent_id=resolve_parent(None))
    writer = store.writer(run)
    writer.add_step(step=0, norms=[], total_norm=1.0)
    writer.close(status="finished")
if "OUT" in os.environ:
    open(os.environ["OUT"], "wb").write(os.getcwdb())
"""


def _latin1_project(tmp_path: Path) -> tuple[Path, Path, dict]:
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    folder.mkdir()
    (folder / "train.py").write_text(SCRIPT)
    db = tmp_path / "gradwatch.db"
    env = {**os.environ, "GRADWATCH_DB": str(db), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "train.py"], cwd=folder, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Store.open(db, readonly=True) as store:
        return folder, db, store.run(1)


def test_a_run_of_a_latin1_folder_is_relaunched_in_that_folder(tmp_path, monkeypatch):
    folder, db, run = _latin1_project(tmp_path)
    assert run["cwd"].endswith("caf\\xe9")  # the oracle: how the store recorded it (four characters)
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    # Was refused: "The recorded working folder .../caf\xe9 of run #1 no longer exists".
    spec = relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert spec.display().startswith(f"cd $'{tmp_path}/caf\\xe9' && ")
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert job.error is None and _wait(lambda: job.state != "running")
    assert out.read_bytes() == os.fsencode(folder)
    assert job.state == "exited" and job.recorded_run()["name"] == "again"


def test_the_launch_page_shows_its_command(tmp_path, app, monkeypatch):
    _, db, run = _latin1_project(tmp_path)
    at = open_page(app(db), "views/launch.py", launch_from=int(run["id"]))
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.5").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(c.value.startswith(f"cd $'{tmp_path}/caf\\xe9' && ") for c in at.code)


def test_a_trainer_checkpoint_relative_to_such_a_folder_is_found(tmp_path):
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    folder.mkdir()
    (folder / "ck").write_bytes(b"x")
    recorded = str(tmp_path) + "/caf\\xe9"  # as the store records the folder
    run = dict(id=4, name="r", status="crashed", cwd=recorded, config={"checkpoint": "ck"},
               argv=json.dumps(["-m", "trainer"]))  # fmt: skip
    assert resume_checkpoint(run) == str(folder / "ck")
    spec = relaunch_spec(run, name="x", db=tmp_path / "g.db", clip="none", config_dir=tmp_path)
    assert spec.cwd == str(folder)  # the trainer starts in the run's folder too
