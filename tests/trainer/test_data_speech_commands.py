"""Google Speech Commands layouts (v0.01 / v0.02) written by the test, loaded as 10/12/30/35 classes."""

import hashlib
import math
import os
import re
import unicodedata
import warnings

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from trainer.data import KEYWORDS, CorpusLayoutError, CorpusNotFound, load_task
from trainer.data.files import CorpusWarning
from trainer.data.speech_commands import V1_WORDS, V2_WORDS, scan_speech_commands

SPEAKERS = {"train": ["0a1b2c3d", "1f2e3d4c", "2b3c4d5e"], "val": ["3c4d5e6f"], "test": ["4d5e6f70"]}


def tone(seconds, hz, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_corpus(root, words, lists=True, noise=True):
    """One clip per (word, speaker); validation/testing lists by speaker; two background noise files."""
    val, test = [], []
    for w, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for split, speakers in SPEAKERS.items():
            for s, speaker in enumerate(speakers):
                name = f"{speaker}_nohash_0.wav"
                soundfile.write(
                    root / word / name, tone(0.5 + 0.1 * s, 200 + 20 * w), 16000, subtype="PCM_16"
                )
                if split == "val":
                    val.append(f"{word}/{name}")
                elif split == "test":
                    test.append(f"{word}/{name}")
    if lists:
        (root / "validation_list.txt").write_text("\n".join(val) + "\n")
        (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    if noise:
        (root / "_background_noise_").mkdir()
        rng = np.random.default_rng(0)
        for name in ("white_noise.wav", "pink_noise.wav"):
            soundfile.write(root / "_background_noise_" / name, rng.uniform(-0.5, 0.5, 48000), 16000)
    (root / "README.md").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("speech_commands_v0.02"), V2_WORDS)


def speaker_of(path):
    return re.sub(r"_nohash_.*$", "", path.rsplit("/", 1)[-1].rsplit(".", 1)[0])


def test_ten_core_words_follow_the_split_lists(v2, tmp_path):
    splits = load_task("keywords", "speech_commands", v2, classes=10, cache_dir=tmp_path)
    assert splits.labels == list(KEYWORDS) and splits.kind == "classification"
    assert splits.info["counts"] == {s: 10 * len(SPEAKERS[s]) for s in ("train", "val", "test")}
    assert {s: set(v) for s, v in splits.info["voices"].items()} == {s: set(v) for s, v in SPEAKERS.items()}
    assert splits.info["split_rule"] == "lists"
    x, y = splits.train[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10


def test_features_equal_a_direct_torchaudio_computation_on_the_file(v2, tmp_path):
    _, clips = scan_speech_commands(v2, classes=10)
    splits = load_task("keywords", "speech_commands", v2, classes=10, cache_dir=tmp_path)
    i = 3
    wav, rate = soundfile.read(v2 / clips["train"][i].path, dtype="float32")
    assert rate == 16000 and len(wav) < 16000
    padded = torch.nn.functional.pad(torch.from_numpy(wav), (0, 16000 - len(wav)))  # zero-padded to 1 s
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=640, win_length=640, hop_length=516, n_mels=32)(
        padded
    )
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel)
    torch.testing.assert_close(splits.train[i][0][0], (db - db.mean()) / (db.std() + 1e-5))
    assert splits.train[i][1] == KEYWORDS.index(clips["train"][i].path.split("/")[0])


def test_twelve_classes_add_silence_and_unknown_at_ten_percent(v2):
    labels, clips = scan_speech_commands(v2, classes=12, seed=0)
    assert labels == ["_silence_", "_unknown_", *KEYWORDS]
    for split, speakers in SPEAKERS.items():
        targets = [c.label for c in clips[split]]
        known = 10 * len(speakers)
        assert sum(t >= 2 for t in targets) == known
        assert targets.count(0) == targets.count(1) == math.ceil(known / 10)
        unknown_words = {c.path.split("/")[0] for c in clips[split] if c.label == 1}
        assert unknown_words <= set(V2_WORDS) - set(KEYWORDS)
        for c in clips[split]:
            if c.label == 0:  # 1 s crop inside a 3 s noise file, at a volume in [0, 1]
                assert (
                    c.path.startswith("_background_noise_/") and 0 <= c.offset <= 32000 and 0 <= c.volume <= 1
                )
    again = scan_speech_commands(v2, classes=12, seed=0)[1]
    assert again == clips  # deterministic from the seed
    assert scan_speech_commands(v2, classes=12, seed=1)[1] != clips


