"""The Launch form refuses exactly the trainer options the trainer refuses.

The dashboard does not import the trainer (it starts it), so ``dashboard.options`` restates its rules; the
oracle here is ``python -m trainer`` itself, given the very command line the form would launch.
"""

import json
import subprocess
import sys

import pytest

from dashboard.launch import relaunch_spec
from dashboard.options import option_errors

RECORDED = {
    "task": "keywords", "model": "seed-cnn", "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0,
    "epochs": 1, "batch_size": 8, "max_steps": 30, "seed": 0, "clip": "none",
}  # fmt: skip

# What the form can send (only changed values): accepted and refused ones.
CASES = [
    {"lr": 0.01},
    {"lr": 0.0},
    {"lr": -0.1},
    {"weight_decay": 0.5},
    {"weight_decay": -0.5},
    {"epochs": 3, "batch_size": 1},
    {"epochs": 0},
    {"batch_size": 0},
    {"max_steps": 5},
    {"max_steps": None},  # the form's 0: no limit
    {"max_steps": -3},
    {"seed": 7},
    {"seed": -1},
    {"optimizer": "sgd"},
    {"optimizer": "lion"},
    {"model": "resnet-kws"},
    {"model": "crnn-ctc"},
    {"model": "conformer-ctc"},
]

# Runs `python -m trainer` once per command line in one interpreter, stopping where training would start:
# its exit code and message, or the configuration it resolved.
ORACLE = r"""
import contextlib, io, json, runpy, sys
import trainer.train
resolved = []
def report(cfg):
    resolved.append(cfg.to_dict())
    return 0
trainer.train.run_training = report
results = []
for argv in json.loads(sys.stdin.read()):
    sys.argv = ["trainer", *argv]
    resolved.clear()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_module("trainer", run_name="__main__")
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "stderr": err.getvalue(), "config": resolved[0] if resolved else None})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def trainer_verdicts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("options")
    run = {"id": 1, "name": "kws", "argv": ["-m", "trainer"], "cwd": str(tmp), "config": RECORDED}
    commands = []
    for i, changed in enumerate(CASES):
        spec = relaunch_spec(run, name=f"case {i}", db=tmp / "g.db", clip="none", config_dir=tmp,
                             overrides=changed)  # fmt: skip
        with open(spec.config_file, "w") as f:  # what the launcher writes before starting the trainer
            json.dump(spec.config, f)
        commands.append(list(spec.argv[spec.argv.index("trainer") + 1 :]))
    done = subprocess.run([sys.executable, "-c", ORACLE], input=json.dumps(commands), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[json.dumps(c) for c in CASES])
def test_the_form_refuses_what_the_trainer_refuses(trainer_verdicts, case):
    changed, verdict = CASES[case], trainer_verdicts[case]
    errors = option_errors(changed, RECORDED)
    assert verdict["code"] in (0, 2), verdict["stderr"]
    assert bool(errors) == (verdict["code"] == 2), (errors, verdict["stderr"])
    if errors:  # both name the option
        flag = "--" + next(iter(changed)).replace("_", "-")
        assert flag in errors[0] or "Model" in errors[0]
        assert flag in verdict["stderr"] or "model" in verdict["stderr"]
    else:
        for dest, value in changed.items():
            assert verdict["config"][dest] == value  # None for max_steps: no step limit
