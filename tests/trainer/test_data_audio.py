"""Reading a real corpus's audio (trainer/data/audio.py): what soundfile would hand over silently but would
train on garbage (NaN, overflowing or truncated audio) is refused by name; odd file names still open."""

import os
import re
import struct
import subprocess
import warnings

import numpy as np
import pytest
import soundfile
import torch

from trainer.data import CorpusLayoutError
from trainer.data.audio import audio_info, read_audio
from trainer.data.features import LogMel, keyword_features
from trainer.data.files import CorpusWarning


def tone(n, rate=16000, hz=440.0):
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_infinite_sample_is_refused_with_the_file_and_the_time(bad, tmp_path):
    # It used to reach the log-mel, and from there every loss and weight of the run, without naming the file.
    wav = tone(16000)
    wav[800] = bad  # 50 ms
    path = tmp_path / "x_nohash_0.wav"
    soundfile.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(
        CorpusLayoutError, match=r"x_nohash_0\.wav' has 1 NaN or infinite sample\(s\), the first at 0\.050 s"
    ):
        read_audio(path)


def test_samples_whose_spectrum_overflows_are_refused_and_large_but_finite_scales_are_read(tmp_path):
    huge, int32_scale = tmp_path / "huge.wav", tmp_path / "int32_scale.wav"
    soundfile.write(huge, tone(16000) * 1e30, 16000, subtype="FLOAT")
    # The oracle for the refusal: this clip's log-mel is not finite.
    assert not torch.isfinite(LogMel(keyword_features())(torch.from_numpy(tone(16000) * 1e30))).all()
    with pytest.raises(CorpusLayoutError, match=r"huge\.wav' holds samples of magnitude 3e\+29"):
        read_audio(huge)
    # Float samples written on int32's scale are loud, not broken: their log-mel is finite, so they are read.
    soundfile.write(int32_scale, tone(16000) * 2**31, 16000, subtype="FLOAT")
    wav, _ = read_audio(int32_scale)
    assert torch.isfinite(LogMel(keyword_features())(torch.from_numpy(wav))).all()


@pytest.mark.parametrize(
    ("subtype", "channels", "width"), [("PCM_16", 1, 2), ("PCM_24", 2, 3), ("FLOAT", 1, 4)]
)
def test_a_truncated_wav_is_refused_with_the_frames_its_header_declares(subtype, channels, width, tmp_path):
    # libsndfile reads what is there and even corrects its frame count to match: soundfile saw nothing wrong.
    path = tmp_path / "cut.wav"
    soundfile.write(path, np.stack([tone(16000)] * channels, axis=1), 16000, subtype=subtype)
    data = path.read_bytes()
    start = data.index(b"data") + 8
    path.write_bytes(data[: start + 5000 * channels * width])
    assert soundfile.info(path).frames == 5000  # what soundfile reports, without a word
    with pytest.raises(CorpusLayoutError, match=r"cut\.wav' is truncated: it holds 5000 of the 16000 frames"):
        read_audio(path)


# (format, subtype, channels, bytes per sample, extension): AIFF-C for float samples; RF64 (whose data chunk
# defers its size to the ds64 chunk) in a .wav, as broadcast recorders name it.
OTHER_CONTAINERS = [
    ("AIFF", "PCM_24", 1, 3, ".aiff"),
    ("AIFF", "FLOAT", 2, 4, ".aif"),
    ("RF64", "PCM_16", 1, 2, ".wav"),
    ("RF64", "PCM_24", 1, 3, ".wav"),
    ("W64", "PCM_24", 1, 3, ".w64"),
    ("W64", "FLOAT", 2, 4, ".w64"),
]