def test_thirty_five_classes_and_the_v001_variant(v2, tmp_path):
    labels, clips = scan_speech_commands(v2, classes=35)
    assert labels == list(V2_WORDS) and len(labels) == 35
    assert len(clips["train"]) == 35 * 3
    v1 = write_corpus(tmp_path / "v0.01", V1_WORDS)
    with pytest.raises(CorpusLayoutError, match="classes=30"):
        scan_speech_commands(v1, classes=35)
    splits = load_task("keywords", "speech_commands", v1, classes=30, cache_dir=tmp_path / "cache")
    assert len(splits.labels) == 30 and splits.info["counts"]["test"] == 30


def which_set_readme(filename, validation_percentage=10, testing_percentage=10):
    """Transcribed from the Speech Commands README."""
    base_name = filename.rsplit("/", 1)[-1]
    hash_name = re.sub(r"_nohash_.*$", "", base_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage_hash = (int(hash_name_hashed, 16) % (2**27 - 1 + 1)) * (100.0 / (2**27 - 1))
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < (testing_percentage + validation_percentage):
        return "testing"
    return "training"


@pytest.mark.filterwarnings("ignore::trainer.data.files.CorpusWarning")  # (words without val/test clips)
def test_without_lists_the_readme_hash_rule_splits_by_speaker(tmp_path):
    root = write_corpus(tmp_path / "nolists", KEYWORDS, lists=False, noise=False)
    clip = (root / "yes" / "0a1b2c3d_nohash_0.wav").read_bytes()
    (root / "yes" / "9f9f9f9f_nohash_1.wav").write_bytes(clip)
    # The speakers of SPEAKERS all hash into training: an empty validation split is refused.
    with pytest.raises(CorpusLayoutError, match="the val split has no clips: the README's hash rule"):
        scan_speech_commands(root, classes=10)
    for speaker in ("00000000", "00000002"):  # these two hash into validation and test
        (root / "no" / f"{speaker}_nohash_0.wav").write_bytes(clip)
    _, clips = scan_speech_commands(root, classes=10)
    assert all(clips.values())
    names = {"train": "training", "val": "validation", "test": "testing"}
    for split, items in clips.items():
        for c in items:
            assert which_set_readme(c.path) == names[split], c.path


def test_a_clip_without_samples_is_refused_by_name(tmp_path):
    # It used to be zero-padded and trained on as a second of silence labelled with its word.
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    soundfile.write(root / "go" / "0a1b2c3d_nohash_0.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(CorpusLayoutError, match=r"0a1b2c3d_nohash_0\.wav' has no samples"):
        load_task("keywords", "speech_commands", root, cache_dir=tmp_path / "cache")


def test_other_rates_and_stereo_are_resampled_and_averaged(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    stereo = np.stack([tone(0.8, 300, 8000), tone(0.8, 500, 8000)], axis=1)
    target = root / "go" / "0a1b2c3d_nohash_0.wav"
    soundfile.write(target, stereo, 8000)
    splits = load_task("keywords", "speech_commands", root, cache_dir=tmp_path / "cache")
    _, clips = scan_speech_commands(root)
    i = [c.path for c in clips["train"]].index("go/0a1b2c3d_nohash_0.wav")
    on_disk, rate = soundfile.read(target, dtype="float32")  # 16-bit PCM: quantised
    assert on_disk.shape == (6400, 2) and rate == 8000
    mono = torch.from_numpy(on_disk.mean(axis=1))
    wav = torchaudio.functional.resample(mono, 8000, 16000)
    wav = torch.nn.functional.pad(wav, (0, 16000 - len(wav)))
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=640, win_length=640, hop_length=516, n_mels=32)(
        wav
    )
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel)
    # above 4 kHz an 8 kHz recording has (almost) no energy: the log amplifies float rounding there
    torch.testing.assert_close(
        splits.train[i][0][0], (db - db.mean()) / (db.std() + 1e-5), atol=1e-3, rtol=1e-3
    )


def test_bad_folders_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(CorpusNotFound, match="nowhere.*Speech Commands layout") as e:
        scan_speech_commands(tmp_path / "nowhere")
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError, match="empty.*<word>/\\*.wav"):
        scan_speech_commands(tmp_path / "empty")
    partial = write_corpus(tmp_path / "partial", ["yes", "no"], noise=False)
    with pytest.raises(CorpusLayoutError, match="'up'"):
        scan_speech_commands(partial)
    one_list = write_corpus(tmp_path / "onelist", KEYWORDS, noise=False)
    (one_list / "testing_list.txt").unlink()
    with pytest.raises(CorpusLayoutError, match="testing_list.txt"):
        scan_speech_commands(one_list)
    no_noise = write_corpus(tmp_path / "nonoise", V2_WORDS, noise=False)
    with pytest.raises(CorpusLayoutError, match="_background_noise_"):
        scan_speech_commands(no_noise, classes=12)
    with pytest.raises(ValueError, match="classes=11.*12"):
        scan_speech_commands(no_noise, classes=11)
    (no_noise / "yes" / "0a1b2c3d_nohash_0.wav").write_bytes(b"not a wav file")
    with pytest.raises(CorpusLayoutError, match="0a1b2c3d_nohash_0.wav"):
        load_task("keywords", "speech_commands", no_noise, cache_dir=tmp_path / "cache")


