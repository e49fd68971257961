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
