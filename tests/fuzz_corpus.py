"""A deterministic corpus of malformed images and recordings, for fuzzing ``noiseaug run``.

Every file is derived from small VALID seed files made here, in memory, with
OpenCV (``cv2.imencode``) and soundfile (into ``io.BytesIO``). The mutations:

- truncation at many offsets, including inside the headers;
- single and multiple bit flips at seeded positions;
- zero-byte files;
- wrong extensions (text named .wav, a JPEG's bytes named .png or .wav, ...);
- headers declaring absurd sizes or layouts, with checksums recomputed where
  the format has one (PNG IHDR, Ogg pages), so the decoder believes them;
- random garbage behind a valid magic prefix.

Beside them, a few VALID files (``good/``) that must still be processed.

``write_corpus(folder)`` writes everything and returns ``{relative path:
description}`` for the malformed files; ``write_good(folder)`` writes the
valid ones and returns their relative paths; ``write_all(folder)`` does both.
The bytes are identical on every call (fixed seeds; the clock-dependent parts
libsndfile writes, the PEAK chunk of float WAVs and Ogg serial numbers, are
removed or fixed). Every file is smaller than 64 KB.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

MAX_BYTES = 64 * 1024
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc"}


# --------------------------------------------------------------------------- seeds

def _pixels(height: int, width: int, channels: int, dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    ramp = np.linspace(0, hi, width, dtype=np.float64)[None, :] * np.linspace(0.2, 1, height)[:, None]
    img = ramp[..., None] + rng.normal(0, hi / 20, (height, width, channels))
    img = np.clip(np.rint(img), 0, hi).astype(dtype)
    return img[..., 0] if channels == 1 else img


def _encode(ext: str, pixels: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(ext, pixels, params or [])
    assert ok, ext
    return data.tobytes()


def _tone(frames: int, channels: int, samplerate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / samplerate
    cols = [0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) + rng.normal(0, 0.02, frames) for c in range(channels)]
    return np.clip(np.stack(cols, axis=1), -1, 1)


def _sound(data: np.ndarray, samplerate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, samplerate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _riff_chunks(data: bytes, start: int = 12, big_endian: bool = False) -> list[tuple[bytes, int, int]]:
    """(id, offset of the chunk header, declared size) of each top-level chunk."""
    fmt = ">I" if big_endian else "<I"
    out, pos = [], start
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack(fmt, data[pos + 4:pos + 8])[0]
        out.append((cid, pos, size))
        pos += 8 + size + (size & 1)
    return out


def _chunk(data: bytes, cid: bytes, start: int = 12, big_endian: bool = False) -> int:
    for found, pos, _ in _riff_chunks(data, start, big_endian):
        if found == cid:
            return pos
    raise KeyError(cid)


def _drop_riff_chunk(data: bytes, cid: bytes) -> bytes:
    """Remove a chunk (libsndfile's clock-stamped PEAK) and fix the RIFF size."""
    for found, pos, size in _riff_chunks(data):
        if found == cid:
            data = data[:pos] + data[pos + 8 + size + (size & 1):]
            return data[:4] + struct.pack("<I", len(data) - 8) + data[8:]
    return data


_OGG_TABLE = []
for _i in range(256):
    _r = _i << 24
    for _ in range(8):
        _r = ((_r << 1) ^ 0x04C11DB7) if _r & 0x80000000 else (_r << 1)
    _OGG_TABLE.append(_r & 0xFFFFFFFF)


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_TABLE[((crc >> 24) & 0xFF) ^ byte]
    return crc


def _ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each Ogg page."""
    pages, pos = [], 0
    while pos + 27 <= len(data) and data[pos:pos + 4] == b"OggS":
        nsegs = data[pos + 26]
        length = 27 + nsegs + sum(data[pos + 27:pos + 27 + nsegs])
        pages.append((pos, length))
        pos += length
    return pages


def _ogg_fix(data: bytes, serial: int | None = None) -> bytes:
    """Set every page's serial (if given) and recompute every page's CRC."""
    out = bytearray(data)
    for pos, length in _ogg_pages(data):
        if serial is not None:
            out[pos + 14:pos + 18] = struct.pack("<I", serial)
        out[pos + 22:pos + 26] = b"\0\0\0\0"
        out[pos + 22:pos + 26] = struct.pack("<I", _ogg_crc(bytes(out[pos:pos + length])))
    return bytes(out)


def seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (extension, bytes) of the small valid files everything is made from."""
    bgr8 = _pixels(16, 24, 3, np.uint8, 1)
    out = {
        "png8": (".png", _encode(".png", bgr8)),
        "png16": (".png", _encode(".png", _pixels(12, 20, 3, np.uint16, 2))),
        "pngrgba": (".png", _encode(".png", _pixels(14, 18, 4, np.uint8, 3))),
        "pnggray": (".png", _encode(".png", _pixels(10, 16, 1, np.uint8, 4))),
        "jpeg": (".jpg", _encode(".jpg", bgr8, [cv2.IMWRITE_JPEG_QUALITY, 90])),
        "webp": (".webp", _encode(".webp", bgr8, [cv2.IMWRITE_WEBP_QUALITY, 80])),
        "webpll": (".webp", _encode(".webp", _pixels(12, 12, 3, np.uint8, 5), [cv2.IMWRITE_WEBP_QUALITY, 101])),
        "tiff": (".tif", _encode(".tif", bgr8)),
        "bmp": (".bmp", _encode(".bmp", bgr8)),
        "pgm": (".pgm", _encode(".pgm", _pixels(16, 24, 1, np.uint8, 6), [cv2.IMWRITE_PXM_BINARY, 1])),
    }
    stereo = _tone(600, 2, 8000, 10)
    mono = _tone(800, 1, 8000, 11)
    out.update({
        "wav16": (".wav", _sound(stereo, 8000, "WAV", "PCM_16")),
        "wav24": (".wav", _sound(mono, 8000, "WAV", "PCM_24")),
        "wavfloat": (".wav", _drop_riff_chunk(_sound(stereo, 8000, "WAV", "FLOAT"), b"PEAK")),
        "flac": (".flac", _sound(stereo, 8000, "FLAC", "PCM_16")),
        "ogg": (".ogg", _ogg_fix(_sound(_tone(4000, 1, 8000, 12), 8000, "OGG", "VORBIS"), serial=0x5EED)),
        "aiff": (".aiff", _sound(mono, 8000, "AIFF", "PCM_16")),
    })
    return out


# --------------------------------------------------------------------------- mutations

def _put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for bit in positions:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _png_ihdr(data: bytes, *, width: int | None = None, height: int | None = None, depth: int | None = None,
              color: int | None = None, interlace: int | None = None, fix_crc: bool = True) -> bytes:
    """Rewrite IHDR fields (offset 16 onwards) and recompute its CRC with zlib.crc32."""
    out = bytearray(data)
    assert out[12:16] == b"IHDR"
    if width is not None:
        struct.pack_into(">I", out, 16, width)
    if height is not None:
        struct.pack_into(">I", out, 20, height)
    if depth is not None:
        out[24] = depth
    if color is not None:
        out[25] = color
    if interlace is not None:
        out[28] = interlace
    if fix_crc:
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    return bytes(out)


def _png_chunk_offset(data: bytes, cid: bytes) -> int:
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if data[pos + 4:pos + 8] == cid:
            return pos
        pos += 12 + length
    raise KeyError(cid)


def _jpeg_sof(data: bytes) -> int:
    """Offset of the SOFn marker's length field."""
    pos = 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos + 2
        pos += 2 + length
    raise KeyError("SOF")


def _jpeg_marker(data: bytes, want: int) -> int:
    pos = 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if marker == want:
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise KeyError(hex(want))


def _tiff_entries(data: bytes) -> tuple[str, int, dict[int, tuple[int, int, int]]]:
    """Byte order, IFD offset, tag -> (entry offset, type, count)."""
    bo = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(bo + "I", data[4:8])[0]
    n = struct.unpack(bo + "H", data[ifd:ifd + 2])[0]
    entries = {}
    for i in range(n):
        pos = ifd + 2 + 12 * i
        tag, typ, count = struct.unpack(bo + "HHI", data[pos:pos + 8])
        entries[tag] = (pos, typ, count)
    return bo, ifd, entries


def _tiff_set(data: bytes, tag: int, value: int) -> bytes:
    bo, _, entries = _tiff_entries(data)
    pos, typ, count = entries[tag]
    out = bytearray(data)
    if typ == 3 and count <= 2:  # SHORT(s) stored inline
        struct.pack_into(bo + "H", out, pos + 8, value & 0xFFFF)
        if count == 2:
            struct.pack_into(bo + "H", out, pos + 10, value & 0xFFFF)
    elif typ == 4 and count == 1:  # LONG inline
        struct.pack_into(bo + "I", out, pos + 8, value & 0xFFFFFFFF)
    elif typ == 3:  # SHORTs stored elsewhere (BitsPerSample of an RGB image)
        where = struct.unpack(bo + "I", data[pos + 8:pos + 12])[0]
        for k in range(count):
            struct.pack_into(bo + "H", out, where + 2 * k, value & 0xFFFF)
    else:  # LONGs stored elsewhere: change the first
        where = struct.unpack(bo + "I", data[pos + 8:pos + 12])[0]
        struct.pack_into(bo + "I", out, where, value & 0xFFFFFFFF)
    return bytes(out)


def _tiff_retype_long(data: bytes, tag: int, value: int) -> bytes:
    """Store a one-value tag as an inline LONG (so it can exceed 65535)."""
    bo, _, entries = _tiff_entries(data)
    pos, _, _ = entries[tag]
    return _put(data, pos + 2, bo + "HII", 4, 1, value & 0xFFFFFFFF)


def _wav_fmt(data: bytes, **fields: int) -> bytes:
    """Rewrite fields of the WAV fmt chunk: tag, channels, rate, byterate, align, bits, size."""
    pos = _chunk(data, b"fmt ")
    layout = {"size": (4, "<I"), "tag": (8, "<H"), "channels": (10, "<H"), "rate": (12, "<I"),
              "byterate": (16, "<I"), "align": (20, "<H"), "bits": (22, "<H")}
    for name, value in fields.items():
        off, fmt = layout[name]
        data = _put(data, pos + off, fmt, value)
    return data


def _aiff_comm(data: bytes, *, channels: int | None = None, frames: int | None = None,
               bits: int | None = None, rate80: bytes | None = None) -> bytes:
    pos = _chunk(data, b"COMM", big_endian=True)
    if channels is not None:
        data = _put(data, pos + 8, ">H", channels)
    if frames is not None:
        data = _put(data, pos + 10, ">I", frames)
    if bits is not None:
        data = _put(data, pos + 14, ">H", bits)
    if rate80 is not None:
        data = data[:pos + 16] + rate80 + data[pos + 26:]
    return data


def _flac_streaminfo(data: bytes, *, rate: int | None = None, channel_bits: int | None = None,
                     bps_bits: int | None = None, total: int | None = None, min_block: int | None = None,
                     max_block: int | None = None) -> bytes:
    """STREAMINFO begins at 8: min/max block (16 bits each), min/max frame (24 each),
    then 64 bits: rate (20) | channels-1 (3) | bits-1 (5) | total samples (36)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0
    packed = int.from_bytes(data[18:26], "big")
    fields = [(rate, 44, 20), (channel_bits, 41, 3), (bps_bits, 36, 5), (total, 0, 36)]
    for value, shift, width in fields:
        if value is not None:
            mask = ((1 << width) - 1) << shift
            packed = (packed & ~mask) | ((value << shift) & mask)
    data = data[:18] + packed.to_bytes(8, "big") + data[26:]
    if min_block is not None:
        data = _put(data, 8, ">H", min_block)
    if max_block is not None:
        data = _put(data, 10, ">H", max_block)
    return data


def _ogg_vorbis_id(data: bytes, *, channels: int | None = None, rate: int | None = None,
                   blocksizes: int | None = None) -> bytes:
    """The Vorbis identification header is the first page's only packet; CRC recomputed."""
    nsegs = data[26]
    pkt = 27 + nsegs
    assert data[pkt:pkt + 7] == b"\x01vorbis"
    out = bytearray(data)
    if channels is not None:
        out[pkt + 11] = channels
    if rate is not None:
        struct.pack_into("<I", out, pkt + 12, rate)
    if blocksizes is not None:
        out[pkt + 28] = blocksizes
    return _ogg_fix(bytes(out))


def _webp_vp8(data: bytes, width: int, height: int) -> bytes:
    pos = _chunk(data, b"VP8 ")
    frame = pos + 8
    assert data[frame + 3:frame + 6] == b"\x9d\x01\x2a"
    return _put(data, frame + 6, "<HH", width & 0xFFFF, height & 0xFFFF)


def _webp_vp8l(data: bytes, width: int, height: int) -> bytes:
    pos = _chunk(data, b"VP8L")
    sig = pos + 8
    assert data[sig] == 0x2F
    bits = int.from_bytes(data[sig + 1:sig + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    return data[:sig + 1] + bits.to_bytes(4, "little") + data[sig + 5:]


def _pgm_body(data: bytes) -> bytes:
    """The pixel bytes after a P5 header of four tokens."""
    tokens, pos = 0, 0
    while tokens < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        while not data[pos:pos + 1].isspace():
            pos += 1
        tokens += 1
    return data[pos + 1:]


def _header_mutations(s: dict[str, tuple[str, bytes]]) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, description) of headers declaring absurd sizes or layouts."""
    m: dict[str, tuple[bytes, str]] = {}
    png8, png16, pngrgba = s["png8"][1], s["png16"][1], s["pngrgba"][1]
    big = 0x7FFFFFFF
    m["png/ihdr_width_7fffffff.png"] = (_png_ihdr(png8, width=big), "PNG IHDR width 0x7fffffff, CRC recomputed")
    m["png/ihdr_height_7fffffff.png"] = (_png_ihdr(png8, height=big), "PNG IHDR height 0x7fffffff, CRC recomputed")
    m["png/ihdr_both_7fffffff.png"] = (_png_ihdr(png8, width=big, height=big),
                                       "PNG IHDR width and height 0x7fffffff, CRC recomputed")
    m["png/ihdr16_both_7fffffff.png"] = (_png_ihdr(png16, width=big, height=big),
                                         "16-bit PNG IHDR width and height 0x7fffffff, CRC recomputed")
    m["png/ihdr_width_ffffffff.png"] = (_png_ihdr(png8, width=0xFFFFFFFF),
                                        "PNG IHDR width 0xffffffff (beyond the 2^31-1 limit), CRC recomputed")
    m["png/ihdr_width_0.png"] = (_png_ihdr(png8, width=0), "PNG IHDR width 0, CRC recomputed")
    m["png/ihdr_height_0.png"] = (_png_ihdr(png8, height=0), "PNG IHDR height 0, CRC recomputed")
    m["png/ihdr_10000x10000.png"] = (_png_ihdr(png8, width=10000, height=10000),
                                     "PNG IHDR 10000x10000 (under --max-pixels) over 24x16 of data, CRC recomputed")
    m["png/ihdr_1x178956970.png"] = (_png_ihdr(pngrgba, width=1, height=178956970),
                                     "RGBA PNG IHDR 1x178956970 (exactly --max-pixels), CRC recomputed")
    m["png/ihdr_width_7fffffff_badcrc.png"] = (_png_ihdr(png8, width=big, fix_crc=False),
                                               "PNG IHDR width 0x7fffffff, CRC left stale")
    m["png/ihdr_depth_3.png"] = (_png_ihdr(png8, depth=3), "PNG IHDR bit depth 3 (invalid), CRC recomputed")
    m["png/ihdr_depth_16_on_8bit_data.png"] = (_png_ihdr(png8, depth=16),
                                               "PNG IHDR bit depth 16 over 8-bit data, CRC recomputed")
    m["png/ihdr_color_7.png"] = (_png_ihdr(png8, color=7), "PNG IHDR colour type 7 (invalid), CRC recomputed")
    m["png/ihdr_color_palette_no_plte.png"] = (_png_ihdr(png8, color=3),
                                               "PNG IHDR colour type 3 (palette) with no PLTE, CRC recomputed")
    m["png/ihdr_interlace_5.png"] = (_png_ihdr(png8, interlace=5), "PNG IHDR interlace 5 (invalid), CRC recomputed")
    m["png/ihdr_rgba_as_rgb.png"] = (_png_ihdr(pngrgba, color=2), "RGBA PNG relabelled RGB, CRC recomputed")
    idat = _png_chunk_offset(png8, b"IDAT")
    m["png/idat_length_7ffffff0.png"] = (_put(png8, idat, ">I", 0x7FFFFFF0), "PNG IDAT chunk length 0x7ffffff0")
    m["png/ihdr_length_ffffffff.png"] = (_put(png8, 8, ">I", 0xFFFFFFFF), "PNG IHDR chunk length 0xffffffff")

    bmp = s["bmp"][1]
    m["bmp/width_negative.bmp"] = (_put(bmp, 18, "<i", -24), "BMP width -24")
    m["bmp/height_negative_topdown.bmp"] = (_put(bmp, 22, "<i", -16), "BMP height -16 (top-down, legal)")
    m["bmp/height_int_min.bmp"] = (_put(bmp, 22, "<i", -0x80000000), "BMP height INT32_MIN")
    m["bmp/width_int_min.bmp"] = (_put(bmp, 18, "<i", -0x80000000), "BMP width INT32_MIN")
    m["bmp/width_7fffffff.bmp"] = (_put(bmp, 18, "<i", big), "BMP width 0x7fffffff")
    m["bmp/height_7fffffff.bmp"] = (_put(bmp, 22, "<i", big), "BMP height 0x7fffffff")
    m["bmp/both_65536.bmp"] = (_put(bmp, 18, "<ii", 65536, 65536), "BMP 65536x65536")
    m["bmp/both_10000.bmp"] = (_put(bmp, 18, "<ii", 10000, 10000), "BMP 10000x10000 (under --max-pixels)")
    m["bmp/width_0.bmp"] = (_put(bmp, 18, "<i", 0), "BMP width 0")
    m["bmp/bpp_0.bmp"] = (_put(bmp, 28, "<H", 0), "BMP 0 bits per pixel")
    m["bmp/bpp_33.bmp"] = (_put(bmp, 28, "<H", 33), "BMP 33 bits per pixel")
    m["bmp/bpp_8_no_palette.bmp"] = (_put(bmp, 28, "<H", 8), "BMP 8 bits per pixel, no palette")
    m["bmp/compression_99.bmp"] = (_put(bmp, 30, "<I", 99), "BMP compression 99")
    m["bmp/rle8_on_24bit.bmp"] = (_put(bmp, 30, "<I", 1), "BMP compression RLE8 on 24-bit data")
    m["bmp/pixel_offset_fffffff0.bmp"] = (_put(bmp, 10, "<I", 0xFFFFFFF0), "BMP pixel data offset 0xfffffff0")
    m["bmp/dib_size_ffffffff.bmp"] = (_put(bmp, 14, "<I", 0xFFFFFFFF), "BMP DIB header size 0xffffffff")
    m["bmp/palette_colors_huge.bmp"] = (_put(_put(bmp, 28, "<H", 8), 46, "<I", 0x7FFFFFFF),
                                        "BMP 8-bit with 0x7fffffff palette colours")

    jpeg = s["jpeg"][1]
    sof = _jpeg_sof(jpeg)  # length(2) precision(1) height(2) width(2) ncomp(1)
    m["jpeg/sof_65535x65535.jpg"] = (_put(jpeg, sof + 3, ">HH", 0xFFFF, 0xFFFF), "JPEG SOF 65535x65535")
    m["jpeg/sof_10000x10000.jpg"] = (_put(jpeg, sof + 3, ">HH", 10000, 10000),
                                     "JPEG SOF 10000x10000 (under --max-pixels) over 24x16 of data")
    m["jpeg/sof_height_0.jpg"] = (_put(jpeg, sof + 3, ">H", 0), "JPEG SOF height 0")
    m["jpeg/sof_width_0.jpg"] = (_put(jpeg, sof + 5, ">H", 0), "JPEG SOF width 0")
    m["jpeg/sof_precision_16.jpg"] = (_put(jpeg, sof + 2, ">B", 16), "JPEG SOF precision 16")
    m["jpeg/sof_precision_12.jpg"] = (_put(jpeg, sof + 2, ">B", 12), "JPEG SOF precision 12 over 8-bit data")
    m["jpeg/sof_components_0.jpg"] = (_put(jpeg, sof + 7, ">B", 0), "JPEG SOF 0 components")
    m["jpeg/sof_components_255.jpg"] = (_put(jpeg, sof + 7, ">B", 255), "JPEG SOF 255 components")
    m["jpeg/sof_length_0.jpg"] = (_put(jpeg, sof, ">H", 0), "JPEG SOF segment length 0")
    m["jpeg/sof_length_ffff.jpg"] = (_put(jpeg, sof, ">H", 0xFFFF), "JPEG SOF segment length 0xffff")
    dht = _jpeg_marker(jpeg, 0xC4)
    m["jpeg/dht_length_ffff.jpg"] = (_put(jpeg, dht + 2, ">H", 0xFFFF), "JPEG DHT segment length 0xffff")
    m["jpeg/no_eoi.jpg"] = (jpeg[:-2], "JPEG without its EOI marker")

    tif = s["tiff"][1]
    m["tiff/width_7fffffff.tif"] = (_tiff_retype_long(tif, 256, big), "TIFF ImageWidth 0x7fffffff")
    m["tiff/length_7fffffff.tif"] = (_tiff_retype_long(tif, 257, big), "TIFF ImageLength 0x7fffffff")
    m["tiff/both_100000.tif"] = (_tiff_retype_long(_tiff_retype_long(tif, 256, 100000), 257, 100000),
                                 "TIFF 100000x100000")
    m["tiff/width_0.tif"] = (_tiff_set(tif, 256, 0), "TIFF ImageWidth 0")
    m["tiff/bits_per_sample_3.tif"] = (_tiff_set(tif, 258, 3), "TIFF BitsPerSample 3")
    m["tiff/bits_per_sample_64.tif"] = (_tiff_set(tif, 258, 64), "TIFF BitsPerSample 64")
    m["tiff/samples_per_pixel_0.tif"] = (_tiff_set(tif, 277, 0), "TIFF SamplesPerPixel 0")
    m["tiff/samples_per_pixel_65535.tif"] = (_tiff_set(tif, 277, 65535), "TIFF SamplesPerPixel 65535")
    m["tiff/compression_99.tif"] = (_tiff_set(tif, 259, 99), "TIFF Compression 99")
    m["tiff/strip_offset_fffffff0.tif"] = (_tiff_set(tif, 273, 0xFFFFFFF0), "TIFF StripOffsets 0xfffffff0")
    m["tiff/strip_bytes_fffffff0.tif"] = (_tiff_set(tif, 279, 0xFFFFFFF0), "TIFF StripByteCounts 0xfffffff0")
    m["tiff/ifd_offset_fffffff0.tif"] = (_put(tif, 4, "<I" if tif[:2] == b"II" else ">I", 0xFFFFFFF0),
                                        "TIFF first IFD offset 0xfffffff0")
    _, ifd, _ = _tiff_entries(tif)
    m["tiff/ifd_entries_ffff.tif"] = (_put(tif, ifd, "<H" if tif[:2] == b"II" else ">H", 0xFFFF),
                                      "TIFF IFD with 65535 entries declared")
    m["tiff/ifd_self_loop.tif"] = (_put(tif, ifd + 2 + 12 * _tiff_entries(tif)[2].__len__(),
                                        "<I" if tif[:2] == b"II" else ">I", ifd),
                                   "TIFF next-IFD offset pointing back at the first IFD (a loop)")

    webp, webpll = s["webp"][1], s["webpll"][1]
    m["webp/vp8_16383x16383.webp"] = (_webp_vp8(webp, 0x3FFF, 0x3FFF), "WebP VP8 frame 16383x16383")
    m["webp/vp8_0x0.webp"] = (_webp_vp8(webp, 0, 0), "WebP VP8 frame 0x0")
    m["webp/vp8_scale_bits.webp"] = (_webp_vp8(webp, 0xC018, 0xC010), "WebP VP8 frame with upscale bits set")
    m["webp/vp8l_16384x16384.webp"] = (_webp_vp8l(webpll, 16384, 16384), "lossless WebP VP8L 16384x16384")
    m["webp/riff_size_fffffff0.webp"] = (_put(webp, 4, "<I", 0xFFFFFFF0), "WebP RIFF size 0xfffffff0")
    m["webp/vp8_chunk_size_fffffff0.webp"] = (_put(webp, _chunk(webp, b"VP8 ") + 4, "<I", 0xFFFFFFF0),
                                               "WebP VP8 chunk size 0xfffffff0")
    m["webp/vp8l_chunk_size_0.webp"] = (_put(webpll, _chunk(webpll, b"VP8L") + 4, "<I", 0),
                                         "WebP VP8L chunk size 0")

    body = _pgm_body(s["pgm"][1])
    pgms = {
        "huge_99999999.pgm": (b"P5\n99999999 99999999\n255\n", "PGM 99999999x99999999"),
        "zero.pgm": (b"P5\n0 0\n255\n", "PGM 0x0"),
        "maxval_65535.pgm": (b"P5\n24 16\n65535\n", "PGM maxval 65535 over 8-bit data (short)"),
        "maxval_0.pgm": (b"P5\n24 16\n0\n", "PGM maxval 0"),
        "maxval_huge.pgm": (b"P5\n24 16\n99999999\n", "PGM maxval 99999999"),
        "negative_width.pgm": (b"P5\n-24 16\n255\n", "PGM width -24"),
        "width_2pow32.pgm": (b"P5\n4294967296 1\n255\n", "PGM width 2^32"),
        "width_2pow31.pgm": (b"P5\n2147483648 1\n255\n", "PGM width 2^31"),
        "rows_20000x8000.pgm": (b"P5\n20000 8000\n255\n", "PGM 20000x8000 (under --max-pixels) over 384 bytes"),
        "comment_only.pgm": (b"P5\n# " + b"x" * 2000 + b"\n", "PGM header that is one long comment"),
        "ascii_garbage.pgm": (b"P2\n24 16\n255\n", "ASCII PGM (P2) whose body is binary"),
        "digits_overflow.pgm": (b"P5\n" + b"9" * 400 + b" 16\n255\n", "PGM width of 400 digits"),
    }
    for name, (head, desc) in pgms.items():
        m[f"pgm/{name}"] = (head + body, desc)

    wav16, wav24, wavf = s["wav16"][1], s["wav24"][1], s["wavfloat"][1]
    m["wav/fmt_channels_0.wav"] = (_wav_fmt(wav16, channels=0), "WAV fmt 0 channels")
    m["wav/fmt_channels_65535.wav"] = (_wav_fmt(wav16, channels=65535), "WAV fmt 65535 channels")
    m["wav/fmt_channels_1024_consistent.wav"] = (_wav_fmt(wav16, channels=1024, align=2048, byterate=2048 * 8000),
                                                 "WAV fmt 1024 channels with matching block align and byte rate")
    m["wav/fmt24_channels_0.wav"] = (_wav_fmt(wav24, channels=0), "PCM_24 WAV fmt 0 channels")
    m["wav/fmt24_channels_65535.wav"] = (_wav_fmt(wav24, channels=65535), "PCM_24 WAV fmt 65535 channels")
    m["wav/fmtfloat_channels_0.wav"] = (_wav_fmt(wavf, channels=0), "FLOAT WAV fmt 0 channels")
    m["wav/fmtfloat_channels_65535.wav"] = (_wav_fmt(wavf, channels=65535), "FLOAT WAV fmt 65535 channels")
    m["wav/fmt_rate_0.wav"] = (_wav_fmt(wav16, rate=0), "WAV fmt sample rate 0")
    m["wav/fmt_rate_ffffffff.wav"] = (_wav_fmt(wav16, rate=0xFFFFFFFF), "WAV fmt sample rate 0xffffffff")
    m["wav/fmt_rate_7fffffff.wav"] = (_wav_fmt(wav16, rate=0x7FFFFFFF), "WAV fmt sample rate 0x7fffffff")
    m["wav/fmt_rate_1.wav"] = (_wav_fmt(wav16, rate=1), "WAV fmt sample rate 1")
    m["wav/fmtfloat_rate_ffffffff.wav"] = (_wav_fmt(wavf, rate=0xFFFFFFFF), "FLOAT WAV fmt sample rate 0xffffffff")
    m["wav/fmt_bits_0.wav"] = (_wav_fmt(wav16, bits=0), "WAV fmt 0 bits per sample")
    m["wav/fmt_bits_7.wav"] = (_wav_fmt(wav16, bits=7), "WAV fmt 7 bits per sample")
    m["wav/fmt_bits_65535.wav"] = (_wav_fmt(wav16, bits=65535), "WAV fmt 65535 bits per sample")
    m["wav/fmt_align_0.wav"] = (_wav_fmt(wav16, align=0), "WAV fmt block align 0")
    m["wav/fmt_align_ffff.wav"] = (_wav_fmt(wav16, align=0xFFFF), "WAV fmt block align 0xffff")
    m["wav/fmt_tag_0.wav"] = (_wav_fmt(wav16, tag=0), "WAV fmt format tag 0")
    m["wav/fmt_tag_ffff.wav"] = (_wav_fmt(wav16, tag=0xFFFF), "WAV fmt format tag 0xffff")
    m["wav/fmt_tag_float_16bit.wav"] = (_wav_fmt(wav16, tag=3), "WAV fmt IEEE float tag with 16-bit samples")
    m["wav/fmt_tag_alaw.wav"] = (_wav_fmt(wav16, tag=6), "WAV fmt A-law tag with 16-bit samples")
    m["wav/fmt_size_2.wav"] = (_wav_fmt(wav16, size=2), "WAV fmt chunk size 2")
    m["wav/fmt_size_fffffff0.wav"] = (_wav_fmt(wav16, size=0xFFFFFFF0), "WAV fmt chunk size 0xfffffff0")
    for label, wav in (("", wav16), ("24", wav24), ("float", wavf)):
        data_pos = _chunk(wav, b"data")
        m[f"wav/data{label}_size_fffffff0.wav"] = (_put(wav, data_pos + 4, "<I", 0xFFFFFFF0),
                                                   f"{label or 'PCM_16'} WAV data chunk size 0xfffffff0")
    data_pos = _chunk(wav16, b"data")
    m["wav/data_size_0.wav"] = (_put(wav16, data_pos + 4, "<I", 0), "WAV data chunk size 0")
    m["wav/data_size_ffffffff.wav"] = (_put(wav16, data_pos + 4, "<I", 0xFFFFFFFF),
                                       "WAV data chunk size 0xffffffff (the streaming convention)")
    m["wav/data_size_odd.wav"] = (_put(wav16, data_pos + 4, "<I", 2399), "WAV data chunk size 2399 (odd, short)")
    m["wav/riff_size_0.wav"] = (_put(wav16, 4, "<I", 0), "WAV RIFF size 0")
    m["wav/riff_size_ffffffff.wav"] = (_put(wav16, 4, "<I", 0xFFFFFFFF), "WAV RIFF size 0xffffffff")
    m["wav/no_data_chunk.wav"] = (wav16[:data_pos], "WAV with fmt but no data chunk")
    m["wav/no_fmt_chunk.wav"] = (wav16[:12] + wav16[data_pos:], "WAV with data but no fmt chunk")
    m["wav/rifx_header_riff_data.wav"] = (b"RIFX" + wav16[4:], "little-endian WAV relabelled RIFX")
    m["wav/rf64_without_ds64.wav"] = (b"RF64" + wav16[4:], "WAV relabelled RF64 without a ds64 chunk")

    aiff = s["aiff"][1]
    m["aiff/comm_frames_ffffffff.aiff"] = (_aiff_comm(aiff, frames=0xFFFFFFFF), "AIFF COMM frame count 0xffffffff")
    m["aiff/comm_frames_7fffffff.aiff"] = (_aiff_comm(aiff, frames=0x7FFFFFFF), "AIFF COMM frame count 0x7fffffff")
    m["aiff/comm_frames_0.aiff"] = (_aiff_comm(aiff, frames=0), "AIFF COMM frame count 0")
    m["aiff/comm_channels_0.aiff"] = (_aiff_comm(aiff, channels=0), "AIFF COMM 0 channels")
    m["aiff/comm_channels_65535.aiff"] = (_aiff_comm(aiff, channels=65535), "AIFF COMM 65535 channels")
    m["aiff/comm_bits_0.aiff"] = (_aiff_comm(aiff, bits=0), "AIFF COMM 0 bits per sample")
    m["aiff/comm_bits_99.aiff"] = (_aiff_comm(aiff, bits=99), "AIFF COMM 99 bits per sample")
    m["aiff/comm_rate_inf.aiff"] = (_aiff_comm(aiff, rate80=b"\x7f\xff" + b"\x80" + b"\0" * 7),
                                    "AIFF COMM sample rate +inf (80-bit)")
    m["aiff/comm_rate_zero.aiff"] = (_aiff_comm(aiff, rate80=b"\0" * 10), "AIFF COMM sample rate 0")
    m["aiff/comm_rate_huge.aiff"] = (_aiff_comm(aiff, rate80=b"\x40\x3e" + b"\xff" * 8),
                                     "AIFF COMM sample rate 2^63 (80-bit)")
    m["aiff/comm_rate_nan.aiff"] = (_aiff_comm(aiff, rate80=b"\x7f\xff" + b"\xc0" + b"\0" * 7),
                                    "AIFF COMM sample rate NaN (80-bit)")
    ssnd = _chunk(aiff, b"SSND", big_endian=True)
    m["aiff/ssnd_size_fffffff0.aiff"] = (_put(aiff, ssnd + 4, ">I", 0xFFFFFFF0), "AIFF SSND size 0xfffffff0")
    m["aiff/ssnd_offset_fffffff0.aiff"] = (_put(aiff, ssnd + 8, ">I", 0xFFFFFFF0), "AIFF SSND offset 0xfffffff0")
    m["aiff/form_size_0.aiff"] = (_put(aiff, 4, ">I", 0), "AIFF FORM size 0")
    comm = _chunk(aiff, b"COMM", big_endian=True)
    m["aiff/comm_size_fffffff0.aiff"] = (_put(aiff, comm + 4, ">I", 0xFFFFFFF0), "AIFF COMM chunk size 0xfffffff0")

    flac = s["flac"][1]
    m["flac/streaminfo_channel_bits_0.flac"] = (_flac_streaminfo(flac, channel_bits=0),
                                                "FLAC STREAMINFO channel bits 0 (mono) over stereo frames")
    m["flac/streaminfo_channel_bits_7.flac"] = (_flac_streaminfo(flac, channel_bits=7),
                                                "FLAC STREAMINFO channel bits 7 (8 channels) over stereo frames")
    m["flac/streaminfo_rate_0.flac"] = (_flac_streaminfo(flac, rate=0), "FLAC STREAMINFO sample rate 0")
    m["flac/streaminfo_rate_fffff.flac"] = (_flac_streaminfo(flac, rate=0xFFFFF),
                                            "FLAC STREAMINFO sample rate 1048575")
    m["flac/streaminfo_bps_bits_0.flac"] = (_flac_streaminfo(flac, bps_bits=0), "FLAC STREAMINFO 1 bit per sample")
    m["flac/streaminfo_bps_bits_31.flac"] = (_flac_streaminfo(flac, bps_bits=31),
                                             "FLAC STREAMINFO 32 bits per sample")
    m["flac/streaminfo_total_max.flac"] = (_flac_streaminfo(flac, total=(1 << 36) - 1),
                                           "FLAC STREAMINFO total samples 2^36-1")
    m["flac/streaminfo_total_0.flac"] = (_flac_streaminfo(flac, total=0),
                                         "FLAC STREAMINFO total samples 0 (unknown)")
    m["flac/streaminfo_blocks_0.flac"] = (_flac_streaminfo(flac, min_block=0, max_block=0),
                                          "FLAC STREAMINFO block sizes 0")
    m["flac/streaminfo_blocks_inverted.flac"] = (_flac_streaminfo(flac, min_block=0xFFFF, max_block=16),
                                                 "FLAC STREAMINFO min block 65535 > max block 16")
    m["flac/metadata_length_ffffff.flac"] = (flac[:5] + b"\xff\xff\xff" + flac[8:],
                                             "FLAC STREAMINFO block length 0xffffff")
    m["flac/metadata_type_127.flac"] = (flac[:4] + bytes([0x7F]) + flac[5:], "FLAC first metadata block type 127")

    ogg = s["ogg"][1]
    m["ogg/vorbis_channels_0.ogg"] = (_ogg_vorbis_id(ogg, channels=0), "Ogg Vorbis id header 0 channels, CRC fixed")
    m["ogg/vorbis_channels_255.ogg"] = (_ogg_vorbis_id(ogg, channels=255),
                                        "Ogg Vorbis id header 255 channels, CRC fixed")
    m["ogg/vorbis_rate_0.ogg"] = (_ogg_vorbis_id(ogg, rate=0), "Ogg Vorbis id header sample rate 0, CRC fixed")
    m["ogg/vorbis_rate_ffffffff.ogg"] = (_ogg_vorbis_id(ogg, rate=0xFFFFFFFF),
                                         "Ogg Vorbis id header sample rate 0xffffffff, CRC fixed")
    m["ogg/vorbis_blocksizes_ff.ogg"] = (_ogg_vorbis_id(ogg, blocksizes=0xFF),
                                         "Ogg Vorbis id header block sizes 2^15/2^15, CRC fixed")
    m["ogg/vorbis_channels_0_badcrc.ogg"] = (_ogg_vorbis_id(ogg, channels=0)[:22] + ogg[22:26]
                                             + _ogg_vorbis_id(ogg, channels=0)[26:],
                                             "Ogg Vorbis id header 0 channels, CRC left stale")
    pages = _ogg_pages(ogg)
    last = pages[-1][0]
    m["ogg/granule_max.ogg"] = (_ogg_fix(_put(ogg, last + 6, "<q", 0x7FFFFFFFFFFFFFFF)),
                                "Ogg last page granule position 2^63-1, CRC fixed")
    m["ogg/granule_negative.ogg"] = (_ogg_fix(_put(ogg, last + 6, "<q", -2)),
                                     "Ogg last page granule position -2, CRC fixed")
    m["ogg/version_1.ogg"] = (_ogg_fix(_put(ogg, 4, "B", 1)), "Ogg first page stream version 1, CRC fixed")
    m["ogg/serials_differ.ogg"] = (_ogg_fix(ogg[:pages[1][0]]) + _ogg_fix(ogg[pages[1][0]:], serial=0xBAD),
                                   "Ogg Vorbis pages after the first on another serial, CRC fixed")
    return m


def _truncation_offsets(size: int) -> list[int]:
    fixed = [1, 2, 3, 4, 7, 8, 11, 12, 16, 20, 24, 28, 33, 36, 44, 58, 64, 100]
    fractions = [size * k // 8 for k in range(1, 8)]
    return sorted({o for o in fixed + fractions + [size - 1, size - 2] if 0 < o < size})


_MAGIC = {
    "png": (".png", b"\x89PNG\r\n\x1a\n"),
    "png_ihdr": (".png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"),
    "jpeg": (".jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    "jpeg_sof": (".jpeg", b"\xff\xd8\xff\xc0\x00\x11\x08"),
    "webp": (".webp", b"RIFF\x00\x01\x00\x00WEBPVP8 "),
    "webpll": (".webp", b"RIFF\x00\x01\x00\x00WEBPVP8L"),
    "tiff_le": (".tif", b"II*\x00\x08\x00\x00\x00"),
    "tiff_be": (".tiff", b"MM\x00*\x00\x00\x00\x08"),
    "bmp": (".bmp", b"BM"),
    "pgm": (".pgm", b"P5\n"),
    "ppm": (".ppm", b"P6\n8 8\n255\n"),
    "wav": (".wav", b"RIFF\x00\x01\x00\x00WAVEfmt "),
    "wav_rifx": (".wav", b"RIFX\x00\x00\x01\x00WAVEfmt "),
    "flac": (".flac", b"fLaC"),
    "ogg": (".ogg", b"OggS\x00\x02"),
    "aiff": (".aiff", b"FORM\x00\x01\x00\x00AIFFCOMM"),
    "aifc": (".aifc", b"FORM\x00\x01\x00\x00AIFC"),
}


def _mutations() -> dict[str, tuple[bytes, str]]:
    s = seeds()
    m: dict[str, tuple[bytes, str]] = {}

    for name, (ext, data) in s.items():
        for off in _truncation_offsets(len(data)):
            m[f"truncated/{name}/cut_{off:05d}{ext}"] = (data[:off], f"{name} ({len(data)} B) truncated to {off} B")

    for index, (name, (ext, data)) in enumerate(s.items()):
        rng = np.random.default_rng(1000 + index)
        nbits = 8 * len(data)
        head = min(64, len(data)) * 8
        singles = sorted({int(b) for b in rng.integers(0, head, 3)} | {int(b) for b in rng.integers(0, nbits, 4)})
        for bit in singles:
            m[f"bitflip/{name}/bit_{bit:06d}{ext}"] = (_flip(data, [bit]),
                                                      f"{name}: one bit flipped at byte {bit // 8} bit {bit % 8}")
        for count in (4, 16, 64):
            bits = [int(b) for b in rng.integers(0, nbits, count)]
            m[f"bitflip/{name}/multi_{count:02d}{ext}"] = (_flip(data, bits), f"{name}: {count} seeded bit flips")
        bits = [int(b) for b in rng.integers(0, head, 8)]
        m[f"bitflip/{name}/header_multi_08{ext}"] = (_flip(data, bits), f"{name}: 8 seeded bit flips in the first 64 B")

    for ext in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".pnm",
                ".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc"):
        m[f"empty/zero{ext}"] = (b"", f"zero-byte file named {ext}")
    m["empty/nested/deeper/zero.WAV"] = (b"", "zero-byte file named .WAV, two folders down")

    text = b"this is a text file, not a recording\n" * 3
    m["wrongext/text.wav"] = (text, "a text file named .wav")
    m["wrongext/text.png"] = (text, "a text file named .png")
    m["wrongext/text.flac"] = (text, "a text file named .flac")
    m["wrongext/text.jpg"] = (text, "a text file named .jpg")
    m["wrongext/html.jpeg"] = (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
                               "an HTML error page named .jpeg")
    m["wrongext/utf16.aiff"] = ("UTF-16 text, not audio\n".encode("utf-16"), "UTF-16 text named .aiff")
    m["wrongext/jpeg_bytes.png"] = (s["jpeg"][1], "a JPEG's bytes named .png")
    m["wrongext/jpeg_bytes.wav"] = (s["jpeg"][1], "a JPEG's bytes named .wav")
    m["wrongext/png_bytes.jpg"] = (s["png8"][1], "a PNG's bytes named .jpg")
    m["wrongext/png16_bytes.bmp"] = (s["png16"][1], "a 16-bit PNG's bytes named .bmp")
    m["wrongext/rgba_png_bytes.jpg"] = (s["pngrgba"][1], "an RGBA PNG's bytes named .jpg")
    m["wrongext/webp_bytes.tif"] = (s["webp"][1], "a WebP's bytes named .tif")
    m["wrongext/tiff_bytes.pgm"] = (s["tiff"][1], "a TIFF's bytes named .pgm")
    m["wrongext/bmp_bytes.webp"] = (s["bmp"][1], "a BMP's bytes named .webp")
    m["wrongext/wav_bytes.png"] = (s["wav16"][1], "a WAV's bytes named .png")
    m["wrongext/wav_bytes.flac"] = (s["wav16"][1], "a WAV's bytes named .flac")
    m["wrongext/flac_bytes.wav"] = (s["flac"][1], "a FLAC's bytes named .wav")
    m["wrongext/ogg_bytes.aiff"] = (s["ogg"][1], "an Ogg Vorbis's bytes named .aiff")
    m["wrongext/aiff_bytes.wav"] = (s["aiff"][1], "an AIFF's bytes named .wav")
    m["wrongext/float_wav_bytes.ogg"] = (s["wavfloat"][1], "a float WAV's bytes named .ogg")

    m.update(_header_mutations(s))

    rng = np.random.default_rng(77)
    for name, (ext, magic) in _MAGIC.items():
        for size in (40, 600, 5000):
            garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            m[f"garbage/{name}_{size:04d}{ext}"] = (magic + garbage,
                                                    f"{name} magic followed by {size} B of seeded random bytes")
    return m


# --------------------------------------------------------------------------- writing

def _write(folder: Path, rel: str, data: bytes) -> None:
    assert len(data) < MAX_BYTES, (rel, len(data))
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_corpus(folder: Path) -> dict[str, str]:
    """Write the malformed files under ``folder``; returns {relative path: mutation}."""
    folder = Path(folder)
    out = {}
    for rel, (data, description) in sorted(_mutations().items()):
        _write(folder, rel, data)
        out[rel] = description
    return out


def write_good(folder: Path) -> list[str]:
    """Write the valid seed files under ``folder/good/``; returns their relative paths."""
    folder = Path(folder)
    names = []
    for name, (ext, data) in seeds().items():
        rel = f"good/{name}{ext}"
        _write(folder, rel, data)
        names.append(rel)
    return names


def write_all(folder: Path) -> tuple[dict[str, str], list[str]]:
    """Both: the malformed files with their mutations, and the valid files."""
    return write_corpus(folder), write_good(folder)


def kind_of(rel: str) -> str:
    ext = Path(rel).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in AUDIO_EXTS:
        return "audio"
    raise ValueError(rel)


if __name__ == "__main__":  # python tests/fuzz_corpus.py DIR: write the corpus there and list it
    import sys

    target = Path(sys.argv[1])
    bad, good = write_all(target)
    for rel, what in bad.items():
        print(f"{rel}\t{what}")
    for rel in good:
        print(f"{rel}\tvalid")
    print(f"{len(bad)} malformed + {len(good)} valid files", file=sys.stderr)