def test_list_entries_written_with_dot_slash_or_backslashes_name_the_same_clips(v2, tmp_path):
    root = write_corpus(tmp_path / "lists", KEYWORDS, noise=False)
    want = scan_speech_commands(root)[1]
    val, test = root / "validation_list.txt", root / "testing_list.txt"
    val.write_text("".join(f"./{line}\n" for line in val.read_text().split()))  # `find .` output
    test.write_bytes(b"\xef\xbb\xbf" + test.read_text().replace("/", "\\").replace("\n", "\r\n").encode())
    assert scan_speech_commands(root)[1] == want


@pytest.mark.filterwarnings("ignore::trainer.data.files.CorpusWarning")  # (lines naming no clip)
def test_lists_that_leave_a_split_empty_are_refused(tmp_path):
    root = write_corpus(tmp_path / "empty_list", KEYWORDS, noise=False)
    (root / "testing_list.txt").write_text("")
    with pytest.raises(CorpusLayoutError, match="the test split has no clips: .*testing_list.txt' is empty"):
        scan_speech_commands(root)
    (root / "testing_list.txt").write_text("yes/missing_nohash_0.wav\nbed/4d5e6f70_nohash_0.wav\n")
    with pytest.raises(CorpusLayoutError, match="the test split has no clips: none of the 2 lines"):
        scan_speech_commands(root)


# -- split lists: a line names its clip, or is reported; no held-out clip lands in training silently


def splits_by_speaker(clips):
    return {s: {speaker_of(c.path) for c in items} for s, items in clips.items()}


