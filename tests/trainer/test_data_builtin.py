"""The built-in eSpeak NG corpora: sizes, determinism, speaker-disjoint splits, noise level, disk cache."""

import json

import numpy as np
import pytest

from trainer.data import DIGIT_WORDS, KEYWORDS, espeak
from trainer.data.cache import default_cache_dir
from trainer.data.synth_corpus import SynthSpec, _add_noise, _speak_all, load_or_generate, synth_spec

TINY_KEYWORDS = SynthSpec(task="keywords", n_voices=5, reps=1)
TINY_DIGITS = SynthSpec(task="digits", n_voices=4, reps=3)


@pytest.fixture(scope="module")
def keywords(tmp_path_factory):
    return load_or_generate(TINY_KEYWORDS, tmp_path_factory.mktemp("cache"))


def test_keyword_corpus_has_one_second_clip_per_speaker_and_word(keywords):
    manifest, splits = keywords
    assert manifest["labels"] == list(KEYWORDS)
    for name, split in splits.items():
        n_voices = len(manifest["voices"][name])
        assert len(split) == n_voices * len(KEYWORDS) == manifest["counts"][name]
        assert np.all(np.diff(split.offsets) == 16000)  # 1 s at 16 kHz
        assert [KEYWORDS[t] for t in split.targets] == split.texts.tolist()
        assert split.audio.dtype == np.int16


def test_splits_are_speaker_disjoint(keywords):
    manifest, splits = keywords
    voices = {s: set(v) for s, v in manifest["voices"].items()}
    assert voices["train"].isdisjoint(voices["val"]) and voices["train"].isdisjoint(voices["test"])
    assert voices["val"].isdisjoint(voices["test"])
    variants = {s: {v.split("+")[1] for v in vs} for s, vs in voices.items()}  # f3 in train never in test
    assert variants["train"].isdisjoint(variants["test"]) and variants["train"].isdisjoint(variants["val"])
    assert all(len(v) >= 1 for v in voices.values()) and sum(map(len, voices.values())) == 5
    # every utterance of a split is spoken by one of that split's voices
    for name, split in splits.items():
        assert set(split.voices.tolist()) == set(range(len(manifest["voices"][name])))


def test_same_seed_same_audio_other_seed_other_audio(tmp_path, keywords):
    _, first = keywords
    _, again = load_or_generate(TINY_KEYWORDS, tmp_path / "elsewhere")
    for name in first:
        np.testing.assert_array_equal(first[name].audio, again[name].audio)
    other_manifest, other = load_or_generate(SynthSpec(task="keywords", n_voices=5, reps=1, seed=1), tmp_path)
    assert not np.array_equal(first["train"].audio[:16000], other["train"].audio[:16000])


def test_speaker_audio_does_not_depend_on_the_other_speakers(tmp_path):
    # more speakers change the split assignment, not the audio of a given speaker's utterances
    m5, s5 = load_or_generate(SynthSpec(task="digits", n_voices=4, reps=2), tmp_path)
    m8, s8 = load_or_generate(SynthSpec(task="digits", n_voices=8, reps=2), tmp_path)

    def by_voice(manifest, splits):
        out = {}
        for name, split in splits.items():
            for i in range(len(split)):
                voice = manifest["voices"][name][split.voices[i]]
                out.setdefault(voice.split("+")[1], []).append(
                    split.audio[split.offsets[i] : split.offsets[i + 1]]
                )
        return out

    a, b = by_voice(m5, s5), by_voice(m8, s8)
    shared = set(a) & set(b)
    assert shared
    for variant in shared:
        for x, y in zip(a[variant], b[variant], strict=True):
            np.testing.assert_array_equal(x, y)


def test_digit_corpus_texts_and_lengths(tmp_path):
    manifest, splits = load_or_generate(TINY_DIGITS, tmp_path)
    assert manifest["labels"] == list(DIGIT_WORDS)
    for split in splits.values():
        for text in split.texts.tolist():
            assert text.isdigit() and 2 <= len(text) <= 5
        seconds = np.diff(split.offsets) / 16000
        # speech of 2-5 digits plus 0.1-0.6 s of silence
        assert seconds.min() > 0.4 and seconds.max() < 5


def test_noise_is_added_at_the_requested_snr():
    spec = SynthSpec(task="keywords", snr_db=(12.0, 12.0))
    t = np.arange(16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mixed = _add_noise(spec, np.random.default_rng(0), speech.copy(), speech).astype(np.float64) / 32767
    noise = mixed - speech
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(12.0, abs=0.1)


def test_second_load_is_a_cache_hit_without_synthesis(tmp_path):
    manifest, _ = load_or_generate(TINY_KEYWORDS, tmp_path)
    assert manifest["cache_hit"] is False
    folder = tmp_path / manifest["path"].split("/")[-1]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    before = espeak.synth_count()
    again, _ = load_or_generate(TINY_KEYWORDS, tmp_path)
    assert again["cache_hit"] is True and espeak.synth_count() == before
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"] and on_disk["generation_seconds"] > 0
    assert on_disk["params"]["seed"] == 0 and on_disk["version"] == 2
    assert {"train.npz", "val.npz", "test.npz", "manifest.json"} <= set(mtimes)


def test_cache_location_follows_gradwatch_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADWATCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "corpora"
    monkeypatch.delenv("GRADWATCH_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "gradwatch", "corpora")


def test_bad_sizes_and_specs_are_named():
    with pytest.raises(ValueError, match="'huge'.*full"):
        synth_spec("keywords", "huge")
    with pytest.raises(ValueError, match="n_voices=2"):
        SynthSpec(task="keywords", n_voices=2)
    with pytest.raises(ValueError, match="'words'"):
        synth_spec("words")
    assert synth_spec("digits", 7).reps == 7


def test_batched_resampling_matches_torchaudio_per_utterance():
    import torch
    import torchaudio

    words = ["yes", "left", "go"]
    batched = _speak_all(
        SynthSpec(task="keywords"),
        "en+f2",
        [(np.random.default_rng(i), w, w, 0) for i, w in enumerate(words)],
    )
    espeak.reset()  # the same history as inside _speak_all: a fresh library
    for i, (word, got) in enumerate(zip(words, batched, strict=True)):
        rng = np.random.default_rng(i)  # the draws _speak_all makes: rate in [140, 210], pitch in [25, 75]
        rate, pitch = int(rng.integers(140, 211)), int(rng.integers(25, 76))
        raw = espeak.synthesize(word, voice="en+f2", rate=rate, pitch=pitch).astype(np.float32) / 32768
        want = torchaudio.functional.resample(torch.from_numpy(raw), 22050, 16000).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_keywords_are_centred_within_the_maximum_shift():
    from trainer.data.synth_corpus import _keyword_clip

    speech = np.full(4000, 0.5, dtype=np.float32)  # a 250 ms "word"
    spec = SynthSpec(task="keywords", snr_db=(80.0, 80.0), max_shift_seconds=0.1)
    for seed in range(20):
        clip = _keyword_clip(spec, np.random.default_rng(seed), speech).astype(np.float64) / 32767
        start = int(np.argmax(np.abs(clip) > 0.25))
        assert abs(start - (16000 - 4000) // 2) <= 1600  # centred +- 100 ms
