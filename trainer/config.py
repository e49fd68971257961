"""The trainer's resolved configuration: one flat dataclass whose field names are the CLI's dest names.

Resolution order (later wins): built-in defaults < ``--config FILE`` < ``--preset NAME`` < flags
given explicitly on the command line. The resolved config is what the run records in
``runs.config``, so ``python -m trainer --config <that JSON> --clip <new>`` replays it: every setting but
those of NOT_REPLAYED (a relaunch's own name, lineage, checkpoint and database). Values read from a file are
checked against the fields' types (``check_types``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from tracker.env import resolve_db
from trainer.models import MODEL_DEFAULTS, MODEL_TASKS, MODELS

__all__ = [
    "TASKS",
    "DATA_SOURCES",
    "SC_VARIANTS",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "DEVICES",
    "NONFINITE_POLICIES",
    "DEFAULT_MODEL",
    "NOT_REPLAYED",
    "TrainConfig",
    "ConfigError",
    "check_applicable",
    "check_types",
    "load_config_file",
    "resolve_config",
]

TASKS = ("keywords", "digits", "characters")
DATA_SOURCES = ("builtin", "speech_commands", "transcripts")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE_POLICIES = ("record", "skip", "raise")
SC_VARIANTS = (10, 12, 30, 35)  # 30: every word of Speech Commands v0.01
CORPUS_SIZES = ("tiny", "small", "full")  # the built-in corpus's named sizes; an int is repetitions per voice
DEFAULT_MODEL = {"keywords": "seed-cnn", "digits": "crnn-ctc", "characters": "crnn-ctc"}
# Which data sources can feed which task.
SOURCE_TASKS = {
    "builtin": ("keywords", "digits"),
    "speech_commands": ("keywords",),
    "transcripts": ("digits", "characters"),
}
# Keys of a recorded config that a replay does not take over: a relaunch is a new run with its own
# name and its own lineage (given with --parent-run), and --config itself is not a setting.
# A relaunch must not continue (or overwrite) the original's checkpoint either. Nor does it take over the
# recorded ``db``: that path was relative to wherever the original ran, and a relaunch by run id writes to
# the database it read the run from (trainer.cli sets it).
NOT_REPLAYED = frozenset(
    {"run", "parent_run", "config", "preset", "checkpoint", "checkpoint_every", "resume", "db"}
)


class ConfigError(ValueError):
    """A configuration value is invalid or the options are incompatible."""


@dataclass
class TrainConfig:
    # data
    task: str = "keywords"
    data: str = "builtin"
    data_path: str | None = None
    cache_dir: str | None = None
    corpus_size: str | int | None = None
    specaugment: bool = False
    sc_variant: int = 10
    data_seed: int = 0
    # model (None = the model's own default, filled in by resolve_config)
    model: str | None = None
    dropout: float | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    rnn_type: str | None = None
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    batch_size: int = 64
    epochs: int = 5
    max_steps: int | None = None
    grad_accum: int = 1
    eval_every: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    # clipping
    clip: str = "none"
    nonfinite: str = "record"
    # tracking
    db: str | None = None
    run: str | None = None
    parent_run: int | None = None
    every: int = 1
    no_track: bool = False
    extra_stats: bool = False
    # run
    preset: str | None = None
    quiet: bool = False
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False

    def to_dict(self) -> dict:
        """The JSON-able dict recorded in ``runs.config`` (keys = CLI dest names)."""
        return dataclasses.asdict(self)


FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
# The JSON types each field takes (``str | None`` -> (str, NoneType)), for checking values read from a file:
# argparse types the flags, but a config file can hold anything.
_FIELD_TYPES = {
    name: typing.get_args(hint) or (hint,) for name, hint in typing.get_type_hints(TrainConfig).items()
}
_TYPE_NAMES = {
    bool: ("true", "false"),
    int: ("an integer",),
    float: ("a number",),
    str: ("a string",),
    type(None): ("null",),
}


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a recorded config: a JSON object of settings, or a run record holding one under
    ``"config"`` (as exported from the database). Raises ConfigError naming the problem."""
    p = Path(path)
    if not _looked_at(p, Path.is_file, "--config"):
        raise ConfigError(f"config file not found: {str(p)!r}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a JSON object of settings")
    return data


