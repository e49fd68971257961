"""A relaunch runs with the environment variables its run recorded (``runs.env``), not the dashboard's: a
script reading ``LR`` or ``DATA_DIR``, or needing ``PYTHONPATH=src`` for its ``-m`` module, runs as it ran.
Variables the run did not have are unset; secrets and the session's variables (never recorded) keep the
dashboard's values. A run that recorded none runs with the dashboard's environment, and the page says so.
The Launch page shows what differs before anything starts."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from dashboard_helpers import open_page, texts
from polling import wait_for

from dashboard import state
from dashboard.commands import environment_changes
from dashboard.jobs import Launcher
from dashboard.launch import relaunch_spec, resume_spec
from tracker.store import Store

_wait = functools.partial(wait_for, timeout=120.0, interval=0.05)

# Somebody's script: its settings come from its environment; it says what it saw.
SCRIPT = """
import json, os, torch
from tracker import GradTracker
lr = float(os.environ.get("LR", "0.01"))
model = torch.nn.Linear(2, 1)
with GradTracker(model, run="env", clip="none", config={"lr": lr}) as tracker:
    model(torch.randn(4, 2)).sum().backward()
    tracker.step()
names = ("LR", "DATA_DIR", "CUDA_VISIBLE_DEVICES", "FOO", "MY_TOKEN", "TERM")
seen = {k: os.environ.get(k) for k in names}
seen["RAW_DIR"] = os.environb.get(b"RAW_DIR", b"").hex()
open("seen.json", "w").write(json.dumps(seen))
"""
RAW = b"/data/caf\xe9"  # a value that is not UTF-8 (a Latin-1 folder name)


def _record(folder: Path, db: Path, *command: str, **env: str) -> dict:
    """Run ``python *command`` in ``folder`` as its user did, with ``env`` added to this environment less
    FOO; return the run it recorded, as read back."""
    base = {k: v for k, v in os.environ.items() if k != "FOO"}
    done = subprocess.run([sys.executable, *command], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**base, "GRADWATCH_DB": str(db), **env})  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Store.open(db, readonly=True) as store:
        return store.run(int(store.runs()["id"].max()))


def _run_job(tmp_path: Path, spec):
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert job.error is None and _wait(lambda: job.popen.poll() is not None)
    return job


def test_the_relaunch_runs_with_the_recorded_environment(tmp_path, monkeypatch):
    (tmp_path / "train_env.py").write_text(SCRIPT)
    db = tmp_path / "g.db"
    run = _record(tmp_path, db, "train_env.py", LR="0.5", DATA_DIR="/data/x", CUDA_VISIBLE_DEVICES="3",
                  MY_TOKEN="the run's", RAW_DIR=os.fsdecode(RAW))  # fmt: skip
    assert run["env"]["RAW_DIR"] == "/data/caf\\xe9"  # the oracle: how the store records such a byte
    assert "MY_TOKEN" not in run["env"]  # a secret: never recorded
    # The dashboard's own environment: other values, a variable the run did not have, a secret of its own.
    monkeypatch.setenv("LR", "0.01")
    monkeypatch.setenv("FOO", "the dashboard's")
    monkeypatch.setenv("MY_TOKEN", "the dashboard's")
    monkeypatch.setenv("TERM", "dumb")  # the session's: never recorded, kept
    for name in ("DATA_DIR", "CUDA_VISIBLE_DEVICES", "RAW_DIR"):
        monkeypatch.delenv(name, raising=False)
    spec = relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    shown = spec.display()
    assert "unset FOO && " in shown and "LR=0.5" in shown and "DATA_DIR=/data/x" in shown
    assert "RAW_DIR=$'/data/caf\\xe9'" in shown  # printable, as bash takes it
    job = _run_job(tmp_path, spec)
    assert job.state == "exited", job.state
    seen = json.loads((tmp_path / "seen.json").read_text())
    # Was: LR 0.01 (the dashboard's), DATA_DIR and CUDA_VISIBLE_DEVICES unset, FOO the dashboard's.
    assert seen == {"LR": "0.5", "DATA_DIR": "/data/x", "CUDA_VISIBLE_DEVICES": "3", "FOO": None,
                    "MY_TOKEN": "the dashboard's", "TERM": "dumb", "RAW_DIR": RAW.hex()}  # fmt: skip
    assert job.recorded_run()["config"]["lr"] == 0.5


def test_a_run_that_recorded_no_environment_runs_with_the_dashboards(tmp_path, monkeypatch):
    (tmp_path / "train_env.py").write_text(SCRIPT)
    db = tmp_path / "g.db"
    run = _record(tmp_path, db, "train_env.py", LR="0.5", GRADWATCH_RECORD_ENV="0")
    assert run["env"] is None
    monkeypatch.setenv("LR", "0.25")
    monkeypatch.setenv("FOO", "the dashboard's")
    spec = relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert spec.changes is None and "LR=" not in spec.display() and "unset" not in spec.display()
    assert _run_job(tmp_path, spec).state == "exited"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["LR"] == "0.25" and seen["FOO"] == "the dashboard's"


MODULE = """
import torch
from tracker import GradTracker
model = torch.nn.Linear(2, 1)
with GradTracker(model, run="pkg", clip="none") as tracker:
    model(torch.randn(4, 2)).sum().backward()
    tracker.step()
