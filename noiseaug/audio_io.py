"""Audio streaming with soundfile (libsndfile): the only module that imports it.

Samples are read and written in fixed blocks, so memory per file stays bounded
whatever the length of the recording. PCM is handled as integers on the
subtype's own grid, because libsndfile floors when it converts float to PCM
and drops the low byte of int32 data written to a 24-bit file: the rounding
is done here, in :mod:`noiseaug.noise`, before libsndfile sees the samples.

Two libsndfile habits would make identical runs give different bytes: a PEAK
chunk with a wall-clock time stamp in FLOAT/DOUBLE WAVs (turned off with
``SFC_SET_ADD_PEAK_CHUNK``; RF64 ignores that, and its time stamp is
zeroed), and Ogg stream serial numbers drawn from the clock (rewritten here
from the file's seed, with the page checksums redone).
"""

from __future__ import annotations

import binascii
import io
import os
import re
import sys
import weakref
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf

from .silence import codec_stderr_silenced

# Lossy encoders (Vorbis, Opus, MP3) write bytes that depend on how many frames
# each write hands them: their blocks stay at BLOCK_FRAMES, part of the
# reproducibility contract. Lossless outputs do not depend on it; they go in
# blocks of about BLOCK_BYTES, large enough that the noise tables stay warm in
# cache across a block (about 10 % faster on WAV than 65,536 frames), small
# enough that memory does not grow with the channel count.
BLOCK_FRAMES = 1 << 16
BLOCK_BYTES = 1 << 20
MIN_BLOCK_FRAMES = 1024
SFC_GET_LOG_INFO = 0x1001
SFC_SET_ADD_PEAK_CHUNK = 0x1050
SFC_GET_BROADCAST_INFO, SFC_SET_BROADCAST_INFO = 0x10F0, 0x10F1  # a Broadcast WAV's bext chunk
BEXT_FIXED, BEXT_HISTORY_SIZE_AT = 608, 604  # SF_BROADCAST_INFO: fixed fields, then the coding history's size
BEXT_FORMATS = ("WAV", "WAVEX", "RF64", "W64")
# Chunks libsndfile reads and writes as fixed structs, carried byte for byte: (get, set, sizeof) of the cue
# points (SF_CUES: a count and 100 points of 280 bytes) and the sampler's loops (SF_INSTRUMENT, the smpl chunk).
STRUCTS = ((0x10CE, 0x10CF, 4 + 100 * 280), (0x10D0, 0x10D1, 272))
# libsndfile's parse log says "data : 264600 (should be 88170)" for a cut file, and for an
# AIFF whose COMM chunk promises more frames than its SSND chunk holds, says so too
_SHORT_CHUNK = re.compile(rb"^\s*(data|SSND|Data Size|riff|Riff size)\s*:\s*(\d+)\s*\(should be (\d+)\)",
                          re.MULTILINE)  # WAV, AIFF, AU; W64 and RF64 say it of the whole file (RIFF)
_DECLARED_FRAMES = re.compile(rb"^\s*Frames\s*:\s*(\d+)\s*$", re.MULTILINE)  # RF64's ds64 chunk
_SHORT_FRAMES = re.compile(rb"Frame count read from 'COMM' chunk \((\d+)\) not equal to frame count\s*"
                           rb"\*{3} calculated from length of 'SSND' chunk \((\d+)\)")
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # written by streaming tools that never knew the length

