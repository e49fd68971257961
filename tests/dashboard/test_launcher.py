"""The launcher starts real processes from argument lists, logs, limits concurrency, stops with SIGTERM."""

import functools
import json
import sys

import pytest
from polling import wait_for

from dashboard.jobs import Launcher, log_tail
from dashboard.launch import LaunchSpec, external_spec, trainer_spec

# A stand-in for "somebody's training script": reports its argv and the gradwatch environment, then waits
# for a release file (so the test controls when it ends) and exits 0; on SIGTERM it logs and exits 0 like
# the trainer. It gives up after 5 minutes, so a failing test never leaves it running.
SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(*_):
    print("got SIGTERM", flush=True)
    (out / "stopped").write_text("1")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
env = {k: v for k, v in os.environ.items() if k.startswith("GRADWATCH_")}
(out / "started").write_text(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": env}))
print("training step 1", flush=True)
deadline = time.monotonic() + 300
while not (out / "release").exists():
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.02)
print("done", flush=True)
"""

_wait = functools.partial(wait_for, timeout=60.0, interval=0.02)


def _spec(tmp_path, i, argv_extra=()):
    out = tmp_path / f"job{i}"
    out.mkdir()
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return out, LaunchSpec(
        name=f"job {i}", argv=(sys.executable, str(script), str(out), *argv_extra), cwd=str(out)
    )


def test_external_relaunch_sets_the_clip_environment_and_reuses_argv(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(script), str(out), "--lr", "0.1; rm -rf /"]
    run = {"id": 7, "argv": json.dumps(argv), "cwd": str(tmp_path), "python": sys.executable}
    spec = external_spec(run, name="relaunch of 7", db=tmp_path / "g.db", clip="norm:0.5")
    launcher = Launcher(tmp_path / "logs")
    (job,) = launcher.submit([spec])
    assert _wait(lambda: (out / "started").exists())
    seen = json.loads((out / "started").read_text())
    # The argument with shell syntax arrives as one literal argument: no shell was involved.
    assert seen["argv"][1:] == [str(out), "--lr", "0.1; rm -rf /"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"]["GRADWATCH_CLIP"] == "norm:0.5"
    assert seen["env"]["GRADWATCH_PARENT_RUN"] == "7"
    assert seen["env"]["GRADWATCH_DB"] == str(tmp_path / "g.db")
    (out / "release").write_text("")
    assert _wait(lambda: job.state == "exited")
    assert "training step 1" in log_tail(job.log_path) and "done" in log_tail(job.log_path)


def test_concurrency_limit_and_queue(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    outs, specs = zip(*[_spec(tmp_path, i) for i in range(3)], strict=True)
    jobs = launcher.submit(list(specs), limit=2, sweep="s")
    assert _wait(lambda: all((o / "started").exists() for o in outs[:2]))
    assert [j.state for j in jobs] == ["running", "running", "queued"]
    (outs[0] / "release").write_text("")
    # When one exits, the watcher starts the queued job without anybody polling.
    assert _wait(lambda: (outs[2] / "started").exists())
    assert jobs[0].state == "exited" and jobs[2].state == "running"
    for o in outs[1:]:
        (o / "release").write_text("")
    assert _wait(lambda: all(j.state == "exited" for j in jobs))


def test_stop_sends_sigterm(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    out, spec = _spec(tmp_path, 0)
    (job,) = launcher.submit([spec])
    assert _wait(lambda: (out / "started").exists())
    assert launcher.stop(job)
    assert _wait(lambda: job.state != "running")
    assert (out / "stopped").exists()
    assert job.popen.returncode == 0
    assert "got SIGTERM" in log_tail(job.log_path)
    assert not launcher.stop(job)  # already ended


def test_missing_executable_is_reported_not_raised(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    spec = LaunchSpec(name="x", argv=(str(tmp_path / "no-such-python"), "-c", "pass"), cwd=str(tmp_path))
    (job,) = launcher.submit([spec])
    assert job.state == "failed to start" and "no-such-python" in job.error


def test_trainer_command_is_an_argument_list(tmp_path):
    spec = trainer_spec(name="kws b", db=tmp_path / "g.db", clip="norm:1.0+noise(0.01)", parent_id=3,
                        config_file=tmp_path / "c.json", overrides={"lr": 0.01, "max_steps": 5, "amp": True,
                        "compile": False}, python="/py")  # fmt: skip
    assert spec.argv == (
        "/py", "-P", "-m", "trainer", "--config", str(tmp_path / "c.json"), "--lr", "0.01", "--max-steps",
        "5", "--amp", "--clip", "norm:1.0+noise(0.01)", "--db", str(tmp_path / "g.db"), "--run", "kws b",
        "--parent-run", "3",
    )  # fmt: skip
    assert "'kws b'" in spec.display() and "'norm:1.0+noise(0.01)'" in spec.display()


def test_launcher_rejects_bad_limit(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        Launcher(tmp_path).submit([], limit=0)


def test_unwritable_log_directory_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the log directory should be: mkdir fails for any user
    launcher = Launcher(blocker / "logs")
    (job,) = launcher.submit([LaunchSpec(name="x", argv=(sys.executable, "-c", "pass"), cwd=str(tmp_path))])
    assert job.state == "failed to start" and "cannot create the log directory" in job.error


def test_cancel_a_queued_job(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    outs, specs = zip(*[_spec(tmp_path, i) for i in range(2)], strict=True)
    first, second = launcher.submit(list(specs), limit=1, sweep="s")
    assert _wait(lambda: (outs[0] / "started").exists())
    assert second.state == "queued" and launcher.stop(second) and second.state == "cancelled"
    (outs[0] / "release").write_text("")
    assert _wait(lambda: first.state == "exited")
    assert second.state == "cancelled" and not (outs[1] / "started").exists()


def test_single_launches_do_not_wait_for_each_other(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    outs, specs = zip(*[_spec(tmp_path, i) for i in range(2)], strict=True)
    (first,) = launcher.submit([specs[0]])
    (second,) = launcher.submit([specs[1]])
    assert _wait(lambda: all((o / "started").exists() for o in outs))
    assert first.state == second.state == "running"
    for o in outs:
        (o / "release").write_text("")
    assert _wait(lambda: first.state == second.state == "exited")


def test_the_dashboards_own_gradwatch_clip_does_not_leak_into_launches(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:9")
    monkeypatch.setenv("GRADWATCH_PARENT_RUN", "99")
    launcher = Launcher(tmp_path / "logs")
    out, spec = _spec(tmp_path, 0)
    launcher.submit([spec])
    assert _wait(lambda: (out / "started").exists())
    (out / "release").write_text("")
    env = json.loads((out / "started").read_text())["env"]
    assert "GRADWATCH_CLIP" not in env and "GRADWATCH_PARENT_RUN" not in env


def test_resume_is_offered_for_a_stopped_trainer_run_with_its_checkpoint_file(tmp_path):
    from dashboard.launch import resume_checkpoint, resume_spec

    (tmp_path / "ck").write_bytes(b"x")
    config = {"checkpoint": "ck", "clip": "norm:1", "epochs": 3, "run": "r", "db": "old.db", "resume": False}
    run = dict(id=4, name="r", status="crashed", clip="norm:1.0", cwd=str(tmp_path), config=config,
               argv=json.dumps(["/x/trainer/__main__.py", "--checkpoint", "ck"]))  # fmt: skip
    assert resume_checkpoint(run) == str(tmp_path / "ck")  # relative to the run's working directory
    spec = resume_spec(run, db=tmp_path / "g.db", config_dir=tmp_path / "cfg")
    argv = list(spec.argv)
    assert argv[argv.index("--checkpoint") + 1] == str(tmp_path / "ck") and "--resume" in argv
    assert argv[argv.index("--clip") + 1] == "norm:1"  # as the trainer was given it, not the canonical spec
    assert "--parent-run" not in argv and spec.parent_id is None  # the same run goes on
    assert spec.config == {"epochs": 3}  # the rest of the recorded config, replayed
    assert resume_checkpoint({**run, "status": "stopped"}) == resume_checkpoint({**run, "status": "failed"})
    # Not offered: a running run, a finished one (it would train its last epoch again), another program, no
    # checkpoint setting, a missing file.
    assert resume_checkpoint({**run, "status": "running"}) is None
    assert resume_checkpoint({**run, "status": "finished"}) is None
    assert resume_checkpoint({**run, "argv": json.dumps(["train.py"])}) is None
    assert resume_checkpoint({**run, "config": {}}) is None
    assert resume_checkpoint({**run, "config": {**config, "checkpoint": "gone"}}) is None
    assert resume_checkpoint({**run, "world_size": 2}) is None  # torchrun's: resumed with torchrun
    with pytest.raises(ValueError, match="no checkpoint"):
        resume_spec({**run, "status": "running"}, db="g.db", config_dir=tmp_path)
    # A run that saved every N steps goes on saving as often (--checkpoint-every needs --checkpoint).
    spec = resume_spec({**run, "config": {**config, "checkpoint_every": 50}}, db="g.db", config_dir=tmp_path)
    argv = list(spec.argv)
    assert argv[argv.index("--checkpoint-every") + 1] == "50" and spec.config == {"epochs": 3}


def _trainer_run(**config):
    return dict(id=3, name="kws", status="finished", cwd="/", argv=json.dumps(["-m", "trainer"]),
                config={"task": "keywords", "lr": 0.001, "max_steps": 30, **config})  # fmt: skip


def test_a_relaunch_command_does_not_change_between_reruns(tmp_path):
    import time

    from dashboard.launch import relaunch_spec

    def spec(**config):
        return relaunch_spec(_trainer_run(**config), name="kws b", db=tmp_path / "g.db", clip="norm:1",
                             config_dir=tmp_path / "logs", overrides={"lr": 0.01})  # fmt: skip

    first = spec()
    time.sleep(1.1)  # a page shows the command, the user clicks a second later: the same command runs
    assert spec().argv == first.argv and spec().display() == first.display()
    assert spec(batch_size=8).config_file != first.config_file  # another config, another file


def test_max_steps_none_removes_the_recorded_limit(tmp_path):
    from dashboard.launch import relaunch_spec

    spec = relaunch_spec(_trainer_run(), name="x", db=tmp_path / "g.db", clip="none", config_dir=tmp_path,
                         overrides={"max_steps": None, "lr": 0.01})  # fmt: skip
    # The trainer has no flag that unsets an option: the replayed config says null, and no flag is passed.
    assert spec.config["max_steps"] is None and "--max-steps" not in spec.argv
    assert spec.argv[spec.argv.index("--lr") + 1] == "0.01"


def test_record_stop_reports_what_went_wrong(tmp_path):
    from dashboard.stopping import record_stop

    problem = record_stop(tmp_path / "missing.db", 1)
    assert problem and "does not exist" in problem


# Exits 143 (128 + SIGTERM) on SIGTERM, as the tracker does, or by itself with argv[1] = "now".
EXIT_143 = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
print("ready", flush=True)
if sys.argv[1:] == ["now"]:
    sys.exit(143)
while True:
    time.sleep(0.05)
"""