def resolve_config(
    explicit: dict, *, file_values: dict | None = None, preset_values: dict | None = None
) -> tuple[TrainConfig, list[str]]:
    """Merge defaults < file < preset < explicit, fill model defaults, validate.

    Returns the config and a list of warnings (e.g. unknown keys ignored from a config file).
    Raises ConfigError for an invalid value or combination.
    """
    warnings: list[str] = []
    merged: dict = {}
    if file_values:
        from tracker.tracker import CONFIG_KEY  # the tracker's own notes in runs.config: not a setting

        unknown = sorted(set(file_values) - FIELDS - {CONFIG_KEY})
        if unknown:
            warnings.append(f"ignoring unknown keys in the config file: {', '.join(unknown)}")
        replayed = {k: v for k, v in file_values.items() if k in FIELDS and k not in NOT_REPLAYED}
        check_types(replayed)
        merged.update(replayed)
    merged.update(preset_values or {})
    merged.update(explicit)
    cfg = TrainConfig(**merged)
    _fill_defaults(cfg)
    validate(cfg)
    check_applicable(cfg, explicit)
    return cfg, warnings


# Flags that only some models, data sources or optimizers use: (setting, the settings it applies with).
# A value of one of these from --config or --preset is a recorded or shared setting and stays; one typed
# explicitly with a model, data or optimizer that ignores it is a mistake worth saying so.
APPLIES_TO = {
    "rnn_type": ("model", ("crnn-ctc",)),
    "num_layers": ("model", ("crnn-ctc", "conformer-ctc")),
    "hidden_size": ("model", ("resnet-kws", "crnn-ctc", "conformer-ctc")),
    "sc_variant": ("data", ("speech_commands",)),
    "corpus_size": ("data", ("builtin",)),
    "momentum": ("optimizer", ("sgd",)),
}


def check_applicable(cfg: TrainConfig, explicit) -> None:
    """ConfigError for a flag typed explicitly (a key of ``explicit``) that the chosen model, data source or
    optimizer does not use: it would be recorded in ``runs.config`` as if it had taken effect."""
    for key, (owner, accepted) in APPLIES_TO.items():
        if key in explicit and getattr(cfg, owner) not in accepted:
            which = " or ".join([", ".join(accepted[:-1]), accepted[-1]] if len(accepted) > 1 else accepted)
            raise ConfigError(
                f"--{key.replace('_', '-')} applies to --{owner} {which} only, and this run "
                f"uses --{owner} {getattr(cfg, owner)}: drop --{key.replace('_', '-')}"
            )


def check_types(values: dict) -> None:
    """ConfigError naming the first key whose value is not of its field's JSON type (``"no"`` for a bool,
    ``5`` for a path). A bool is not taken for a number, nor an integer-valued float for an int."""
    for key, value in values.items():
        accepted = _FIELD_TYPES[key]
        if not any(_is_a(value, t) for t in accepted):
            names = [name for t in accepted for name in _TYPE_NAMES[t]]
            wanted = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise ConfigError(f"--config: the value of {key!r} must be {wanted}, got {json.dumps(value)}")


def _is_a(value, t: type) -> bool:
    if t is bool or isinstance(value, bool):
        return t is bool and isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float))
    return isinstance(value, t)


def default_run_name(cfg: TrainConfig) -> str:
    """``<task>-<model>-<clip>-<YYYYmmdd-HHMMSS>``: the name of a run started without ``--run``."""
    return f"{cfg.task}-{cfg.model}-{cfg.clip}-{time.strftime('%Y%m%d-%H%M%S')}"


def _fill_defaults(cfg: TrainConfig) -> None:
    if cfg.model is None and cfg.task in DEFAULT_MODEL:
        cfg.model = DEFAULT_MODEL[cfg.task]
    if cfg.model in MODEL_DEFAULTS:
        d = MODEL_DEFAULTS[cfg.model]
        for key in ("dropout", "hidden_size", "num_layers", "rnn_type"):
            if getattr(cfg, key) is None and key in d:
                setattr(cfg, key, d[key])
    # A --resume that continues its run takes the run's recorded name from the checkpoint (train.py): a name
    # made up here, with this process's time in it, would change with every restart.
    if cfg.run is None and not (cfg.resume and cfg.parent_run is None):
        cfg.run = default_run_name(cfg)
    if cfg.db is not None:  # (in a dashboard's relaunch, its database: tracker.env.resolve_db says why)
        cfg.db = str(resolve_db(cfg.db))
    if cfg.cache_dir is not None and str(cfg.cache_dir).strip():  # ('' is refused by validate(), as typed)
        cfg.cache_dir = str(Path(cfg.cache_dir).expanduser())
    # Absolute: a checkpoint compares it, a relaunch may run elsewhere ('' is refused by validate(), as typed)
    if cfg.data_path is not None and str(cfg.data_path).strip():
        cfg.data_path = str(Path(cfg.data_path).expanduser().resolve())
    if cfg.checkpoint is not None:
        cfg.checkpoint = str(Path(cfg.checkpoint).expanduser())


