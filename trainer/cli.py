"""Command line of the trainer: ``python -m trainer`` / ``gradwatch-train``.

Every flag is parsed with ``argparse.SUPPRESS`` as its default, so the namespace holds exactly the
flags the user typed; that is what lets ``--config FILE`` replay a recorded run while explicit flags
override it (``trainer.config.resolve_config``). Invalid input ends here with one message on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import sys
import threading
from pathlib import Path

from trainer.config import (
    DATA_SOURCES,
    DEVICES,
    LR_SCHEDULES,
    NONFINITE_POLICIES,
    OPTIMIZERS,
    SC_VARIANTS,
    TASKS,
    ConfigError,
    TrainConfig,
    load_config_file,
    resolve_config,
)
from trainer.models import MODEL_TASKS, MODELS
from trainer.presets import PRESETS, describe_presets, preset_values

__all__ = ["build_parser", "parse_config", "main"]

_DEFAULTS = TrainConfig()


def _clip_grammar() -> str:
    """The tracker's own description of the clip spec grammar (one source of truth)."""
    from tracker.clipping import CLIP_SPEC_HELP

    return CLIP_SPEC_HELP


def _compat_table() -> str:
    return "compatible tasks:\n" + "\n".join(f"  {m:<14} {', '.join(t)}" for m, t in MODEL_TASKS.items())


