"""The differential matrix of image layouts (SPEC §3's fidelity rule).

Each case is made by a writer other than noiseaug's own for that format where
one exists (tifffile for TIFF inputs, Pillow for JPEG, WebP, BMP and PNM,
imagecodecs/OpenCV for PNG), and says what noiseaug must do with it: keep its
layout (``ok``; ``lossless`` when σ = 0 must give back every sample), treat it
as a label map, or refuse it with a reason containing ``reason``.

``layout`` and ``samples`` read files back with decoders noiseaug does not
use for that format: Pillow's TIFF tag reader and libtiff (through
imagecodecs) for TIFF, libpng through imagecodecs for PNG, Pillow for the rest.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import imagecodecs
import numpy as np
import tifffile
from PIL import Image

H, W = 48, 64


@dataclass(frozen=True)
class Case:
    name: str  # file name, with the extension
    make: Callable[[], bytes]
    expect: str = "ok"  # "ok", "label" or "refused"
    lossless: bool = True
    reason: str = ""  # for "refused": words the error must contain
    alpha: int = 0  # trailing channels that must come out unchanged


def pixels(shape: tuple[int, ...], dtype: Any, seed: int) -> np.ndarray:
    """Mid-range samples (noise at σ 10 almost never clips)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(0.25, 0.75, shape).astype(dtype)
    top = np.iinfo(dtype).max
    return rng.integers(top // 4, top - top // 4, shape, endpoint=True).astype(dtype)


def tiff(data: np.ndarray | list[np.ndarray], **kwargs: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        buffer = io.BytesIO()
        byteorder = kwargs.pop("byteorder", "<")
        bigtiff = kwargs.pop("bigtiff", False)
        with tifffile.TiffWriter(buffer, byteorder=byteorder, bigtiff=bigtiff) as tw:
            for page in data if isinstance(data, list) else [data]:
                planar = kwargs.get("planarconfig") == "separate" and page.ndim == 3
                tw.write(np.moveaxis(page, -1, 0) if planar else page, metadata=None, **kwargs)
        return buffer.getvalue()
    return make


def pillow(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        im = Image.fromarray(array)
        if mode:
            im = im.convert(mode)
        buffer = io.BytesIO()
        im.save(buffer, fmt, **kwargs)
        return buffer.getvalue()
    return make


def opencv(array: np.ndarray, ext: str, params: list[int] | None = None) -> Callable[[], bytes]:
    def make() -> bytes:
        ok, data = cv2.imencode(ext, array, params or [])
        assert ok
        return data.tobytes()
    return make


def palette_png(transparent: bool) -> Callable[[], bytes]:
    def make() -> bytes:
        labels = (np.arange(H * W).reshape(H, W) // 97 % 21).astype(np.uint8)  # VOC-style class indices
        im = Image.fromarray(labels, "P")
        im.putpalette([(i * 37) % 256 for i in range(768)])
        buffer = io.BytesIO()
        im.save(buffer, "PNG", **({"transparency": 0} if transparent else {}))
        return buffer.getvalue()
    return make


def pnm(magic: bytes, array: np.ndarray, maxval: int) -> Callable[[], bytes]:
    def make() -> bytes:
        header = b"%s\n# made by the test\n%d %d\n%d\n" % (magic, array.shape[1], array.shape[0], maxval)
        if magic in (b"P2", b"P3"):
            return header + b"\n".join(b" ".join(str(v).encode() for v in row) for row in array.reshape(H, -1)) + b"\n"
        return header + array.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    return make


def gray_png_4bit(levels: np.ndarray) -> bytes:
    """A 4-bit gray PNG, chunk by chunk (no writer at hand keeps that depth on every version)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = levels.shape
    packed = (levels[:, 0::2] << 4) | levels[:, 1::2]
    rows = b"".join(b"\0" + row.tobytes() for row in packed)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 4, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def bmp16() -> bytes:
    """A 16-bit (RGB555) BMP, which Pillow and OpenCV read but noiseaug cannot write back."""
    row = (W * 2 + 3) & ~3
    data = bytes(row * H)
    info = struct.pack("<IiiHHIIiiII", 40, W, H, 1, 16, 0, len(data), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(data), 0, 0, 14 + len(info)) + info + data


def animated_webp() -> bytes:
    frames = [Image.fromarray(pixels((H, W, 3), np.uint8, s)) for s in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    return buffer.getvalue()


def bits(array: np.ndarray) -> Callable[[], bytes]:
    return tiff(array.astype(bool), photometric="minisblack")


def cases() -> list[Case]:
    u8, u16, f32 = np.uint8, np.uint16, np.float32
    rgb8, rgb16, rgbf = pixels((H, W, 3), u8, 1), pixels((H, W, 3), u16, 2), pixels((H, W, 3), f32, 3)
    gray8, gray16 = pixels((H, W), u8, 4), pixels((H, W), u16, 5)
    rgba8, rgba16 = pixels((H, W, 4), u8, 6), pixels((H, W, 4), u16, 7)
    la8, la16 = pixels((H, W, 2), u8, 8), pixels((H, W, 2), u16, 9)
    hdr = (pixels((H, W, 3), f32, 10) * 8).astype(f32)
    mask = (np.arange(H * W).reshape(H, W) % 7 == 0)
    t = tiff
    return [
        # TIFF: sample types, planar and chunky, compressions and predictors
        Case("t_gray8.tif", t(gray8, photometric="minisblack")),
        Case("t_gray16_lzw.tif", t(gray16, photometric="minisblack", compression="lzw")),
        Case("t_grayf32_deflate_pred3.tif", t(pixels((H, W), f32, 11), photometric="minisblack",
                                              compression="zlib", predictor=3)),
        Case("t_grayf64.tif", t(pixels((H, W), np.float64, 12), photometric="minisblack")),
        Case("t_rgb8.tif", t(rgb8, photometric="rgb")),
        Case("t_rgb8_planar_lzw.tif", t(rgb8, photometric="rgb", planarconfig="separate", compression="lzw")),
        Case("t_rgb16_planar_deflate.tif", t(rgb16, photometric="rgb", planarconfig="separate",
                                             compression="zlib")),
        Case("t_rgb16_planar.tif", t(rgb16, photometric="rgb", planarconfig="separate")),
        Case("t_rgbf32_planar.tif", t(rgbf, photometric="rgb", planarconfig="separate")),
        Case("t_rgbf32_lzw_pred3.tif", t(rgbf, photometric="rgb", compression="lzw", predictor=3)),
        Case("t_rgb16_lzw_pred2.tif", t(rgb16, photometric="rgb", compression="lzw", predictor=2)),
        Case("t_rgb8_packbits.tif", t(rgb8, photometric="rgb", compression="packbits")),
        Case("t_rgb8_zstd.tif", t(rgb8, photometric="rgb", compression="zstd")),
        Case("t_rgb8_tiled_deflate.tif", t(rgb8, photometric="rgb", tile=(16, 16), compression="zlib")),
        Case("t_rgb16_tiled_planar_lzw.tif", t(rgb16, photometric="rgb", tile=(32, 32), planarconfig="separate",
                                               compression="lzw")),
        Case("t_rgb8_strips7.tif", t(rgb8, photometric="rgb", rowsperstrip=7, compression="lzw")),
        # alpha and extra samples
        Case("t_rgba8_unassoc.tif", pillow(rgba8, "TIFF"), alpha=1),
        Case("t_rgba8_assoc.tif", t(rgba8, photometric="rgb", extrasamples=["assocalpha"]), alpha=1),
        Case("t_rgba16_unassoc_planar.tif", t(rgba16, photometric="rgb", extrasamples=["unassalpha"],
                                              planarconfig="separate", compression="zlib"), alpha=1),
        Case("t_la8.tif", t(la8, photometric="minisblack", extrasamples=["unassalpha"]), alpha=1),
        Case("t_la16_planar.tif", t(la16, photometric="minisblack", extrasamples=["unassalpha"],
                                    planarconfig="separate"), alpha=1),
        Case("t_5band8.tif", t(pixels((H, W, 5), u8, 13), photometric="minisblack", planarconfig="contig")),
        Case("t_cmyk8.tif", t(pixels((H, W, 4), u8, 14), photometric="separated")),
        Case("t_miniswhite8.tif", t(gray8, photometric="miniswhite")),
        # byte order, BigTIFF, pages
        Case("t_rgb8_bigendian_lzw.tif", t(rgb8, photometric="rgb", compression="lzw", byteorder=">")),
        Case("t_rgb16_bigendian_planar.tif", t(rgb16, photometric="rgb", planarconfig="separate", byteorder=">")),
        Case("t_bigtiff8.tif", t(rgb8, photometric="rgb", bigtiff=True)),
        Case("t_pages3_gray8.tif", t([gray8, pixels((20, 30), u8, 15), pixels((H, W), u8, 16)],
                                     photometric="minisblack")),
        Case("t_pages2_rgb16_planar.tif", t([rgb16, pixels((16, 24, 3), u16, 17)], photometric="rgb",
                                            planarconfig="separate", compression="lzw")),
        # JPEG inside TIFF
        Case("t_jpeg_ycbcr420.tif", t(rgb8, photometric="rgb", compression="jpeg", subsampling=(2, 2),
                                      rowsperstrip=16), lossless=False),
        Case("t_jpeg_ycbcr422.tif", t(rgb8, photometric="rgb", compression="jpeg", subsampling=(2, 1),
                                      rowsperstrip=16), lossless=False),
        Case("t_jpeg_gray.tif", t(gray8, photometric="minisblack", compression="jpeg", rowsperstrip=16),
             lossless=False),
        # labels and refusals
        Case("t_palette.tif", t((gray8 // 32).astype(u8), photometric="palette",
                                colormap=np.tile(np.arange(256, dtype=u16) * 257, (3, 1))), expect="label"),
        Case("t_bilevel.tif", bits(mask), expect="label"),
        Case("t_hdr.tif", t(hdr, photometric="rgb"), expect="refused", reason="outside [0, 1]"),
        Case("t_int16.tif", t(pixels((H, W), np.int16, 18), photometric="minisblack"), expect="refused",
             reason="signed integer"),
        Case("t_complex64.tif", t(pixels((H, W), np.float32, 19).astype(np.complex64), photometric="minisblack"),
             expect="refused", reason="64-bit complex float samples"),
        # PNG
        Case("p_gray8.png", opencv(gray8, ".png")),
        Case("p_gray16.png", opencv(gray16, ".png")),
        Case("p_rgb8.png", opencv(rgb8, ".png")),
        Case("p_rgb16.png", opencv(rgb16, ".png")),
        Case("p_rgba8.png", opencv(rgba8, ".png"), alpha=1),
        Case("p_rgba16.png", opencv(rgba16, ".png"), alpha=1),
        Case("p_la8.png", pillow(la8, "PNG", mode=None), alpha=1),
        Case("p_la16.png", lambda: imagecodecs.png_encode(la16), alpha=1),
        Case("p_palette_voc.png", palette_png(False), expect="label"),
        Case("p_palette_trns.png", palette_png(True), expect="label"),
        Case("p_1bit.png", pillow(mask, "PNG"), expect="label"),
        Case("p_gray4bit.png", lambda: gray_png_4bit((gray8 // 16).astype(u8)), expect="refused",
             reason="4-bit gray"),
        Case("p_rgb_trns.png", pillow(rgb8, "PNG", transparency=(0, 0, 0)), expect="refused", reason="tRNS"),
        # JPEG
        Case("j_gray.jpg", pillow(gray8, "JPEG", quality=95), lossless=False),
        Case("j_444.jpg", pillow(rgb8, "JPEG", quality=95, subsampling=0), lossless=False),
        Case("j_422.jpg", pillow(rgb8, "JPEG", quality=95, subsampling=1), lossless=False),
        Case("j_420.jpg", pillow(rgb8, "JPEG", quality=95, subsampling=2), lossless=False),
        Case("j_420_progressive.jpg", pillow(rgb8, "JPEG", quality=90, subsampling=2, progressive=True),
             lossless=False),
        Case("j_444_progressive.jpg", pillow(rgb8, "JPEG", quality=90, subsampling=0, progressive=True),
             lossless=False),
        Case("j_cmyk.jpg", pillow(rgba8, "JPEG", mode="CMYK"), expect="refused", reason="CMYK JPEG"),
        # WebP
        Case("w_lossy.webp", pillow(rgb8, "WEBP", quality=90), lossless=False),
        Case("w_lossless.webp", pillow(rgb8, "WEBP", lossless=True)),
        Case("w_rgba_lossless.webp", pillow(rgba8, "WEBP", lossless=True), alpha=1),
        Case("w_animated.webp", animated_webp, expect="refused", reason="animated WebP"),
        # BMP
        Case("b_24.bmp", pillow(rgb8, "BMP")),
        Case("b_32.bmp", opencv(rgba8, ".bmp"), alpha=1),
        Case("b_gray8.bmp", pillow(gray8, "BMP")),  # through the gray ramp: a grayscale picture
        Case("b_32_no_alpha_mask.bmp", pillow(rgba8, "BMP"), expect="refused", reason="without an alpha mask"),
        Case("b_palette8.bmp", pillow(rgb8, "BMP", mode="P"), expect="label"),
        Case("b_1bit.bmp", pillow(mask, "BMP"), expect="label"),
        Case("b_16bit.bmp", bmp16, expect="refused", reason="16-bit BMP"),
        # PNM
        Case("n_gray8.pgm", pnm(b"P5", gray8, 255)),
        Case("n_gray16.pgm", pnm(b"P5", gray16, 65535)),
        Case("n_rgb8.ppm", pnm(b"P6", rgb8, 255)),
        Case("n_rgb16.ppm", pnm(b"P6", rgb16, 65535)),
        Case("n_ascii8.pgm", pnm(b"P2", gray8, 255)),
        Case("n_bits.pnm", lambda: b"P4\n%d %d\n" % (W, H) + np.packbits(mask, axis=1).tobytes(), expect="label"),
        Case("n_maxval1023.pgm", pnm(b"P5", (gray16 // 64).astype(u16), 1023), expect="refused",
             reason="maximum value 1023"),
    ]


# ---- independent readers --------------------------------------------------------------------

TIFF_TAGS = (258, 259, 262, 277, 278, 284, 317, 322, 323, 338, 339, 530)


def layout(data: bytes, ext: str) -> dict[str, Any]:
    """What a file's layout is, as decoders other than noiseaug's see it."""
    if ext == ".tif":
        pages = [{tag: ifd.get(tag) for tag in TIFF_TAGS + (256, 257)} for ifd in tiff_ifds(data)]
        return {"byteorder": data[:2], "bigtiff": data[2:4] in (b"\0+", b"+\0"), "pages": pages}
    with Image.open(io.BytesIO(data)) as im:
        out: dict[str, Any] = {"format": im.format, "mode": im.mode, "size": im.size,
                               "frames": getattr(im, "n_frames", 1)}
        if im.format == "JPEG":
            out["sampling"] = [(h, v) for _, h, v, _ in im.layer]
            out["progressive"] = bool(im.info.get("progressive") or im.info.get("progression"))
    if ext == ".png":
        out["ihdr"] = (data[24], data[25])  # bit depth, colour type
    if ext == ".webp":
        out["lossless"] = b"VP8L" in data[:64]
    if ext == ".bmp":
        out["bits"] = int.from_bytes(data[28:30], "little")
    if ext in (".pgm", ".ppm", ".pnm"):
        out["magic"] = data[:2]
    return out


_TYPES = {1: "B", 2: "B", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 11: "f", 12: "d", 16: "Q", 17: "q",
          5: "II", 10: "ii"}


def tiff_ifds(data: bytes) -> list[dict[int, tuple]]:
    """Every IFD's tags (numbers as tuples), read with struct alone: a reader that shares nothing with tifffile."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    count_fmt, entry_fmt, next_fmt = ("Q", "HHQ", "Q") if big else ("H", "HHI", "I")
    offset = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    ifds, seen = [], set()
    while offset and offset not in seen:
        seen.add(offset)
        (count,) = struct.unpack_from(order + count_fmt, data, offset)
        pos = offset + struct.calcsize(order + count_fmt)
        tags = {}
        for _ in range(count):
            code, kind, n = struct.unpack_from(order + entry_fmt, data, pos)
            size = struct.calcsize(order + _TYPES.get(kind, "B")) * n
            inline = 8 if big else 4
            value_at = pos + struct.calcsize(order + entry_fmt)
            if size > inline:
                value_at = struct.unpack_from(order + ("Q" if big else "I"), data, value_at)[0]
            if kind in _TYPES and code not in (273, 279, 324, 325):
                tags[code] = struct.unpack_from(order + _TYPES[kind] * n, data, value_at)
            pos += struct.calcsize(order + entry_fmt) + inline
        ifds.append(tags)
        (offset,) = struct.unpack_from(order + next_fmt, data, pos)
    return ifds


def samples(data: bytes, ext: str) -> list[np.ndarray]:
    """Every page's samples as (height, width[, channels]), by decoders noiseaug does not use."""
    if ext == ".tif":
        pages = []
        for index, ifd in enumerate(tiff_ifds(data)):
            if ifd.get(262) == (5,):  # libtiff's reader turns CMYK into RGB: Pillow keeps the inks
                pages.append(np.asarray(Image.open(io.BytesIO(data))))
                continue
            page = imagecodecs.tiff_decode(data, index=index)  # libtiff
            if ifd.get(284) == (2,) and ifd.get(277, (1,))[0] > 1:
                page = np.moveaxis(page, 0, -1)
            pages.append(page)
        return pages
    if ext == ".png":
        return [imagecodecs.png_decode(data)]
    if ext in (".pgm", ".ppm") and data[:2] == b"P6" and b"65535" in data[:64]:
        height, width = Image.open(io.BytesIO(data)).size[::-1]
        return [np.frombuffer(data[-height * width * 6:], ">u2").reshape(height, width, 3).astype(np.uint16)]
    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 1 and ext in (".pgm", ".ppm"):
        array = array.astype(np.uint16)
    return [array]
