"""The trainer on real corpora from disk (tiny Speech Commands and transcripts.tsv folders written by
conftest.py): a first run, which computes the features, and checkpoints that belong to one corpus."""

import shutil

import numpy as np
import pytest
import soundfile
from sqlite_rows import rows as query

from trainer import checkpoint as ckpt
from trainer.cli import main
from trainer.data import load_task


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


def test_a_checkpoint_is_refused_when_the_corpus_on_disk_changed(speech_commands_dir, tmp_path, capsys):
    # The same --data-path and settings, other files: a mid-epoch position replayed into other batches. It
    # used to resume silently ("resumed at step 1 ... finished").
    corpus = shutil.copytree(speech_commands_dir, tmp_path / "sc")
    cache, db, ck = tmp_path / "cache", tmp_path / "g.db", tmp_path / "run.ckpt"
    args = ["--epochs", "2", "--quiet", "--checkpoint", str(ck)]
    assert main(real("speech_commands", corpus, cache, db, *args, "--max-steps", "1")) == 0
    recorded = query(db, "SELECT status, resumed_from_step, (SELECT COUNT(*) FROM steps) FROM runs")
    saved = ckpt.load(ck)
    assert saved["batch"] == 1 and saved["corpus"]["counts"] == {"train": 30, "val": 10, "test": 10}
    for k in range(2):  # two new training clips, and one clip moved from "yes" to "no" (relabelled)
        shutil.copy(corpus / "up" / "0a1b2c3d_nohash_0.wav", corpus / "yes" / f"5e5e5e5e_nohash_{k}.wav")
    (corpus / "yes" / "1f2e3d4c_nohash_0.wav").rename(corpus / "no" / "1f2e3d4c_nohash_1.wav")
    resume = real("speech_commands", corpus, cache, db, *args, "--resume")
    capsys.readouterr()
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert f"the corpus in {str(corpus)!r} has changed since the checkpoint {str(ck)!r} was saved" in err
    assert "(train: 30 → 32 utterances): files were added, removed, moved" in err
    assert "position in the data (epoch 0, batch 1)" in err and "another --checkpoint path" in err
    assert "Traceback" not in err
    assert query(db, "SELECT status, resumed_from_step, (SELECT COUNT(*) FROM steps) FROM runs") == recorded
    # The clip count alone does not tell: a clip moved back, one renamed, is another corpus too.
    (corpus / "no" / "1f2e3d4c_nohash_1.wav").rename(corpus / "yes" / "1f2e3d4c_nohash_0.wav")
    for k in range(2):
        (corpus / "yes" / f"5e5e5e5e_nohash_{k}.wav").unlink()
    (corpus / "go" / "0a1b2c3d_nohash_0.wav").rename(corpus / "go" / "0a1b2c3d_nohash_7.wav")
    assert main(resume) == 2
    assert "(train: 30 utterances as before, but not the same files or labels)" in capsys.readouterr().err
    # Put back as it was (the same file, its modification time unchanged), it resumes.
    (corpus / "go" / "0a1b2c3d_nohash_7.wav").rename(corpus / "go" / "0a1b2c3d_nohash_0.wav")
    assert main(resume) == 0
    assert query(db, "SELECT resumed_from_step FROM runs") == [(1,)]


def add_train_clips(corpus, cache):
    """Two new clips of a speaker in neither list: the Speech Commands train split grows (30 → 32)."""
    for k in range(2):
        shutil.copy(corpus / "up" / "0a1b2c3d_nohash_0.wav", corpus / "yes" / f"5e5e5e5e_nohash_{k}.wav")