def _prog() -> str:
    # The usage line names the command as typed: the gradwatch-train script, or python -m trainer.
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name == "gradwatch-train" else "python -m trainer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Train a speech model while gradwatch records per-layer gradient norms and clipping\n"
        "into SQLite. Watch it live with: gradwatch-dashboard --db PATH",
        epilog="distributed:\n"
        "  torchrun --nproc_per_node=N -m trainer ...   gloo on CPU, nccl on GPU; one run in the database,\n"
        "  written by rank 0 (name it with --run-name: torchrun takes --run for its own --run-path)\n"
        "exit codes:\n"
        "  0 finished, or stopped by SIGTERM; 130 stopped by Ctrl-C; 2 invalid options; 1 training failed",
        argument_default=argparse.SUPPRESS,
        # keeps the line layout of the clip grammar (a group description) and of the epilog
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    from tracker import __version__

    parser.add_argument("--version", action="version", version=f"gradwatch {__version__}")

    def add(group, *flags, **kw):
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        default = getattr(_DEFAULTS, dest, None)
        # Defaults live in TrainConfig; show them in --help without letting argparse fill them in.
        if "action" not in kw or kw["action"] not in ("store_true",):
            kw["help"] = kw["help"] + ("" if default is None else f" (default: {default})")
        group.add_argument(*flags, **kw)

    g = parser.add_argument_group("data")
    add(
        g,
        "--task",
        choices=TASKS,
        help="keywords: 10-word classification; digits: spoken digit strings (CTC); "
        "characters: transcribed speech (CTC)",
    )
    add(g, "--data", choices=DATA_SOURCES, help="builtin: eSpeak-generated corpus; or a real corpus on disk")
    add(g, "--data-path", metavar="DIR", help="corpus folder for --data speech_commands|transcripts")
    add(
        g,
        "--cache-dir",
        metavar="DIR",
        help="where generated corpora and the features of every corpus are cached "
        "(default: $GRADWATCH_CACHE/corpora, else $XDG_CACHE_HOME/gradwatch/corpora, else "
        "~/.cache/gradwatch/corpora)",
    )
    add(
        g,
        "--corpus-size",
        type=_corpus_size,
        metavar="SIZE",
        help="built-in corpus size: tiny, small, full, or N repetitions per voice (default: small)",
    )
    add(g, "--specaugment", action="store_true", help="SpecAugment (frequency/time masking) on training data")
    add(
        g,
        "--data-seed",
        type=int,
        help="seed of the built-in corpus (voices, split, noise), of Speech Commands' silence and unknown "
        "picks and of a transcripts folder's speaker split",
    )
    add(
        g,
        "--sc-variant",
        type=int,
        choices=SC_VARIANTS,
        help="Speech Commands classes: 10 core words; 12 (+ _silence_, _unknown_); 30 (v0.01) or 35 (v0.02) "
        "words",
    )

    g = parser.add_argument_group("model", _compat_table())
    add(
        g,
        "--model",
        choices=MODELS,
        help="architecture (default: seed-cnn for keywords, crnn-ctc otherwise)",
    )
    add(g, "--dropout", type=float, help="dropout probability (default: the model's own)")
    add(g, "--hidden-size", type=int, help="width: GRU/LSTM units, conformer dim, resnet channels")
    add(g, "--num-layers", type=int, help="recurrent / conformer layers")
    add(g, "--rnn-type", choices=("gru", "lstm"), help="recurrent cell of crnn-ctc")

    g = parser.add_argument_group("optimisation")
    add(g, "--optimizer", choices=OPTIMIZERS, help="optimizer (sgd uses --momentum)")
    add(g, "--lr", type=float, help="peak learning rate")
    add(g, "--momentum", type=float, help="SGD momentum")
    add(g, "--weight-decay", type=float, help="weight decay (decoupled for adamw, L2 for adam/sgd)")
    add(g, "--warmup-steps", type=int, help="linear learning-rate warm-up, in optimizer steps")
    add(g, "--lr-schedule", choices=LR_SCHEDULES, help="decay after warm-up")
    add(g, "--batch-size", type=int, help="examples per step per process")
    add(g, "--epochs", type=int, help="passes over the training set")
    add(g, "--max-steps", type=int, help="stop after this many optimizer steps (default: no limit)")
    add(g, "--grad-accum", type=int, help="micro-batches accumulated per optimizer step")
    add(g, "--eval-every", type=int, help="also evaluate every N optimizer steps (0: once per epoch only)")
    add(g, "--seed", type=int, help="training seed: initialisation, batch order, augmentation")
    add(g, "--device", choices=DEVICES, help="auto: CUDA when available")
    add(
        g,
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="mixed precision with GradScaler (default: on with CUDA, off on CPU)",
    )

    g = parser.add_argument_group("clipping", _escape(_clip_grammar()))
    add(g, "--clip", metavar="SPEC", help="clipping spec, grammar above; $GRADWATCH_CLIP overrides it")
    add(
        g,
        "--nonfinite",
        choices=NONFINITE_POLICIES,
        help="NaN/Inf gradients: record, skip the step, or raise",
    )

    g = parser.add_argument_group("tracking")
    add(g, "--db", metavar="PATH", help="SQLite file (default: $GRADWATCH_DB or ./gradwatch.db)")
    # --run-name: torchrun reads a bare --run as an abbreviation of its own --run-path and stops.
    add(g, "--run", "--run-name", metavar="NAME", help="run name (default: task-model-clip-timestamp)")
    add(g, "--parent-run", type=int, metavar="ID", help="id of the run this one relaunches (lineage)")
    add(g, "--every", type=int, metavar="N", help="record gradient norms every N optimizer steps")
    add(
        g,
        "--no-track",
        action="store_true",
        help="record nothing (needs --clip none: clipping is the tracker's job)",
    )
    add(g, "--extra-stats", action="store_true", help="also record weight norm, update ratio, max |g|")

    g = parser.add_argument_group("run")
    add(
        g,
        "--config",
        metavar="FILE|RUN_ID",
        help="replay a recorded config: a JSON file, or the id of a run in --db (which then becomes "
        "the parent run, and the new run is written to that database); explicit flags override it",
    )
    add(g, "--preset", choices=tuple(PRESETS), help=describe_presets())
    add(
        g,
        "--quiet",
        action="store_true",
        help="no progress bar and no per-epoch lines (the summary is still printed)",
    )
    add(
        g,
        "--checkpoint",
        metavar="PATH",
        help="after every epoch, and when training stops early (a stop request, --max-steps), save the "
        "model, optimizer, schedule, random state, position in the data and the tracker's state to PATH "
        "(replaced atomically)",
    )
    add(
        g,
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="with --checkpoint: also save every N optimizer steps within an epoch",
    )
    add(
        g,
        "--resume",
        action="store_true",
        help="if --checkpoint PATH exists, continue from it: the same run in the database, from where the "
        "checkpoint was saved (what it recorded after that is replaced); otherwise start afresh",
    )
    return parser