def _choice(cfg: TrainConfig, name: str, accepted) -> None:
    value = getattr(cfg, name)
    if value not in accepted:
        shown = ", ".join(str(a) for a in accepted)
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not accepted; choose one of: {shown}")


def _number(cfg: TrainConfig, name: str, *, kind=float, low=None, high=None, low_open=False, optional=False):
    value = getattr(cfg, name)
    flag = "--" + name.replace("_", "-")
    if value is None and optional:
        return
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (kind is float and not math.isfinite(value)):
        raise ConfigError(
            f"{flag} must be {'an integer' if kind is int else 'a finite number'}, got {value!r}"
        )
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{flag} must be {'>' if low_open else '≥'} {low}, got {value!r}")
    if high is not None and value >= high:
        raise ConfigError(f"{flag} must be < {high}, got {value!r}")


def _looked_at(path: Path, test, flag: str, given: Path | None = None) -> bool:
    """``test(path)`` (``Path.is_dir``...), or a ConfigError naming ``flag`` and the path as given when the
    system will not let us look: a folder above it that cannot be searched raises PermissionError there."""
    try:
        return test(path)
    except OSError as e:
        given = path if given is None else given
        reason = (e.strerror or type(e).__name__).lower()  # "Permission denied" -> "permission denied"
        blocked = _unsearchable_folder(path)
        where = f": the folder {str(blocked)!r} cannot be searched" if blocked is not None else ""
        raise ConfigError(f"{flag} {str(given)!r}: cannot look at it ({reason}{where})") from None


def _unsearchable_folder(path: Path) -> Path | None:
    """The folder, from the root down, whose entries cannot be looked at (the first that refuses a stat)."""
    for child in [*reversed(path.absolute().parents), path.absolute()][1:]:
        try:
            child.stat()
        except PermissionError:
            return child.parent
        except OSError:
            return None
    return None


def _check_cache_dir(path: Path) -> None:
    """A cache folder is created with its missing parents (like the default, ~/.cache/gradwatch/corpora), so
    what must hold is that the nearest existing one is a folder we can write to."""
    existing = next(p for p in (path, *path.parents) if _looked_at(p, Path.exists, "--cache-dir", path))
    if not existing.is_dir():
        where = "" if existing == path else f": {str(existing)!r} is a file"
        raise ConfigError(
            f"--cache-dir {str(path)!r} is not a folder{where}; give a folder (it is created if missing)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--cache-dir {str(path)!r}: cannot write to {str(existing)!r}; give another folder"
        )


def _canonical_clip(spec: str) -> str:
    """The clip spec as the tracker reads it: ``NONE``, `` none`` and ``none:`` are all ``none`` (the same
    comparison as for ``$GRADWATCH_CLIP``, so both front-ends accept the same specs)."""
    from tracker.clipping import parse_clip  # (imports torch: only when a clip spec must be read)

    try:
        return parse_clip(spec).spec
    except (ValueError, TypeError) as e:  # ClipSpecError is a ValueError naming the bad part and the grammar
        raise ConfigError(f"--clip {spec!r}: {e}") from None


