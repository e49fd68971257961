"""`python -m trainer.data` in a real subprocess: generation, cache hit, cross-process determinism, errors."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from trainer.data.synth_corpus import load_or_generate, synth_spec


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.data", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # two interpreter starts with torch: ~5 s idle, ~15 s on a busy 2-core machine
def test_generates_then_finds_the_corpus_in_the_cache(tmp_path):
    # seed 15 puts breathy voices (f3, whisperf, Alicia: noise from eSpeak's own generator) in the tiny corpus
    first = run("--task", "keywords", "--size", "tiny", "--seed", "15", "--cache-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "corpus generated" in first.stdout and "train     40 utterances, 4 speaker(s)" in first.stdout
    second = run("--task", "keywords", "--size", "tiny", "--seed", "15", "--cache-dir", str(tmp_path))
    assert second.returncode == 0 and "corpus found in cache" in second.stdout
    assert "features read from cache" in second.stdout
    assert str(tmp_path) in second.stdout
    # the same corpus generated in this process, at another time, is identical bit for bit
    manifest, here = load_or_generate(synth_spec("keywords", "tiny", seed=15), tmp_path / "here")
    assert "en-us+f3" in [v for vs in manifest["voices"].values() for v in vs]
    other = next(p for p in tmp_path.iterdir() if p.name.startswith("keywords-") and p.is_dir())
    assert other.name == manifest["path"].rsplit("/", 1)[-1]
    for split, data in here.items():
        np.testing.assert_array_equal(np.load(other / f"{split}.npz")["audio"], data.audio)


def test_bad_path_and_bad_size_exit_2_without_traceback(tmp_path):
    missing = run("--source", "speech_commands", "--path", str(tmp_path / "nope"))
    assert (
        missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    )
    bad_size = run("--size", "huge", "--cache-dir", str(tmp_path))
    assert bad_size.returncode == 2 and "size='huge'" in bad_size.stderr


def test_what_the_loader_skips_is_printed_as_one_warning_line_each(speech_commands_dir, tmp_path, capsys):
    # They were printed in Python's two-line format ("...files.py:66: CorpusWarning: ..." + the source line).
    from trainer.data.__main__ import main

    root = shutil.copytree(speech_commands_dir, tmp_path / "sc")
    with open(root / "validation_list.txt", "a") as f:
        f.write("yes/deleted_nohash_0.wav\n")
    soundfile.write(root / "go" / "9f9f9f9f_nohash_0.flac", [0.1] * 8000, 16000)
    argv = ["--source", "speech_commands", "--path", str(root), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "train     30 utterances" in out
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines), err
    assert "'go/9f9f9f9f_nohash_0.flac'" in lines[0] and "'yes/deleted_nohash_0.wav'" in lines[1]


def test_corpus_warning_is_one_class_with_the_package_errors():
    from trainer import data
    from trainer.data import errors, files

    assert files.CorpusWarning is errors.CorpusWarning is data.CorpusWarning
    assert issubclass(errors.CorpusWarning, UserWarning)


@pytest.mark.parametrize("problem", ["a file", "under a file"])
def test_a_cache_folder_it_cannot_use_is_one_error_line_exit_2(problem, transcripts_dir, tmp_path, capsys):
    # An OSError from the cache (a file in its place or above it) came out as a traceback, exit 1.
    from trainer.data.__main__ import main

    cache = tmp_path / "cache"
    if problem == "a file":
        cache.write_text("not a folder")
    else:
        (tmp_path / "file").write_text("not a folder")
        cache = tmp_path / "file" / "cache"
    argv = ["--task", "digits", "--source", "transcripts", "--path", str(transcripts_dir)]
    assert main([*argv, "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot access '{cache}") and len(err.splitlines()) == 1, err


def test_a_blank_gradwatch_cache_counts_as_unset(tmp_path, monkeypatch):
    # It made a folder named " " in the working directory.
    from trainer.data.cache import default_cache_dir

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for blank in ("", " ", "\t"):
        monkeypatch.setenv("GRADWATCH_CACHE", blank)
        assert default_cache_dir() == Path.home() / ".cache" / "gradwatch" / "corpora"