# subtype -> (container dtype read and written, grid step in that dtype)
INTEGER_GRIDS: dict[str, tuple[type, int]] = {
    "PCM_S8": (np.int16, 256), "PCM_U8": (np.int16, 256), "PCM_16": (np.int16, 1),
    "PCM_24": (np.int32, 256), "PCM_32": (np.int32, 1),
    "ALAC_16": (np.int16, 1), "ALAC_20": (np.int32, 4096), "ALAC_24": (np.int32, 256),
    "ALAC_32": (np.int32, 1),
}
LOSSY_SUBTYPES = frozenset({"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})


class AudioError(Exception):
    """libsndfile could not read or write a file; the message is one line."""


@dataclass(frozen=True)
class Layout:
    """How a file's samples are stored, and how noiseaug handles them."""

    format: str
    subtype: str
    endian: str
    samplerate: int
    channels: int
    frames: int
    dtype: np.dtype
    step: int
    lo: float
    hi: float
    full_scale: float  # the data value of digital full scale (1.0 for float)
    broadcast: bytes | None = None  # a Broadcast WAV's bext fields (SF_BROADCAST_INFO), when it has them
    structs: tuple[tuple[int, bytes], ...] = ()  # (set command, data) of the cue points and sampler loops it has

    @property
    def integer(self) -> bool:
        return self.dtype.kind == "i"


def _native(fh: BinaryIO) -> BinaryIO | int:
    """The file's descriptor when it has one: libsndfile then does its own I/O.

    Through a Python file object, soundfile routes every read and seek through
    cffi callbacks, and a malformed file that makes libsndfile seek to a
    negative offset prints a Python traceback from inside the callback.
    """
    try:
        fh.flush()
        fh.seek(0)
        return fh.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return fh


def versions() -> dict[str, str]:
    """The version of libsndfile, for the manifest's run record."""
    return {"libsndfile": sf.__libsndfile_version__}


def open_read(fh: BinaryIO) -> sf.SoundFile:
    """Open an input; refuse one whose header promises more samples than it holds.

    libsndfile quietly shortens a cut WAV, AIFF, AU, W64 or RF64 to what is there; a dataset
    tool must not pass a truncated recording off as a good one.
    """
    cut = _mp3_cut(fh)
    if cut is not None:
        raise AudioError(cut)
    native = _native(fh)
    if isinstance(native, int):  # libsndfile gets a descriptor of its own, and closes it: 1.2.0 closed the
        native = os.dup(native)  # caller's own on a failed open, whatever it was told
        os.lseek(native, 0, os.SEEK_SET)  # from the start, whatever a buffered reader of ``fh`` left there
    try:
        with codec_stderr_silenced():
            snd = sf.SoundFile(native, closefd=isinstance(native, int))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(_one_line(exc)) from None
    log = sf._ffi.new("char[]", 16384)
    sf._snd.sf_command(snd._file, SFC_GET_LOG_INFO, log, 16384)
    text = sf._ffi.string(log)
    for chunk, declared, present in _SHORT_CHUNK.findall(text):
        if int(declared) > int(present) and int(declared) not in _STREAMED_SIZES:
            snd.close()
            name = {b"Data Size": "data", b"riff": "RIFF", b"Riff size": "RIFF"}.get(chunk, chunk.decode())
            raise AudioError(f"truncated: the {name} chunk declares {int(declared)} bytes, "
                             f"the file holds {int(present)}")
    shorts = _SHORT_FRAMES.findall(text) + [(n, snd.frames) for n in _DECLARED_FRAMES.findall(text)]
    for declared, present in shorts:
        if int(declared) > int(present) and int(declared) not in _STREAMED_SIZES:
            snd.close()
            raise AudioError(f"truncated: the header declares {int(declared)} frames, "
                             f"the file holds {int(present)}")
    return snd


def _mp3_cut(fh: BinaryIO) -> str | None:
    """Why an MP3 is truncated, from the stream length its first frame's Xing, Info or VBRI header declares
    (libsndfile takes the frame count from it, then decodes what is there without a word); None when it
    declares none or the file is long enough. The stream is what lies between an ID3v2 tag at the start and
    an ID3v1 tag at the end, as LAME and FFmpeg count it."""
    fh.seek(0)
    head = fh.read(10)
    if head[:3] != b"ID3" and head[:1] != b"\xff":
        return None
    start = 0
    if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first: its size is four 7-bit bytes
        start = 10 + sum((head[6 + i] & 0x7F) << (7 * (3 - i)) for i in range(4)) + (10 if head[5] & 0x10 else 0)
    fh.seek(start)
    frame = fh.read(64)
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return None
    mono = frame[3] >> 6 == 3
    side = (17 if mono else 32) if (frame[1] >> 3) & 3 == 3 else (9 if mono else 17)  # MPEG-1, else 2 / 2.5
    at, declared = 4 + side, 0
    flags = frame[at + 7] if len(frame) >= at + 8 else 0  # 1: a frame count follows, 2: a byte count
    if frame[at:at + 4] in (b"Xing", b"Info") and flags & 2:
        bytes_at = at + 8 + (4 if flags & 1 else 0)
        declared = int.from_bytes(frame[bytes_at:bytes_at + 4], "big")
    elif frame[36:40] == b"VBRI":
        declared = int.from_bytes(frame[46:50], "big")
    end = fh.seek(0, os.SEEK_END)
    fh.seek(max(start, end - 128))
    held = end - start - (128 if fh.read(3) == b"TAG" and end - start >= 128 else 0)  # an ID3v1 tag at the end
    if declared > held:
        return f"truncated: the MP3's header declares {declared} bytes of audio, the file holds {held}"
    return None


def layout_of(snd: sf.SoundFile) -> Layout:
    """The layout of an open file: integer grid for PCM, float otherwise."""
    grid = INTEGER_GRIDS.get(snd.subtype)
    if grid is not None:
        dtype, step = np.dtype(grid[0]), grid[1]
        info = np.iinfo(dtype)
        lo, hi, full = float(info.min), float(info.max + 1 - step), float(-int(info.min))
    else:
        dtype = np.dtype(np.float64 if snd.subtype == "DOUBLE" else np.float32)
        step, lo, hi, full = 1, -1.0, 1.0, 1.0
    return Layout(snd.format, snd.subtype, snd.endian, snd.samplerate, snd.channels,
                  snd.frames, dtype, step, lo, hi, full,
                  _broadcast(snd) if snd.format in BEXT_FORMATS else None, _structs(snd))


def _structs(snd: sf.SoundFile) -> tuple[tuple[int, bytes], ...]:
    """The cue points and sampler loops libsndfile found in the file, as the set commands take them."""
    found = []
    for get, put, size in STRUCTS:
        data = sf._ffi.new("char[]", size)
        if sf._snd.sf_command(snd._file, get, data, size):
            found.append((put, bytes(sf._ffi.buffer(data, size))))
    return tuple(found)


def _broadcast(snd: sf.SoundFile) -> bytes | None:
    """A Broadcast WAV's bext fields as libsndfile gives them (description, originator, dates, time reference,
    coding history ...), None when the file has none."""
    size = BEXT_FIXED + 65536
    data = sf._ffi.new("char[]", size)
    if not sf._snd.sf_command(snd._file, SFC_GET_BROADCAST_INFO, data, size):
        return None
    fields = bytes(sf._ffi.buffer(data, size))
    history = min(int.from_bytes(fields[BEXT_HISTORY_SIZE_AT:BEXT_FIXED], sys.byteorder), size - BEXT_FIXED)
    return fields[:BEXT_FIXED + history]


def block_frames(layout: Layout) -> int:
    """Frames per block for this layout (see BLOCK_FRAMES)."""
    if layout.subtype in LOSSY_SUBTYPES:
        return BLOCK_FRAMES
    return max(MIN_BLOCK_FRAMES, BLOCK_BYTES // (layout.channels * layout.dtype.itemsize))


_READ: "weakref.WeakSet[sf.SoundFile]" = weakref.WeakSet()  # open recordings read once already


def blocks(snd: sf.SoundFile, layout: Layout) -> Iterator[np.ndarray]:
    """The file's samples, block by block, in its layout's dtype (one reused buffer)."""
    frames = block_frames(layout)
    buffer = np.empty((frames, layout.channels), dtype=layout.dtype)
    total = 0
    if snd in _READ or snd.seekable():  # a fresh unseekable stream (GSM 6.10, G.72x) is read from where it is
        try:
            snd.seek(0)
        except (sf.LibsndfileError, RuntimeError) as exc:
            again = " (it cannot be read twice, as --audio-snr-db and --copies above 1 would)" if snd in _READ else ""
            raise AudioError(f"cannot decode: {_one_line(exc)}{again}") from None
    _READ.add(snd)
    while True:
        try:
            with codec_stderr_silenced():
                n = snd.read(frames, dtype=layout.dtype.name, always_2d=True, out=buffer).shape[0]
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"cannot decode after frame {total}: {_one_line(exc)}") from None
        if n == 0:
            break
        total += n
        yield buffer[:n]
        if n < frames:
            break
    if layout.frames > 0 and total < layout.frames and layout.subtype not in LOSSY_SUBTYPES:
        raise AudioError(f"truncated: the header declares {layout.frames} frames, only {total} could be read")
    if total == 0 and layout.subtype in LOSSY_SUBTYPES:
        raise AudioError("no audio could be decoded (truncated or damaged stream)")


def rms(snd: sf.SoundFile, layout: Layout) -> float:
    """Channel-pooled RMS as a fraction of full scale, in one streaming pass."""
    total, count = 0.0, 0
    for block in blocks(snd, layout):
        values = block.astype(np.float64) / layout.full_scale if layout.integer else block
        total += float(np.dot(values.ravel(), values.ravel()))
        count += block.size
    return (total / count) ** 0.5 if count else 0.0  # a NaN or infinity is refused by the writer


def open_write(fh: BinaryIO, layout: Layout, metadata: dict[str, str]) -> sf.SoundFile:
    """An output in the input's format, subtype, endianness, rate and channels."""
    try:
        out = sf.SoundFile(_native(fh), "w", samplerate=layout.samplerate, channels=layout.channels,
                           subtype=layout.subtype, endian=layout.endian, format=layout.format, closefd=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot write {layout.format}/{layout.subtype}: {_one_line(exc)}") from None
    if layout.subtype in ("FLOAT", "DOUBLE"):
        sf._snd.sf_command(out._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
    if layout.broadcast is not None:  # before the first write, as the channel map
        sf._snd.sf_command(out._file, SFC_SET_BROADCAST_INFO, sf._ffi.from_buffer(layout.broadcast),
                           len(layout.broadcast))
    for put, data in layout.structs:
        sf._snd.sf_command(out._file, put, sf._ffi.from_buffer(data), len(data))
    for key, value in metadata.items():
        try:
            setattr(out, key, value)
        except (sf.LibsndfileError, RuntimeError):
            pass  # this container cannot hold that string; libsndfile says which it supports
    return out


def clear_peak_time(fh: BinaryIO) -> None:
    """Set the time stamp of an RF64 file's PEAK chunk to 0.

    libsndfile 1.2 writes a PEAK chunk into FLOAT and DOUBLE RF64 files
    whatever ``SFC_SET_ADD_PEAK_CHUNK`` says (it refuses the command for
    RF64), with the clock time in it: zeroed, identical runs give identical
    bytes. Only the chunks before the samples are read.
    """
    fh.seek(0)
    if fh.read(12)[8:12] != b"WAVE":
        return
    pos = 12
    while True:
        fh.seek(pos)
        header = fh.read(8)
        if len(header) < 8 or header[:4] == b"data":
            return
        size = int.from_bytes(header[4:], "little")
        if header[:4] == b"PEAK" and size >= 8:
            fh.seek(pos + 12)  # after the chunk's id, size and version
            fh.write(bytes(4))
            return
        pos += 8 + size + (size & 1)


def inspect_container(fh: BinaryIO) -> tuple[str | None, tuple[int, int] | None]:
    """Read from a file's own header bytes before libsndfile opens it: (what libsndfile would silently
    change on writing it back, its WAVEX channel mask as (offset, value)). The change: PCM samples narrower
    than their words (12 bits in 16 are written as 16, the noise off the 12-bit grid), or an Ogg holding
    several streams (only the first is decoded); None when the file is as libsndfile writes it. The mask:
    libsndfile writes a speaker layout of its own for 0 (no speaker assignment: microphone arrays,
    ambisonics) or for one that does not fit the channel count, so the output gets it back byte for byte."""
    fh.seek(0)
    head = fh.read(12)
    mask = None
    if head[:4] == b"OggS":
        return _ogg_streams(fh), None
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        fmt = _wav_fmt(fh)
        bits, mask = (_fmt_sample_bits(fmt[1], fmt[2]), _fmt_mask(fmt)) if fmt else (None, None)
    elif head[:4] == b"riff":  # Sony Wave64: the same fmt chunk, in GUID-named chunks with 64-bit sizes
        bits = _w64_sample_bits(fh)
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        bits = _aiff_sample_bits(fh)
    else:
        return None, None
    if bits is None or bits[0] in (8, 16, 24, 32) and bits[0] == bits[1]:
        return None, mask
    word = min(w for w in (8, 16, 24, 32, bits[1]) if w >= bits[1])
    return f"{bits[0]}-bit samples in {word}-bit words (libsndfile would write them as {word}-bit samples)", mask


def _chunks(fh: BinaryIO, start: int, big: bool, limit: int = 64) -> Iterator[tuple[bytes, int, int]]:
    """RIFF-style chunks from ``start``: (id, offset of its data, size), at most ``limit`` of them."""
    pos = start
    for _ in range(limit):
        fh.seek(pos)
        header = fh.read(8)
        if len(header) < 8:
            return
        size = int.from_bytes(header[4:], "big" if big else "little")
        yield header[:4], pos + 8, size
        pos += 8 + size + (size & 1)


def _wav_fmt(fh: BinaryIO) -> tuple[int, bytes, str] | None:
    """A RIFF, RIFX or RF64 WAV's fmt chunk: (offset of its body, its first 40 bytes, byte order)."""
    fh.seek(0)
    big = fh.read(4) == b"RIFX"
    for chunk, at, size in _chunks(fh, 12, big):
        if chunk == b"fmt ":
            fh.seek(at)
            return at, fh.read(min(size, 40)), "big" if big else "little"
    return None


def _fmt_mask(fmt: tuple[int, bytes, str]) -> tuple[int, int] | None:
    """A WAVE_FORMAT_EXTENSIBLE fmt's dwChannelMask: (its offset in the file, its value)."""
    at, body, order = fmt
    if len(body) >= 24 and int.from_bytes(body[0:2], order) == 0xFFFE:
        return at + 20, int.from_bytes(body[20:24], order)
    return None


def _w64_sample_bits(fh: BinaryIO) -> tuple[int, int] | None:
    """A Wave64 file's (bits per sample, bits of its words) from its fmt chunk (chunks: a 16-byte GUID, a
    64-bit size with the header, data padded to 8 bytes)."""
    pos = 40  # after the riff GUID, its size and the wave GUID
    for _ in range(64):
        fh.seek(pos)
        header = fh.read(24)
        size = int.from_bytes(header[16:24], "little") if len(header) == 24 else 0
        if size < 24:
            return None
        if header[:4] == b"fmt ":
            return _fmt_sample_bits(fh.read(min(size - 24, 40)), "little")
        pos += size + (-size % 8)
    return None


def _fmt_sample_bits(fmt: bytes, order: str) -> tuple[int, int] | None:
    """(bits per sample, bits of its words) from a WAVEFORMAT(EXTENSIBLE) body; None for other than PCM."""
    if len(fmt) < 16:
        return None
    tag, bits = int.from_bytes(fmt[0:2], order), int.from_bytes(fmt[14:16], order)
    if tag == 0xFFFE and len(fmt) >= 28:
        valid = int.from_bytes(fmt[18:20], order) or bits
        return (valid, bits) if int.from_bytes(fmt[24:28], order) == 1 else None  # SubFormat: PCM
    return (bits, -(-bits // 8) * 8) if tag == 1 else None


def set_channel_mask(fh: BinaryIO, mask: int) -> None:
    """Put the input's channel mask (see :func:`inspect_container`) into a WAVE_FORMAT_EXTENSIBLE output."""
    fmt = _wav_fmt(fh)
    found = _fmt_mask(fmt) if fmt is not None else None
    if fmt is not None and found is not None and found[1] != mask:
        fh.seek(found[0])
        fh.write(mask.to_bytes(4, fmt[2]))


def _aiff_sample_bits(fh: BinaryIO) -> tuple[int, int] | None:
    """An AIFF's sampleSize (its COMM chunk) and the bits of its words (the next whole bytes); None for
    compressed or float AIFC."""
    for chunk, at, size in _chunks(fh, 12, big=True):
        if chunk == b"COMM" and size >= 8:
            fh.seek(at)
            comm = fh.read(min(size, 22))
            if size >= 22 and comm[18:22] not in (b"NONE", b"twos", b"sowt", b"raw "):
                return None
            bits = int.from_bytes(comm[6:8], "big")
            return bits, -(-bits // 8) * 8
    return None


def _ogg_streams(fh: BinaryIO) -> str | None:
    """An Ogg file holding more than one stream (chained one after another, or multiplexed)."""
    size = fh.seek(0, os.SEEK_END)
    pos, starts = 0, 0
    while pos + 27 <= size:
        fh.seek(pos)
        head = fh.read(27)
        if len(head) < 27 or head[:4] != b"OggS":
            return None
        starts += head[5] & 0x02 != 0
        table = fh.read(head[26])
        pos += 27 + len(table) + sum(table)
    return f"Ogg holding {starts} streams (chained or multiplexed): only the first would be kept" if starts > 1 \
        else None


def set_ogg_serials(data: bytes, seed: int) -> bytes:
    """Replace the clock-drawn Ogg stream serial numbers by ones from ``seed``.

    Every page's serial is rewritten (one new serial per logical stream) and
    its CRC recomputed; anything that is not a sequence of Ogg pages is
    returned unchanged.
    """
    out = bytearray(data)
    serials: dict[bytes, bytes] = {}
    pos = 0
    while pos + 27 <= len(out) and out[pos:pos + 4] == b"OggS":
        nsegs = out[pos + 26]
        length = 27 + nsegs + sum(out[pos + 27:pos + 27 + nsegs])
        if pos + length > len(out):
            return data
        old = bytes(out[pos + 14:pos + 18])
        new = serials.setdefault(old, ((seed + len(serials)) & 0xFFFFFFFF).to_bytes(4, "little"))
        out[pos + 14:pos + 18] = new
        out[pos + 22:pos + 26] = b"\0\0\0\0"
        out[pos + 22:pos + 26] = _ogg_crc(bytes(out[pos:pos + length])).to_bytes(4, "little")
        pos += length
    return bytes(out) if pos == len(out) else data


_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, MSB first, no reflection, init 0).

    zlib's CRC-32 is the same polynomial bit-reflected; feeding it bit-reversed
    bytes, undoing its pre/post inversion and reversing the result gives
    Ogg's checksum at C speed.
    """
    reflected = binascii.crc32(page.translate(_BITREV), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def decode_all(data: bytes) -> np.ndarray:
    """Every sample of an in-memory file (for comparisons, not for the pipeline)."""
    with open_read(io.BytesIO(data)) as snd:
        layout = layout_of(snd)
        return np.concatenate([b.copy() for b in blocks(snd, layout)] or
                              [np.empty((0, layout.channels), layout.dtype)])


def _one_line(exc: BaseException) -> str:
    """libsndfile's reason on one line, without soundfile's "Error opening 6:" prefix,
    which names a file descriptor or object (varying from run to run)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^Error opening (<[^>]*>|\d+|'[^']*'): ", "", text)
    return text or type(exc).__name__
