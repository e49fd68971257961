"""The features' cache of a real corpus on disk: keyed by its files, so every edit makes a new folder; the
folders of the corpus's earlier states and those left empty by failed loads are removed, never one that
another process holds the lock of (is reading or writing)."""

import fcntl
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import soundfile

from trainer.cli import main
from trainer.data import CorpusLayoutError, load_task
from trainer.data.cache import locked


def folders(cache):
    return sorted(p.name for p in cache.iterdir())


def size(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def touch(path, seconds=10):
    """A new modification time, the content unchanged (as an editor's save, a copy, a restore would)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def unused(cache, days=2):
    """Every cache folder of ``cache`` last used ``days`` ago: those of a corpus's other states may go."""
    for about in cache.glob("*/corpus.json"):
        os.utime(about, (time.time() - days * 86400,) * 2)


def load(root, cache, **kwargs):
    return load_task("keywords", "speech_commands", root, cache_dir=cache, **kwargs)


def test_each_edit_of_the_corpus_replaces_its_cache_rather_than_adding_one(speech_commands_dir, tmp_path):
    # They used to stay forever: ~430 MB per touched file at Speech Commands' size.
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    first = load(root, cache).info
    assert first["removed_caches"] == {"folders": 0, "bytes": 0}
    old = cache / folders(cache)[0]
    assert json.loads((old / "corpus.json").read_text())["root"] == str(root)
    freed = size(old)
    for edit in (lambda: touch(root / "yes" / "0a1b2c3d_nohash_0.wav"),
                 lambda: (root / "no" / "0a1b2c3d_nohash_0.wav").unlink()):  # fmt: skip
        edit()
        unused(cache)
        info = load(root, cache).info
        assert not info["cache_hit"] and folders(cache) == [os.path.basename(info["cache_path"])]
        assert info["removed_caches"] == {"folders": 1, "bytes": freed}
        freed = size(cache / folders(cache)[0])
    assert load(root, cache).info["removed_caches"] == {"folders": 0, "bytes": 0}  # (a hit: nothing stale)


@pytest.mark.filterwarnings("ignore::trainer.data.CorpusWarning")  # (12 classes: no _unknown_ clips)
def test_other_corpora_variants_and_older_folders_stay_and_empty_leftovers_go(speech_commands_dir, tmp_path):
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    other = shutil.copytree(speech_commands_dir, tmp_path / "other")
    load(other, cache)
    load(root, cache, classes=12)
    kept = folders(cache)
    load(root, cache)
    # A folder of an older trainer (no corpus.json: whose it is cannot be told), and what failed or killed
    # loads of older trainers left: a lock file alone, a features file never renamed into place.
    legacy, lock_only, unfinished = (cache / f"speech_commands-{c * 12}" for c in "abc")
    shutil.copytree(cache / kept[0], legacy)
    (legacy / "corpus.json").unlink()
    lock_only.mkdir()
    (lock_only / "features-39d6181fd5.lock").touch()
    unfinished.mkdir()
    (unfinished / "features-39d6181fd5.pt.tmp-12345").write_bytes(b"x" * 1000)
    mine = cache / "transcripts-dddddddddddd"  # named like a cache, holding what no load writes: a user's
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    touch(root / "yes" / "0a1b2c3d_nohash_0.wav")
    unused(cache)
    info = load(root, cache).info  # the 10-class cache of the corpus's earlier state goes, with the leftovers
    assert info["removed_caches"]["folders"] == 3
    assert folders(cache) == sorted([*kept, legacy.name, mine.name, os.path.basename(info["cache_path"])])


def test_a_cache_another_process_holds_is_left_until_it_is_free(speech_commands_dir, tmp_path):
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    old = os.path.basename(load(root, cache).info["cache_path"])
    touch(root / "yes" / "0a1b2c3d_nohash_0.wav")
    unused(cache)
    with locked(cache, old):  # as a process reading it holds it (a trainer that scanned before the edit)
        info = load(root, cache).info
        assert info["removed_caches"]["folders"] == 0 and old in folders(cache)
    unused(cache)
    assert load(root, cache).info["removed_caches"]["folders"] == 1  # (a hit) now it is free
    assert folders(cache) == [os.path.basename(info["cache_path"])]


def test_a_failed_load_leaves_nothing_in_the_cache(speech_commands_dir, tmp_path):
    # It left a folder holding only a lock file for every failed load.
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    soundfile.write(root / "go" / "0a1b2c3d_nohash_0.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(CorpusLayoutError, match="has no samples"):
        load(root, cache)
    assert folders(cache) == []


def test_a_process_waiting_on_a_lock_that_was_removed_takes_the_new_one(tmp_path):
    # The lock file goes when released (a cleaner removes a folder under it, then the file): whoever waited
    # on it must not think it holds the lock of the path, or two processes would be inside at once.
    inside, release_first, release_second = threading.Event(), threading.Event(), threading.Event()
    events = []

    def first():
        with locked(tmp_path, "x"):
            inside.set()
            release_first.wait(10)

    def second():
        inside.wait(10)
        with locked(tmp_path, "x"):
            events.append("second in")
            release_second.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(10)
    time.sleep(0.3)  # the second is waiting on the first's lock file
    release_first.set()  # it releases and removes its lock file; the second then holds on
    for _ in range(100):
        if events:
            break
        time.sleep(0.05)
    assert events == ["second in"]
    with open(tmp_path / "x.lock", "a") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the path's lock is the second's
    release_second.set()
    for t in threads:
        t.join(10)
    assert not (tmp_path / "x.lock").exists()


def test_the_trainer_says_how_much_it_freed_when_it_is_large(
    speech_commands_dir, tmp_path, capsys, monkeypatch
):
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    argv = ["--data", "speech_commands", "--data-path", str(root), "--cache-dir", str(cache), "--no-track",
            "--clip", "none", "--max-steps", "1", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    touch(root / "yes" / "0a1b2c3d_nohash_0.wav")
    unused(cache)
    assert main(argv) == 0
    assert "stale feature cache" not in capsys.readouterr().err  # 0.2 MB: not worth a line
    monkeypatch.setattr("trainer.data.cache.REPORTED_BYTES", 1)
    touch(root / "yes" / "0a1b2c3d_nohash_0.wav")
    unused(cache)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "(features computed in " in err and ", removed 1 stale feature cache(s): 0.2 MB freed)" in err


def test_folders_not_provably_gradwatchs_stay(speech_commands_dir, tmp_path):
    # An empty folder named like a cache, and one holding only a corpus.json that gradwatch did not write,
    # were removed as "left by a failed load" (with --cache-dir $HOME, say).
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    load(root, cache)
    empty, foreign = cache / "transcripts-0123456789ab", cache / "speech_commands-bbbbbbbbbbbb"
    empty.mkdir()
    foreign.mkdir()
    (foreign / "corpus.json").write_text('{"mine": 1}')
    touch(root / "yes" / "0a1b2c3d_nohash_0.wav")
    load(root, cache)  # (a new state: the stale caches are looked for)
    assert empty.is_dir() and (foreign / "corpus.json").read_text() == '{"mine": 1}'


def test_a_cache_used_lately_in_another_state_stays(speech_commands_dir, tmp_path):
    # Machines sharing a cache folder (an NFS home), each with its own copy of the corpus at the same path
    # but other file dates, removed each other's cache on every load and computed it again: ping-pong.
    root, cache = shutil.copytree(speech_commands_dir, tmp_path / "sc"), tmp_path / "cache"
    one = os.path.basename(load(root, cache).info["cache_path"])
    wav = root / "yes" / "0a1b2c3d_nohash_0.wav"
    touch(wav)  # the other machine's copy
    two = load(root, cache).info
    assert two["removed_caches"]["folders"] == 0 and one in folders(cache)
    touch(wav, -10)  # back on the first machine: its cache is still there, a hit
    assert load(root, cache).info["feature_cache_hit"]
    unused(cache, days=0.5)  # half a day unused: both stay
    assert load(root, cache).info["removed_caches"]["folders"] == 0
    unused(cache)  # two days: the other state's cache goes (a hit marks this one used)
    assert load(root, cache).info["removed_caches"]["folders"] == 1
    assert folders(cache) == [one]
