"""The trainer's command line: help, validation at the boundary (exit 2, one message, no traceback),
and --config replay with explicit overrides. No training happens here (see test_train*.py)."""

import argparse
import json
import sys
from pathlib import Path

import pytest

from trainer.cli import build_parser, main, parse_config
from trainer.config import NOT_REPLAYED
from trainer.presets import PRESETS, preset_values


def test_every_flag_has_help_and_belongs_to_a_group():
    parser = build_parser()
    titles = {g.title for g in parser._action_groups}
    assert {"data", "model", "optimisation", "clipping", "tracking"} <= titles
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), action.option_strings


def test_help_shows_clip_grammar_and_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("norm:", "autoclip", "zclip", "agc", "clipping-demo", "--parent-run", "torchrun"):
        assert word in out


BAD = [
    (["--lr", "-1"], "--lr"),
    (["--lr", "abc"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--dropout", "1.5"], "--dropout"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--task", "digits", "--model", "seed-cnn"], "seed-cnn"),
    (["--task", "keywords", "--model", "crnn-ctc"], "crnn-ctc"),
    (["--clip", "norm:abc"], "--clip"),
    (["--clip", "bogus:1"], "--clip"),
    (["--data", "speech_commands", "--data-path", "/no/such/folder"], "/no/such/folder"),
    (["--data", "speech_commands"], "--data-path"),
    (["--data", "transcripts", "--task", "keywords", "--data-path", "."], "transcripts"),
    (["--db", "/no/such/folder/x.db"], "/no/such/folder"),
    (["--config", "/no/such/config.json"], "config file not found"),
    (["--preset", "nope"], "--preset"),
    (["--sc-variant", "11"], "--sc-variant"),
    (["--corpus-size", "huge"], "--corpus-size 'huge' is not accepted; choose one of: tiny, small, full"),
    (["--corpus-size", "0"], "--corpus-size must be ≥ 1"),
    (["--corpus-size", "-3"], "--corpus-size must be ≥ 1, got -3"),
    (["--corpus-size", "²"], "--corpus-size '²' is not accepted; choose one of: tiny, small, full"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--checkpoint-every", "10"], "--checkpoint PATH"),
    (["--checkpoint", "x.ckpt", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["--run", ""], "--run '': a run needs a name; omit --run"),
    (["--run-name", "  "], "a run needs a name"),
    # Flags the chosen model, data or optimizer does not use: typed, they are mistakes.
    (["--task", "digits", "--model", "conformer-ctc", "--rnn-type", "lstm"],
     "--rnn-type applies to --model crnn-ctc only, and this run uses --model conformer-ctc"),
    (["--hidden-size", "64"], "--hidden-size applies to --model resnet-kws, crnn-ctc or conformer-ctc only"),
    (["--model", "resnet-kws", "--num-layers", "3"], "--num-layers applies to --model crnn-ctc or conformer"),
    (["--sc-variant", "12"], "--sc-variant applies to --data speech_commands only, and this run uses --data "
     "builtin"),
    (["--data", "speech_commands", "--data-path", ".", "--corpus-size", "tiny"],
     "--corpus-size applies to --data builtin only"),
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd only, and this run uses --optimizer adam"),
    # Without the tracker there is no non-finite policy: a NaN batch would reach the weights unannounced.
    (["--no-track", "--nonfinite", "skip"], "--nonfinite skip would be ignored"),
    (["--no-track", "--nonfinite", "raise"], "--nonfinite raise would be ignored"),
    (["--cache-dir", ""], "--cache-dir '': give a folder"),  # (it was the current folder)
]  # fmt: skip


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_exit_2_with_one_clear_message(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err
    assert "error:" in err


def test_config_file_that_is_not_json_or_not_an_object(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for content in ("{not json", "[1, 2]"):
        bad.write_text(content)
        with pytest.raises(SystemExit) as exc:
            parse_config(["--config", str(bad)])
        assert exc.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_config_replay_reproduces_the_recorded_config_with_overrides(tmp_path):
    recorded, _ = parse_config(
        ["--task", "digits", "--model", "crnn-ctc", "--lr", "0.02", "--rnn-type", "lstm", "--grad-accum", "2",
         "--clip", "norm:5", "--db", str(tmp_path / "g.db"), "--run", "first", "--seed", "7"]
    )  # fmt: skip
    path = tmp_path / "run.json"
    path.write_text(json.dumps(recorded.to_dict()))

    replayed, warnings = parse_config(["--config", str(path), "--clip", "zclip:2.5", "--parent-run", "4"])
    assert warnings == []
    # A relaunch is a new run: its name is generated afresh, and its database is --db, $GRADWATCH_DB or
    # ./gradwatch.db (the recorded path was relative to the original's folder); everything else is replayed
    # or overridden.
    expected = dict(recorded.to_dict(), clip="zclip:2.5", parent_run=4, db=None)
    got = replayed.to_dict()
    assert got.pop("run") != "first"
    expected.pop("run")
    assert got == expected


def test_explicit_flag_equal_to_the_default_still_overrides_the_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lr": 0.05, "batch_size": 16, "quiet": True}))
    default_lr = build_parser().get_default("lr")
    assert default_lr == argparse.SUPPRESS  # defaults are suppressed: the namespace holds typed flags only
    cfg, _ = parse_config(["--config", str(path), "--lr", "0.001"])
    assert cfg.lr == 0.001 and cfg.batch_size == 16 and cfg.quiet is True


def test_run_record_with_config_key_and_unknown_keys_warn(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"id": 3, "config": {"epochs": 9, "future_option": 1}}))
    cfg, warnings = parse_config(["--config", str(path)])
    assert cfg.epochs == 9
    assert warnings and "future_option" in warnings[0]


def test_not_replayed_keys_are_not_taken_from_the_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"run": "old", "parent_run": 2, "preset": "demo", "epochs": 3, "db": "old.db"})
    )
    cfg, _ = parse_config(["--config", str(path)])
    assert cfg.run != "old" and cfg.parent_run is None and cfg.preset is None and cfg.epochs == 3
    assert cfg.db is None
    assert {"run", "parent_run", "preset", "db"} <= NOT_REPLAYED


