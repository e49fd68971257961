"""The real trainer CLI, a few steps of every task × model on a tiny generated corpus, checked in the
SQLite file with sqlite3 (not through our own store)."""

import json
import math

import pytest
import torch
from sqlite_rows import rows as query
from trainer_args import assert_same_records, tiny

from tracker.clipping import parse_clip
from trainer.cli import build_parser, main
from trainer.models import build_model

CASES = [
    ("keywords", "seed-cnn"),
    ("keywords", "resnet-kws"),
    ("digits", "crnn-ctc"),
    ("digits", "conformer-ctc"),
]
# Output size and input bands of the built-in corpora: 10 keywords on 32 mels; 10 digits + blank on 40 mels.
SHAPES = {"keywords": dict(n_classes=10, n_mels=32), "digits": dict(n_classes=11, n_mels=40)}


def cli_dests():
    return {a.dest for a in build_parser()._actions if a.dest not in ("help", "version", "config")}


@pytest.mark.parametrize(("task", "model"), CASES, ids=[f"{t}-{m}" for t, m in CASES])
def test_every_task_and_model_trains_and_is_recorded(task, model, corpus_cache, db_path, capsys):
    argv = tiny(corpus_cache, db_path, "--task", task, "--model", model, "--max-steps", "3",
                "--clip", "norm:1.0", "--run", f"t-{model}", "--lr", "0.002")  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"database: {db_path}" in out and "gradwatch-dashboard --db" in out

    [(run_id, name, status, config, clip)] = query(db_path, "SELECT id, name, status, config, clip FROM runs")
    assert (name, status, clip) == (f"t-{model}", "finished", "norm:1.0")
    config = json.loads(config)
    # The complete config, keyed by CLI dest names (and the tracker's notes under `python -m pytest`).
    assert set(config) - {"_gradwatch"} == cli_dests()
    assert (config["task"], config["model"], config["max_steps"], config["lr"]) == (task, model, 3, 0.002)

    # One layer per parameter tensor, named as torch names them, in order.
    reference = build_model(model, **SHAPES[task])
    names = [n for n, _ in reference.named_parameters()]
    layers = query(db_path, "SELECT id, name FROM layers WHERE run_id = ? ORDER BY id", run_id)
    assert [n for _, n in layers] == names

    steps = query(
        db_path, "SELECT step, loss, total_norm, total_norm_after, clipped FROM steps ORDER BY step"
    )
    assert [s[0] for s in steps] == [0, 1, 2]
    for _, loss, total, after, clipped in steps:
        assert torch.isfinite(torch.tensor([loss, total, after])).all()
        assert after <= 1.0 + 1e-4 and bool(clipped) == (total > 1.0)
    # A norm for every layer at every step, and the global norm is the 2-norm of the layer norms.
    norms = query(db_path, "SELECT step, layer_id, norm FROM grad_norms WHERE run_id = ?", run_id)
    assert len(norms) == 3 * len(names)
    for step, _, total, _, _ in steps:
        per_layer = torch.tensor([n for s, _, n in norms if s == step], dtype=torch.float64)
        assert torch.linalg.vector_norm(per_layer).item() == pytest.approx(total, rel=1e-4)

    metric_names = {
        n for (n,) in query(db_path, "SELECT DISTINCT name FROM metrics WHERE run_id = ?", run_id)
    }
    scores = {"train_acc", "val_acc", "test_acc"} if task == "keywords" else {
        "train_cer", "val_cer", "test_cer", "val_wer", "test_wer"}  # fmt: skip
    # (`epoch` only once one is complete: test_epoch_is_logged_for_completed_epochs_only)
    assert {"train_loss", "val_loss", "test_loss", "gen_gap", "gen_gap_loss", "lr"} | scores <= metric_names
    gap = dict(query(db_path, "SELECT name, value FROM metrics WHERE run_id = ? AND step = 2", run_id))
    assert gap["gen_gap_loss"] == pytest.approx(gap["val_loss"] - gap["train_loss"])
    if task == "keywords":
        assert gap["gen_gap"] == pytest.approx(gap["train_acc"] - gap["val_acc"])
    else:
        assert gap["gen_gap"] == pytest.approx(gap["val_cer"] - gap["train_cer"])


