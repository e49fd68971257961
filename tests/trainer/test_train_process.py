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

ROOT = Path(__file__).resolve().parents[2]


def query(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def tiny_argv(cache, db, *extra):
    return ["--corpus-size", "tiny", "--cache-dir", str(cache), "--db", str(db), "--batch-size", "8", *extra]


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
    proc = start([sys.executable, "-m", "trainer", *tiny_argv(tmp_path / "cache", db, "--epochs", "500")])
    wait_for_steps(proc, db, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    assert "stopped" in out
    [(status, n_steps)] = query(db, "SELECT status, (SELECT COUNT(*) FROM steps) FROM runs")
    assert status == "stopped"
    # Every recorded step is complete: a norm for every layer (the step in flight was finished).
    n_layers = query(db, "SELECT COUNT(*) FROM layers")[0][0]
    assert query(db, "SELECT COUNT(*) FROM grad_norms")[0][0] == n_steps * n_layers


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_writes_one_coherent_run(tmp_path):
    db = tmp_path / "g.db"
    cache = tmp_path / "cache"
    extra = ("--max-steps", "3", "--clip", "norm:1.0", "--run-name", "ddp")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "trainer", *tiny_argv(cache, db, *extra)]  # fmt: skip
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
    for epochs, more in (("1", ()), ("2", ("--resume",))):
        extra = (
            "--clip",
            "autoclip:50",
            "--run-name",
            "ddp",
            "--checkpoint",
            str(ck),
            "--epochs",
            epochs,
            *more,
        )
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "trainer", *tiny_argv(cache, db, *extra)]  # fmt: skip
        proc = start(args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    [(status, resumed_from, world_size)] = query(db, "SELECT status, resumed_from_step, world_size FROM runs")
    assert (status, world_size) == ("finished", 2) and resumed_from > 0
    steps = [s for (s,) in query(db, "SELECT step FROM steps ORDER BY step")]
    assert steps == list(range(2 * resumed_from))  # the second epoch numbered on from the first
