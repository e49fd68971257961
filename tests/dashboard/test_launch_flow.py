"""End to end: a real trainer run, relaunched from the Launch page with other clipping, runs as a real
subprocess into the same database; the new run then shows on the Runs page with its parent."""

import subprocess
import sys
from pathlib import Path

import pytest
from dashboard_helpers import dataframe_with
from polling import wait_for

from tracker.store import Store

REPO = Path(__file__).resolve().parents[2]


def _runs(db):
    with Store.open(db, readonly=True) as store:
        return store.runs()


@pytest.mark.slow
def test_relaunch_a_trainer_run_with_other_clipping(tmp_path, app):
    db, cache = tmp_path / "gradwatch.db", tmp_path / "corpus"
    first = subprocess.run(
        [sys.executable, "-m", "trainer", "--corpus-size", "tiny", "--max-steps", "3", "--batch-size", "16",
         "--db", str(db), "--cache-dir", str(cache), "--run", "first", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    parent_id = int(_runs(db)["id"].iloc[0])

    at = app(db).run()
    at.session_state["launch_from"] = parent_id
    at.switch_page("views/launch.py").run()
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.05").run()
    at.number_input(key="opt_max_steps").set_value(2).run()
    at.text_input(key="launch_name").input("relaunched").run()
    command = "\n".join(c.value for c in at.code)
    assert (
        "--clip norm:0.05" in command
        and "--max-steps 2" in command
        and f"--parent-run {parent_id}" in command
    )
    at.button(key="launch_go").click().run()
    assert not at.exception and any("Started `relaunched`" in s.value for s in at.success)

    def child_done():
        runs = _runs(db)
        child = runs[runs["name"] == "relaunched"]
        return len(child) > 0 and child["status"].iloc[0] in ("finished", "failed", "crashed")

    logs = tmp_path / "gradwatch-logs"
    assert wait_for(child_done, timeout=300, interval=0.25), [p.read_text() for p in logs.glob("*.log")]
    runs = _runs(db)
    child = runs[runs["name"] == "relaunched"].iloc[0]
    assert child["status"] == "finished"
    assert int(child["parent_id"]) == parent_id
    assert child["clip"] == "norm:0.05" and child["n_steps"] == 2
    # The replayed config kept everything else (same corpus, same batch size) and changed only what we asked.
    assert child["config"]["batch_size"] == 16 and child["config"]["corpus_size"] == "tiny"
    assert child["config"]["max_steps"] == 2

    # The Launch page shows the job's log tail; the Runs page lists the new run with its parent.
    at.run()
    assert any("relaunched" in c.value and "finished" in c.value for c in at.code)

    def listed():  # the runs list is cached for up to LIVE_INTERVAL_S (2 s), as a user would see it too
        at.switch_page("views/runs.py").run()
        return "relaunched" in dataframe_with(at, "clip_rate")["name"].values

    assert wait_for(listed, timeout=15, interval=0.5)
    table = dataframe_with(at, "clip_rate").set_index("name")
    assert table.loc["relaunched", "parent"] == parent_id
    assert table.loc["relaunched", "clip"] == "norm:0.05"
    assert table.loc["relaunched", "clip_rate"] > 0  # norm:0.05 is far below the seed CNN's norms


def test_demo_button_starts_the_trainer_and_stop_sends_sigterm(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    at = app(db).run()
    at.button(key="demo").click().run()
    assert not at.exception and at.button(key="demo").disabled  # one demo at a time
    status = [i.value for i in at.info if i.value.startswith("Demo run:")]
    assert status and "running" in status[0]
    pid = int(status[0].split("pid ")[1].split(")")[0])
    logs = list((tmp_path / "gradwatch-logs").glob("*demo*.log"))
    assert len(logs) == 1 and "--preset demo" in logs[0].read_text().splitlines()[0]

    at.switch_page("views/launch.py").run()
    stop = [b for b in at.button if b.label == "Stop (SIGTERM)"]
    assert len(stop) == 1
    stop[0].click().run()
    # The process ends (the trainer stops cleanly on SIGTERM; before training starts, SIGTERM ends it).
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=60, interval=0.25)
    at.run()
    assert any("demo" in m.value and "stopped" in m.value for m in at.markdown)  # the dashboard stopped it


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# Somebody's own training script, instrumented with the tracker and nothing else.
EXTERNAL_SCRIPT = """
import sys, torch
from tracker import GradTracker
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=float(sys.argv[1]))
with GradTracker(model, run="mine", clip="none") as tracker:
    for _ in range(4):
        loss = model(torch.randn(16, 4)).pow(2).mean() * 100
        loss.backward()
        tracker.step(loss=loss)
        opt.step(); opt.zero_grad()
"""


@pytest.mark.slow
def test_relaunch_an_external_script_with_gradwatch_clip(tmp_path, app, monkeypatch):
    db = tmp_path / "gradwatch.db"
    script = tmp_path / "my_train.py"
    script.write_text(EXTERNAL_SCRIPT)
    monkeypatch.setenv("GRADWATCH_DB", str(db))
    # The script lives outside the checkout, as a user's would: make `import tracker` independent of how
    # the environment installed gradwatch (the relaunched process inherits this environment too).
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    first = subprocess.run([sys.executable, str(script), "0.01"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    parent = _runs(db).iloc[0]
    assert parent["clip"] == "none" and parent["argv"] == [str(script), "0.01"]

    at = app(db).run()
    at.session_state["launch_from"] = int(parent["id"])
    at.switch_page("views/launch.py").run()
    assert any("External script" in c.value for c in at.caption)
    assert not [w for w in at.number_input if w.key and w.key.startswith("opt_")]  # only clipping can change
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.1").run()
    at.text_input(key="launch_name").input("mine-relaunched").run()
    command = "\n".join(c.value for c in at.code)
    assert "GRADWATCH_CLIP=norm:0.1" in command and f"{script} 0.01" in command
    at.button(key="launch_go").click().run()

    def done():
        runs = _runs(db)
        return len(runs) == 2 and runs["status"].iloc[1] != "running"

    assert wait_for(done, timeout=300, interval=0.25), [
        p.read_text() for p in (tmp_path / "gradwatch-logs").glob("*.log")
    ]
    child = _runs(db).iloc[1]
    assert child["status"] == "finished"
    assert child["clip"] == "norm:0.1" and child["clip_source"] == "env"
    assert child["name"] == "mine-relaunched" and int(child["parent_id"]) == int(parent["id"])
    assert child["argv"] == [str(script), "0.01"] and child["cwd"] == str(REPO)
    assert child["clip_rate"] > 0  # loss * 100 gives norms far above 0.1


@pytest.mark.slow
def test_resume_a_failed_trainer_run_from_its_checkpoint(tmp_path, app):
    import json
    import sqlite3

    db, cache, ck = tmp_path / "gradwatch.db", tmp_path / "corpus", tmp_path / "first.ckpt"
    first = subprocess.run(
        [sys.executable, "-m", "trainer", "--corpus-size", "tiny", "--epochs", "1", "--batch-size", "16",
         "--db", str(db), "--cache-dir", str(cache), "--run", "first", "--quiet", "--checkpoint", str(ck)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    steps_per_epoch = int(_runs(db)["n_steps"].iloc[0])
    # As a job killed during its second of two epochs leaves it: failed, its config asking for 2 epochs.
    con = sqlite3.connect(db)
    config = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
    con.execute(
        "UPDATE runs SET status = 'failed', error = 'killed', config = ?",
        (json.dumps({**config, "epochs": 2}),),
    )
    con.commit()
    con.close()

    at = app(db).run().switch_page("views/run.py").run()
    assert not at.exception
    at.button(key="resume_1").click().run()
    assert not at.exception and any("Resuming run #1" in s.value for s in at.info)

    def resumed():
        run = _runs(db).iloc[0]
        return (
            run["status"] in ("finished", "failed", "crashed")
            and run["resumed_at"] is not None
            and (
                run["resumed_at"] == run["resumed_at"]  # not NaN
            )
        )

    logs = tmp_path / "gradwatch-logs"
    assert wait_for(resumed, timeout=300, interval=0.25), [p.read_text() for p in logs.glob("*.log")]
    runs = _runs(db)
    assert len(runs) == 1  # the same run went on, no new one
    run = runs.iloc[0]
    assert run["status"] == "finished", (run["error"], [p.read_text() for p in logs.glob("*.log")])
    assert run["resumed_from_step"] == steps_per_epoch
    assert run["n_steps"] == 2 * steps_per_epoch and run["last_step"] == 2 * steps_per_epoch - 1


# A package run with `python -m pkg.train`: the relative import fails when the file is run as a script.
PACKAGE_TRAIN = """
import sys, torch
from tracker import GradTracker
from .settings import STEPS
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=float(sys.argv[1]))
with GradTracker(model, run="pkg", clip="none") as tracker:
    for _ in range(STEPS):
        loss = model(torch.randn(16, 4)).pow(2).mean() * 100
        loss.backward()
        tracker.step(loss=loss)
        opt.step(); opt.zero_grad()
"""


@pytest.mark.slow
def test_relaunch_a_module_run_with_python_dash_m(tmp_path, app, monkeypatch):
    db = tmp_path / "gradwatch.db"
    proj = tmp_path / "proj"
    (proj / "pkg").mkdir(parents=True)
    (proj / "pkg" / "__init__.py").write_text("")
    (proj / "pkg" / "settings.py").write_text("STEPS = 3\n")
    (proj / "pkg" / "train.py").write_text(PACKAGE_TRAIN)
    monkeypatch.setenv("GRADWATCH_DB", str(db))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    first = subprocess.run([sys.executable, "-m", "pkg.train", "0.01"], cwd=proj, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    parent = _runs(db).iloc[0]
    # What sys.argv kept cannot rerun it (the module's file, run alone, fails on its relative import).
    assert parent["argv"] == [str(proj / "pkg" / "train.py"), "0.01"]

    at = app(db).run()
    at.session_state["launch_from"] = int(parent["id"])
    at.switch_page("views/launch.py").run()
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.1").run()
    command = "\n".join(c.value for c in at.code)
    assert f"{sys.executable} -m pkg.train 0.01" in command and f"cd {proj}" in command
    at.button(key="launch_go").click().run()

    def done():
        runs = _runs(db)
        return len(runs) == 2 and runs["status"].iloc[1] != "running"

    assert wait_for(done, timeout=300, interval=0.25), [
        p.read_text() for p in (tmp_path / "gradwatch-logs").glob("*.log")
    ]
    child = _runs(db).iloc[1]
    assert child["status"] == "finished", [p.read_text() for p in (tmp_path / "gradwatch-logs").glob("*.log")]
    assert child["clip"] == "norm:0.1" and child["clip_source"] == "env"
    assert int(child["parent_id"]) == int(parent["id"]) and child["n_steps"] == 3