def rerecord_train_clip(corpus, cache):
    """A train speaker's first clip recorded again (longer): the same transcripts, other audio."""
    [speaker, *_] = load_task("digits", "transcripts", corpus, cache_dir=cache).info["voices"]["train"]
    path = corpus / "audio" / f"s{speaker.removeprefix('spk')}_0.wav"
    wav, rate = soundfile.read(path, dtype="float32")
    soundfile.write(path, np.concatenate([wav, wav[: rate // 10]]), rate)


def counted(calls, cached_features):
    """``cached_features`` that first appends the folder of each call to ``calls``."""

    def counting(folder, *args, **kwargs):
        calls.append(folder)
        return cached_features(folder, *args, **kwargs)

    return counting


@pytest.mark.parametrize(
    ("data", "task", "corpus", "change", "changed"),
    [
        ("speech_commands", "keywords", "speech_commands_dir", add_train_clips, "train: 30 → 32 utterances"),
        ("transcripts", "digits", "transcripts_dir", rerecord_train_clip, "train: 6 utterances as before"),
    ],
    ids=["speech_commands", "transcripts"],
)
def test_a_changed_train_split_is_refused_before_any_feature_is_computed_or_read(
    data, task, corpus, change, changed, tmp_path, capsys, monkeypatch, request
):
    # The refusal came once the changed corpus's features had been computed (minutes on a real corpus) and
    # written to the cache, all for nothing. Oracles: the loaders' one way to features, cached_features (which
    # computes them or reads them back), is not called, and the cache holds what it held.
    import trainer.data.speech_commands
    import trainer.data.transcripts

    corpus = shutil.copytree(request.getfixturevalue(corpus), tmp_path / "corpus")
    cache, db, ck = tmp_path / "cache", tmp_path / "g.db", tmp_path / "run.ckpt"
    args = ["--task", task, "--epochs", "2", "--quiet", "--checkpoint", str(ck)]
    assert main(real(data, corpus, cache, db, *args, "--max-steps", "1")) == 0
    change(corpus, cache)
    cached_before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    calls = []  # the features' cache folder of each call
    for loader in (trainer.data.speech_commands, trainer.data.transcripts):
        monkeypatch.setattr(loader, "cached_features", counted(calls, loader.cached_features))
    capsys.readouterr()
    assert main(real(data, corpus, cache, db, *args, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"--resume: the corpus in {str(corpus)!r} has changed since the checkpoint {str(ck)!r}" in err, err
    assert f"({changed}" in err and "Traceback" not in err
    assert calls == []
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == cached_before


def retranscribe(corpus, speaker):
    """A new transcript for the first line of ``speaker`` in the corpus's transcripts.tsv."""
    tsv = corpus / "transcripts.tsv"
    lines = tsv.read_text().splitlines()
    at = next(k for k, line in enumerate(lines) if line.endswith(f"\t{speaker}"))
    lines[at] = lines[at].split("\t")[0] + f"\tnine nine nine\t{speaker}"
    tsv.write_text("\n".join(lines) + "\n")


def _trained_then_retranscribed(transcripts_dir, tmp_path, split: str):
    """A copy of the transcripts corpus trained on for one step (a checkpoint saved), then the first
    speaker of ``split`` given other transcripts: (corpus, cache, db, checkpoint, the run's arguments)."""
    corpus = shutil.copytree(transcripts_dir, tmp_path / "tr")
    cache, db, ck = tmp_path / "cache", tmp_path / "g.db", tmp_path / "run.ckpt"
    args = ["--task", "digits", "--epochs", "2", "--quiet", "--checkpoint", str(ck)]
    assert main(real("transcripts", corpus, cache, db, *args, "--max-steps", "1")) == 0
    voices = load_task("digits", "transcripts", corpus, cache_dir=cache).info["voices"]
    retranscribe(corpus, voices[split][0])
    return corpus, cache, db, ck, args


def test_a_changed_transcript_is_a_changed_corpus_and_an_older_checkpoint_resumes_with_a_warning(
    transcripts_dir, tmp_path, capsys
):
    # The features' cache key lists the audio files only; a transcript changes the targets, not the features.
    corpus, cache, db, ck, args = _trained_then_retranscribed(transcripts_dir, tmp_path, "train")
    resume = real("transcripts", corpus, cache, db, *args, "--resume")
    capsys.readouterr()
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "(train: 6 utterances as before, but not the same files or labels)" in err
    assert "Traceback" not in err
    # A checkpoint saved before checkpoints held their corpus's fingerprint: resumed, unchecked, saying so.
    saved = ckpt.load(ck)
    del saved["corpus"], saved["format"]
    ckpt.save(ck, saved)
    assert main(resume) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "saved by an older trainer, without a fingerprint of its corpus" in warned[0]
    assert query(db, "SELECT resumed_from_step FROM runs") == [(1,)]


def test_a_changed_val_split_resumes_with_one_warning(transcripts_dir, tmp_path, capsys):
    # The position in the data counts train batches only: it was refused as a changed corpus all the same.
    corpus, cache, db, _, args = _trained_then_retranscribed(transcripts_dir, tmp_path, "val")
    capsys.readouterr()
    assert main(real("transcripts", corpus, cache, db, *args, "--resume")) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --resume:") == 1 and "has changed since the checkpoint" in err, err
    assert "(val: 2 utterances as before, but not the same files or labels)" in err
    assert "training resumes where it was, but it is evaluated on other data" in err
    assert query(db, "SELECT resumed_from_step FROM runs") == [(1,)]
