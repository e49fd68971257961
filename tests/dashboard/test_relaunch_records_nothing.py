"""A relaunch that exits 0 without recording a run (its tracker disabled by the script's own setting, a
config read from standard input, which a relaunch leaves empty) says so, instead of reading as a success.
Commands that cannot run without a person or a notebook (``python -m pdb``, a Jupyter kernel) are refused
before they start, saying what to do instead."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_for

from dashboard.jobs import Launcher
from dashboard.launch import relaunch_spec
from tracker.store import Store

REPO = Path(__file__).resolve().parents[2]
_wait = functools.partial(wait_for, timeout=120.0, interval=0.05)

# Somebody's script: tracks only when its own switch says so (a file: a variable of the environment would be
# replayed by the relaunch), and reads its settings from standard input.
SCRIPT = """
import json, os, sys, torch
from tracker import GradTracker
cfg = json.loads(sys.stdin.read() or "{}")
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
with GradTracker(model, run="mine", clip="none", enabled=os.path.exists("track")) as tracker:
    for _ in range(cfg.get("steps", 0)):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        tracker.step()
        opt.step(); opt.zero_grad()
"""


def _record(tmp_path, monkeypatch, *command: str, stdin: str = "") -> tuple[Path, dict]:
    """Run ``python *command`` in ``tmp_path`` as its user did (tracking on), and return the db and run."""
    db = tmp_path / "gradwatch.db"
    (tmp_path / "train.py").write_text(SCRIPT)
    monkeypatch.setenv("GRADWATCH_DB", str(db))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # (the relaunch inherits this environment)
    (tmp_path / "track").write_text("")
    done = subprocess.run([sys.executable, *command], cwd=tmp_path, input=stdin, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    (tmp_path / "track").unlink()
    assert done.returncode == 0, done.stderr
    with Store.open(db, readonly=True) as store:
        [run_id] = store.runs()["id"]
        return db, store.run(int(run_id))


def _relaunch(tmp_path, db: Path, run: dict, name: str = "again"):
    spec = relaunch_spec(run, name=name, db=db, clip="norm:0.5", config_dir=tmp_path / "gradwatch-logs")
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert _wait(lambda: job.popen.poll() is not None)
    assert job.returncode == 0
    return job


@pytest.mark.slow
def test_a_relaunch_that_records_no_run_says_so(tmp_path, monkeypatch):
    db, run = _record(tmp_path, monkeypatch, "train.py", stdin='{"steps": 3}')
    job = _relaunch(tmp_path, db, run)  # no "track" file now: the script disables its tracker
    assert job.state.startswith("exited without recording a run:")
    assert "enabled=False" in job.state and "standard input" in job.state
    assert not job.failed  # (no "Exited with code 0" error: the state line says it)
    with Store.open(db, readonly=True) as store:
        assert len(store.runs()) == 1  # the oracle: nothing was recorded indeed
    # Told the same way once it tracks: a run recorded under the job's name, but stdin gave it no steps.
    (tmp_path / "track").write_text("")
    job = _relaunch(tmp_path, db, run, name="tracked")
    with Store.open(db, readonly=True) as store:
        child = store.runs().iloc[-1]
    assert child["name"] == "tracked" and child["n_steps"] == 0
    assert job.state.startswith(f"exited; its run #{child['id']} recorded no step")


@pytest.mark.slow
def test_a_relaunch_that_records_its_run_reads_exited(tmp_path, monkeypatch):
    db, run = _record(tmp_path, monkeypatch, "train.py", stdin='{"steps": 3}')
    (tmp_path / "track").write_text("")
    (tmp_path / "train.py").write_text(SCRIPT.replace('sys.stdin.read() or "{}"', "'{\"steps\": 2}'"))
    job = _relaunch(tmp_path, db, run)
    assert job.state == "exited"
    assert job.recorded_run()["name"] == "again" and job.recorded_run()["n_steps"] == 2


@pytest.mark.slow
def test_a_run_started_under_pdb_is_refused_with_the_command_to_run_by_hand(tmp_path, monkeypatch):
    db, run = _record(tmp_path, monkeypatch, "-m", "pdb", "train.py", stdin='continue\n{"steps": 1}\n')
    with pytest.raises(ValueError, match=r"started under the debugger \(`python -m pdb \.\.\.`\)") as refused:
        relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert f"GRADWATCH_CLIP=norm:0.5 GRADWATCH_DB={db}" in str(refused.value)
    assert f"{sys.executable} -m pdb train.py`" in str(refused.value)


# Jupyter's kernel, as `python -m ipykernel_launcher -f .../kernel-<id>.json` starts it; a cell then tracks.
KERNEL = """
import torch
from tracker import GradTracker
model = torch.nn.Linear(4, 1)
with GradTracker(model, run="notebook", clip="none") as tracker:
    model(torch.randn(8, 4)).pow(2).mean().backward()
    tracker.step()
"""


@pytest.mark.slow
def test_a_notebook_run_is_refused_with_what_to_do_in_the_notebook(tmp_path, monkeypatch):
    (tmp_path / "ipykernel_launcher.py").write_text(KERNEL)
    kernel_file = str(tmp_path / "runtime" / "kernel-6f1c.json")
    db, run = _record(tmp_path, monkeypatch, "-m", "ipykernel_launcher", "-f", kernel_file)
    with pytest.raises(ValueError, match="ran in a Jupyter or IPython kernel") as refused:
        relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert "os.environ['GRADWATCH_CLIP'] = 'norm:0.5'" in str(refused.value)


@pytest.mark.parametrize(
    "argv, typed",
    [
        # Colab's kernel (a script of its own), recorded as sys.argv.
        (["/usr/lib/python3/dist-packages/colab_kernel_launcher.py", "-f", "/r/kernel-a.json"], None),
        (["/venv/lib/ipykernel_launcher.py", "-f", "/r/kernel-a.json"], ["-m", "ipykernel", "-f", "k.json"]),
        (["/venv/bin/ipython"], None),  # an IPython shell
        (["train.py"], ["-m", "ipdb", "train.py"]),
        (["train.py"], ["-m", "pudb.run", "train.py"]),  # a debugger's module
        (["train.py"], ["-m", "debugpy", "--listen", "5678", "--wait-for-client", "train.py"]),
    ],
)
def test_other_kernels_and_debuggers_are_refused_too(tmp_path, argv, typed):
    config = {"_gradwatch": {"orig_argv": typed}} if typed else {}
    run = dict(id=3, name="nb", argv=argv, cwd=str(tmp_path), python=sys.executable, config=config)
    with pytest.raises(ValueError, match="Jupyter or IPython kernel|under the debugger"):
        relaunch_spec(run, name="again", db=tmp_path / "g.db", clip="norm:0.5", config_dir=tmp_path)