def _corpus_size(text: str) -> str | int:
    # An integer written in ASCII digits is a repetition count (checked >= 1 with the others); anything
    # else is a size name, checked against the names ("²".isdigit() is True, int("²") fails).
    return int(text) if re.fullmatch(r"\s*[+-]?[0-9]+\s*", text) else text


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """Parse the command line into a resolved, validated TrainConfig.

    Exits with code 2 and one message on stderr for any invalid option (argparse's convention).
    """
    parser = build_parser()
    explicit = vars(parser.parse_args(argv))
    config_file = explicit.pop("config", None)
    preset = explicit.get("preset")
    try:
        file_values = None
        if config_file is not None:
            file_values, run_id, source_db = _recorded_config(config_file, explicit.get("db"))
            if run_id is not None:
                # Relaunching a run of a database: that run is the parent, and the new run goes into the
                # same database (the one it was read from), unless --db says otherwise.
                explicit.setdefault("parent_run", run_id)
                explicit.setdefault("db", source_db)
        preset_vals = preset_values(preset) if preset else None
        cfg, warnings = resolve_config(explicit, file_values=file_values, preset_values=preset_vals)
        _check_clip(cfg.clip)
        if cfg.no_track:
            _check_no_clip_from_env()
    except (ConfigError, ValueError, TypeError) as e:
        parser.error(str(e))
    return cfg, warnings


def _recorded_config(ref: str, db: str | None) -> tuple[dict, int | None, str | None]:
    """``--config FILE`` (JSON), or ``--config RUN_ID``: the config recorded for that run in the database
    (``--db``, else ``$GRADWATCH_DB``, else ./gradwatch.db). Returns (settings, run id, database path),
    the last two None for a file."""
    if not (ref.isdigit() and not Path(ref).exists()):
        return load_config_file(ref), None, None
    from tracker.env import resolve_db
    from tracker.store import Store, StoreError

    path = str(resolve_db(db))
    try:
        with Store.open(path, readonly=True) as store:
            run = store.run(int(ref))
    except StoreError as e:
        raise ConfigError(f"--config {ref}: {e}") from None
    config = run.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"--config {ref}: run {ref} in {path} has no recorded config")
    return config, int(ref), path


def _check_clip(spec: str) -> None:
    from tracker.clipping import parse_clip

    try:
        parse_clip(spec)
    except ValueError as e:  # ClipSpecError is a ValueError naming the bad part and the grammar
        raise ConfigError(f"--clip {spec!r}: {e}") from None


def _check_no_clip_from_env() -> None:
    """``--no-track`` turns clipping off with the tracker, so ``$GRADWATCH_CLIP`` asking for clipping would be
    ignored without a word, as ``--clip`` would (refused in trainer.config.validate)."""
    from tracker.clipping import parse_clip

    override = os.environ.get("GRADWATCH_CLIP", "").strip()
    try:
        asks = bool(override) and parse_clip(override).spec != "none"
    except ValueError:  # a bad spec clips nothing either: still not what the user asked for
        asks = True
    if asks:
        raise ConfigError(
            f"GRADWATCH_CLIP={override!r} asks for clipping, but --no-track turns the tracker off, and "
            "with it clipping: unset GRADWATCH_CLIP, or drop --no-track"
        )


# What `pip install gradwatch` leaves out and the trainer needs (the `trainer` extra of pyproject.toml).
TRAINER_EXTRA = ("torchaudio", "soundfile", "espeakng_loader", "numpy", "tqdm")


def missing_extra() -> list[str]:
    """The trainer's extra dependencies this environment cannot import (without importing them)."""
    return [name for name in TRAINER_EXTRA if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; returns the process exit code."""
    cfg, warnings = parse_config(argv)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    missing = missing_extra()
    if missing:
        print(
            f"{_prog()}: error: the trainer needs {', '.join(missing)}, which this environment lacks: "
            "install gradwatch with its trainer extra (pip install 'gradwatch[trainer]', or from a checkout "
            "pip install '.[trainer]').",
            file=sys.stderr,
        )
        return 2
    from tracker import NonFiniteGradientError
    from trainer.train import TrainingError, run_training  # heavy imports after the cheap checks

    try:
        code = run_training(cfg)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop's own handling (loading the data, say)
        print(f"{_prog()}: interrupted (Ctrl-C)", file=sys.stderr)
        code = 128 + signal.SIGINT
    except TrainingError as e:
        print(f"{_prog()}: error: {e}", file=sys.stderr)
        return e.exit_code
    except NonFiniteGradientError as e:  # --nonfinite raise: the run is recorded as failed, with the layer
        print(f"{_prog()}: stopped: {e} (--nonfinite raise)", file=sys.stderr)
        return 1
    if argv is None and code == 128 + signal.SIGINT and threading.current_thread() is threading.main_thread():
        # The process (argv None: its own command line) ends because of Ctrl-C and the run is recorded. One
        # more Ctrl-C while Python shuts down, after it has put SIGINT's default action back, would kill it
        # (exit -2) with nothing left to stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code