def test_list_lines_name_their_clip_up_to_case_and_unicode_normalisation(tmp_path):
    # Both used to be ignored, and the validation clips they meant went into training.
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    (root / "yes" / "3c4d5e6f_nohash_0.wav").rename(root / "yes" / "3c4d5e6f_nohash_0.WAV")
    nfc = "3c4d5e6f_nohash_caf\u00e9.wav"  # macOS writes names decomposed (NFD); lists are composed (NFC)
    soundfile.write(root / "up" / unicodedata.normalize("NFD", nfc), tone(0.5, 300), 16000)
    with open(root / "validation_list.txt", "a") as f:
        f.write(f"up/{nfc}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)  # every line names a clip: nothing to report
        _, clips = scan_speech_commands(root)
    assert splits_by_speaker(clips) == {s: set(v) for s, v in SPEAKERS.items()}
    assert "yes/3c4d5e6f_nohash_0.WAV" in [c.path for c in clips["val"]]
    assert len(clips["val"]) == 11


def test_a_line_that_names_several_clips_up_to_case_is_refused(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    clip = root / "yes" / "3c4d5e6f_nohash_0.wav"
    clip.rename(root / "yes" / "3c4d5e6f_nohash_0.WAV")
    soundfile.write(root / "yes" / "3C4D5E6F_nohash_0.wav", tone(0.5, 300), 16000)
    with pytest.raises(
        CorpusLayoutError, match=r"'yes/3c4d5e6f_nohash_0\.wav' names none of the clips exactly"
    ):
        scan_speech_commands(root)


def test_lines_naming_no_clip_are_ignored_with_one_warning(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    want = scan_speech_commands(root)[1]
    with open(root / "validation_list.txt", "a") as f:
        f.write("yes/deleted_nohash_0.wav\nyes/deleted_nohash_1.wav\nbed/3c4d5e6f_nohash_0.wav\n")
    with pytest.warns(CorpusWarning) as caught:
        _, clips = scan_speech_commands(root)
    assert clips == want
    [message] = [str(w.message) for w in caught]
    assert re.search(r"3 of the 13 lines of '.*validation_list\.txt' name no \.wav clip", message)
    assert "'bed/3c4d5e6f_nohash_0.wav'" in message  # (sorted: the first example)


def test_a_clip_named_by_both_lists_is_refused(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    with open(root / "testing_list.txt", "a") as f:
        f.write("go/3c4d5e6f_nohash_0.wav\n")  # a validation clip
    with pytest.raises(
        CorpusLayoutError, match=r"1 clip\(s\) are named by both .*\('go/3c4d5e6f_nohash_0\.wav'\)"
    ):
        scan_speech_commands(root)


# -- what a word folder holds


def test_hidden_files_and_folders_named_like_clips_are_skipped(tmp_path):
    # macOS's AppleDouble ._x.wav files ("Format not recognised") used to abort the whole load.
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    want = scan_speech_commands(root)[1]
    (root / "yes" / "._0a1b2c3d_nohash_0.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    (root / "yes" / ".DS_Store").write_bytes(bytes(10))
    (root / "no" / "weird.wav").mkdir()
    (root / ".hidden_word").mkdir()
    soundfile.write(root / ".hidden_word" / "0a1b2c3d_nohash_0.wav", tone(0.5, 300), 16000)
    assert scan_speech_commands(root, classes=10)[1] == want
    splits = load_task("keywords", "speech_commands", root, cache_dir=tmp_path / "cache")
    assert splits.info["counts"] == {s: len(v) for s, v in want.items()}


def test_audio_that_is_not_wav_is_skipped_with_a_warning(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    want = scan_speech_commands(root)[1]
    soundfile.write(root / "yes" / "9f9f9f9f_nohash_0.flac", tone(0.5, 300), 16000)
    with pytest.warns(CorpusWarning, match=r"1 audio file\(s\) .* not \.wav .*'yes/9f9f9f9f_nohash_0\.flac'"):
        assert scan_speech_commands(root)[1] == want


def test_upper_case_extensions_count_in_the_word_and_noise_folders(tmp_path):
    root = write_corpus(tmp_path / "sc", V2_WORDS)
    for noise in (root / "_background_noise_").iterdir():
        noise.rename(noise.with_suffix(".WAV"))  # used to be "has no .wav files"
    (root / "yes" / "0a1b2c3d_nohash_0.wav").rename(root / "yes" / "0a1b2c3d_nohash_0.WAV")
    _, clips = scan_speech_commands(root, classes=12)
    paths = [c.path for c in clips["train"]]
    assert "yes/0a1b2c3d_nohash_0.WAV" in paths
    assert {p for p in paths if p.startswith("_background_noise_/")} <= {
        "_background_noise_/white_noise.WAV",
        "_background_noise_/pink_noise.WAV",
    }


def test_classes_without_clips_in_a_split_are_announced(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=True)
    (root / "go" / "3c4d5e6f_nohash_0.wav").unlink()  # go's only validation clip, and its line
    val = root / "validation_list.txt"
    val.write_text(val.read_text().replace("go/3c4d5e6f_nohash_0.wav\n", ""))
    with pytest.warns(CorpusWarning, match=r"classes without clips in a split \(val: go\)"):
        scan_speech_commands(root, classes=10)
    # The 12-class variant's _unknown_ comes from the other words: here there are none.
    with pytest.warns(
        CorpusWarning, match=r"train: _unknown_; val: _unknown_, go; test: _unknown_\) \(_unknown_ takes"
    ):
        _, clips = scan_speech_commands(root, classes=12)
    assert not [c for s in clips.values() for c in s if c.label == 1]


def test_a_file_name_that_is_not_utf8_is_a_clip(tmp_path):
    # It used to fail with "'utf-8' codec can't encode character '\udce9'", naming no file.
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    raw = os.fsencode(root / "yes") + b"/caf\xe9_nohash_0.wav"
    os.rename(root / "yes" / "0a1b2c3d_nohash_0.wav", raw)
    splits = load_task("keywords", "speech_commands", root, cache_dir=tmp_path / "cache")
    _, clips = scan_speech_commands(root)
    i = [c.path for c in clips["train"]].index(os.fsdecode(b"yes/caf\xe9_nohash_0.wav"))
    wav, _ = soundfile.read(raw, dtype="float32")
    torch.testing.assert_close(splits.train[i][0][0], keyword_logmel(wav))


def keyword_logmel(wav):
    """The trainer's keyword features computed directly with torchaudio, from 16 kHz samples."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    wav = torch.nn.functional.pad(wav, (0, 16000 - len(wav))) if len(wav) < 16000 else wav
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=640, win_length=640, hop_length=516, n_mels=32)(
        wav
    )
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel)
    return (db - db.mean()) / (db.std() + 1e-5)


def test_clips_longer_than_a_second_are_cut_with_a_warning(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    long = tone(2.5, 300)
    soundfile.write(root / "go" / "0a1b2c3d_nohash_0.wav", long, 16000, subtype="FLOAT")
    with pytest.warns(
        CorpusWarning, match=r"1 clip\(s\) last more than 1 s .*'go/0a1b2c3d_nohash_0\.wav', 2\.50 s"
    ):
        splits = load_task("keywords", "speech_commands", root, cache_dir=tmp_path / "cache")
    i = [c.path for c in scan_speech_commands(root)[1]["train"]].index("go/0a1b2c3d_nohash_0.wav")
    torch.testing.assert_close(splits.train[i][0][0], keyword_logmel(long[:16000]))


def test_a_nan_clip_is_refused_by_name(tmp_path):
    root = write_corpus(tmp_path / "sc", KEYWORDS, noise=False)
    wav = tone(0.5, 300)
    wav[100] = np.nan
    soundfile.write(root / "go" / "1f2e3d4c_nohash_0.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(CorpusLayoutError, match=r"go/1f2e3d4c_nohash_0\.wav' has 1 NaN or infinite sample"):
        load_task("keywords", "speech_commands", root, cache_dir=tmp_path / "cache")


# -- the 12-class variant's _silence_ clips


def test_silence_crops_one_second_at_the_noise_files_own_rate(tmp_path):
    # 16,000 frames of a 48 kHz file used to be cropped: a third of a second, then two thirds of zeros.
    root = write_corpus(tmp_path / "sc", (*KEYWORDS, "bed"), noise=False)
    (root / "_background_noise_").mkdir()
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * 48000).astype(np.float32)
    soundfile.write(root / "_background_noise_" / "white_noise.wav", noise, 48000, subtype="FLOAT")
    splits = load_task("keywords", "speech_commands", root, classes=12, cache_dir=tmp_path / "cache")
    _, clips = scan_speech_commands(root, classes=12)
    silence = [(i, c) for i, c in enumerate(clips["train"]) if c.label == 0]
    assert silence
    for i, c in silence:
        assert c.frames == 48000 and 0 <= c.offset <= 2 * 48000
        crop = torch.from_numpy(noise[c.offset : c.offset + 48000] * np.float32(c.volume))
        wav = torchaudio.functional.resample(crop, 48000, 16000)
        assert len(wav) == 16000
        torch.testing.assert_close(splits.train[i][0][0], keyword_logmel(wav), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("write", "needle"),
    [
        (lambda p: soundfile.write(p, tone(0.25, 300), 16000), r"white_noise\.wav' lasts 0\.250 s"),
        (lambda p: soundfile.write(p, np.zeros(0, np.float32), 16000), r"white_noise\.wav' lasts 0\.000 s"),
        (lambda p: soundfile.write(p, tone(0.9, 300, 48000), 48000), r"white_noise\.wav' lasts 0\.900 s"),
        (
            lambda p: p.write_text("not audio"),
            r"cannot read audio file '.*white_noise\.wav': Format not recognised",
        ),
    ],
    ids=["quarter-second", "empty", "0.9 s at 48 kHz", "not audio"],
)
def test_a_noise_file_too_short_or_broken_is_refused_by_name(write, needle, tmp_path):
    # A short or empty one used to make all-zero _silence_ clips; a broken one, a LibsndfileError traceback.
    root = write_corpus(tmp_path / "sc", (*KEYWORDS, "bed"))
    write(root / "_background_noise_" / "white_noise.wav")
    with pytest.raises(CorpusLayoutError, match=needle):
        scan_speech_commands(root, classes=12)