def test_exit_code_143_after_our_sigterm_is_stopped_else_exited(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    [stopped] = launcher.submit(
        [LaunchSpec(name="s", argv=(sys.executable, "-c", EXIT_143), cwd=str(tmp_path))]
    )
    assert _wait(lambda: "ready" in stopped.log_path.read_text().splitlines())
    assert launcher.stop(stopped) and stopped.popen.wait(timeout=30) == 143
    assert stopped.state == "stopped" and not stopped.failed
    # 143 without a stop request from the dashboard: a signal from elsewhere, shown as an exit.
    [alone] = launcher.submit(
        [LaunchSpec(name="a", argv=(sys.executable, "-c", EXIT_143, "now"), cwd=str(tmp_path))]
    )
    assert alone.popen.wait(timeout=30) == 143
    assert alone.state == "exited (143)" and alone.failed


def test_two_launches_named_alike_in_the_same_second_write_separate_logs(tmp_path, monkeypatch):
    import time

    # The same second for every launch: what two quick clicks (or two dashboards) get.
    monkeypatch.setattr(time, "strftime", lambda *_: "20250101-120000")
    launcher = Launcher(tmp_path / "logs")
    out0, spec = _spec(tmp_path, 0)
    jobs = [*launcher.submit([spec]), *launcher.submit([spec])]
    assert _wait(lambda: all("training step 1" in log_tail(j.log_path) for j in jobs))
    (out0 / "release").write_text("")
    assert _wait(lambda: all(j.state == "exited" for j in jobs))
    assert jobs[0].log_path != jobs[1].log_path
    for job in jobs:
        text = job.log_path.read_text()
        assert text.count("training step 1") == 1 and text.count("$ ") == 1  # its own lines only
    assert len(list((tmp_path / "logs").glob("*.log"))) == 2


@pytest.mark.parametrize(
    "typed, target",
    [
        (["-m", "pkg.train", "--lr", "1"], ("module", "pkg.train")),
        (["-u", "-W", "ignore", "-X", "dev", "train.py", "-m"], ("script", "train.py")),
        (["-uB", "-Wdefault", "train.py"], ("script", "train.py")),
        (["-um", "pkg.train"], ("module", "pkg.train")),
        (["-c", "print(1)", "x"], ("code", None)),
        (["-", "a"], ("stdin", None)),
        (["-u"], ("stdin", None)),
    ],
)
def test_what_a_typed_command_line_runs(typed, target):
    from dashboard.commands import interpreter_target

    assert interpreter_target(typed) == target


def _typed_run(tmp_path, typed, argv):
    return {"id": 3, "argv": argv, "cwd": str(tmp_path), "python": sys.executable,
            "config": {"_gradwatch": {"orig_argv": typed}}}  # fmt: skip


def test_an_external_relaunch_runs_the_command_as_typed_when_it_was_recorded(tmp_path):
    code = "import os, sys; print(sys.argv[1:], os.environ['GRADWATCH_CLIP'])"
    run = _typed_run(tmp_path, ["-u", "-c", code, "a b"], ["-c", "a b"])
    spec = external_spec(run, name="again", db=tmp_path / "g.db", clip="norm:0.5")
    assert spec.argv == (sys.executable, "-u", "-c", code, "a b")
    (job,) = Launcher(tmp_path / "logs").submit([spec])
    assert _wait(lambda: job.state == "exited")
    assert "['a b'] norm:0.5" in log_tail(job.log_path)
    # A typed script path is checked as sys.argv's is: gone, the relaunch is refused before it starts.
    gone = _typed_run(tmp_path, ["-u", "gone.py"], ["gone.py"])
    with pytest.raises(ValueError, match="recorded script gone.py"):
        external_spec(gone, name="again", db=tmp_path / "g.db", clip="none")


def test_a_module_run_whose_package_moved_is_refused_before_it_starts(tmp_path):
    # `python -m pkg2.train` whose pkg2/ was renamed: the job used to start and fail ("No module named").
    # The oracle for "found": the recorded Python itself, as the relaunch would start it.
    (tmp_path / "pkg2").mkdir()
    (tmp_path / "pkg2" / "__init__.py").write_text("")
    (tmp_path / "pkg2" / "train.py").write_text("print('ran')")
    run = _typed_run(tmp_path, ["-m", "pkg2.train"], [str(tmp_path / "pkg2" / "train.py")])
    assert external_spec(run, name="again", db=tmp_path / "g.db", clip="none").argv[1:] == (
        "-m",
        "pkg2.train",
    )
    (tmp_path / "pkg2").rename(tmp_path / "pkg2_moved")
    run = dict(run, id=4)  # (another run: the answer for the first is kept for 30 s)
    with pytest.raises(ValueError, match=r"recorded module pkg2\.train of run #4 cannot be found"):
        external_spec(run, name="again", db=tmp_path / "g.db", clip="none")
    installed = _typed_run(tmp_path, ["-m", "json.tool"], ["json/tool.py"])  # found outside the folder
    assert external_spec(installed, name="again", db=tmp_path / "g.db", clip="none").argv[1] == "-m"