def test_gradient_accumulation_equals_the_large_batch(corpus_cache, tmp_path):
    """Two accumulated micro-batches of 8 give the gradient of one batch of 16 (same data order, same
    init): the recorded loss and norms must match, and only real optimizer steps are recorded."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    common = ["--task", "keywords", "--max-steps", "2", "--lr", "0.01", "--optimizer", "sgd"]
    assert main([*tiny(corpus_cache, a, *common), "--batch-size", "16"]) == 0
    assert main([*tiny(corpus_cache, b, *common), "--batch-size", "8", "--grad-accum", "2"]) == 0
    sql = "SELECT step, loss, total_norm FROM steps ORDER BY step"
    big, accumulated = query(a, sql), query(b, sql)
    assert [s for s, _, _ in accumulated] == [0, 1]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(big, accumulated, strict=True):
        assert loss_b == pytest.approx(loss_a, rel=1e-4)
        assert norm_b == pytest.approx(norm_a, rel=1e-4)


def _placeless(config) -> dict:
    """A recorded config without the tracker's place in its process: this test process made others before."""
    config = json.loads(config) if isinstance(config, str) else dict(config)
    notes = {k: v for k, v in config.get("_gradwatch", {}).items() if k != "position"}
    return {**config, "_gradwatch": notes} if "_gradwatch" in config else config


def test_config_replay_records_parent_and_overrides(corpus_cache, db_path, tmp_path):
    assert main(tiny(corpus_cache, db_path, "--task", "digits", "--max-steps", "2", "--clip", "norm:5",
                     "--rnn-type", "lstm", "--run", "parent")) == 0  # fmt: skip
    [(parent_id, parent_config)] = query(db_path, "SELECT id, config FROM runs")
    recorded = tmp_path / "run.json"
    recorded.write_text(parent_config)

    # --db as the dashboard gives it: a file's recorded db is not replayed (it was relative to the original's
    # folder); without --db the new run would go to $GRADWATCH_DB or ./gradwatch.db.
    argv = ["--config", str(recorded), "--clip", "zclip:2.5", "--parent-run", str(parent_id),
            "--run", "child", "--db", str(db_path)]  # fmt: skip
    assert main(argv) == 0
    [(child_parent, child_config, clip)] = query(
        db_path, "SELECT parent_id, config, clip FROM runs WHERE name = 'child'"
    )
    assert child_parent == parent_id and clip == parse_clip("zclip:2.5").spec  # canonical form
    expected = dict(json.loads(parent_config), clip="zclip:2.5", parent_run=parent_id, run="child")
    assert _placeless(child_config) == _placeless(expected)

    # --config RUN_ID reads the recorded config from the database; that run becomes the parent.
    assert main(["--config", str(parent_id), "--db", str(db_path), "--clip", "none", "--run", "again"]) == 0
    [(again_parent, again_config)] = query(db_path, "SELECT parent_id, config FROM runs WHERE name = 'again'")
    assert again_parent == parent_id
    assert _placeless(again_config) == _placeless(
        dict(json.loads(parent_config), clip="none", parent_run=parent_id, run="again")
    )


