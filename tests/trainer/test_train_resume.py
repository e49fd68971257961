"""--resume beyond the row-for-row equality of test_train.py: the settings a checkpoint cannot take are
refused before anything is loaded or recorded, an unreadable file is explained, and the summary of a resumed
or forked process covers that process's steps (checked against the database with sqlite3)."""

import errno
import os
import shutil

import pytest
import torch
from sqlite_rows import rows as query
from trainer_args import tiny

from trainer import checkpoint as ckpt
from trainer.cli import main


def summary_of_this_process(db, run_id, first_step):
    """What the summary must say, from the recorded steps of this process (step >= first_step)."""
    sql = "SELECT step, total_norm, clipped FROM steps WHERE run_id = ? AND step >= ? ORDER BY step"
    rows = query(db, sql, run_id, first_step)
    steps = [s for s, _, _ in rows]
    assert steps == list(range(first_step, first_step + len(rows)))
    rate = 100 * sum(c for _, _, c in rows) / len(rows)
    return [
        f"resumed at step {first_step}: {len(rows)} optimizer steps in this process "
        f"(steps {first_step}–{steps[-1]})",
        f"clipped on {rate:.1f}% of the {len(rows)} logged steps of this process, "
        f"largest global grad norm {max(n for _, n, _ in rows):.3g}",
    ]


def test_the_summary_of_a_resumed_or_forked_process_covers_its_own_steps(corpus_cache, tmp_path, capsys):
    db, ck, fork = tmp_path / "g.db", tmp_path / "run.ckpt", tmp_path / "fork.ckpt"
    common = ["--task", "keywords", "--epochs", "2", "--clip", "norm:2", "--checkpoint"]
    assert main(tiny(corpus_cache, db, *common, str(ck), "--max-steps", "3", "--run", "base")) == 0
    shutil.copy(ck, fork)
    capsys.readouterr()
    # The same run, continued: the time, clip rate and largest norm are those of steps 3 onwards.
    assert main(tiny(corpus_cache, db, *common, str(ck), "--resume")) == 0
    out = capsys.readouterr().out
    assert "run 'base' (id 1): finished" in out  # the run's recorded name, not one generated for this process
    for line in summary_of_this_process(db, 1, 3):
        assert line in out, out
    # A new run from the same checkpoint: nothing of its parent's steps (0-2) in its summary.
    assert main(tiny(corpus_cache, db, *common, str(fork), "--resume", "--clip", "norm:0.5",
                     "--parent-run", "1", "--run", "fork")) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert query(db, "SELECT id, parent_id FROM runs WHERE name = 'fork'") == [(2, 1)]
    assert "run 'fork' (id 2): finished" in out
    for line in summary_of_this_process(db, 2, 3):
        assert line in out, out


def test_settings_a_checkpoint_cannot_take_are_refused_naming_them(corpus_cache, tmp_path, capsys):
    # The optimizer and schedule states restored from the file carry the LR, momentum and weight decay: a
    # change would be silently ignored. The data and the model's forward pass must match too.
    db, ck = tmp_path / "g.db", tmp_path / "run.ckpt"
    base = ["--task", "keywords", "--optimizer", "sgd", "--lr", "0.01", "--checkpoint", str(ck)]
    assert main(tiny(corpus_cache, db, *base, "--epochs", "1")) == 0
    state = "SELECT status, (SELECT COUNT(*) FROM steps), (SELECT COUNT(*) FROM metrics) FROM runs"
    recorded = query(db, state)
    resume = [*base, "--epochs", "2", "--resume"]
    for change, named in [
        (["--lr", "0.02"], "--lr 0.01 → 0.02"),
        (["--lr-schedule", "constant"], "--lr-schedule 'cosine' → 'constant'"),
        (["--warmup-steps", "2"], "--warmup-steps 0 → 2"),
        (["--weight-decay", "0.1"], "--weight-decay 0.0 → 0.1"),
        (["--momentum", "0.5"], "--momentum 0.9 → 0.5"),
        (["--dropout", "0.2"], "--dropout 0.0 → 0.2"),
        (["--specaugment"], "--specaugment off → on"),
    ]:
        capsys.readouterr()
        assert main(tiny(corpus_cache, db, *resume, *change)) == 2, change
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
    assert query(db, state) == recorded  # refused before the run was touched
    # --epochs (and --max-steps) may grow.
    assert main(tiny(corpus_cache, db, *resume)) == 0
    assert query(db, "SELECT resumed_from_step FROM runs") == [(recorded[0][1],)]


