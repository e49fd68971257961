"""GradTracker end to end on a real SQLite file, against torch's own clipping and norms (the oracles)."""

import argparse
import json
import math
import os
import re
import socket
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from polling import wait_for
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker, NullTracker, StepStats


def _model(seed=0, hidden=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _oracle_run(batches, max_norm, lr=0.5, hidden=16):
    """The same loop with torch.nn.utils.clip_grad_norm_: final model, totals, pre-clip per-tensor norms."""
    model = _model(hidden=hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    totals, norms = [], []
    for batch in batches:
        opt.zero_grad()
        _loss(model, batch).backward()
        norms.append([torch.linalg.vector_norm(p.grad).item() for p in model.parameters()])
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        totals.append(total.item())
        opt.step()
    return model, totals, norms


def _tracked_run(batches, db, lr=0.5, hidden=16, **kwargs):
    model = _model(hidden=hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stats = []
    with GradTracker(model, db=db, **kwargs) as tracker:
        for batch in batches:
            opt.zero_grad()
            loss = _loss(model, batch)
            loss.backward()
            stats.append(tracker.step(loss=loss))
            opt.step()
    return model, stats, tracker


# hidden=8192: the first weight (49,152 elements) is large enough for the CPU dot() reads of tracker.norms.
@pytest.mark.parametrize("hidden", [16, 8192], ids=["small-tensors", "large-tensor"])
def test_norm_clipping_matches_clip_grad_norm_and_is_recorded(db_path, hidden):
    batches = _batches(6)
    expected_model, totals, norms = _oracle_run(batches, 1.0, hidden=hidden)
    model, stats, tracker = _tracked_run(batches, db_path, clip="norm:1.0", run="oracle", hidden=hidden)

    for p, q in zip(model.parameters(), expected_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert [s.total_norm for s in stats] == pytest.approx(totals, rel=1e-6)
    assert all(isinstance(s, StepStats) and isinstance(s.total_norm, float) for s in stats)
    clipped = [t > 1.0 for t in totals]
    assert any(clipped) and [s.clipped for s in stats] == clipped  # the data must exercise clipping
    for s, t in zip(stats, totals, strict=True):
        assert s.threshold == 1.0 and s.coef == pytest.approx(min(1.0, 1.0 / (t + 1e-6)), rel=1e-6)

    run_id = tracker.run_id
    (name, status, clip, source, every) = _rows(
        db_path, "SELECT name, status, clip, clip_source, every FROM runs WHERE id = ?", run_id
    )[0]
    assert (name, status, clip, source, every) == ("oracle", "finished", "norm:1.0", "argument", 1)
    steps = _rows(
        db_path, "SELECT step, total_norm, clipped, coef, threshold, skipped, loss FROM steps ORDER BY step"
    )
    assert [r[0] for r in steps] == list(range(6))
    assert [r[1] for r in steps] == pytest.approx(totals, rel=1e-6)
    assert [bool(r[2]) for r in steps] == clipped
    assert all(r[4] == 1.0 and r[5] == 0 and r[6] is not None for r in steps)
    recorded = _rows(db_path, "SELECT step, layer_id, norm FROM grad_norms ORDER BY step, layer_id")
    assert len(recorded) == 6 * 4
    for step, layer_id, norm in recorded:
        assert norm == pytest.approx(norms[step][layer_id], rel=1e-5)
    events = _rows(
        db_path,
        "SELECT step, strategy, threshold, norm_before, norm_after, clipped, coef, n_clipped, n_tensors "
        "FROM clip_events ORDER BY step",
    )
    assert [e[0] for e in events] == list(range(6))
    for step, strategy, threshold, before, after, was_clipped, coef, n_clipped, n_tensors in events:
        assert strategy == "norm:1.0" and threshold == 1.0
        assert before == pytest.approx(totals[step], rel=1e-6)
        assert after == pytest.approx(min(totals[step], 1.0), rel=1e-5)
        assert bool(was_clipped) == clipped[step]
        # clip_grad_norm_'s min(1, C / (N + 1e-6)), except exactly 1 when N <= C (docs/clipping.md, norm:C).
        if clipped[step]:
            assert coef == pytest.approx(min(1.0, 1.0 / (totals[step] + 1e-6)), rel=1e-6)
        else:
            assert coef == 1.0
        assert (n_clipped, n_tensors) == (4 if clipped[step] else 0, 4)  # global: all tensors or none


def test_norm_clipping_at_the_threshold_leaves_the_gradients_exact(db_path):
    # docs/clipping.md: when N <= C the coefficient is exactly 1 (torch's C / (N + 1e-6) is just below 1).
    # N = ||(3, 4, 12)|| = 13 = C at step 0; twice that at step 1, clipped as clip_grad_norm_ clips it.
    model = nn.Linear(2, 1, bias=True)
    oracle = nn.Linear(2, 1, bias=True)
    with GradTracker(model, db=db_path, clip="norm:13") as tracker:
        for k in (1.0, 2.0):
            for m in (model, oracle):
                m.weight.grad = torch.tensor([[3.0 * k, 4.0 * k]])
                m.bias.grad = torch.tensor([12.0 * k])
            stats = tracker.step()
            if k == 1.0:
                assert not stats.clipped and stats.coef == 1.0
                assert torch.equal(model.weight.grad, oracle.weight.grad)
                assert torch.equal(model.bias.grad, oracle.bias.grad)
            else:
                torch.nn.utils.clip_grad_norm_(oracle.parameters(), 13.0)
                torch.testing.assert_close(model.weight.grad, oracle.weight.grad)
                torch.testing.assert_close(model.bias.grad, oracle.bias.grad)
    events = _rows(
        db_path,
        "SELECT step, norm_before, norm_after, coef, clipped, n_clipped, n_tensors FROM clip_events "
        "ORDER BY step",
    )
    assert events[0] == (0, 13.0, 13.0, 1.0, 0, 0, 2)
    step, before, after, coef, clipped, n_clipped, n_tensors = events[1]
    assert (step, before, clipped, n_clipped, n_tensors) == (1, 26.0, 1, 2, 2)
    assert coef == pytest.approx(13.0 / (26.0 + 1e-6), rel=1e-6)
    assert after == pytest.approx(13.0, rel=1e-6)


def test_run_records_how_to_relaunch_it(db_path):
    _, _, tracker = _tracked_run(_batches(1), db_path, config={"lr": 0.5, "model": "mlp"}, parent_id=None)
    argv, cwd, python, pid, host, config = _rows(
        db_path, "SELECT argv, cwd, python, pid, host, config FROM runs WHERE id = ?", tracker.run_id
    )[0]
    assert json.loads(argv) == sys.argv
    assert cwd == os.getcwd() and python == sys.executable
    assert pid == os.getpid() and host == socket.gethostname()
    assert json.loads(config)["lr"] == 0.5
    layers = _rows(db_path, "SELECT id, name, shape, numel, trainable FROM layers ORDER BY id")
    assert [(r[1], json.loads(r[2]), r[3], r[4]) for r in layers] == [
        ("0.weight", [16, 6], 96, 1),
        ("0.bias", [16], 16, 1),
        ("2.weight", [3, 16], 48, 1),
        ("2.bias", [3], 3, 1),
    ]


_SCRIPT = """
import sys
from torch import nn
from tracker import GradTracker
GradTracker(nn.Linear(2, 1), db=sys.argv[1], run="typed").finish()
"""


@pytest.mark.parametrize("how", ["script", "module", "unbuffered", "code"])
def test_a_command_line_sys_argv_cannot_rerun_is_kept_as_typed(db_path, tmp_path, how):
    # `python -m pkg.train` records sys.argv = [".../pkg/train.py"], which fails on a relative import when run
    # as a file; `python -c` records ["-c"]. The typed command line (the oracle: what we ran) is kept too.
    import subprocess

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(_SCRIPT)
    args = {
        "script": [str(tmp_path / "pkg" / "train.py"), str(db_path)],
        "module": ["-m", "pkg.train", str(db_path)],
        "unbuffered": ["-u", str(tmp_path / "pkg" / "train.py"), str(db_path)],
        "code": ["-c", _SCRIPT, str(db_path)],
    }[how]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env.pop("GRADWATCH_CLIP", None)
    subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, check=True, timeout=120)
    argv, config = _rows(db_path, "SELECT argv, config FROM runs")[0]
    notes = json.loads(config).get("_gradwatch", {})
    if how == "script":  # sys.argv reruns it: nothing more recorded
        assert json.loads(argv) == args and "orig_argv" not in notes
    else:
        assert notes["orig_argv"] == args
        assert json.loads(argv)[-1] == str(db_path)


_CHDIR_SCRIPT = """
import os, sys
from torch import nn
from tracker import GradTracker
os.makedirs("outputs/run1", exist_ok=True)
os.chdir("outputs/run1")  # as Hydra before 1.2 does before the task runs
GradTracker(nn.Linear(2, 1), db=sys.argv[1], run="moved").finish()
"""


@pytest.mark.parametrize("how", ["relative", "dot", "module", "module-installed"])
def test_the_folder_recorded_is_the_one_the_command_was_started_in(db_path, tmp_path, how):
    # A program that changes folders before it creates its tracker: the recorded command line is relative
    # to where it was typed, so that folder is recorded (cwd + argv must run it again), not os.getcwd().
    import subprocess

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(_CHDIR_SCRIPT)
    started = tmp_path / "pkg" if how == "dot" else tmp_path
    args = {
        "relative": ["pkg/train.py"],
        "dot": ["./train.py"],
        "module": ["-m", "pkg.train"],
        # found on PYTHONPATH (an installed package), not in the start folder: sys.path[0] is no witness
        "module-installed": ["-m", "pkg.train"],
    }[how]
    if how == "module-installed":
        started = tmp_path / "elsewhere"
        started.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env.pop("GRADWATCH_CLIP", None)
    subprocess.run([sys.executable, *args, str(db_path)], cwd=started, env=env, check=True, timeout=120)
    (cwd,) = _rows(db_path, "SELECT cwd FROM runs")[0]
    if how == "module-installed":  # no way to tell: the folder it is in when the tracker is made
        assert cwd == str(started / "outputs" / "run1")
    else:
        assert cwd == str(started)
        if how != "module":  # the recorded script path, relative to it, names the script
            assert (started / args[0]).samefile(tmp_path / "pkg" / "train.py")


def test_the_environment_is_recorded_without_secrets_or_the_session(db_path, monkeypatch):
    # A relaunch replays it: a script reading LR or DATA_DIR from its environment, or needing PYTHONPATH,
    # used to be relaunched with the dashboard's (another lr, no data) and compared as if only clipping
    # differed.
    from tracker.store import Store

    for name, value in {
        "LR": "0.5", "DATA_DIR": "/data/x", "CUDA_VISIBLE_DEVICES": "3",
        "HF_TOKEN": "hf_abc", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "PGPASSWORD": "pw", "my_api_key": "k",
        "DATABASE_URL": "postgres://me:hunter2@db/x", "PLAIN_URL": "https://example.org/x",
        "SSH_AUTH_SOCK": "/tmp/agent", "DISPLAY": ":0", "MASTER_PORT": "29500", "GRADWATCH_RUN": "r",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    GradTracker(nn.Linear(2, 1), db=db_path).finish()
    monkeypatch.setenv("GRADWATCH_RECORD_ENV", "0")
    GradTracker(nn.Linear(2, 1), db=db_path).finish()
    with Store.open(db_path, readonly=True) as store:
        env, off = store.run(1)["env"], store.run(2)["env"]
    assert {k: env.get(k) for k in ("LR", "DATA_DIR", "CUDA_VISIBLE_DEVICES", "PLAIN_URL")} == {
        "LR": "0.5", "DATA_DIR": "/data/x", "CUDA_VISIBLE_DEVICES": "3", "PLAIN_URL": "https://example.org/x"
    }  # fmt: skip
    for left_out in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "my_api_key", "DATABASE_URL",
                     "SSH_AUTH_SOCK", "DISPLAY", "MASTER_PORT", "GRADWATCH_RUN"):  # fmt: skip
        assert left_out not in env, left_out
    assert "hunter2" not in json.dumps(env) and "s3cr3t" not in json.dumps(env)
    assert env["PATH"] == os.environ["PATH"]  # everything else, as it was
    assert off is None


_SPAWNED = """
import multiprocessing as mp, sys
from torch import nn
from tracker import GradTracker

def child(db):
    GradTracker(nn.Linear(2, 1), db=db, run="spawned").finish()

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child, args=(sys.argv[1],))
    p.start(); p.join()
    sys.exit(p.exitcode)
"""


def test_a_tracker_in_a_spawned_child_records_the_parents_command(db_path, tmp_path):
    # torch.multiprocessing.spawn: the child's command line is multiprocessing's stub (-c "from
    # multiprocessing.spawn import spawn_main ..." --multiprocessing-fork), which cannot start the job again.
    import subprocess

    (tmp_path / "job.py").write_text(_SPAWNED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    subprocess.run([sys.executable, "job.py", str(db_path)], cwd=tmp_path, env=env, check=True, timeout=120)
    argv, cwd, config = _rows(db_path, "SELECT argv, cwd, config FROM runs")[0]
    assert json.loads(argv) == ["job.py", str(db_path)] and cwd == str(tmp_path)
    assert "orig_argv" not in json.loads(config).get("_gradwatch", {})


# Credentials as they appear in real environments (QA's list), and look-alikes that are no secrets.
_SECRETS = {
    "MYSQL_PWD": "x", "DB_PW": "x", "REDIS_URL": "redis://:s3cretpw@redis:6379/0",
    "PG_URL": "postgres://user:ab/cd+ef@db/x", "PIP_EXTRA_INDEX_URL": "https://TOKEN123abc@pypi.fury.io/acme/",
    "REPO_URL": "https://ghp_abcdefghijklmnop1234@github.com/x", "SENTRY_DSN": "https://abc@o1.sentry.io/1",
    "AZURE_STORAGE_CONNECTION_STRING": "a;AccountKey=zz", "STORE_SAS": "sv=1&sig=abc", "GITHUB_PAT": "x",
    "SLACK_HOOK": "https://hooks.slack.com/services/T/B/X", "CI_JOB_JWT": "x", "MY_BEARER": "x",
    "X_CONF": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx.abc", "GCP_CREDS": "{}", "OTP_SEED": "x",
    "SA_JSON": '{"private_key": "x"}', "PLAIN": "sk-abcdefghijklmnopqrstuvwxyz12",
    "ID": "AKIAABCDEFGHIJKLMNOP",
}  # fmt: skip
_NOT_SECRETS = {
    "TOKENIZERS_PARALLELISM": "false", "MAX_TOKENS": "5", "SSL_CERT_FILE": "/etc/ssl/cert.pem", "PASSES": "3",
    "AUTHOR": "me", "SESSION_NAME": "s", "KEYBOARD_LAYOUT": "us", "PIN_MEMORY": "1", "RANDOM_SEED": "3",
    "SITE": "https://example.org/a/b", "PORTED": "http://host:8080/x",
}  # fmt: skip


def test_recorded_environment_leaves_out_credentials_and_launchers_but_keeps_look_alikes():
    from tracker.command import environment

    launchers = {"SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "0", "PMI_RANK": "0", "NODE_RANK": "0"}
    assert environment({**_SECRETS, **_NOT_SECRETS, **launchers}) == dict(sorted(_NOT_SECRETS.items()))
    for off in ("0", " 0 ", "false", "No", "OFF"):
        assert environment({"GRADWATCH_RECORD_ENV": off, "LR": "1"}) is None, off
    assert environment({"GRADWATCH_RECORD_ENV": "1", "LR": "1"}) == {"LR": "1"}


@pytest.mark.parametrize("how", ["folder", "zipapp", "module-ancestor"])
def test_the_start_folder_of_folder_zipapp_and_module_runs(db_path, tmp_path, how):
    # `python appdir` / `python app.pyz` (sys.path[0] is the folder or zip, not the start folder), and a
    # `-m` program that puts a folder above its own first on sys.path (the repo root made importable).
    import subprocess
    import zipapp

    proj = tmp_path / "proj"
    (proj / "appdir").mkdir(parents=True)
    (proj / "appdir" / "__main__.py").write_text(_CHDIR_SCRIPT)
    (proj / "tools").mkdir()
    (proj / "tools" / "__init__.py").write_text("")
    (proj / "tools" / "train.py").write_text(
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + _CHDIR_SCRIPT
    )
    zipapp.create_archive(proj / "appdir", proj / "app.pyz")
    args = {"folder": ["appdir"], "zipapp": ["app.pyz"], "module-ancestor": ["-m", "tools.train"]}[how]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    subprocess.run([sys.executable, *args, str(db_path)], cwd=proj, env=env, check=True, timeout=120)
    assert _rows(db_path, "SELECT cwd FROM runs") == [(str(proj),)]


def test_a_run_started_by_torchrun_says_so(db_path, monkeypatch):
    # torchrun --nproc-per-node 1 gives world size 1: the relaunch must still go through torchrun.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    GradTracker(nn.Linear(2, 1), db=db_path).finish()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    GradTracker(nn.Linear(2, 1), db=db_path).finish()
    notes = [
        json.loads(c).get("_gradwatch", {}) for (c,) in _rows(db_path, "SELECT config FROM runs ORDER BY id")
    ]
    assert [n.get("torchrun") for n in notes] == [True, None]


def test_env_clip_overrides_the_argument_and_is_recorded(db_path, monkeypatch):
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:0.5")
    batches = _batches(4)
    expected_model, _, _ = _oracle_run(batches, 0.5)
    model, stats, tracker = _tracked_run(batches, db_path, clip="none")
    for p, q in zip(model.parameters(), expected_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    clip, source, config = _rows(db_path, "SELECT clip, clip_source, config FROM runs")[0]
    assert (clip, source) == ("norm:0.5", "env")
    # The spec the program asked for is kept under the tracker's own key (tracker.CONFIG_KEY), and only it
    # (with the command line as typed when pytest runs as `python -m pytest`).
    config = json.loads(config)
    config["_gradwatch"].pop("orig_argv", None)
    config["_gradwatch"].pop("position", None)  # (this test process has made trackers before)
    assert config == {"_gradwatch": {"requested_clip": "none"}}


def test_bad_env_clip_names_the_variable(db_path, monkeypatch):
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:-1")
    with pytest.raises(ValueError, match="GRADWATCH_CLIP"):
        GradTracker(_model(), db=db_path)
    assert not db_path.exists()


def test_env_run_name_and_parent_override_the_arguments(db_path, monkeypatch):
    # How the dashboard names and links a relaunch of a script it cannot pass arguments to.
    parent = GradTracker(_model(), db=db_path, run="original")
    parent.finish()
    monkeypatch.setenv("GRADWATCH_RUN", "relaunched")
    monkeypatch.setenv("GRADWATCH_PARENT_RUN", str(parent.run_id))
    child = GradTracker(_model(), db=db_path, run="original", parent_id=None)
    child.finish()
    rows = _rows(db_path, "SELECT id, name, parent_id FROM runs ORDER BY id")
    assert rows == [(parent.run_id, "original", None), (child.run_id, "relaunched", parent.run_id)]


def test_a_relaunch_records_into_the_dashboards_file_whatever_db_the_script_passes(tmp_path, monkeypatch):
    # The dashboard relaunches a run of its file (parent id 1 there) with GRADWATCH_DB set to that file. A
    # script passing its own db= used to record the new run elsewhere (the dashboard said it would appear,
    # and it never did); outside a relaunch, an explicit db= still wins over GRADWATCH_DB.
    shown, own = tmp_path / "shown.db", tmp_path / "own.db"
    GradTracker(_model(), db=shown, run="original").finish()
    monkeypatch.setenv("GRADWATCH_DB", str(shown))
    GradTracker(_model(), db=own, run="not a relaunch").finish()
    monkeypatch.setenv("GRADWATCH_PARENT_RUN", "1")
    relaunch = GradTracker(_model(), db=own, run="original")
    relaunch.finish()
    assert relaunch.db_path == shown
    assert _rows(shown, "SELECT id, name, parent_id FROM runs ORDER BY id") == [
        (1, "original", None),
        (2, "original", 1),
    ]
    assert _rows(own, "SELECT name, parent_id FROM runs") == [("not a relaunch", None)]


@pytest.mark.parametrize(
    "argv0, script",
    [("/home/me/train_kws.py", "train_kws"), ("-c", "python"), ("-", "python"), ("", "python")],
)
def test_a_run_without_a_name_is_named_by_its_script_and_time(db_path, monkeypatch, argv0, script):
    # (`python -c ...` used to name its runs "-c-<time>")
    monkeypatch.delenv("GRADWATCH_RUN", raising=False)
    monkeypatch.setattr(sys, "argv", [argv0])
    GradTracker(_model(), db=db_path).finish()
    [(name,)] = _rows(db_path, "SELECT name FROM runs")
    assert re.fullmatch(rf"{script}-\d{{8}}-\d{{6}}", name), name


def test_a_parent_run_that_does_not_exist_is_refused_and_creates_no_file(db_path):
    from tracker.store import RunNotFound

    with pytest.raises(RunNotFound, match="parent_id=5"):
        GradTracker(_model(), db=db_path, parent_id=5)
    assert not db_path.exists()  # a failed start leaves no empty database behind
    GradTracker(_model(), db=db_path).finish()
    with pytest.raises(RunNotFound, match="parent_id=5: no such run"):
        GradTracker(_model(), db=db_path, parent_id=5)
    assert _rows(db_path, "SELECT COUNT(*) FROM runs") == [(1,)]


def test_a_config_that_would_lose_a_value_or_cannot_be_stored_is_refused_before_any_file(db_path):
    looped: dict = {"lr": 0.1}
    looped["self"] = looped
    for config, match in (({1: "a", "1": "b"}, "same string form"), (looped, "holds itself")):
        with pytest.raises(ValueError, match=match):
            GradTracker(_model(), db=db_path, config=config)
    assert not db_path.exists()


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5", "1,x", ",,", "1,²", "١"])
def test_bad_env_parent_names_the_variable(db_path, monkeypatch, value):
    monkeypatch.setenv("GRADWATCH_PARENT_RUN", value)
    with pytest.raises(ValueError, match="GRADWATCH_PARENT_RUN"):
        GradTracker(_model(), db=db_path)
    assert not db_path.exists()


_TWO_TRACKERS = """
import sys, warnings
from torch import nn
from tracker import GradTracker
warnings.simplefilter("error")  # a third tracker warns: made an error below only where it is expected
made = []
for name in sys.argv[2:]:
    try:
        made.append(GradTracker(nn.Linear(2, 2), db=sys.argv[1], run=name, clip="none"))
    except UserWarning as w:
        print("WARNED", w)
        warnings.simplefilter("ignore")
        made.append(GradTracker(nn.Linear(2, 2), db=sys.argv[1], run=name, clip="none"))
for t in made:
    t.finish()
"""


def test_a_process_with_two_trackers_is_relaunched_run_for_run(db_path, tmp_path):
    # A GAN: the generator's and the discriminator's runs. Relaunched, each new tracker continues its own
    # run (both used to be children of the one relaunched, under one name).
    import subprocess

    script = tmp_path / "gan.py"
    script.write_text(_TWO_TRACKERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    run = lambda *names, **extra: subprocess.run(  # noqa: E731
        [sys.executable, str(script), str(db_path), *names], env={**env, **extra}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run("gen", "disc").returncode == 0
    relaunch = dict(
        GRADWATCH_PARENT_RUN="1,2", GRADWATCH_RUN=json.dumps(["gen · norm:0.5", "disc · norm:0.5"])
    )
    assert run("gen", "disc", **relaunch).returncode == 0
    out = run("gen", "disc", "critic", **relaunch)  # one more tracker than the process it relaunches had
    assert out.returncode == 0 and "WARNED" in out.stdout and "more trackers" in out.stdout, out.stderr
    bad = run("gen", "disc", GRADWATCH_PARENT_RUN="1,2", GRADWATCH_RUN="gen · norm:0.5")
    assert bad.returncode != 0 and "must be a JSON list of 2 names" in bad.stderr
    # The generator's run is not in this database (written elsewhere, deleted): an empty place, and its
    # tracker records a run of its own under the program's name; the discriminator's still continues #2.
    gap = run("gen", "disc", GRADWATCH_PARENT_RUN=",2", GRADWATCH_RUN=json.dumps([None, "disc · gap"]))
    assert gap.returncode == 0, gap.stderr
    bad = run("gen", "disc", GRADWATCH_PARENT_RUN=",2", GRADWATCH_RUN=json.dumps(["gen", "disc · gap"]))
    assert bad.returncode != 0 and "null where GRADWATCH_PARENT_RUN has an empty place" in bad.stderr
    # Each run records its tracker's place in its process (from the 2nd on): what a relaunch matches.
    assert _rows(
        db_path,
        "SELECT id, name, parent_id, json_extract(config, '$._gradwatch.position') FROM runs ORDER BY id",
    ) == [
        (1, "gen", None, None), (2, "disc", None, 2),
        (3, "gen · norm:0.5", 1, None), (4, "disc · norm:0.5", 2, 2),
        # (critic: the 4th GradTracker(): the script made it again after the 3rd raised its warning)
        (5, "gen · norm:0.5", 1, None), (6, "disc · norm:0.5", 2, 2), (7, "critic", None, 4),
        (8, "gen", None, None), (9, "disc · gap", 2, 2),
    ]  # fmt: skip


def test_db_defaults_to_env_then_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADWATCH_DB", str(tmp_path / "from-env.db"))
    GradTracker(_model()).finish()
    assert (tmp_path / "from-env.db").exists() and not (tmp_path / "gradwatch.db").exists()
    monkeypatch.delenv("GRADWATCH_DB")
    GradTracker(_model()).finish()
    assert (tmp_path / "gradwatch.db").exists()


def test_every_n_records_every_nth_step_but_clips_every_step(db_path):
    batches = _batches(7)
    expected_model, totals, _ = _oracle_run(batches, 1.0)
    model, stats, _ = _tracked_run(batches, db_path, clip="norm:1.0", every=3)
    for p, q in zip(model.parameters(), expected_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert [s.logged for s in stats] == [i % 3 == 0 for i in range(7)]
    unlogged = [s for s in stats if not s.logged]
    assert all(isinstance(s.total_norm, torch.Tensor) and s.total_norm.dim() == 0 for s in unlogged)
    assert [float(s.total_norm) for s in stats] == pytest.approx(totals, rel=1e-6)
    assert [r[0] for r in _rows(db_path, "SELECT step FROM steps ORDER BY step")] == [0, 3, 6]
    assert {r[0] for r in _rows(db_path, "SELECT DISTINCT step FROM grad_norms")} == {0, 3, 6}
    events = _rows(db_path, "SELECT step, norm_before, clipped FROM clip_events ORDER BY step")
    assert [e[0] for e in events] == list(range(7))  # clip events of unlogged steps are flushed later
    assert [e[1] for e in events] == pytest.approx(totals, rel=1e-6)
    assert [bool(e[2]) for e in events] == [t > 1.0 for t in totals]


def test_log_records_metrics_at_the_last_step(db_path):
    model = _model()
    with GradTracker(model, db=db_path) as tracker:
        tracker.log({"lr": 0.1})  # before any step: step 0
        for batch in _batches(3):
            model.zero_grad()
            _loss(model, batch).backward()
            tracker.step()
        tracker.log({"val_acc": 0.91, "val_loss": torch.tensor(0.25)})
        tracker.log({"test_acc": 0.5}, step=10)
        with pytest.raises(ValueError, match="val_acc"):
            tracker.log({"val_acc": "high"})
    rows = _rows(db_path, "SELECT name, step, value FROM metrics ORDER BY name")
    assert rows == [("lr", 0, 0.1), ("test_acc", 10, 0.5), ("val_acc", 2, 0.91), ("val_loss", 2, 0.25)]


def test_exception_marks_the_run_failed_with_its_message(db_path):
    with pytest.raises(RuntimeError, match="boom"):
        with GradTracker(_model(), db=db_path, run="crashy"):
            raise RuntimeError("boom")
    status, error = _rows(db_path, "SELECT status, error FROM runs")[0]
    assert status == "failed" and "RuntimeError: boom" in error


def test_keyboard_interrupt_marks_the_run_stopped(db_path):
    with pytest.raises(KeyboardInterrupt):
        with GradTracker(_model(), db=db_path):
            raise KeyboardInterrupt
    assert _rows(db_path, "SELECT status FROM runs") == [("stopped",)]


def test_every_option_is_keyword_only(db_path):
    # The contract: GradTracker(model, *, db=..., ...). A positional db or run would be ambiguous.
    import inspect

    params = list(inspect.signature(GradTracker.__init__).parameters.values())
    assert [p.name for p in params[:2]] == ["self", "model"]
    assert all(p.kind is p.KEYWORD_ONLY for p in params[2:]) and len(params) > 10
    with pytest.raises(TypeError, match="positional argument"):
        GradTracker(nn.Linear(2, 2), str(db_path))
    assert not db_path.exists()


def test_disabled_tracker_does_nothing_with_the_same_methods(db_path):
    model = _model()
    tracker = GradTracker(model, db=db_path, clip="norm:1e-9", enabled=False)
    assert isinstance(tracker, NullTracker)
    before = [p.detach().clone() for p in model.parameters()]
    with tracker as t:
        _loss(model, _batches(1)[0]).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        stats = t.step(loss=1.0)
        t.attach(torch.optim.SGD(model.parameters(), lr=0.1)).remove()
        t.log({"x": 1.0})
    t.finish()
    assert stats.total_norm is None and stats.step == 0
    assert math.isnan(stats.threshold) and stats.coef == 1.0  # no threshold in force: NaN, as documented
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not db_path.exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_misuse_is_refused_alike_with_tracking_on_or_off(db_path, enabled):
    # A script run with tracking off must not fail only once it is turned on.
    model = _model()
    tracker = GradTracker(model, db=db_path, enabled=enabled)
    handle = tracker.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    _loss(model, _batches(1)[0]).backward()
    with pytest.raises(RuntimeError, match="attached to an optimizer"):
        tracker.step()
    handle.remove()
    tracker.step()
    tracker.finish()
    for misuse in (tracker.step, lambda: tracker.log({"x": 1.0}), lambda: tracker.attach(torch.optim.SGD(
            model.parameters(), lr=0.1))):  # fmt: skip
        with pytest.raises(RuntimeError, match="finished"):
            misuse()


def test_a_relaunch_of_a_script_whose_tracker_is_disabled_says_the_override_does_nothing(monkeypatch):
    # The dashboard relaunches with GRADWATCH_CLIP; a script that turns tracking off by its own flag would
    # train unclipped and record nothing, and the relaunch looked like a success.
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:0.5")
    with pytest.warns(
        UserWarning, match=r"GRADWATCH_CLIP=norm:0\.5 is set, but this GradTracker is disabled"
    ):
        GradTracker(_model(), enabled=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every=0), "every"),
        (dict(every=1.5), "every"),
        (dict(nonfinite="ignore"), "record"),
        (dict(extra_stats=("weight_norm", "hessian")), "hessian"),
        (dict(clip="norm:abc"), "abc"),
        (dict(clip=3.0), "spec"),
        (dict(extra_stats=1), "extra_stats=1"),
        (dict(run=123), "run=123"),
        (dict(run="   "), "non-empty"),
        (dict(parent_id="abc"), "parent_id='abc'"),
        (dict(parent_id=-1), "parent_id=-1"),
        (dict(parent_id=True), "parent_id=True"),
        (dict(config=[1, 2]), "got list"),
        (dict(config=argparse.Namespace(lr=0.1)), r"config=vars\(args\)"),
    ],
)
@pytest.mark.parametrize("enabled", [True, False])  # off, too: a script must not fail only once it is on
def test_bad_options_raise_value_error_naming_them(db_path, kwargs, match, enabled):
    with pytest.raises(ValueError, match=match):
        GradTracker(_model(), db=db_path, enabled=enabled, **kwargs)
    assert not db_path.exists()


def test_a_disabled_tracker_refuses_what_an_enabled_one_refuses(db_path):
    with pytest.raises(TypeError, match="bogus"):
        GradTracker(_model(), db=db_path, enabled=False, bogus=1)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        GradTracker("model", enabled=False)
    for kwargs, match in [
        (dict(clip="agc:0.01,exclude=fc9"), "exclude=fc9 matches no parameter"),
        (dict(rank=1), "rank=1 but there is 1 process"),
        (dict(resume=[]), "resume must be what GradTracker.state_dict"),
        (dict(resume={"x": 1}), "resume must be what GradTracker.state_dict"),
    ]:
        for enabled in (True, False):
            with pytest.raises(ValueError, match=match):
                GradTracker(_model(), db=db_path, enabled=enabled, **kwargs)
    assert not db_path.exists()
    tracker = GradTracker(_model(), db=db_path, enabled=False)
    with pytest.raises(ValueError, match="status='bogus'; accepted: "):
        tracker.finish("bogus")
    tracker.finish("stopped")


def test_step_and_log_after_finish_are_errors(db_path):
    tracker = GradTracker(_model(), db=db_path)
    tracker.finish()
    tracker.finish()  # idempotent
    with pytest.raises(RuntimeError, match="finished"):
        tracker.step()
    with pytest.raises(RuntimeError, match="finished"):
        tracker.log({"test_acc": 0.9})  # not silently dropped
    tracker.flush()  # everything is in the file already: nothing to wait for, nothing to raise


def test_a_metric_no_float_can_hold_is_a_value_error_naming_it(db_path):
    with GradTracker(_model(), db=db_path) as tracker:
        with pytest.raises(ValueError, match="metric 'huge' must be a number"):
            tracker.log({"huge": 10**400})  # (int -> float raises OverflowError)


def test_finish_with_a_bad_status_changes_nothing_and_can_be_retried(db_path):
    model = _model()
    tracker = GradTracker(model, db=db_path)
    with pytest.raises(ValueError, match="'complete'; accepted: finished, failed, stopped"):
        tracker.finish("complete")
    _loss(model, _batches(1)[0]).backward()
    tracker.step()  # still open
    tracker.finish("stopped")
    assert _rows(db_path, "SELECT status, (SELECT COUNT(*) FROM steps) FROM runs") == [("stopped", 1)]


def test_config_is_stored_as_json_sqlite_can_read(db_path):
    # Python's json writes NaN/Infinity, which SQLite's json_extract rejects: the file must stay queryable.
    config = {"dropout": math.nan, "max_norm": math.inf, "lr": np.float32(0.5), "steps": np.int64(3), 7: "x"}
    GradTracker(_model(), db=db_path, config=config).finish()
    got = _rows(
        db_path,
        "SELECT json_valid(config), json_extract(config, '$.dropout'), json_extract(config, '$.max_norm'), "
        "json_extract(config, '$.lr'), json_extract(config, '$.steps'), json_extract(config, '$.\"7\"') "
        "FROM runs",
    )
    assert got == [(1, None, None, 0.5, 3, "x")]


@pytest.mark.parametrize("loss", [np.float32(2.5), np.float64(2.5), 2.5, torch.tensor(2.5), np.int64(2)])
def test_a_loss_of_any_number_type_is_recorded(db_path, loss):
    model = _model()
    with GradTracker(model, db=db_path) as tracker:
        _loss(model, _batches(1)[0]).backward()
        tracker.step(loss=loss)
    assert _rows(db_path, "SELECT loss FROM steps") == [(float(loss),)]


def test_total_norm_math_oracle_for_a_known_gradient(db_path):
    # A hand-made gradient with a known norm: 3-4-5 and 12 -> sqrt(9 + 16 + 144) = 13.
    model = nn.Linear(2, 1, bias=True)
    with GradTracker(model, db=db_path) as tracker:
        model.weight.grad = torch.tensor([[3.0, 4.0]])
        model.bias.grad = torch.tensor([12.0])
        stats = tracker.step()
    assert stats.total_norm == pytest.approx(13.0) and math.isnan(stats.threshold)
    assert _rows(db_path, "SELECT layer_id, norm FROM grad_norms ORDER BY layer_id") == [(0, 5.0), (1, 12.0)]


def test_flush_makes_a_running_run_readable(db_path):
    model = _model()
    tracker = GradTracker(model, db=db_path, run="live")
    for batch in _batches(3):
        model.zero_grad()
        _loss(model, batch).backward()
        tracker.step()
    tracker.flush()  # what a live dashboard needs: rows committed while the run goes on
    assert _rows(db_path, "SELECT status FROM runs") == [("running",)]
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(3,)]
    tracker.finish()
    assert _rows(db_path, "SELECT status FROM runs") == [("finished",)]


def test_a_strategy_object_is_accepted_and_recorded_by_its_spec(db_path):
    from tracker import parse_clip

    batches = _batches(3)
    expected_model, _, _ = _oracle_run(batches, 0.7)
    model, _, _ = _tracked_run(batches, db_path, clip=parse_clip("norm:0.7"))
    for p, q in zip(model.parameters(), expected_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert _rows(db_path, "SELECT clip, clip_source FROM runs") == [("norm:0.7", "argument")]


def test_rows_built_at_the_hand_off_keep_the_step_time_and_values(db_path):
    # step() only copies to the host; the rows are built when the outbox hands them over (within 1 s here,
    # so everything waits for flush). They must carry the time of the step and the values of that moment,
    # even though the gradients and the loss tensor change before the hand-off.
    model = nn.Linear(2, 1, bias=True)
    tracker = GradTracker(model, db=db_path)
    times = []
    for k in (1.0, 2.0):
        model.weight.grad = torch.tensor([[3.0 * k, 4.0 * k]])
        model.bias.grad = torch.tensor([12.0 * k])
        loss = torch.tensor(k)
        before = time.time()
        tracker.step(loss=loss)
        times.append((before, time.time()))
        loss.fill_(-1.0)  # a loss tensor reused in place must not change what was recorded
        model.weight.grad.fill_(100.0)
    time.sleep(0.05)  # the hand-off happens clearly after the steps
    flushed_at = time.time()
    tracker.finish()
    steps = _rows(db_path, "SELECT step, loss, total_norm, time FROM steps ORDER BY step")
    assert [s[:3] for s in steps] == [(0, 1.0, 13.0), (1, 2.0, 26.0)]
    for (_, _, _, at), (lo, hi) in zip(steps, times, strict=True):
        assert lo <= at <= hi < flushed_at
    norms = _rows(db_path, "SELECT step, layer_id, norm FROM grad_norms ORDER BY step, layer_id")
    assert norms == [(0, 0, 5.0), (0, 1, 12.0), (1, 0, 10.0), (1, 1, 24.0)]


def test_thresholds_are_recorded_as_the_decimal_the_user_wrote(db_path):
    # Thresholds live in float32 on the device; 0.15 there is 0.15000000596... Recorded as 0.15, so that
    # SQL equality on the configured value finds the run's rows.
    batches = _batches(3)
    _tracked_run(batches, db_path, clip="norm:0.15", run="decimal")
    assert {r[0] for r in _rows(db_path, "SELECT threshold FROM steps")} == {0.15}
    assert _rows(db_path, "SELECT count(*) FROM clip_events WHERE threshold = 0.15") == [(3,)]
    model = _model()
    with GradTracker(model, db=db_path, clip="value:0.05") as tracker:
        _loss(model, batches[0]).backward()
        assert tracker.step().threshold == 0.05  # what step() returns is what the store keeps


@pytest.mark.parametrize("value", [0.15, 1e-3, 123456.789, 3.4028234663852886e38, 1e-45, 7.0])
def test_recorded_threshold_is_the_same_float32(value):
    from tracker.rows import short_threshold

    x = torch.tensor(value, dtype=torch.float32).item()  # what the device holds
    short = short_threshold(x)
    assert torch.tensor(short, dtype=torch.float32).item() == x  # oracle: torch's own float32 rounding
    assert len(repr(short)) <= len(repr(x))


def test_rows_reach_the_file_while_training_pauses(db_path):
    # Twenty quick steps, then a long pause (a validation pass, say): nothing calls the tracker, yet the rows
    # must reach the file (a dashboard shows them; a process killed during the pause keeps them).
    model = nn.Linear(4, 4)
    tracker = GradTracker(model, db=db_path, run="pause")
    for i in range(20):
        model(torch.randn(2, 4)).sum().backward()
        tracker.step(loss=float(i))
        model.zero_grad()

    def steps_in_file():
        return _rows(db_path, "SELECT COUNT(*) FROM steps")[0][0] == 20

    try:
        assert wait_for(steps_in_file, timeout=10.0, interval=0.1)
        n_layers = len(list(model.parameters()))
        assert _rows(db_path, "SELECT COUNT(*) FROM grad_norms") == [(20 * n_layers,)]
    finally:
        tracker.finish()


def test_a_new_tracker_on_a_model_an_open_one_measures_closes_it(db_path):
    # A notebook cell `tracker = GradTracker(model, ...); tracker.attach(opt)` run twice: both hooks clipped
    # every step and the first run stayed "running" until the kernel exited.
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = GradTracker(model, db=db_path, run="cell", clip="norm:0.1")
    first.attach(opt)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    with pytest.warns(
        UserWarning, match=r"run #1 measured this model and was still attached.*closed now as 'finished'"
    ):
        second = GradTracker(model, db=db_path, run="cell", clip="norm:0.1")
    second.attach(opt)
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    want = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    opt.step()
    second.finish()
    runs = _rows(
        db_path, "SELECT id, status, (SELECT count(*) FROM steps s WHERE s.run_id = runs.id) FROM runs"
    )
    assert runs == [(1, "finished", 1), (2, "finished", 1)]
    events = _rows(db_path, "SELECT run_id, norm_before FROM clip_events WHERE run_id = 2")
    assert events == [(2, pytest.approx(want, rel=1e-6))]  # measured once, before any clipping
    third = GradTracker(model, db=db_path)
    third.attach(opt)
    with pytest.warns(UserWarning, match=r"run #3 .*still attached"):
        GradTracker(model, db=db_path, enabled=False)  # the cell run again with tracking off
    assert third._finished and not third._hooks
    # Not attached: several trackers may measure one model side by side (the overhead benchmark does).
    kept = GradTracker(model, db=db_path)
    also = GradTracker(model, db=db_path)
    assert not kept._finished and not also._finished
    kept.finish(), also.finish()


@pytest.mark.parametrize("wrap", ["compile", "DataParallel"])
def test_a_new_tracker_on_a_wrapper_of_the_model_an_open_one_measures_closes_it(db_path, wrap):
    # The cell run again wraps the same model anew (torch.compile, DDP): the same parameters, clipped twice.
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def wrapped():
        return torch.compile(model) if wrap == "compile" else nn.DataParallel(model)

    first = GradTracker(wrapped(), db=db_path, clip="norm:0.1")
    first.attach(opt)
    with pytest.warns(UserWarning, match=r"run #1 measured this model and was still attached"):
        second = GradTracker(wrapped(), db=db_path, clip="norm:0.1")
    assert first._finished and not first._hooks
    second.attach(opt)
    with pytest.warns(UserWarning, match=r"run #2 measured this model"):
        third = GradTracker(model, db=db_path)  # and the bare model after a wrapper of it
    assert second._finished
    third.finish()
    other = nn.Linear(4, 3)  # another model stays measured by its own tracker
    kept = GradTracker(nn.DataParallel(other), db=db_path)
    kept.attach(torch.optim.SGD(other.parameters(), lr=0.1))
    GradTracker(model, db=db_path).finish()
    assert not kept._finished
    kept.finish()


def test_a_tracker_whose_constructor_fails_after_opening_its_run_closes_it(db_path):
    # pytest's filterwarnings=error (or -W error) turns the warning about the replaced tracker into an
    # exception, raised after the new run was opened: it used to stay "running", its threads alive.
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    GradTracker(model, db=db_path, run="first").attach(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="still attached"):
            GradTracker(model, db=db_path, run="second")
    got = _rows(db_path, "SELECT name, status, error FROM runs ORDER BY id")
    assert got[0][:2] == ("first", "finished")
    assert got[1][:2] == ("second", "failed") and got[1][2].startswith("UserWarning: GradTracker: run #1")
    assert not [t.name for t in threading.enumerate() if t.name == "gradwatch-writer-2"]


def test_a_new_tracker_that_cannot_start_leaves_the_open_one_alone(db_path, tmp_path):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = GradTracker(model, db=db_path)
    first.attach(opt)
    from tracker.store import DirectoryNotFound

    with pytest.raises(DirectoryNotFound):
        GradTracker(model, db=tmp_path / "no such folder" / "x.db")
    model(torch.randn(2, 4)).sum().backward()
    opt.step()  # still measured by the first
    first.finish()
    assert _rows(db_path, "SELECT status, (SELECT count(*) FROM steps) FROM runs") == [("finished", 1)]


def test_importing_the_tracker_leaves_dtensor_unimported():
    # torch.distributed.tensor costs 0.5-1 s to import (sympy): paid only by programs that use DTensors.
    import subprocess

    heavy = ("torch.distributed.tensor", "sympy", "streamlit", "torchaudio")
    code = f"import sys; from tracker import GradTracker; print(sorted(set({heavy!r}) & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stderr
