"""Named presets: bundles of settings for common runs (``--preset NAME``).

A preset overrides the defaults and a ``--config`` file; flags given explicitly still win.
The figures quoted in the descriptions are measured in docs/trainer.md.
"""

from __future__ import annotations

__all__ = ["PRESETS", "preset_values", "describe_presets"]

PRESETS: dict[str, dict] = {
    "demo": {
        "_about": "quick look (~15 s): keywords + seed-cnn on a corpus of 2 renditions per voice, 3 epochs; "
        "what the dashboard's 'Launch a demo run' button starts",
        "task": "keywords",
        "model": "seed-cnn",
        "corpus_size": 2,
        "epochs": 3,
        "lr": 1e-3,
        "batch_size": 64,
    },
    "keywords": {
        "_about": "keywords + seed-cnn to ≥95% test accuracy on held-out voices (~35 s on 2 CPU cores)",
        "task": "keywords",
        "model": "seed-cnn",
        "epochs": 5,
        "lr": 1e-3,
        "batch_size": 64,
    },
    "digits": {
        "_about": "digit strings + crnn-ctc: SGD (momentum 0.9) at lr 0.5 with cosine decay, made stable by "
        "global-norm clipping (norm:1.0), 3 epochs: ≤10% CER on held-out voices in ≤5 min",
        "task": "digits",
        "model": "crnn-ctc",
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr": 0.5,
        "lr_schedule": "cosine",
        "clip": "norm:1.0",
        "epochs": 3,
        "batch_size": 32,
    },
    "clipping-demo": {
        "_about": "crnn-ctc on digits, SGD at a high learning rate: unclipped, gradient norms explode and "
        "the loss diverges; with --clip norm:1.0 the same run trains (docs/trainer.md has the figures)",
        "task": "digits",
        "model": "crnn-ctc",
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr": 0.5,
        "lr_schedule": "constant",
        "epochs": 2,
        "eval_every": 50,
        "batch_size": 32,
    },
}


def preset_values(name: str) -> dict:
    """The settings of a preset (ValueError naming the accepted presets for an unknown name)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    return {k: v for k, v in PRESETS[name].items() if not k.startswith("_")}


def describe_presets() -> str:
    """One line per preset for ``--help`` (``%`` escaped for argparse)."""
    return "; ".join(f"{name}: {p['_about']}" for name, p in PRESETS.items()).replace("%", "%%")
