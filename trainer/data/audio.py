"""A real corpus's audio files, read through soundfile: mono float32 samples, or a refusal naming the file.

What soundfile would hand over without complaint but would train on garbage is refused here, by name:
- a file the OS will not open: ``cannot read PATH (permission denied)``, not libsndfile's "System error";
- a truncated file: fewer frames than its header announces (libsndfile reads what is there, and for a WAV,
  RF64, Wave64 or AIFF file it even corrects the frame count to match, so the header's data size is checked
  too, by ``headers``);
- NaN or infinite samples, or samples so large that the log-mel's power spectrum overflows float32: either
  makes every feature, loss and gradient of the run NaN.
Paths go to libsndfile as bytes, so a file name that is not UTF-8 (Latin-1 bytes from an old archive) opens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

from .errors import CorpusLayoutError
from .files import cannot_read, warn
from .headers import missing_data_bytes

__all__ = ["read_audio", "audio_info", "mp3_cut_short", "MAX_ABS_SAMPLE"]

# Full scale is 1.0; even float samples written on int32's scale stay below 2.2e9. The power spectrum of a
# 640-sample window reaches ~1e5 x peak², and float32 ends at 3.4e38: a peak of 1e12 is far from both.
MAX_ABS_SAMPLE = 1e12
# An MP3 without a Xing/Info header announces an estimate of its length (from the file size and the first
# frame's bit rate): it may differ from what decodes by a frame (1,152 samples), more for a variable bit rate.
_MP3_FRAME = 1152
# What libsndfile reports as the frame count of a file whose header leaves the length open (a FLAC encoded to
# a pipe): SF_COUNT_MAX. Such a file is read to its end, and nothing is announced to check it against.
_UNKNOWN_FRAMES = 2**63 - 1
# Frames read at a time: libsndfile reads some files (GSM 6.10, G.721 WAVs) only forwards, in known amounts.
_BLOCK = 1 << 16


def _open(path: Path) -> soundfile.SoundFile:
    try:
        return soundfile.SoundFile(os.fsencode(path))
    except RuntimeError as e:  # soundfile.LibsndfileError
        raise _unreadable(path, e) from None


def _unreadable(path: Path, error: RuntimeError) -> CorpusLayoutError:
    # libsndfile says "System error." for whatever the OS refused; Python's open() says which refusal it was.
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return cannot_read(path, e)
    reason = getattr(error, "error_string", None) or str(error)  # (str(error) repeats the path, as bytes)
    return CorpusLayoutError(f"cannot read audio file {str(path)!r}: {reason}")


# Bytes per sample of the PCM subtypes, to turn the bytes a file lacks into frames for the message.
_SAMPLE_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
    "DOUBLE": 8,
}  # fmt: skip


def _announced_frames(path: Path, f: soundfile.SoundFile) -> int:
    """The frames the header of the open file ``f`` announces. libsndfile's count of a WAV, RF64, Wave64 or
    AIFF file is what the file holds (it shortens it when the data chunk runs past the end of the file), so
    the header is read here (``headers``)."""
    missing = missing_data_bytes(path)
    if not missing:
        return f.frames
    width = _SAMPLE_BYTES.get(f.subtype, 0) * f.channels
    # Rounded up: libsndfile's count leaves out a frame cut in the middle, which the header still declares.
    return f.frames + max(1, -(-missing // width) if width else 1)


def _read_open_ended(path: Path, f: soundfile.SoundFile) -> np.ndarray:
    """All frames, float32 of shape (n, channels), of a file whose header leaves its length open (libsndfile
    reports SF_COUNT_MAX frames: a FLAC encoded to a pipe). soundfile's read seeks after each block, which
    libsndfile refuses for such a file, so libsndfile's reader is called directly (soundfile exposes no public
    way). A decoding error once frames came is the stream's end: a FLAC libsndfile wrote to a pipe ends in
    bytes its decoder cannot sync to."""
    blocks = []
    while True:
        out = np.empty((_BLOCK, f.channels), dtype=np.float32)
        got = soundfile._snd.sf_readf_float(f._file, soundfile._ffi.cast("float *", out.ctypes.data), _BLOCK)
        error = soundfile._snd.sf_error(f._file)
        if got > 0:
            blocks.append(out[:got])
        if error and not blocks:
            raise _unreadable(path, soundfile.LibsndfileError(error))
        if error or got < _BLOCK:
            return np.concatenate(blocks) if blocks else out[:0]


def _blocks(path: Path, f: soundfile.SoundFile, frames: int = -1) -> Iterator[np.ndarray]:
    """``frames`` frames of ``f`` (-1: to its end) as float32 blocks of shape (n, channels). Read a block at a
    time: ``f.read(-1)`` refuses a file libsndfile reads only forwards, and allocates the whole announced
    length at once (too big for a FLAC announcing SF_COUNT_MAX). A read error names the file."""
    left = frames
    while left:
        want = _BLOCK if left < 0 else min(_BLOCK, left)
        try:
            block = f.read(want, dtype="float32", always_2d=True)
        except (RuntimeError, ValueError) as e:  # e.g. a FLAC cut short: "flac decoder lost sync"
            raise _unreadable(path, e) from None
        if len(block):
            yield block
        if len(block) < want:
            return
        left = left - len(block) if left > 0 else left


# MPEG audio bit rates (kbit/s) by (MPEG-1?, layer) and sample rates by version bits, for mp3_cut_short.
_MPEG_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}  # fmt: skip
_MPEG_KBPS[False, 3] = _MPEG_KBPS[False, 2]
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mp3_cut_short(path: Path, decoded: int, announced: int) -> bool:
    """Whether an MP3 of which ``decoded`` of the ``announced`` frames decode is visibly cut short: its
    Xing/Info/VBRI header declares the length and more than a frame is missing, or its last frame runs past
    the end of the file. Without such a header libsndfile's frame count is only an estimate (the file size
    over the first frame's bit rate), which an intact variable bit rate MP3 may miss by far."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise cannot_read(path, e) from None
    pos, first = 0, True
    if data[:3] == b"ID3" and len(data) >= 10:  # an ID3v2 tag: a syncsafe size, and a footer if flagged
        pos = 10 + 10 * bool(data[5] & 0x10)
        pos += sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    while pos + 4 <= len(data):
        h = int.from_bytes(data[pos : pos + 4], "big")
        version, layer = (h >> 19) & 3, 4 - ((h >> 17) & 3)
        kbps, rate = (h >> 12) & 15, (h >> 10) & 3
        if h >> 21 != 0x7FF or version == 1 or layer == 4 or kbps in (0, 15) or rate == 3:
            return False  # the frames end here (a tag, or what no decoder reads), not mid-frame
        mpeg1, hz, pad = version == 3, _MPEG_RATES[version][rate], (h >> 9) & 1
        bits = _MPEG_KBPS[mpeg1, layer][kbps] * 1000
        if layer == 1:
            size = (12 * bits // hz + pad) * 4
        else:
            size = (144 if mpeg1 or layer == 2 else 72) * bits // hz + pad
        if first and any(tag in data[pos : pos + size] for tag in (b"Xing", b"Info", b"VBRI")):
            if decoded + _MP3_FRAME < announced:
                return True
        pos, first = pos + size, False
    return pos > len(data)


def _truncated(path: Path, got: int, announced: int) -> CorpusLayoutError:
    return CorpusLayoutError(
        f"audio file {str(path)!r} is truncated: it holds {got} of the {announced} frames its header "
        "declares (an interrupted copy or download?): replace it, or leave it out of the corpus"
    )


def audio_info(path: Path) -> tuple[int, int]:
    """``(frames, sample rate)`` of ``path``; a truncated or unreadable file is refused by name."""
    with _open(path) as f:
        if f.frames == _UNKNOWN_FRAMES:
            return len(_read_open_ended(path, f)), f.samplerate
        frames, rate, announced = f.frames, f.samplerate, _announced_frames(path, f)
    if frames < announced:
        raise _truncated(path, frames, announced)
    return frames, rate


def read_audio(path: Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channels averaged) and their rate: ``frames`` frames from ``start`` (-1: to the
    end), at the file's own rate. Raises CorpusLayoutError naming the file when it cannot be read, is
    truncated, or holds non-finite or absurdly large samples."""
    with _open(path) as f:
        rate, mp3 = f.samplerate, f.format == "MP3"
        if f.frames == _UNKNOWN_FRAMES:  # nothing announced to check against: read to the end
            data = _read_open_ended(path, f)[start : None if frames < 0 else start + frames]
            _check_samples(path, data, rate, start)
            return data.mean(axis=1), rate
        announced = _announced_frames(path, f)
        if start and f.seekable():
            try:
                f.seek(start)
            except (RuntimeError, ValueError) as e:
                raise _unreadable(path, e) from None
        elif start:
            for _ in _blocks(path, f, start):
                pass
        blocks = list(_blocks(path, f, frames))
        data = np.concatenate(blocks) if blocks else np.zeros((0, f.channels), dtype=np.float32)
    wanted = announced - start if frames < 0 else min(frames, announced - start)
    if len(data) < wanted and not mp3:
        raise _truncated(path, start + len(data), announced)
    if len(data) + _MP3_FRAME < wanted and mp3 and mp3_cut_short(path, start + len(data), announced):
        warn(
            f"audio file {str(path)!r}: {start + len(data)} of the {announced} frames its header announces "
            "could be read (truncated?); kept as read"
        )
    _check_samples(path, data, rate, start)
    return data.mean(axis=1), rate


def _check_samples(path: Path, data: np.ndarray, rate: int, start: int) -> None:
    if not data.size:
        return
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if len(bad):  # one NaN makes the log-mel, then the loss and every weight, NaN
        raise CorpusLayoutError(
            f"audio file {str(path)!r} has {len(bad)} NaN or infinite sample(s), the first at "
            f"{(start + bad[0]) / rate:.3f} s: replace it, or leave it out of the corpus"
        )
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        raise CorpusLayoutError(
            f"audio file {str(path)!r} holds samples of magnitude {peak:.3g} (full scale is 1): its "
            "spectrum would overflow to infinity; replace it, or leave it out of the corpus"
        )
