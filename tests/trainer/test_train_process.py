"""The trainer as a real process: `python -m trainer` stopped by SIGTERM / Ctrl-C, and DDP with torchrun."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlite_rows import rows as query
from trainer_args import assert_same_records, tiny

ROOT = Path(__file__).resolve().parents[2]


def start(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def wait_for_steps(proc, db, n, timeout=120.0):
    """Poll the database (as the dashboard would) until the run has recorded ``n`` steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"trainer exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if db.exists():
            try:
                if query(db, "SELECT COUNT(*) FROM steps")[0][0] >= n:
                    return
            except sqlite3.OperationalError:  # tables not created yet
                pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {n} steps recorded within {timeout} s")


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_finishes_the_step_and_marks_the_run_stopped(sig, code, tmp_path):
    db = tmp_path / "g.db"
    argv = tiny(tmp_path / "cache", db, "--epochs", "500", quiet=False)
    proc = start([sys.executable, "-m", "trainer", *argv])
    wait_for_steps(proc, db, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    assert "stopped" in out
    [(status, error, n_steps)] = query(db, "SELECT status, error, (SELECT COUNT(*) FROM steps) FROM runs")
    assert (status, error) == ("stopped", sig.name)  # schema.md: the signal that ended it
    # Every recorded step is complete: a norm for every layer (the step in flight was finished).
    n_layers = query(db, "SELECT COUNT(*) FROM layers")[0][0]
    assert query(db, "SELECT COUNT(*) FROM grad_norms")[0][0] == n_steps * n_layers


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_writes_one_coherent_run(tmp_path):
    db = tmp_path / "g.db"
    cache = tmp_path / "cache"
    extra = ("--max-steps", "3", "--clip", "norm:1.0", "--run-name", "ddp")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "trainer", *tiny(cache, db, *extra, quiet=False)]  # fmt: skip
    proc = start(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    runs = query(db, "SELECT id, name, status, world_size, config FROM runs")
    assert len(runs) == 1  # only rank 0 writes
    run_id, name, status, world_size, config = runs[0]
    assert (name, status, world_size) == ("ddp", "finished", 2)
    assert json.loads(config)["max_steps"] == 3
    assert [s for (s,) in query(db, "SELECT step FROM steps ORDER BY step")] == [0, 1, 2]
    # --run-name, not --run: torchrun would take --run as an abbreviation of its --run-path.
    # Layer names are the model's own, not DDP's "module."-prefixed ones.
    assert not any(n.startswith("module.") for (n,) in query(db, "SELECT name FROM layers"))
    n_layers = query(db, "SELECT COUNT(*) FROM layers")[0][0]
    assert query(db, "SELECT COUNT(*) FROM grad_norms")[0][0] == 3 * n_layers
    metrics = {n for (n,) in query(db, "SELECT DISTINCT name FROM metrics")}
    assert {"val_acc", "test_acc", "train_loss"} <= metrics
    assert out.count("run 'ddp'") == 1  # one summary, from rank 0


@pytest.mark.slow
def test_ddp_run_resumed_from_its_checkpoint_on_every_rank(tmp_path):
    # Rank 0 saves the checkpoint (with the tracker's state); both ranks load it and go on as one run.
    db, cache, ck = tmp_path / "g.db", tmp_path / "cache", tmp_path / "ddp.ckpt"
    straight = tmp_path / "straight.db"
    # Dropout: only rank 0 evaluates, and evaluation draws from its global generator, so the ranks' random
    # states differ after the first epoch; each must get its own back. Constant LR: --max-steps changes the
    # total a decaying schedule runs to.
    common = ("--clip", "autoclip:50", "--run-name", "ddp", "--epochs", "2", "--dropout", "0.5",
              "--lr-schedule", "constant")  # fmt: skip

    def torchrun(db, *more):
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "trainer", *tiny(cache, db, *common, *more, quiet=False)]  # fmt: skip
        proc = start(args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    torchrun(straight)
    per_epoch = query(straight, "SELECT COUNT(*) FROM steps")[0][0] // 2
    # The first process stops one step into the second epoch (after the first epoch's evaluation).
    torchrun(db, "--checkpoint", str(ck), "--max-steps", str(per_epoch + 1))
    torchrun(db, "--checkpoint", str(ck), "--resume")
    [(status, resumed_from, world_size)] = query(db, "SELECT status, resumed_from_step, world_size FROM runs")
    assert (status, world_size, resumed_from) == ("finished", 2, per_epoch + 1)
    assert_same_records(straight, db)


def test_a_killed_then_stopped_run_resumes_mid_epoch_to_what_an_uninterrupted_run_records(tmp_path):
    # Crash (SIGKILL) after a --checkpoint-every save, resume, stop (SIGTERM: saves where it stopped),
    # resume to the end: every row equals a run that was never interrupted. 10 steps an epoch, so the
    # interruptions land mid-epoch. All four are processes with the same thread count (sums in one order).
    cache, straight, db, ck = (tmp_path / name for name in ("cache", "straight.db", "g.db", "r.ckpt"))
    common = ("--epochs", "3", "--batch-size", "4", "--lr-schedule", "constant", "--clip", "zclip:2.0",
              "--optimizer", "sgd", "--lr", "0.02", "--extra-stats", "--run", "r")  # fmt: skip
    trainer = [sys.executable, "-m", "trainer", *tiny(cache, db, *common), "--checkpoint", str(ck)]
    proc = start([*trainer, "--checkpoint-every", "3"])
    wait_for_steps(proc, db, 4)  # a step is recorded after the save before it (state_dict() flushes)
    proc.kill()
    proc.wait(timeout=60)
    assert ck.exists()
    killed_at = query(db, "SELECT COUNT(*) FROM steps")[0][0]
    proc = start([*trainer, "--resume"])
    wait_for_steps(proc, db, killed_at + 2)  # past where the killed process got
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped" in out, err[-2000:]
    [(status, stopped_at)] = query(db, "SELECT status, (SELECT COUNT(*) FROM steps) FROM runs")
    assert status == "stopped" and 0 < stopped_at < 30
    uninterrupted = [sys.executable, "-m", "trainer", *tiny(cache, straight, *common)]
    for argv in ([*trainer, "--resume"], uninterrupted):
        proc = start(argv)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert query(db, "SELECT status, resumed_from_step FROM runs") == [("finished", stopped_at)]
    assert query(straight, "SELECT COUNT(*) FROM steps") == [(30,)]
    assert_same_records(straight, db)
    # Evaluations happen at epoch ends only, the same in both.
    metrics = "SELECT step, name, value FROM metrics ORDER BY step, name"
    want, got = query(straight, metrics), query(db, metrics)
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=1e-5)


