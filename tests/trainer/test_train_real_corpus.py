"""The trainer on real corpora from disk (tiny Speech Commands and transcripts.tsv folders written by
conftest.py): a first run, which computes the features, and checkpoints that belong to one corpus."""

import shutil

import pytest
from sqlite_rows import rows as query

from trainer.cli import main


def real(data, path, cache, db, *extra):
    return ["--data", data, "--data-path", str(path), "--cache-dir", str(cache), "--db", str(db),
            "--batch-size", "8", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "task", "corpus"),
    [("speech_commands", "keywords", "speech_commands_dir"), ("transcripts", "digits", "transcripts_dir")],
    ids=["speech_commands", "transcripts"],
)
def test_first_run_on_a_real_corpus_reports_the_feature_time(data, task, corpus, tmp_path, capsys, request):
    # Not --quiet: the start lines describe the data, and a real corpus has no generation time to tell.
    cache, db = tmp_path / "cache", tmp_path / "g.db"
    argv = real(data, request.getfixturevalue(corpus), cache, db, "--task", task, "--max-steps", "1")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "features computed in" in err and "corpus generated" not in err and "Traceback" not in err
    assert [p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()] == [data]  # the features' cache
    assert main(argv) == 0  # the second run reads them back: nothing to compute
    assert "features computed" not in capsys.readouterr().err
    assert query(db, "SELECT status FROM runs") == [("finished",), ("finished",)]


def test_a_checkpoint_is_refused_on_another_corpus_or_variant(speech_commands_dir, tmp_path, capsys):
    cache, db, ck = tmp_path / "cache", tmp_path / "g.db", tmp_path / "run.ckpt"
    args = ["--epochs", "2", "--max-steps", "1", "--quiet", "--checkpoint", str(ck)]
    assert main(real("speech_commands", speech_commands_dir, cache, db, *args)) == 0
    copy = shutil.copytree(speech_commands_dir, tmp_path / "another_corpus")
    resume = ["--epochs", "2", "--quiet", "--checkpoint", str(ck), "--resume"]
    for argv, named in [
        (real("speech_commands", copy, cache, db, *resume), f"--data-path {str(speech_commands_dir)!r} → "),
        (real("speech_commands", speech_commands_dir, cache, db, *resume, "--sc-variant", "12"),
         "--sc-variant 10 → 12"),
    ]:  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
    # Nothing was resumed: the run is as the first process left it.
    assert query(db, "SELECT status, resumed_from_step, (SELECT COUNT(*) FROM steps) FROM runs") == [
        ("finished", None, 1)
    ]


def test_a_skipped_nonfinite_step_leaves_the_batchnorm_statistics_as_they_were(
    speech_commands_dir, tmp_path, capsys
):
    # Every training clip holds a NaN sample, so every step's gradients are NaN and --nonfinite skip skips
    # every optimizer step. Oracle: the model after those steps is the model before them, i.e. as built
    # from the seed; BatchNorm's running statistics included, which the forward passes had made NaN.
    import numpy as np
    import torch

    from trainer import checkpoint as ckpt
    from trainer.data import load_task
    from trainer.models import build_model

    # The audio loader refuses NaN samples by name, so the NaN goes where nothing checks it any more: the
    # features cached for the training split.
    corpus = shutil.copytree(speech_commands_dir, tmp_path / "nan_corpus")
    cache, db, ck = tmp_path / "cache", tmp_path / "g.db", tmp_path / "run.ckpt"
    load_task("keywords", "speech_commands", corpus, cache_dir=cache)
    [features] = cache.glob("speech_commands-*/features-*.pt")
    packed = torch.load(features, weights_only=True)
    packed["train"]["fixed"][:, :, 5] = float("nan")
    torch.save(packed, features)
    skip = ("--model", "resnet-kws", "--hidden-size", "8", "--nonfinite", "skip", "--max-steps", "2")
    argv = real(
        "speech_commands", corpus, cache, db, *skip, "--epochs", "2", "--quiet", "--checkpoint", str(ck)
    )
    assert main(argv) == 0
    assert query(db, "SELECT step, skipped FROM steps ORDER BY step") == [(0, 1), (1, 1)]
    torch.manual_seed(0)  # --seed 0: what the trainer builds its model from
    want = build_model("resnet-kws", n_classes=10, n_mels=32, hidden_size=8, dropout=0.1).state_dict()
    got = ckpt.load(ck)["model"]
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    # Evaluated with those statistics, the clean validation clips give finite scores.
    [(val_loss,)] = query(db, "SELECT value FROM metrics WHERE name = 'val_loss'")
    assert val_loss is not None and np.isfinite(val_loss)