"""


def test_a_module_found_through_the_runs_pythonpath_is_relaunched(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "src" / "mypkg").mkdir(parents=True)
    (proj / "src" / "mypkg" / "__init__.py").write_text("")
    (proj / "src" / "mypkg" / "train.py").write_text(MODULE)
    db = tmp_path / "g.db"
    run = _record(proj, db, "-m", "mypkg.train", PYTHONPATH="src")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the dashboard's: without src
    # Was refused: "The recorded module mypkg.train of run #1 cannot be found" (asked without PYTHONPATH).
    spec = relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert "PYTHONPATH=src" in spec.display()
    job = _run_job(tmp_path, spec)
    assert job.state == "exited" and job.recorded_run()["name"] == "again"


def test_what_changes_and_what_stays(tmp_path):
    recorded = {"LR": "0.5", "PATH": "/bin", "DIR": "/d/caf\\xe9", "HF_TOKEN": "old", "TERM": "xterm"}
    dashboard = {"LR": "0.01", "PATH": "/bin", "FOO": "1", "HF_TOKEN": "s", "TERM": "dumb", "SSH_AUTH": "a",
                 "DATABASE_URL": "postgres://me:pw@host/db", "GRADWATCH_DB": "g.db"}  # fmt: skip
    changes = environment_changes(recorded, dashboard)
    # Secrets and the session's own (never recorded) keep the dashboard's values, even if an older
    # tracker recorded them; so does a value with a password, which the run may have had too.
    assert changes.set == {"DIR": os.fsdecode(b"/d/caf\xe9"), "LR": "0.5"}
    assert changes.unset == ("FOO",)
    kept = {k: v for k, v in dashboard.items() if k != "FOO"}
    assert changes.applied(dashboard) == kept | {"LR": "0.5", "DIR": os.fsdecode(b"/d/caf\xe9")}
    assert environment_changes(json.dumps(recorded), dashboard) == changes  # as runs.env's JSON text
    assert environment_changes(None, dashboard) is None


def test_a_trainer_relaunch_replays_its_recorded_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    run = dict(id=3, name="kws", cwd=str(tmp_path), argv=["-m", "trainer"], config={"lr": 0.1},
               env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    spec = relaunch_spec(run, name="again", db=tmp_path / "g.db", clip="norm:1.0", config_dir=tmp_path)
    assert spec.child_env(os.environ)["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS=1 " in spec.display()
    spec = relaunch_spec({**run, "env": None}, name="again", db=tmp_path / "g.db", clip="norm:1.0",
                         config_dir=tmp_path)  # fmt: skip
    assert spec.child_env(os.environ)["OMP_NUM_THREADS"] == "8"
    # Continuing it from its checkpoint too: the same run goes on as it ran.
    (tmp_path / "ck").write_bytes(b"x")
    crashed = {**run, "status": "crashed", "config": {"checkpoint": "ck"}}
    spec = resume_spec(crashed, db=tmp_path / "g.db", config_dir=tmp_path)
    assert spec.child_env(os.environ)["OMP_NUM_THREADS"] == "1" and spec.argv[1] == "-P"


def _page_db(tmp_path: Path, env, script: str = "") -> Path:
    tmp_path.mkdir(exist_ok=True)
    db = tmp_path / "g.db"
    (tmp_path / "train.py").write_text(script)
    with Store.open(db, create=True) as store:
        run = store.create_run(
            name="mine", argv=["train.py"], cwd=str(tmp_path), python=sys.executable, env=env
        )
        store.writer(run).close(status="finished")
    return db


def _launch_page(app, db: Path):
    at = open_page(app(db), "views/launch.py", launch_from=1)
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.5").run()
    assert not at.exception and not at.error, texts(at)
    return at


def test_the_launch_page_shows_what_differs_from_the_dashboards_environment(tmp_path, app, monkeypatch):
    monkeypatch.setenv("LR", "0.01")
    monkeypatch.setenv("FOO", "1")
    monkeypatch.delenv("DATA_DIR", raising=False)
    recorded = {k: v for k, v in os.environ.items() if k not in ("FOO", "LR")}
    db = _page_db(tmp_path, {**recorded, "LR": "0.5", "DATA_DIR": "/data/x"})
    at = _launch_page(app, db)
    [command] = [c.value for c in at.code if "GRADWATCH_CLIP" in c.value]
    assert command.startswith(
        f"cd {tmp_path} && unset FOO && DATA_DIR=/data/x LR=0.5 GRADWATCH_CLIP=norm:0.5"
    )
    assert "3 differ from the dashboard's (2 set, 1 unset)" in texts(at, "caption")
    # Many: counted, listed in an expander, and left out of the short command shown first.
    many = {f"V{i:02d}": str(i) for i in range(20)}
    at = _launch_page(app, _page_db(tmp_path / "many", {**recorded, **many}))
    assert "**22 differ from the dashboard's (20 set, 2 unset)**" in texts(at, "markdown")
    listed = [c.value for c in at.code if c.value.startswith("V00=0\n")]
    assert listed and listed[0].splitlines()[-2:] == ["unset FOO", "unset LR"]
    [short] = [c.value for c in at.code if "GRADWATCH_CLIP" in c.value and "V00=" not in c.value]
    assert "unset" not in short
    assert "Shown without the 22 changes to the dashboard's environment" in texts(at, "caption")


# What the relaunch's process sees of the variables a test sets: a script anyone could have written.
DUMP_ENV = """
import json, os
names = [f"V{i:02d}" for i in range(20)] + ["FOO", "LR", "GRADWATCH_CLIP", "GRADWATCH_PARENT_RUN"]
open("seen.json", "w").write(json.dumps({k: os.environ.get(k) for k in names}))
"""


def test_the_complete_command_shown_runs_as_the_launch_does(tmp_path, app, monkeypatch):
    # More than 8 changes: the command shown first leaves them out (readable), and pasted into a shell it
    # ran with the shell's FOO and LR and without V00..V19; the page used to show nothing else to copy.
    monkeypatch.setenv("LR", "0.01")
    monkeypatch.setenv("FOO", "1")
    recorded = {k: v for k, v in os.environ.items() if k not in ("FOO", "LR")}
    many = {f"V{i:02d}": f"value {i}" for i in range(20)}
    at = _launch_page(app, _page_db(tmp_path, {**recorded, **many}, DUMP_ENV))
    [complete] = [c.value for c in at.code if "GRADWATCH_CLIP" in c.value and "V00=" in c.value]
    # Pasted into a shell of the dashboard's environment (this one), as a user would.
    done = subprocess.run(["bash", "-c", complete], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    # The oracle: what the run recorded, not what the dashboard computed from it.
    assert {k: seen[k] for k in many} == many
    assert seen["FOO"] is None and seen["LR"] is None  # the run did not have them
    assert seen["GRADWATCH_CLIP"] == "norm:0.5" and seen["GRADWATCH_PARENT_RUN"] == "1"
    # And the Launch button's process saw the same.
    (tmp_path / "seen.json").unlink()
    at.button(key="launch_go").click().run()
    [job] = state._launcher(str(tmp_path / "gradwatch-logs")).jobs
    assert job.error is None and _wait(lambda: job.popen.poll() is not None)
    assert json.loads((tmp_path / "seen.json").read_text()) == seen


def test_the_launch_page_says_when_the_environment_was_not_recorded(tmp_path, app):
    at = _launch_page(app, _page_db(tmp_path, None))
    assert "environment was not recorded" in texts(at, "caption")
    assert "the dashboard's environment is used" in texts(at, "caption")


def test_what_is_not_replayed_and_why(tmp_path):
    # Pure decisions on recorded rows: another machine's or user's environment (its HOME, PATH, TMPDIR
    # would be wrong here), the trainer's PYTHON* (the dashboard's own interpreter runs it: another
    # environment's paths, or a PYTHONPATH of "." that would defeat -P), and a run that recorded none.
    import socket

    from dashboard.commands import replayed_environment

    here = dict(host=socket.gethostname())
    env = {"LR": "0.5", "PYTHONPATH": ".", "HOME": os.environ.get("HOME", "/root")}
    assert replayed_environment({**here, "env": None}) == (None, "not recorded")
    assert replayed_environment({**here, "env": "not json"}) == (None, "not recorded")
    assert replayed_environment({"host": "elsewhere", "env": env}) == (None, "another machine")
    assert replayed_environment({**here, "env": {**env, "HOME": "/home/alice"}}) == (None, "another user")
    changes, why = replayed_environment({**here, "env": env})
    assert why is None and changes.set.get("LR") == "0.5" and changes.set.get("PYTHONPATH", ".") == "."
    changes, _ = replayed_environment({**here, "env": env}, own_python=True)
    assert "PYTHONPATH" not in changes.set and changes.set["LR"] == "0.5"


def test_a_run_that_recorded_no_environment_is_relaunched_recording_none(tmp_path):
    # GRADWATCH_RECORD_ENV=0 was the user's choice for a shared database: its relaunch keeps it (the child
    # used to record the dashboard's whole environment).
    (tmp_path / "train_env.py").write_text(SCRIPT)
    db = tmp_path / "g.db"
    run = _record(tmp_path, db, "train_env.py", GRADWATCH_RECORD_ENV="off")
    assert run["env"] is None
    spec = relaunch_spec(run, name="again", db=db, clip="norm:0.5", config_dir=tmp_path)
    assert spec.env["GRADWATCH_RECORD_ENV"] == "0" and "GRADWATCH_RECORD_ENV=0" in spec.display()
    job = _run_job(tmp_path, spec)
    assert job.popen.returncode == 0
    with Store.open(db, readonly=True) as store:
        assert store.run(int(store.runs()["id"].max()))["env"] is None


def test_names_no_shell_takes_are_shown_through_env(tmp_path):
    # Lmod's exported functions (BASH_FUNC_module%%), dotted names, names with a byte that is not UTF-8:
    # `NAME=value` cannot be typed for them, and a name holding $(...) must not run anything when pasted.
    from dashboard.commands import EnvChanges, hand_command

    changes = EnvChanges(
        set={"BASH_FUNC_module%%": "() {  echo hi\n}", "X$(touch PWNED)Y": "1"}, unset=("my.var",)
    )
    shown = hand_command(str(tmp_path), {"GRADWATCH_CLIP": "norm:1"}, ["python", "t.py"], changes)
    assert shown.startswith(f"cd {tmp_path} && env -u my.var ")
    (tmp_path / "t.py").write_text(
        "import os; print(sorted(k for k in os.environ if 'BASH_FUNC' in k or 'PWNED' in k))"
    )
    done = subprocess.run(["bash", "-c", shown], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PWNED").exists()
    assert "BASH_FUNC_module%%" in done.stdout and "X$(touch PWNED)Y" in done.stdout
