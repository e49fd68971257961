"""How many bytes of sample data an audio file's header declares but the file lacks: a truncated copy.

libsndfile reads what a cut file still holds and shortens its own frame count to match, without a word, for
every container whose header declares the size of its sample data (measured with libsndfile 1.2.2: WAV,
RF64, Wave64 and AIFF files cut short report, and read, only the frames left). So the declared size is read
here from the header itself and compared with the size of the file. The containers read:
- WAV: ``RIFF`` (little-endian) or ``RIFX`` (big-endian) ``WAVE``, the ``data`` chunk's 32-bit size;
- RF64 / BW64 (EBU Tech 3306, ITU-R BS.2088): a ``data`` size of 0xFFFFFFFF defers to the 64-bit one in the
  ``ds64`` chunk;
- Sony Wave64: GUID-named chunks whose 64-bit size counts their own 24-byte header, 8-byte aligned;
- AIFF / AIFF-C: ``FORM`` ``AIFF``/``AIFC``, the ``SSND`` chunk (big-endian).
A size that a writer which cannot seek back (to a pipe) leaves in the header declares nothing: the file is
then read to its end, as libsndfile does.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .files import cannot_read

__all__ = ["missing_data_bytes"]

# Data sizes a WAV writer that cannot seek back leaves in the header: 0, 0xFFFFFFFF, sox's 0x7FFFF000,
# arecord's 0x7FFFFFFF. Any size from 0x7FFF0000 on (2 GiB) is taken for such a placeholder.
_WAV_PLACEHOLDER = 0x7FFF0000
# sox writing an AIFF to a pipe declares 0x7F000000 bytes rounded down to whole frames ("the AIFF format does
# not provide for an indefinite number of samples"): any SSND size from 0x7EFF0000 on is taken for that.
_AIFF_PLACEHOLDER = 0x7EFF0000
# A 64-bit size from 2**63 on is no file's (0xFFFFFFFFFFFFFFFF: "unknown", -1 as a signed count).
_PLACEHOLDER_64 = 1 << 63
_RF64_DEFERRED = 0xFFFFFFFF  # a RF64 data chunk's own size when the ds64 chunk holds it
_W64_GUID_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")  # Wave64's chunk GUIDs: a FourCC, then this
_W64_RIFF = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")


@dataclass(frozen=True)
class _Chunks:
    """How a container lays out its chunks: an id, then a size field, then the chunk's data."""

    id_size: int  # 4: a FourCC; 16: a Wave64 GUID
    size_format: str  # struct format of the size field
    align: int  # chunks start on multiples of it (a pad byte after an odd size)
    counts_header: bool = False  # Wave64: the size counts the chunk's own id and size fields

    @property
    def header(self) -> int:
        return self.id_size + struct.calcsize(self.size_format)


_RIFF = _Chunks(4, "<I", 2)
_RIFX = _Chunks(4, ">I", 2)
_AIFF = _Chunks(4, ">I", 2)
_W64 = _Chunks(16, "<Q", 8, counts_header=True)


def missing_data_bytes(path: Path) -> int:
    """Bytes of the sample data chunk that ``path``'s header declares and the file does not hold: 0 for an
    intact file, another format, or a header that leaves the size open (a placeholder). Raises
    CorpusLayoutError naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(40)
            size = os.fstat(f.fileno()).st_size
            if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
                return _wav(f, size, _RIFF if head[:4] == b"RIFF" else _RIFX)
            if head[:4] in (b"RF64", b"BW64") and head[8:12] == b"WAVE":
                return _rf64(f, size)
            if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                return _aiff(f, size)
            if head[:16] == _W64_RIFF and head[24:40] == b"wave" + _W64_GUID_TAIL:
                return _wave64(f, size)
    except OSError as e:
        raise cannot_read(path, e) from None
    return 0


def _chunks(f: BinaryIO, size: int, pos: int, layout: _Chunks):
    """``(id, offset of its data, declared size of its data)`` of each chunk from ``pos`` on whose header the
    file holds (the last one's data may run past the end of the file: that is what is measured)."""
    while pos + layout.header <= size:
        f.seek(pos)
        raw = f.read(layout.header)
        (length,) = struct.unpack(layout.size_format, raw[layout.id_size :])
        if layout.counts_header:
            if length < layout.header:  # a size shorter than its own header: nothing more to walk
                return
            length -= layout.header
        yield raw[: layout.id_size], pos + layout.header, length
        pos += layout.header + length + (-length % layout.align)


def _beyond(start: int, length: int, size: int) -> int:
    return max(0, start + length - size)


def _wav(f: BinaryIO, size: int, layout: _Chunks) -> int:
    for chunk, start, length in _chunks(f, size, 12, layout):
        if chunk == b"data":
            return 0 if length == 0 or length >= _WAV_PLACEHOLDER else _beyond(start, length, size)
    return 0


def _rf64(f: BinaryIO, size: int) -> int:
    deferred = None  # the data size the ds64 chunk holds (it comes first: EBU Tech 3306)
    for chunk, start, length in _chunks(f, size, 12, _RIFF):
        if chunk == b"ds64" and length >= 16 and start + 16 <= size:
            f.seek(start + 8)  # after the 64-bit RIFF size
            (deferred,) = struct.unpack("<Q", f.read(8))
        elif chunk == b"data":
            if length != _RF64_DEFERRED:
                return 0 if length == 0 or length >= _WAV_PLACEHOLDER else _beyond(start, length, size)
            if deferred is None or deferred == 0 or deferred >= _PLACEHOLDER_64:
                return 0
            return _beyond(start, deferred, size)
        if length == _RF64_DEFERRED:  # (another chunk deferring to ds64's table: not walked past)
            return 0
    return 0


def _aiff(f: BinaryIO, size: int) -> int:
    for chunk, start, length in _chunks(f, size, 12, _AIFF):
        if chunk == b"SSND":  # (its data: a 4-byte offset, a 4-byte block size, then the samples)
            return 0 if length == 0 or length >= _AIFF_PLACEHOLDER else _beyond(start, length, size)
    return 0


def _wave64(f: BinaryIO, size: int) -> int:
    for chunk, start, length in _chunks(f, size, 40, _W64):
        if chunk == b"data" + _W64_GUID_TAIL:  # (the size as written counted the chunk's 24-byte header)
            placeholder = length == 0 or length + _W64.header >= _PLACEHOLDER_64
            return 0 if placeholder else _beyond(start, length, size)
    return 0