def test_tracking_must_match_across_a_resume(corpus_cache, tmp_path, capsys):
    # A --no-track checkpoint has no recorded run to continue: tracked from there, the steps would be numbered
    # from 0 while the metrics are logged at the checkpoint's step. The other way, a run would stop recording.
    untracked, tracked = tmp_path / "nt.ckpt", tmp_path / "t.ckpt"
    db = tmp_path / "g.db"
    assert main(tiny(corpus_cache, db, "--no-track", "--epochs", "1", "--checkpoint", str(untracked))) == 0
    assert not db.exists()
    assert main(tiny(corpus_cache, db, "--epochs", "2", "--checkpoint", str(untracked), "--resume")) == 2
    err = capsys.readouterr().err
    assert "--no-track on → off" in err and "tracking must match" in err and "Traceback" not in err
    assert not db.exists()  # refused before a run was created
    assert main(tiny(corpus_cache, db, "--epochs", "1", "--checkpoint", str(tracked))) == 0
    assert main(tiny(corpus_cache, db, "--no-track", "--epochs", "2", "--checkpoint", str(tracked),
                     "--resume")) == 2  # fmt: skip
    assert "--no-track off → on" in capsys.readouterr().err
    assert query(db, "SELECT status, resumed_from_step FROM runs") == [("finished", None)]
    # With the same setting it goes on: here untracked, from the checkpoint's epoch.
    assert main(tiny(corpus_cache, db, "--no-track", "--epochs", "2", "--checkpoint", str(untracked),
                     "--resume")) == 0  # fmt: skip


def _complete(**overrides):
    """A checkpoint holding what the trainer saves (the values are placeholders)."""
    held = dict(config={}, epoch=0, batch=0, step=3, metrics={}, model={"w": torch.arange(5000.0)})
    held.update(optimizer={}, scheduler={}, scaler={}, gradwatch={}, random={}, world_size=1)
    return {**held, **overrides}


def test_an_unreadable_checkpoint_is_explained(tmp_path):
    path = tmp_path / "run.ckpt"
    ckpt.save(path, _complete())
    whole = path.read_bytes()
    for content, why in [
        (b"", "the file is empty"),
        (b"not a checkpoint at all", "it is not a checkpoint (not a file written by torch.save)"),
        (whole[: len(whole) // 2], "the file is truncated or corrupt"),
    ]:
        path.write_bytes(content)
        with pytest.raises(ValueError, match="cannot read the checkpoint") as exc:
            ckpt.load(path)
        assert why in str(exc.value) and f"{len(content)} bytes" in str(exc.value)
        assert "weights_only" not in str(exc.value)  # torch's advice to load it unsafely is not for us
    path.write_bytes(whole)
    assert torch.equal(ckpt.load(path)["model"]["w"], torch.arange(5000.0))
    assert not path.with_name("run.ckpt.tmp").exists()


def test_a_checkpoint_damaged_inside_its_tensors_is_refused_not_trained_on(tmp_path):
    # torch.load does not check the zip records' CRC-32: 64 flipped bytes inside a tensor loaded as other
    # numbers, and the resumed run trained on them (NaN losses, or an optimizer state of 3e8).
    path = tmp_path / "run.ckpt"
    ckpt.save(path, _complete(model={"w": torch.arange(100_000.0)}))
    damaged = bytearray(path.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(b ^ 0xFF for b in damaged[middle : middle + 64])
    path.write_bytes(bytes(damaged))
    assert torch.load(path, weights_only=True)["step"] == 3  # the oracle: torch itself reads it as fine
    record = r"its record '[^']*data/\d+' does not match the checksum"
    with pytest.raises(ValueError, match=f"is corrupt: {record}"):
        ckpt.load(path)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: {k: v for k, v in c.items() if k != "gradwatch"}, "'gradwatch' (missing)"),
        (lambda c: {**c, "step": "3"}, "'step' (str)"),
        (lambda c: {**c, "epoch": True}, "'epoch' (bool)"),
        (lambda c: {}, "'config' (missing)"),
        (lambda c: {**c, "corpus": {"fingerprint": "abc"}}, "'corpus' (dict)"),  # (None: an older checkpoint)
    ],
)
def test_a_checkpoint_with_the_marker_but_not_the_contents_is_refused_naming_what(tmp_path, edit, named):
    # (a KeyError or TypeError traceback halfway through resuming, or "--resume: 'config'")
    path = tmp_path / "run.ckpt"
    ckpt.save(path, edit(_complete()))
    with pytest.raises(ValueError, match="not their contents") as exc:
        ckpt.load(path)
    assert named in str(exc.value)