@pytest.mark.parametrize(
    ("fmt", "subtype", "channels", "width", "ext"),
    OTHER_CONTAINERS,
    ids=[f"{c[0]}-{c[1]}" for c in OTHER_CONTAINERS],
)
def test_a_truncated_aiff_rf64_or_w64_is_refused_with_the_frames_its_header_declares(
    fmt, subtype, channels, width, ext, tmp_path
):
    # As for a WAV, libsndfile reads what is there and shortens its frame count to match: they were read.
    path = tmp_path / f"cut{ext}"
    soundfile.write(path, np.stack([tone(16000)] * channels, axis=1), 16000, format=fmt, subtype=subtype)
    assert soundfile.info(path).frames == 16000  # the oracle: what the intact file declares
    data = path.read_bytes()
    # The sample data ends the file: keep 5,000 frames of it and one byte of the next frame.
    path.write_bytes(data[: len(data) - 11000 * channels * width + 1])
    assert soundfile.info(path).frames == 5000 and len(soundfile.read(path)[0]) == 5000  # without a word
    message = rf"cut{re.escape(ext)}' is truncated: it holds 5000 of the 16000 frames its header declares"
    with pytest.raises(CorpusLayoutError, match=message):
        read_audio(path)
    with pytest.raises(CorpusLayoutError, match=message):
        audio_info(path)


@pytest.mark.parametrize(
    ("fmt", "subtype", "channels", "width", "ext"),
    OTHER_CONTAINERS,
    ids=[f"{c[0]}-{c[1]}" for c in OTHER_CONTAINERS],
)
def test_intact_aiff_rf64_and_w64_files_are_read_whole(fmt, subtype, channels, width, ext, tmp_path):
    # 16,001 frames: 24-bit mono ones make an odd number of data bytes, which the container pads.
    path = tmp_path / f"whole{ext}"
    soundfile.write(path, np.stack([tone(16001)] * channels, axis=1), 16000, format=fmt, subtype=subtype)
    want, _ = soundfile.read(path, dtype="float32", always_2d=True)
    wav, rate = read_audio(path)
    assert rate == 16000 and audio_info(path) == (16001, 16000)
    np.testing.assert_array_equal(wav, want.mean(axis=1))


def _with_size(data: bytes, chunk: bytes, skip: int, packed: bytes) -> bytes:
    """``data`` with the size field ``skip`` bytes after the id ``chunk`` replaced by ``packed``."""
    at = data.index(chunk) + skip
    return data[:at] + packed + data[at + len(packed) :]