def test_relaunch_by_run_id_writes_to_the_database_it_read_the_run_from(
    corpus_cache, tmp_path, monkeypatch, capsys
):
    # The original recorded a relative --db; the relaunch reads run 1 from $GRADWATCH_DB, another file.
    monkeypatch.chdir(tmp_path)
    assert main(tiny(corpus_cache, "runs.db", "--max-steps", "1", "--run", "orig")) == 0
    (tmp_path / "other.db").write_bytes((tmp_path / "runs.db").read_bytes())
    monkeypatch.setenv("GRADWATCH_DB", str(tmp_path / "other.db"))
    assert main(["--config", "1", "--clip", "norm:2", "--max-steps", "1", "--run", "child", "--quiet"]) == 0
    assert query(tmp_path / "other.db", "SELECT id, name, parent_id FROM runs") == [
        (1, "orig", None),
        (2, "child", 1),  # its parent is the run it was read from, in the same file
    ]
    assert query(tmp_path / "runs.db", "SELECT name FROM runs") == [("orig",)]
    assert f"database: {tmp_path / 'other.db'}" in capsys.readouterr().out


def test_epoch_is_logged_for_completed_epochs_only(corpus_cache, db_path):
    from trainer.data import load_task

    per_epoch = math.ceil(len(load_task("keywords", size="tiny", cache_dir=corpus_cache).train) / 8)
    # Stopped by --max-steps two steps into the second epoch: evaluated there, but that epoch is not complete.
    argv = tiny(corpus_cache, db_path, "--epochs", "3", "--max-steps", str(per_epoch + 2))
    assert main(argv) == 0
    sql = "SELECT step, value FROM metrics WHERE name = ? ORDER BY step"
    assert query(db_path, sql, "epoch") == [(per_epoch - 1, 1.0)]
    assert [s for s, _ in query(db_path, sql, "val_loss")] == [per_epoch - 1, per_epoch + 1]


