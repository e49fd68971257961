"""A real corpus's audio files, read through soundfile: mono float32 samples, or a refusal naming the file.

What soundfile would hand over without complaint but would train on garbage is refused here, by name:
- a file the OS will not open: ``cannot read PATH (permission denied)``, not libsndfile's "System error";
- a truncated file: fewer frames than its header announces (libsndfile reads what is there, and for a WAV it
  even corrects the frame count to match, so the header's data size is checked too);
- NaN or infinite samples, or samples so large that the log-mel's power spectrum overflows float32: either
  makes every feature, loss and gradient of the run NaN.
Paths go to libsndfile as bytes, so a file name that is not UTF-8 (Latin-1 bytes from an old archive) opens.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile

from .errors import CorpusLayoutError
from .files import cannot_read, warn

__all__ = ["read_audio", "audio_info", "MAX_ABS_SAMPLE"]

# Full scale is 1.0; even float samples written on int32's scale stay below 2.2e9. The power spectrum of a
# 640-sample window reaches ~1e5 x peak², and float32 ends at 3.4e38: a peak of 1e12 is far from both.
MAX_ABS_SAMPLE = 1e12
# An MP3 without a Xing/Info header announces an estimate of its length (from the file size and the first
# frame's bit rate): it may differ from what decodes by a frame (1,152 samples), more for a variable bit rate.
_MP3_FRAME = 1152


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


def _wav_missing_bytes(path: Path) -> int:
    """How many bytes of a RIFF/WAVE file's data chunk its header announces but the file lacks (0 for another
    format, or a size of 0 or 0xFFFFFFFF: what a writer that cannot seek back leaves in the header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return 0
            order = "<" if head[:4] == b"RIFF" else ">"
            size = os.fstat(f.fileno()).st_size
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk, length = f.read(4), struct.unpack(order + "I", f.read(4))[0]
                if chunk == b"data":
                    return 0 if length in (0, 0xFFFFFFFF) else max(0, pos + 8 + length - size)
                pos += 8 + length + (length & 1)  # chunks are padded to an even size
    except OSError as e:
        raise cannot_read(path, e) from None
    return 0


# Bytes per sample of the PCM subtypes, to turn the bytes a WAV lacks into frames for the message.
_SAMPLE_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
    "DOUBLE": 8,
}  # fmt: skip


def _announced_frames(path: Path, f: soundfile.SoundFile) -> int:
    """The frames the header of the open file ``f`` announces. libsndfile's count of a WAV is what the file
    holds (it corrects a data chunk that runs past the end of the file), so the header is read here."""
    missing = _wav_missing_bytes(path)
    if not missing:
        return f.frames
    width = _SAMPLE_BYTES.get(f.subtype, 0) * f.channels
    return f.frames + max(1, missing // width if width else 1)


def _truncated(path: Path, got: int, announced: int) -> CorpusLayoutError:
    return CorpusLayoutError(
        f"audio file {str(path)!r} is truncated: it holds {got} of the {announced} frames its header "
        "declares (an interrupted copy or download?): replace it, or leave it out of the corpus"
    )


def audio_info(path: Path) -> tuple[int, int]:
    """``(frames, sample rate)`` of ``path``; a truncated WAV or an unreadable file is refused by name."""
    with _open(path) as f:
        frames, rate, announced = f.frames, f.samplerate, _announced_frames(path, f)
    if frames < announced:
        raise _truncated(path, frames, announced)
    return frames, rate


def read_audio(path: Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channels averaged) and their rate: ``frames`` frames from ``start`` (-1: to the
    end), at the file's own rate. Raises CorpusLayoutError naming the file when it cannot be read, is
    truncated, or holds non-finite or absurdly large samples."""
    with _open(path) as f:
        announced, rate, mp3 = _announced_frames(path, f), f.samplerate, f.format == "MP3"
        try:
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
        except RuntimeError as e:  # e.g. a FLAC cut short: "flac decoder lost sync"
            raise _unreadable(path, e) from None
    wanted = announced - start if frames < 0 else min(frames, announced - start)
    if len(data) < wanted and not (mp3 and wanted - len(data) <= _MP3_FRAME):
        if not mp3:
            raise _truncated(path, start + len(data), announced)
        warn(
            f"audio file {str(path)!r}: {start + len(data)} of the {announced} frames its header announces "
            "could be read (truncated? an MP3 without a Xing header only estimates its length); kept as read"
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
