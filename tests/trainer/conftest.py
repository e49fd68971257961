"""Tiny real corpora on disk for the trainer's end-to-end tests: a Speech Commands folder and a
transcripts.tsv folder, written with soundfile (the loaders' own reader), loaded in well under a second."""

import numpy as np
import pytest
import soundfile

SC_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SC_SPEAKERS = {"train": ["0a1b2c3d", "1f2e3d4c", "2b3c4d5e"], "val": ["3c4d5e6f"], "test": ["4d5e6f70"]}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _tone(seconds: float, hz: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_speech_commands(root):
    """The 10 core words, one 0.5-0.7 s clip per (word, speaker), split lists by speaker, background noise
    (which the 12-class variant crops its _silence_ clips from)."""
    lists = {"val": [], "test": []}
    for w, word in enumerate(SC_WORDS):
        (root / word).mkdir(parents=True)
        for split, speakers in SC_SPEAKERS.items():
            for s, speaker in enumerate(speakers):
                name = f"{speaker}_nohash_0.wav"
                soundfile.write(root / word / name, _tone(0.5 + 0.1 * s, 200 + 40 * w), 16000)
                if split in lists:
                    lists[split].append(f"{word}/{name}")
    (root / "validation_list.txt").write_text("\n".join(lists["val"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    (root / "_background_noise_").mkdir()
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 32000).astype(np.float32)
    soundfile.write(root / "_background_noise_" / "white_noise.wav", noise, 16000)
    return root


def write_transcripts(root):
    """transcripts.tsv with 5 speakers x 2 digit strings (spoken as words) at 22.05 kHz: a seeded split of the
    speakers, and audio resampled on load."""
    (root / "audio").mkdir(parents=True)
    lines = ["path\ttext\tspeaker"]
    for s in range(5):
        for u in range(2):
            path = f"audio/s{s}_{u}.wav"
            soundfile.write(root / path, _tone(0.6 + 0.1 * u, 300 + 50 * s, 22050), 22050)
            text = " ".join(DIGIT_WORDS[(3 * s + u + k) % 10] for k in range(3))
            lines.append(f"{path}\t{text}\tspk{s}")
    (root / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def speech_commands_dir(tmp_path_factory):
    return write_speech_commands(tmp_path_factory.mktemp("speech_commands"))


@pytest.fixture(scope="session")
def transcripts_dir(tmp_path_factory):
    return write_transcripts(tmp_path_factory.mktemp("transcripts"))


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    """One cache of tiny built-in corpora for every trainer test (generation takes well under a second)."""
    return tmp_path_factory.mktemp("corpora")