def test_a_second_ctrl_c_stops_at_once_with_exit_130_and_the_run_recorded_stopped(tmp_path):
    # The first Ctrl-C asks for a graceful stop; the second, 50 ms later (within the step in flight, which
    # takes longer on the seed CNN), interrupts it. Whether or not it lands before the stop completes, the
    # outcome is the same: exit 130, no traceback, the run recorded stopped by SIGINT, a whole checkpoint or
    # none (never a half-written one).
    db, ck = tmp_path / "g.db", tmp_path / "run.ckpt"
    argv = [*tiny(tmp_path / "cache", db, "--epochs", "500"), "--checkpoint", str(ck)]
    proc = start([sys.executable, "-m", "trainer", *argv])
    wait_for_steps(proc, db, 3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # paces the two signals (Python runs one handler for two that arrive together)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopped" in out
    [(status, error, n_steps)] = query(db, "SELECT status, error, (SELECT COUNT(*) FROM steps) FROM runs")
    assert (status, error) == ("stopped", "SIGINT")
    # A recorded step is an applied one: the summary counts what the database holds.
    assert f"{n_steps} optimizer steps" in out
    assert not (tmp_path / "run.ckpt.tmp").exists()
    if ck.exists():
        from trainer import checkpoint as ckpt

        # the stop's own (if the second Ctrl-C came after it) or an earlier one (an epoch's end), whole
        assert 0 < ckpt.load(ck)["step"] <= n_steps


def test_a_signal_while_the_runs_end_is_recorded_changes_nothing():
    # A Ctrl-C that came too late to stop anything (the end being recorded) used to set the stop flag: the
    # trainer then exited 130, "stopped by Ctrl-C", while the run it had recorded was finished.
    from trainer.runtime import StopSignal

    stop = StopSignal()
    with stop.installed():
        stop.hold()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # (the handlers run in this thread, between bytecodes)
        assert not stop.requested()
    assert stop.exit_code == 0
