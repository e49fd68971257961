"""The trainer options the Launch form offers, and the trainer's rules for them.

The dashboard starts the trainer as a subprocess and imports none of it (``trainer/__init__.py``), so the
rules of ``trainer.config.validate`` for these options are written again here, to refuse in the form what
the trainer would refuse with exit code 2 after "Started". ``tests/dashboard/test_launch_options.py``
checks every rule against ``python -m trainer`` itself, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["MODEL_OPTIONS", "MODEL_TASKS", "OPTIONS", "option_errors"]

# Trainer options offered in the form (dest names, as recorded in runs.config); others replay unchanged.
OPTIONS = {
    "lr": ("Learning rate", float),
    "max_steps": ("Max steps (0: no limit)", int),
    "epochs": ("Epochs", int),
    "batch_size": ("Batch size", int),
    "optimizer": ("Optimizer", ("adam", "adamw", "sgd")),
    "model": ("Model", ("seed-cnn", "resnet-kws", "crnn-ctc", "conformer-ctc")),
    "weight_decay": ("Weight decay", float),
    "seed": ("Seed", int),
}
# Options whose recorded value belongs to the model: dropped when the model changes, so the new model's
# own defaults apply.
MODEL_OPTIONS = ("dropout", "hidden_size", "num_layers", "rnn_type")
# Which task each model can learn (trainer.models.MODEL_TASKS).
MODEL_TASKS = {
    "seed-cnn": ("keywords",),
    "resnet-kws": ("keywords",),
    "crnn-ctc": ("digits", "characters"),
    "conformer-ctc": ("digits", "characters"),
}
DEFAULT_TASK = "keywords"  # trainer.config.TrainConfig.task

# dest -> (lowest accepted value, whether the lowest value itself is refused); as trainer.config.validate.
_LOWEST = {
    "lr": (0, True),
    "weight_decay": (0, False),
    "epochs": (1, False),
    "batch_size": (1, False),
    "max_steps": (1, False),
    "seed": (0, False),
}


def option_errors(changed: Mapping[str, object], config: Mapping[str, object]) -> list[str]:
    """What the trainer would refuse in ``changed`` (the form's values that differ from the recorded
    ``config``), one message per bad value naming it and what is accepted. ``max_steps: None`` is no limit.
    """
    errors = []
    for dest, value in changed.items():
        label, kind = OPTIONS[dest]
        flag = "--" + dest.replace("_", "-")
        if value is None and dest == "max_steps":
            continue
        if isinstance(kind, tuple):
            if value not in kind:
                errors.append(f"{label} ({flag}) {value!r} is not accepted; choose one of: {', '.join(kind)}")
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            errors.append(f"{label} ({flag}) must be an integer, got {value!r}")
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            errors.append(f"{label} ({flag}) must be a finite number, got {value!r}")
            continue
        low, open_ = _LOWEST[dest]
        if value < low or (open_ and value == low):
            hint = " (0: no limit)" if dest == "max_steps" else ""
            errors.append(f"{label} ({flag}) must be {'>' if open_ else '≥'} {low}{hint}, got {value!r}")
    model = changed.get("model")
    task = config.get("task") or DEFAULT_TASK
    if model in MODEL_TASKS and task not in MODEL_TASKS[model]:
        fits = [m for m, tasks in MODEL_TASKS.items() if task in tasks]
        errors.append(
            f"Model {model!r} cannot learn task {task!r} (the task of this run); models for {task!r}: "
            + ", ".join(fits)
        )
    return errors
