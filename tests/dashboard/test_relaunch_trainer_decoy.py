"""A trainer command the dashboard starts (a relaunch, a resume, the demo) runs gradwatch's trainer, not a
``trainer.py`` or ``tracker.py`` of the user's in the folder it starts in: ``python -m`` puts that folder
first on ``sys.path``, ``python -P -m`` (3.11) does not."""

import dataclasses
import functools
import stat
import sys
from pathlib import Path

from polling import wait_for

from dashboard.jobs import Launcher, log_tail
from dashboard.launch import relaunch_spec, trainer_command, trainer_spec

_wait = functools.partial(wait_for, timeout=120.0, interval=0.05)

DECOY = """
from pathlib import Path
Path(__file__).with_name("decoy-ran").write_text(__file__)
print("USER {} ran", flush=True)
raise SystemExit(3)
"""


def _decoys(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for name in ("trainer", "tracker"):
        (folder / f"{name}.py").write_text(DECOY.format(f"{name}.py"))
    return folder


def _help_of(tmp_path: Path, spec) -> str:
    """Run ``spec`` with ``--help`` added (the trainer prints its usage and exits 0: no training)."""
    spec = dataclasses.replace(spec, argv=(*spec.argv, "--help"))
    [job] = Launcher(tmp_path / "gradwatch-logs").submit([spec])
    assert job.error is None and _wait(lambda: job.popen.poll() is not None)
    log = log_tail(job.log_path, max_lines=400)
    assert job.returncode == 0, log
    return log


def test_a_trainer_relaunch_does_not_run_the_users_trainer_py(tmp_path):
    folder = _decoys(tmp_path / "proj")
    run = dict(id=3, name="kws", cwd=str(folder), argv=["-m", "trainer"], config={"lr": 0.1})
    spec = relaunch_spec(run, name="again", db=tmp_path / "g.db", clip="norm:1.0", config_dir=tmp_path)
    assert spec.argv[:4] == (sys.executable, "-P", "-m", "trainer") and spec.cwd == str(folder)
    log = _help_of(tmp_path, spec)
    # Was: "USER trainer.py ran" (exit 3).
    assert "usage: " in log and "USER" not in log and not (folder / "decoy-ran").exists()


def test_the_demo_command_does_not_either(tmp_path):
    folder = _decoys(tmp_path / "here")  # the folder the dashboard was started in
    spec = trainer_spec(name="demo", db=tmp_path / "g.db", clip="norm:1.0", extra_args=["--preset", "demo"],
                        cwd=folder)  # fmt: skip
    log = _help_of(tmp_path, spec)
    assert "usage: " in log and not (folder / "decoy-ran").exists()


def test_an_interpreter_without_dash_p_is_replaced_by_the_dashboards(tmp_path):
    old = tmp_path / "python3.10"  # says it is 3.10, else runs the real one
    old.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = "import sys; print(*sys.version_info[:2])" ]; then echo 3 10; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    old.chmod(old.stat().st_mode | stat.S_IXUSR)
    assert trainer_command(str(old)) == [sys.executable, "-P", "-m", "trainer"]
    new = tmp_path / "python3.11"
    new.write_text(old.read_text().replace("echo 3 10", "echo 3 11"))
    new.chmod(old.stat().st_mode)
    assert trainer_command(str(new)) == [str(new), "-P", "-m", "trainer"]
    # One that cannot be asked is started as given: the job then says it could not start.
    assert trainer_command(str(tmp_path / "gone")) == [str(tmp_path / "gone"), "-P", "-m", "trainer"]