def test_a_run_ended_by_max_steps_and_resumed_again_trains_nothing_more(corpus_cache, tmp_path):
    # A restart script passes the same command, --resume included, every time.
    db, ck = tmp_path / "g.db", tmp_path / "r.ckpt"
    for _ in range(3):
        assert main(tiny(corpus_cache, db, "--max-steps", "3", "--checkpoint", str(ck), "--resume")) == 0
        assert query(db, "SELECT COUNT(*), MAX(step) FROM steps") == [(3, 2)]


def test_a_resume_without_run_keeps_the_recorded_name(corpus_cache, tmp_path, capsys, monkeypatch):
    # The name made up for a run started without --run has the time in it; each restart used to make up a
    # new one, recorded in runs.config and printed in the summary, while runs.name kept the first.
    db, ck = tmp_path / "g.db", tmp_path / "r.ckpt"
    clock = iter(range(10**6))  # every process in a new second, however fast they run
    monkeypatch.setattr("trainer.config.time.strftime", lambda fmt: f"20261130-{next(clock):06d}")
    for max_steps in (1, 2, 3):
        assert main(tiny(corpus_cache, db, "--max-steps", str(max_steps), "--checkpoint", str(ck), "--resume",
                         quiet=False)) == 0  # fmt: skip
        [(name, in_config)] = query(db, "SELECT name, json_extract(config, '$.run') FROM runs")
        assert in_config == name and name.startswith("keywords-"), (name, in_config)
        assert f"run {name!r} (id 1): finished" in capsys.readouterr().out
        if max_steps == 1:
            first = name
        assert name == first


def test_a_continued_run_keeps_its_name_and_another_run_name_is_refused(corpus_cache, tmp_path, capsys):
    # --run X on a resume used to record X in runs.config while runs.name kept the first name, and the next
    # restart without --run then took X from the checkpoint: two names for one run.
    db, ck = tmp_path / "g.db", tmp_path / "r.ckpt"

    def args(steps, *extra):
        return tiny(corpus_cache, db, "--max-steps", str(steps), "--checkpoint", str(ck), *extra)

    def names():
        return query(db, "SELECT name, json_extract(config, '$.run') FROM runs")

    assert main(args(1, "--run", "orig")) == 0
    capsys.readouterr()
    assert main(args(2, "--resume", "--run", "renamed")) == 2
    err = capsys.readouterr().err
    assert "--run 'renamed': the checkpoint" in err and "continues run 'orig'" in err
    assert "--parent-run" in err and names() == [("orig", "orig")]  # refused before anything was recorded
    assert main(args(2, "--resume", "--run", "orig")) == 0
    assert main(args(3, "--resume")) == 0
    assert names() == [("orig", "orig")]