def validate(cfg: TrainConfig) -> None:
    """Check every value and combination; raise ConfigError naming the bad value and the accepted ones."""
    _choice(cfg, "task", TASKS)
    _choice(cfg, "data", DATA_SOURCES)
    _choice(cfg, "model", MODELS)
    _choice(cfg, "optimizer", OPTIMIZERS)
    _choice(cfg, "lr_schedule", LR_SCHEDULES)
    _choice(cfg, "device", DEVICES)
    _choice(cfg, "nonfinite", NONFINITE_POLICIES)
    _choice(cfg, "sc_variant", SC_VARIANTS)
    if cfg.rnn_type is not None:
        _choice(cfg, "rnn_type", ("gru", "lstm"))
    if cfg.task not in MODEL_TASKS[cfg.model]:
        fits = [m for m, tasks in MODEL_TASKS.items() if cfg.task in tasks]
        what = "keyword classifier" if MODEL_TASKS[cfg.model] == ("keywords",) else "CTC sequence model"
        raise ConfigError(
            f"model {cfg.model!r} cannot learn task {cfg.task!r} (it is a {what}); "
            f"models for {cfg.task!r}: {', '.join(fits)}"
        )
    if cfg.task not in SOURCE_TASKS[cfg.data]:
        raise ConfigError(
            f"--data {cfg.data} provides tasks {', '.join(SOURCE_TASKS[cfg.data])}, not {cfg.task!r}"
        )
    if cfg.data == "builtin" and cfg.data_path is not None:
        raise ConfigError("--data-path is only used with --data speech_commands or --data transcripts")
    if cfg.data != "builtin":
        if cfg.data_path is None:
            raise ConfigError(f"--data {cfg.data} needs --data-path pointing at the corpus folder")
        if not str(cfg.data_path).strip():  # (Path("") is the current folder: it would be read as the corpus)
            raise ConfigError(f"--data-path {cfg.data_path!r}: give the {cfg.data} corpus folder")
        if not _looked_at(Path(cfg.data_path).expanduser(), Path.is_dir, "--data-path"):
            raise ConfigError(f"--data-path {cfg.data_path!r} is not an existing folder")
    if isinstance(cfg.corpus_size, str) and cfg.corpus_size not in CORPUS_SIZES:
        raise ConfigError(
            f"--corpus-size {cfg.corpus_size!r} is not accepted; choose one of: {', '.join(CORPUS_SIZES)}, "
            "or a number of repetitions per voice"
        )
    if cfg.corpus_size is not None and not isinstance(cfg.corpus_size, str):
        _number(cfg, "corpus_size", kind=int, low=1)
    _number(cfg, "lr", low=0, low_open=True)
    _number(cfg, "momentum", low=0, high=1)
    _number(cfg, "weight_decay", low=0)
    _number(cfg, "dropout", low=0, high=1)
    _number(cfg, "warmup_steps", kind=int, low=0)
    _number(cfg, "batch_size", kind=int, low=1)
    _number(cfg, "epochs", kind=int, low=1)
    _number(cfg, "max_steps", kind=int, low=1, optional=True)
    _number(cfg, "grad_accum", kind=int, low=1)
    _number(cfg, "eval_every", kind=int, low=0)
    _number(cfg, "seed", kind=int, low=0)
    _number(cfg, "data_seed", kind=int, low=0)
    _number(cfg, "every", kind=int, low=1)
    _number(cfg, "hidden_size", kind=int, low=1, optional=True)
    _number(cfg, "num_layers", kind=int, low=1, optional=True)
    _number(cfg, "parent_run", kind=int, low=1, optional=True)
    if cfg.run is not None and not cfg.run.strip():
        raise ConfigError(
            f"--run {cfg.run!r}: a run needs a name; omit --run for a generated one (task-model-clip-time)"
        )
    if cfg.no_track and cfg.nonfinite != "record":
        raise ConfigError(
            f"--no-track turns the tracker off, and with it the non-finite policy: --nonfinite "
            f"{cfg.nonfinite} would be ignored (a NaN batch would reach the weights). Keep tracking "
            "(--every N records less often), or use --nonfinite record with --no-track"
        )
    if cfg.no_track and _canonical_clip(cfg.clip) != "none":
        raise ConfigError(
            f"--no-track turns the tracker off, and with it clipping; --clip {cfg.clip!r} would be ignored. "
            "Use --clip none with --no-track, or keep tracking (--every N records less often)"
        )
    _number(cfg, "checkpoint_every", kind=int, low=1, optional=True)
    if cfg.resume and cfg.checkpoint is None:
        raise ConfigError("--resume continues from a checkpoint file: give it with --checkpoint PATH")
    if cfg.checkpoint_every is not None and cfg.checkpoint is None:
        raise ConfigError("--checkpoint-every N saves to a checkpoint file: give it with --checkpoint PATH")
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint)
        if not _looked_at(path.parent, Path.is_dir, "--checkpoint", path):
            raise ConfigError(f"--checkpoint {str(path)!r}: the folder {str(path.parent)!r} does not exist")
        if _looked_at(path, Path.is_dir, "--checkpoint"):
            raise ConfigError(f"--checkpoint {str(path)!r} is a folder; give a file path (e.g. run.ckpt)")
    if cfg.cache_dir is not None:
        if not str(cfg.cache_dir).strip():  # (Path("") is the current folder: corpora would land in it)
            raise ConfigError("--cache-dir '': give a folder for the generated corpora, or omit it")
        _check_cache_dir(Path(cfg.cache_dir))
    if cfg.db is not None and not _looked_at(Path(cfg.db).parent, Path.is_dir, "--db", Path(cfg.db)):
        raise ConfigError(f"--db {cfg.db!r}: the folder {str(Path(cfg.db).parent)!r} does not exist")
    if cfg.model == "conformer-ctc" and cfg.hidden_size % 4:
        raise ConfigError(
            f"--hidden-size for conformer-ctc must be a multiple of 4 heads, got {cfg.hidden_size}"
        )