@pytest.mark.parametrize(
    ("fmt", "chunk", "skip", "packed"),
    [
        # sox writing an AIFF to a pipe declares 0x7F000000 bytes, rounded down to whole frames
        ("AIFF", b"SSND", 4, struct.pack(">I", 8 + 0x7F000000 // 2 * 2)),
        ("AIFF", b"SSND", 4, struct.pack(">I", 0)),
        ("W64", b"data\xf3\xac\xd3\x11", 16, struct.pack("<Q", 2**64 - 1)),
        ("W64", b"data\xf3\xac\xd3\x11", 16, struct.pack("<Q", 0)),
    ],
    ids=["aiff-sox", "aiff-0", "w64-ffffffffffffffff", "w64-0"],
)
def test_an_aiff_or_w64_whose_header_leaves_the_size_open_is_read_whole(fmt, chunk, skip, packed, tmp_path):
    # libsndfile reads these to the end of the file: no size is declared to fall short of.
    path = tmp_path / "streamed"
    soundfile.write(path, tone(16000), 16000, format=fmt, subtype="PCM_16")
    path.write_bytes(_with_size(path.read_bytes(), chunk, skip, packed))
    want, _ = soundfile.read(path, dtype="float32")
    wav, _ = read_audio(path)
    assert len(wav) == 16000
    np.testing.assert_array_equal(wav, want)


@pytest.mark.parametrize(
    "placeholder", [0xFFFFFFFF, 0x7FFFF000, 0x7FFFFFFF], ids=["ffffffff", "sox", "arecord"]
)
def test_a_wav_whose_header_leaves_the_size_open_is_read_whole(placeholder, tmp_path):
    # A recorder writing to a pipe cannot seek back to fill in the sizes: it leaves a placeholder ("to the
    # end"): 0xFFFFFFFF, sox's 0x7FFFF000, arecord's 0x7FFFFFFF. These were refused as truncated.
    path = tmp_path / "streamed.wav"
    soundfile.write(path, tone(16000), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = struct.pack("<I", placeholder)
    data[4:8] = struct.pack("<I", min(placeholder + 36, 0xFFFFFFFF))
    path.write_bytes(bytes(data))
    wav, rate = read_audio(path)
    want, _ = soundfile.read(tmp_path / "streamed.wav", dtype="float32")
    assert rate == 16000 and len(wav) == 16000
    np.testing.assert_array_equal(wav, want)


@pytest.mark.parametrize("subtype", ["GSM610", "G721_32", "IMA_ADPCM"])
def test_a_wav_libsndfile_reads_only_forwards_is_read_whole(subtype, tmp_path):
    # libsndfile marks GSM 6.10 and G.721 WAVs non-seekable: soundfile's read(-1) refused them
    # ("frames must be specified for non-seekable files"), in a ValueError that named no file.
    path = tmp_path / "coded.wav"
    soundfile.write(path, tone(16000), 16000, subtype=subtype)
    with soundfile.SoundFile(path) as f:
        frames = f.frames
    wav, rate = read_audio(path)
    assert rate == 16000 and len(wav) == frames >= 16000
    assert np.abs(wav[1000:15000]).max() > 0.1  # the tone, decoded
    crop, _ = read_audio(path, start=4000, frames=1000)
    np.testing.assert_array_equal(crop, wav[4000:5000])


def _without_total(flac: bytes) -> bytes:
    """The FLAC with its STREAMINFO's total sample count cleared: what an encoder writing to a pipe leaves."""
    data = bytearray(flac)
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first, from byte 8
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    return bytes(data)


def test_a_flac_whose_header_leaves_the_length_open_is_read_whole(tmp_path):
    # libsndfile reports SF_COUNT_MAX frames for it: read(-1) failed with "array is too big", naming no file.
    whole, open_ended = tmp_path / "whole.flac", tmp_path / "open.flac"
    soundfile.write(whole, tone(20000), 16000, subtype="PCM_16")
    open_ended.write_bytes(_without_total(whole.read_bytes()))
    assert soundfile.info(open_ended).frames == 2**63 - 1
    wav, rate = read_audio(open_ended)
    np.testing.assert_array_equal(wav, read_audio(whole)[0])
    assert audio_info(open_ended) == (20000, 16000)
    np.testing.assert_array_equal(read_audio(open_ended, start=100, frames=50)[0], wav[100:150])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (soundfile: pipe size)
def test_a_flac_libsndfile_wrote_to_a_pipe_is_read_whole(tmp_path):
    path = tmp_path / "piped.flac"
    with open(path, "wb") as out:
        writer = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
        with soundfile.SoundFile(writer.stdin, "w", 16000, 1, format="FLAC") as f:
            f.write(tone(16000))
        writer.stdin.close()
        assert writer.wait() == 0
    wav, _ = read_audio(path)
    assert len(wav) == 16000


def test_a_truncated_flac_is_refused_by_name(tmp_path):
    path = tmp_path / "cut.flac"
    soundfile.write(path, tone(48000), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorpusLayoutError, match=r"cut\.flac"):
        read_audio(path)


def test_a_truncated_mp3_is_read_with_a_warning_and_an_intact_one_without(tmp_path):
    # An MP3 without a Xing header only estimates its length: a shortfall is announced, not refused.
    whole, cut = tmp_path / "whole.mp3", tmp_path / "cut.mp3"
    soundfile.write(whole, tone(48000), 16000, format="MP3", subtype="MPEG_LAYER_III")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)
        assert len(read_audio(whole)[0]) == soundfile.info(whole).frames
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.warns(CorpusWarning, match=r"cut\.mp3': \d+ of the 48000 frames its header announces"):
        wav, _ = read_audio(cut)
    assert 0 < len(wav) < 48000 - 1152


def test_a_file_name_that_is_not_utf8_opens(tmp_path):
    # Latin-1 bytes from an old archive: soundfile could not encode the name to UTF-8 for libsndfile.
    raw = os.fsencode(tmp_path) + b"/caf\xe9_nohash_0.wav"
    soundfile.write(tmp_path / "x.wav", tone(8000), 16000, subtype="PCM_16")
    os.rename(tmp_path / "x.wav", raw)
    wav, rate = read_audio(os.fsdecode(raw))
    want, _ = soundfile.read(raw, dtype="float32")  # soundfile takes bytes names
    np.testing.assert_array_equal(wav, want)


def test_a_folder_in_place_of_a_file_says_so(tmp_path):
    (tmp_path / "weird.wav").mkdir()
    with pytest.raises(CorpusLayoutError, match=r"cannot read '.*weird\.wav' \(is a directory\)"):
        read_audio(tmp_path / "weird.wav")