def test_a_checkpoint_of_another_number_of_processes_is_refused():
    # Its batch position counts one process's shard, and its random states are per process.
    with pytest.raises(ValueError, match=r"saved by 2 processes, and this is 1.*torchrun --nproc_per_node=2"):
        ckpt.check_world_size({"world_size": 2}, 1, "r.ckpt")
    with pytest.raises(ValueError, match=r"saved by 1 process, and this is 2"):
        ckpt.check_world_size({}, 2, "r.ckpt")  # an older checkpoint: one process
    ckpt.check_world_size({"world_size": 2}, 2, "r.ckpt")


def test_a_run_recorded_under_gradwatch_clip_and_resumed_without_it_is_explained_in_cli_terms(
    corpus_cache, db_path, tmp_path, monkeypatch, capsys
):
    ck = tmp_path / "run.ckpt"
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:1")
    assert (
        main(tiny(corpus_cache, db_path, "--max-steps", "1", "--epochs", "2", "--checkpoint", str(ck))) == 0
    )
    monkeypatch.delenv("GRADWATCH_CLIP")
    capsys.readouterr()
    argv = tiny(corpus_cache, db_path, "--epochs", "2", "--checkpoint", str(ck), "--resume")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "recorded clipping with 'norm:1.0' (GRADWATCH_CLIP was set when it ran)" in err
    assert "GRADWATCH_CLIP=norm:1.0 set again, or add --parent-run ID" in err
    assert "parent_id=" not in err and "Traceback" not in err  # the tracker's Python argument
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:1.0")  # as suggested: the same run goes on
    assert main(argv) == 0
    assert query(db_path, "SELECT COUNT(*), MAX(status), MAX(resumed_from_step) FROM runs") == [
        (1, "finished", 1)
    ]


def test_a_resume_that_starts_a_new_run_says_so_and_where_its_checkpoints_go(
    corpus_cache, db_path, tmp_path, monkeypatch, capsys
):
    # $GRADWATCH_CLIP asking for other clipping at --resume starts a new run from the checkpoint (the
    # tracker's documented fork), and its checkpoints replace the one it started from: it used to say
    # nothing, and the original run could no longer be continued.
    ck = tmp_path / "run.ckpt"
    first = tiny(corpus_cache, db_path, "--max-steps", "1", "--epochs", "2", "--checkpoint", str(ck))
    assert main(first) == 0
    monkeypatch.setenv("GRADWATCH_CLIP", "norm:2.0")
    capsys.readouterr()
    assert main(tiny(corpus_cache, db_path, "--epochs", "2", "--checkpoint", str(ck), "--resume")) == 0
    err = capsys.readouterr().err
    assert "note: this is a new run #2 (parent #1)" in err
    assert f"saves its checkpoints to {ck}, over the one it started from: copy that file first" in err
    assert query(db_path, "SELECT id, parent_id, clip FROM runs ORDER BY id") == [
        (1, None, "none"),
        (2, 1, "norm:2.0"),
    ]


@pytest.mark.parametrize("code, saved", [(errno.EINVAL, True), (errno.EIO, False)])
def test_a_file_system_that_cannot_flush_still_gets_its_checkpoint_but_a_disk_error_is_raised(
    tmp_path, monkeypatch, code, saved
):
    # Some FUSE and network mounts refuse fsync (EINVAL): the checkpoint is written as before the flush was
    # added. EIO means the bytes did not reach the disk: raised, and the previous checkpoint stays.
    path = tmp_path / "run.ckpt"
    ckpt.save(path, _complete(step=1))

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)
    if saved:
        ckpt.save(path, _complete(step=2))
    else:
        with pytest.raises(OSError, match=os.strerror(code)):
            ckpt.save(path, _complete(step=2))
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == (2 if saved else 1)
    assert not path.with_name("run.ckpt.tmp").exists()