def test_config_run_id_that_is_not_in_the_database(db_path, corpus_cache, capsys):
    assert main(tiny(corpus_cache, db_path, "--max-steps", "1", "--run", "only")) == 0
    with pytest.raises(SystemExit) as exc:
        main(["--config", "999", "--db", str(db_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--config 999" in err and "Traceback" not in err


def test_no_track_writes_nothing(corpus_cache, db_path, capsys):
    assert main(tiny(corpus_cache, db_path, "--max-steps", "2", "--no-track")) == 0
    assert not db_path.exists()
    assert "nothing was recorded" in capsys.readouterr().out


def test_bad_clip_from_the_environment_is_a_clean_error(corpus_cache, db_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:-1")
    assert main(tiny(corpus_cache, db_path, "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "norm:-1" in err and "Traceback" not in err


def test_a_folder_in_the_wrong_layout_is_a_clean_error(tmp_path, db_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.txt").write_text("not a Speech Commands folder")
    argv = ["--data", "speech_commands", "--data-path", str(tmp_path / "corpus"), "--db", str(db_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "corpus") in err and "Traceback" not in err
    assert not db_path.exists()  # nothing recorded for a run that could not start


def test_a_run_stopped_after_its_checkpoint_and_resumed_records_what_an_uninterrupted_run_does(
    corpus_cache, tmp_path, capsys
):
    # Constant LR: the first process trains 1 of the 2 epochs, and a cosine schedule depends on the total.
    common = ["--task", "keywords", "--epochs", "2", "--lr-schedule", "constant", "--clip", "autoclip:50",
              "--optimizer", "sgd", "--lr", "0.02", "--extra-stats"]  # fmt: skip
    straight, resumed, ck = tmp_path / "straight.db", tmp_path / "resumed.db", tmp_path / "run.ckpt"
    assert main([*tiny(corpus_cache, straight, *common), "--run", "straight"]) == 0
    first = [a if a != "2" or common[i - 1] != "--epochs" else "1" for i, a in enumerate(common)]
    assert main([*tiny(corpus_cache, resumed, *first), "--run", "resumable", "--checkpoint", str(ck)]) == 0
    assert ck.exists() and not (tmp_path / "run.ckpt.tmp").exists()
    assert main([*tiny(corpus_cache, resumed, *common), "--checkpoint", str(ck), "--resume"]) == 0
    assert "resumed from" not in capsys.readouterr().err  # --quiet

    [(run_id, name, status, resumed_from)] = query(
        resumed, "SELECT id, name, status, resumed_from_step FROM runs"
    )
    assert (name, status) == ("resumable", "finished") and resumed_from > 0
    # What the run last ran with, for a relaunch to replay: the second process's --epochs.
    assert json.loads(query(resumed, "SELECT config FROM runs")[0][0])["epochs"] == 2
    assert_same_records(straight, resumed)
    metrics = "SELECT step, name, value FROM metrics ORDER BY step, name"
    # The first process also evaluated on the test split when its single epoch ended.
    extra = [r for r in query(resumed, metrics) if r[0] == resumed_from - 1 and r[1].startswith("test_")]
    assert extra
    got = [r for r in query(resumed, metrics) if r not in extra]
    want = query(straight, metrics)
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=1e-5)


def test_resume_errors_are_clean_and_a_missing_checkpoint_starts_afresh(
    corpus_cache, db_path, tmp_path, capsys
):
    ck = tmp_path / "run.ckpt"
    with pytest.raises(SystemExit) as exc:
        main(tiny(corpus_cache, db_path, "--resume"))
    assert exc.value.code == 2 and "--resume continues from a checkpoint" in capsys.readouterr().err
    # No file yet: a first start (the usual restart script passes --resume every time).
    assert main(tiny(corpus_cache, db_path, "--epochs", "1", "--checkpoint", str(ck), "--resume")) == 0
    assert query(db_path, "SELECT count(*), max(resumed_from_step) FROM runs") == [(1, None)]
    capsys.readouterr()
    assert main(tiny(corpus_cache, db_path, "--epochs", "1", "--batch-size", "4", "--checkpoint", str(ck),
                     "--resume")) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "other settings (--batch-size 8 → 4)" in err and "Traceback" not in err
    ck.write_bytes(b"not a checkpoint")
    assert main(tiny(corpus_cache, db_path, "--epochs", "1", "--checkpoint", str(ck), "--resume")) == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and "it is not a checkpoint" in err and "Traceback" not in err
    assert query(db_path, "SELECT count(*), max(status) FROM runs") == [
        (1, "finished")
    ]  # nothing else started


def test_a_new_run_from_a_checkpoint_may_clip_otherwise(corpus_cache, db_path, tmp_path, capsys):
    # An A/B from epoch 1: the same checkpoint (a copy, so the original stays), another clip, a new run.
    ck, fork = tmp_path / "run.ckpt", tmp_path / "fork.ckpt"
    assert main(tiny(corpus_cache, db_path, "--epochs", "1", "--checkpoint", str(ck), "--run", "base")) == 0
    before = query(db_path, "SELECT step, total_norm FROM steps WHERE run_id = 1 ORDER BY step")
    fork.write_bytes(ck.read_bytes())
    argv = tiny(corpus_cache, db_path, "--epochs", "2", "--checkpoint", str(fork), "--resume")
    assert main([*argv, "--clip", "norm:0.5"]) == 2  # continuing run 1 with another clip: refused
    assert "add --parent-run ID to start a new run" in capsys.readouterr().err
    assert main([*argv, "--clip", "norm:0.5", "--parent-run", "1", "--run", "fork"]) == 0
    runs = query(db_path, "SELECT id, name, parent_id, clip, status, config FROM runs ORDER BY id")
    assert [r[:5] for r in runs] == [
        (1, "base", None, "none", "finished"),
        (2, "fork", 1, "norm:0.5", "finished"),
    ]
    assert json.loads(runs[1][5])["_gradwatch"]["resumed_from"] == {"run_id": 1, "step": len(before)}
    assert query(db_path, "SELECT step, total_norm FROM steps WHERE run_id = 1 ORDER BY step") == before
    steps = [s for (s,) in query(db_path, "SELECT step FROM steps WHERE run_id = 2 ORDER BY step")]
    assert steps == list(range(len(before), 2 * len(before)))  # numbered on from the checkpoint
