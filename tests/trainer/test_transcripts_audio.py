"""Audio a transcript cannot describe is refused by name: NaN or infinite samples (they would make the run
NaN), and files holding less audio than their header declares (the transcript describes all of it)."""

import re
import warnings

import numpy as np
import pytest
import soundfile

from trainer.data import CorpusLayoutError, CorpusWarning, load_task

SPEAKERS = ("anna", "bob", "carl", "dora", "emil")


def corpus(root, ext=".wav", **write):
    """trans.txt and one 0.75 s clip per speaker, ``<speaker>-0<ext>``; returns the clips' paths."""
    paths, lines = [], []
    for k, speaker in enumerate(SPEAKERS):
        t = np.arange(12000) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t)).astype(np.float32)
        paths.append(root / f"{speaker}-0{ext}")
        soundfile.write(paths[-1], wav, 16000, **write)
        lines.append(f"{speaker}-0 {k} {k}")
    (root / "trans.txt").write_text("\n".join(lines) + "\n")
    return paths


def load(root):
    return load_task("digits", "transcripts", root, cache_dir=root / "cache")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_float_file_with_a_non_finite_sample_is_refused_naming_it(value, tmp_path):
    paths = corpus(tmp_path, subtype="FLOAT")
    wav, rate = soundfile.read(paths[2], dtype="float32")
    wav[800] = value  # at 0.05 s
    soundfile.write(paths[2], wav, rate, subtype="FLOAT")
    with pytest.raises(CorpusLayoutError, match=rf"{re.escape(str(paths[2]))}' has 1 NaN or infinite sample"):
        load(tmp_path)


def test_a_truncated_wav_is_refused_naming_it(tmp_path):
    paths = corpus(tmp_path, subtype="PCM_16")
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])  # the header still declares 12,000 frames
    with pytest.raises(CorpusLayoutError, match=rf"{re.escape(str(paths[1]))}' is truncated"):
        load(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the audio reader's own word on a short MP3
def test_a_truncated_mp3_is_refused_naming_it(tmp_path):
    paths = corpus(tmp_path, ext=".mp3", format="MP3", subtype="MPEG_LAYER_III")
    announced = soundfile.info(paths[3]).frames
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    assert soundfile.info(paths[3]).frames == announced  # the header (Xing) still announces the whole clip
    assert len(soundfile.read(paths[3])[0]) < announced / 2  # but not half of it decodes
    with pytest.raises(
        CorpusLayoutError, match=rf"{re.escape(str(paths[3]))}' is truncated\b.* {announced} frames"
    ):
        load(tmp_path)


def test_whole_mp3_files_load(tmp_path):
    paths = corpus(tmp_path, ext=".mp3", format="MP3", subtype="MPEG_LAYER_III")
    splits = load(tmp_path)
    frames = sorted(x.shape[-1] for part in (splits.train, splits.val, splits.test) for x, _ in part)
    assert frames == sorted(1 + len(soundfile.read(p)[0]) // 160 for p in paths)


def vbr_mp3_without_xing(path):
    """A 4 s variable bit rate MP3 (a quiet second, then noise) with its Xing frame removed, as tools that
    concatenate MP3s leave it: libsndfile then estimates its length from the first (cheap) frame's rate."""
    t = np.arange(16000 * 4) / 16000
    quiet = 1e-4 * np.sin(2 * np.pi * 100 * t[:16000])
    noise = 0.5 * np.random.default_rng(0).standard_normal(16000 * 3)
    wav = np.concatenate([quiet, noise]).astype(np.float32)
    soundfile.write(path, wav, 16000, format="MP3", bitrate_mode="VARIABLE", compression_level=0.9)
    data = path.read_bytes()
    first = data.index(b"\xff\xf3")
    assert b"Xing" in data[first : first + 200]
    path.write_bytes(data[:first] + data[data.index(b"\xff\xf3", first + 4) :])
    assert soundfile.info(path).frames > 2 * len(soundfile.read(path)[0])  # the estimate is far off


def test_an_intact_vbr_mp3_without_a_xing_header_loads(tmp_path):
    # It was refused as truncated: its header's frame count is only an estimate, not a declared length.
    paths = corpus(tmp_path)
    paths[2].unlink()
    vbr_mp3_without_xing(paths[2].with_suffix(".mp3"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)
        splits = load(tmp_path)
    assert sum(len(part) for part in (splits.train, splits.val, splits.test)) == 5


@pytest.mark.filterwarnings("ignore::UserWarning")  # the audio reader's own word on a short MP3
def test_an_mp3_without_a_xing_header_cut_mid_frame_is_refused(tmp_path):
    paths = corpus(tmp_path)
    paths[2].unlink()
    path = paths[2].with_suffix(".mp3")
    vbr_mp3_without_xing(path)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xf3", len(data) // 4) + 10])
    with pytest.raises(CorpusLayoutError, match=rf"{re.escape(str(path))}' is truncated"):
        load(tmp_path)