def test_the_trackers_own_notes_in_a_recorded_config_are_not_unknown_keys(tmp_path):
    # A forked run's config holds "_gradwatch" (resumed_from), written by the tracker: relaunching is normal.
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"epochs": 2, "_gradwatch": {"resumed_from": {"run_id": 1, "step": 5}}}))
    cfg, warnings = parse_config(["--config", str(path)])
    assert cfg.epochs == 2 and warnings == []


WRONG_TYPES = [
    ({"specaugment": "no"}, "'specaugment' must be true or false, got \"no\""),
    ({"no_track": "false"}, "'no_track' must be true or false, got \"false\""),
    ({"amp": 1}, "'amp' must be true, false or null"),
    ({"cache_dir": 5}, "'cache_dir' must be a string or null, got 5"),
    ({"data_path": ["corpus"]}, "'data_path' must be a string or null"),
    ({"epochs": 2.0}, "'epochs' must be an integer, got 2.0"),
    ({"lr": True}, "'lr' must be a number, got true"),
    ({"sc_variant": "12"}, "'sc_variant' must be an integer"),
    ({"clip": None}, "'clip' must be a string, got null"),
    ({"corpus_size": 1.5}, "'corpus_size' must be a string, an integer or null"),
]


@pytest.mark.parametrize(("values", "needle"), WRONG_TYPES, ids=[next(iter(v)) for v, _ in WRONG_TYPES])
def test_config_file_values_of_the_wrong_type_exit_2_naming_the_key(values, needle, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as exc:
        parse_config(["--config", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_config_file_values_of_the_right_types_are_taken(tmp_path):
    path = tmp_path / "run.json"
    values = {"specaugment": True, "amp": None, "lr": 1, "corpus_size": "tiny", "cache_dir": "c", "db": 5}
    path.write_text(json.dumps(values))  # db is not replayed: its value is not looked at
    cfg, _ = parse_config(["--config", str(path)])
    assert (cfg.specaugment, cfg.amp, cfg.lr, cfg.corpus_size, cfg.db) == (True, None, 1, "tiny", None)


def test_the_speech_commands_variants_are_the_loaders(tmp_path):
    # Every variant trainer.data can load, 30 (v0.01's words) included, and no other.
    from trainer.config import SC_VARIANTS
    from trainer.data.speech_commands import SPEECH_COMMANDS_CLASSES

    assert SC_VARIANTS == SPEECH_COMMANDS_CLASSES
    argv = ["--data", "speech_commands", "--data-path", str(tmp_path)]
    assert parse_config([*argv, "--sc-variant", "30"])[0].sc_variant == 30


def test_help_gives_the_real_default_cache_folder(tmp_path, monkeypatch, capsys):
    from trainer.data.cache import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gradwatch" / "corpora"  # the XDG base directory rule
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # (ignored, as the rule says)
    assert default_cache_dir() == Path.home() / ".cache" / "gradwatch" / "corpora"
    monkeypatch.setenv("GRADWATCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "corpora"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "$GRADWATCH_CACHE/corpora" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_resolve_and_explicit_flags_win(name):
    cfg, _ = parse_config(["--preset", name, "--seed", "3"])
    for key, value in preset_values(name).items():
        assert getattr(cfg, key) == value
    assert cfg.seed == 3 and cfg.preset == name
    cfg, _ = parse_config(["--preset", name, "--epochs", "1"])
    assert cfg.epochs == 1


def test_model_defaults_are_resolved_into_the_config():
    cfg, _ = parse_config(["--task", "digits"])
    assert cfg.model == "crnn-ctc" and cfg.hidden_size == 128 and cfg.rnn_type == "gru"
    cfg, _ = parse_config(["--task", "keywords"])
    assert cfg.model == "seed-cnn" and cfg.dropout == 0.0


def test_the_named_corpus_sizes_are_those_the_builtin_corpus_has():
    from trainer.config import CORPUS_SIZES
    from trainer.data.synth_corpus import SIZES

    assert {task: set(sizes) for task, sizes in SIZES.items()} == {task: set(CORPUS_SIZES) for task in SIZES}


def test_inapplicable_values_from_a_config_file_or_preset_are_replayed(tmp_path):
    # A recorded config holds every setting (the dashboard relaunches with it, other model included): only a
    # flag typed on the command line is refused for not applying.
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "seed-cnn", "hidden_size": 64, "rnn_type": "lstm", "sc_variant": 12,
                                "momentum": 0.5, "optimizer": "adam"}))  # fmt: skip
    cfg, _ = parse_config(["--config", str(path), "--model", "resnet-kws", "--lr", "0.01"])
    assert (cfg.model, cfg.hidden_size, cfg.momentum) == ("resnet-kws", 64, 0.5)
    cfg, _ = parse_config(["--preset", "digits", "--optimizer", "adam", "--model", "conformer-ctc"])
    assert cfg.optimizer == "adam"  # the preset's --momentum is not the user's


def test_cache_dir_that_is_a_file_exits_2_and_missing_folders_are_created_later(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for cache in (a_file, a_file / "below"):
        with pytest.raises(SystemExit) as exc:
            parse_config(["--cache-dir", str(cache)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--cache-dir {str(cache)!r} is not a folder" in err and "Traceback" not in err
    # A cache folder is created with its parents when first written, like the default one.
    missing = tmp_path / "not" / "yet" / "cache"
    assert parse_config(["--cache-dir", str(missing)])[0].cache_dir == str(missing)


def test_gradwatch_clip_with_no_track_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:1")
    with pytest.raises(SystemExit) as exc:
        parse_config(["--no-track"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "GRADWATCH_CLIP='norm:1' asks for clipping, but --no-track" in err and "Traceback" not in err
    monkeypatch.setenv("GRADWATCH_CLIP", "none")
    assert parse_config(["--no-track"])[0].no_track


@pytest.mark.parametrize(
    "argv0, usage",
    [("/venv/bin/gradwatch-train", "gradwatch-train"), ("/repo/trainer/__main__.py", "python -m trainer")],
)
def test_the_usage_line_names_the_command_as_typed(monkeypatch, argv0, usage):
    # (the gradwatch-train script printed "usage: python -m trainer")
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    assert build_parser().format_usage().startswith(f"usage: {usage} ")


def test_a_relaunch_records_the_dashboards_database_whatever_db_the_command_names(tmp_path, monkeypatch):
    # The tracker records a relaunch into $GRADWATCH_DB (the dashboard's file); the trainer's config, its
    # --config RUN_ID lookup and its check of the --db folder follow the same file.
    monkeypatch.setenv("GRADWATCH_DB", str(tmp_path / "shown.db"))
    monkeypatch.setenv("GRADWATCH_PARENT_RUN", "1")
    cfg, _ = parse_config(["--db", "/no/such/folder/own.db"])
    assert cfg.db == str(tmp_path / "shown.db")
    monkeypatch.delenv("GRADWATCH_PARENT_RUN")  # not a relaunch: the command's own --db, checked
    with pytest.raises(SystemExit):
        parse_config(["--db", "/no/such/folder/own.db"])


def test_without_the_trainer_extra_one_clear_message_and_exit_2(tmp_path):
    # `pip install gradwatch` (no [trainer]) installs gradwatch-train too: it used to end in a
    # ModuleNotFoundError traceback from deep in the data code. torchaudio is made unfindable here.
    import subprocess

    code = (
        "import importlib.util as u, sys; real = u.find_spec; "
        "u.find_spec = lambda name, *a: None if name == 'torchaudio' else real(name, *a); "
        "sys.argv[0] = 'gradwatch-train'; from trainer.cli import main; "
        "sys.exit(main(['--preset', 'demo', '--max-steps', '1', '--no-track']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "gradwatch-train: error: the trainer needs torchaudio, which this environment lacks: install "
        "gradwatch with its trainer extra (pip install 'gradwatch[trainer]', or from a checkout "
        "pip install '.[trainer]')."
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_version_names_the_installed_gradwatch(capsys):
    from importlib import metadata

    import tracker

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert (
        capsys.readouterr().out.strip()
        == f"gradwatch {metadata.version('gradwatch')}"
        == (f"gradwatch {tracker.__version__}")
    )


def test_an_unusable_default_cache_is_named_as_the_cache(tmp_path):
    # HOME a file (or unwritable): the error named a folder the user never gave, and not --cache-dir.
    import os
    import subprocess

    home = tmp_path / "not-a-folder"
    home.write_text("")
    env = {
        k: v for k, v in os.environ.items() if k not in ("GRADWATCH_CACHE", "XDG_CACHE_HOME", "GRADWATCH_DB")
    }
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "--preset", "demo", "--max-steps", "1", "--no-track"],
        cwd=tmp_path, env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "that is the corpus cache" in line and "--cache-dir DIR or $GRADWATCH_CACHE" in line
