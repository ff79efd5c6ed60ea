"""Image decoding and encoding: the only module that imports OpenCV and Pillow.

OpenCV decodes and encodes from memory (``imdecode``/``imencode``), because
its path-based functions fail on names that are not valid UTF-8. It decodes
with ``IMREAD_UNCHANGED`` to keep alpha and bit depth, a mode in which it
ignores EXIF orientation for JPEG, PNG and WebP (its TIFF reader applies the
TIFF orientation tag itself), so the orientation is applied here. Pillow opens
only the header, lazily: the pixel count is checked against ``--max-pixels``
before anything is decoded, and the EXIF orientation is read from it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .config import MAX_PIXELS
from .errors import DecodeError, TooLargeError, UnsupportedError, WriteError
from .noise import image_limits
from .silence import codec_stderr_silenced


def _import_opencv() -> Any:
    """OpenCV, with the environment as it was: its loader sets LD_LIBRARY_PATH, and the library
    changes no process-wide state (SPEC §6)."""
    environ = dict(os.environ)
    import cv2

    if os.environ != environ:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
    return cv2


cv2 = _import_opencv()
SAMPLE_TYPES = (np.uint8, np.uint16, np.float32, np.float64)
ICC_FORMATS = ("png", "jpeg", "webp")  # where OpenCV 5 reads and writes colour profiles

FORMATS = {  # extension -> format family
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff",
    ".tiff": "tiff", ".webp": "webp", ".pgm": "pnm", ".ppm": "pnm", ".pnm": "pnm",
}


# bytes per decoded pixel for a Pillow mode, as OpenCV will hold it (palettes may expand to BGRA)
DECODED_BYTES = {"1": 1, "L": 1, "P": 4, "PA": 4, "LA": 4, "La": 4, "RGB": 3, "RGBA": 4, "RGBa": 4,
                 "RGBX": 4, "CMYK": 4, "YCbCr": 3, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
                 "I": 4, "F": 4}
WORKING_COPIES = 3  # decoded pixels, a noisy copy, the encoded bytes: a safe upper bound


@dataclass(frozen=True)
class ReadOptions:
    """What decides how an input is read: the size limit, label maps, the float range."""

    max_pixels: int = MAX_PIXELS
    palette_images: str = "labels"  # or "noise": palette and 1-bit images noised as true colour
    float_range: tuple[float, float] | None = None  # the range of float samples; None: [0, 1] and checked


@dataclass(frozen=True)
class WriteOptions:
    jpeg_quality: int = 95
    png_compression: int = 3
    jpeg_subsampling: str = "keep"  # or "4:4:4", "4:2:2", "4:2:0"


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded (formats other than TIFF)."""

    width: int | None
    height: int | None
    orientation: int  # EXIF orientation 1..8; 1 when absent or already applied
    gray: bool  # a gray palette that OpenCV expands to BGR(A), kept gray when palettes are noised
    lossless: bool  # lossless WebP (VP8L), kept lossless on writing
    pixel_bytes: int = 8  # decoded bytes per pixel (8 when the mode is unknown)
    icc: np.ndarray | None = None  # the colour profile, carried to the output (PNG, JPEG, WebP)
    label: str | None = None  # "palette" or "1-bit": a label map
    gray_alpha: bool = False  # a gray+alpha PNG, kept gray+alpha
    subsampling: str | None = None  # a colour JPEG's chroma subsampling, "4:2:0" ...
    progressive: bool = False  # a progressive JPEG
    ascii: bool = False  # a plain (ASCII) PNM
    profiled: bool = True  # may carry a colour profile (a plain PNG cannot: decoded without looking for one)
    carried: bytes = b""  # header bytes the output gets back: PNG gamma/colour/density chunks, JPEG density


@dataclass
class Picture:
    """A decoded image: its pages (one but for multi-page TIFF) and how to write it back."""

    pages: list[np.ndarray]
    fmt: str
    colours: list[int]  # per page: leading channels that get noise; the others (alpha) are copied
    limits: tuple[float, float]  # the samples' range: noise is scaled to it and clipped to it
    layout: Any  # an ImageHeader, or image_tiff.TiffLayout
    label: str | None = None  # "palette" or "1-bit" for a label map (not decoded)

    def copy(self) -> "Picture":
        return replace(self, pages=[p.copy() for p in self.pages])

    def fields(self, options: WriteOptions) -> dict[str, Any]:
        """Record fields that describe the output's layout beyond its first page's shape."""
        extra: dict[str, Any] = {}
        if len(self.pages) > 1:
            extra["pages"] = len(self.pages)
        if self.fmt == "jpeg" and self.layout.subsampling:
            extra["subsampling"] = _jpeg_sampling(self.layout, options)
        return extra


def versions() -> dict[str, str]:
    """The versions of the image codecs, for the manifest's run record."""
    import imagecodecs
    import PIL
    import tifffile

    return {"opencv": cv2.__version__, "pillow": PIL.__version__, "tifffile": tifffile.__version__,
            "imagecodecs": imagecodecs.__version__}


def set_threads(count: int) -> int:
    """Limit OpenCV's own thread pool (workers run one thread each); returns the old limit."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    return previous


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's warnings and its own pixel limit off while noiseaug reads a header (--max-pixels is
    the limit here); the host's settings come back afterwards."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings(), codec_stderr_silenced():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_header(data: bytes, fmt: str, path: str = "") -> ImageHeader:
    """Probe the header with Pillow (and the format's own header bytes).

    Raises :class:`UnsupportedError` for a layout noiseaug cannot keep, and
    :class:`DecodeError` for a header Pillow cannot parse: without it
    nothing says whether the file is a label map, has other pictures or keeps
    an alpha colour, and OpenCV alone would decode it whole, past
    --max-pixels. A plain PNG (the common small file) is read from its IHDR
    alone, without Pillow.
    """
    if fmt == "png":
        plain = _plain_png(data)
        if plain is not None:
            return plain
    lossless = fmt == "webp" and _webp_is_lossless(data)
    try:
        with _quiet_pillow():
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                header = ImageHeader(width, height, _orientation(im), _is_gray(im), lossless,
                                     DECODED_BYTES.get(im.mode, 8),
                                     label={"P": "palette", "PA": "palette", "1": "1-bit"}.get(im.mode))
                return _FORMAT_CHECKS.get(im.format, _no_check)(data, im, header, path)  # what it is, whatever its name
    except UnsupportedError:
        raise
    except Exception as exc:  # Pillow could not parse it: its layout cannot be checked, so it is not guessed
        said = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc).splitlines()[0] if str(exc) else "")
        raise DecodeError(path, f"cannot decode its header ({said or type(exc).__name__}): a damaged file, or a "
                                "variant whose layout cannot be checked") from None


def _no_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    return header


def _png_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    depth, colour_type = data[24], data[25]
    chunks = _png_chunk_types(data)
    if chunks & set(_PNG_CARRIED):
        header = replace(header, carried=_png_carried(data))
    if b"acTL" in chunks:
        raise UnsupportedError(path, f"animated PNG ({getattr(im, 'n_frames', '?')} frames)")
    if colour_type == 3:
        return replace(header, label="palette")
    if colour_type == 0 and depth == 1:
        return replace(header, label="1-bit")
    if colour_type == 0 and depth < 8:
        raise UnsupportedError(path, f"{depth}-bit gray PNG (noise does not fit {2 ** depth} levels)")
    if b"tRNS" in chunks:
        raise UnsupportedError(path, "PNG with a tRNS transparent colour (noise would change what is transparent)")
    return replace(header, gray_alpha=colour_type == 4, label=None)


_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> channels (palettes aside)


def _plain_png(data: bytes) -> ImageHeader | None:
    """The header of an 8- or 16-bit gray, RGB, gray+alpha or RGBA PNG with nothing that needs Pillow
    (no palette, transparency key, animation, EXIF orientation or colour profile); else None."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    if data[24] not in (8, 16) or data[25] not in _PNG_CHANNELS:
        return None
    if _png_chunk_types(data) & {b"tRNS", b"acTL", b"eXIf", b"iCCP", b"PLTE", *_PNG_CARRIED}:
        return None
    return _plain_png_header(data[16:26])


_PNG_CARRIED = (b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCv", b"cLLi",  # how to show the pixels (HDR too) and
                b"pHYs")  # their density: OpenCV drops them


def _png_carried(data: bytes) -> bytes:
    """The input's gamma, chromaticity, sRGB intent and pixel density chunks, whole, as they come before the
    image data (the output gets them back right after its IHDR)."""
    kept, pos = [], 8
    while pos + 12 <= len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            break
        if kind in _PNG_CARRIED and pos + 12 + size <= len(data):
            kept.append(data[pos:pos + 12 + size])
        pos += 12 + size
    return b"".join(kept)


_JFIF_DEFAULT = b"\0\0\1\0\1"  # no unit, 1:1: what OpenCV's writer says


def _jfif_density(data: bytes) -> bytes:
    """A JPEG's JFIF density (unit, horizontal, vertical: five bytes) when it says more than OpenCV writes."""
    if data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\0" and len(data) >= 18 and data[13:18] != _JFIF_DEFAULT:
        return data[13:18]
    return b""


def _carry_back(encoded: bytes | np.ndarray, header: ImageHeader, fmt: str) -> bytes | np.ndarray:
    """The output with the input's ``carried`` header bytes (see :class:`ImageHeader`) put back."""
    out = bytes(encoded)
    if fmt == "png" and out[12:16] == b"IHDR":
        chunks = header.carried if header.icc is None else _without_srgb(header.carried)  # not both (PNG spec)
        return out[:33] + chunks + out[33:]
    if fmt == "jpeg" and out[2:4] == b"\xff\xe0" and out[6:11] == b"JFIF\0":
        return out[:13] + header.carried + out[18:]
    return encoded


def _without_srgb(chunks: bytes) -> bytes:
    kept, pos = [], 0
    while pos + 12 <= len(chunks):
        size = int.from_bytes(chunks[pos:pos + 4], "big")
        if chunks[pos + 4:pos + 8] != b"sRGB":
            kept.append(chunks[pos:pos + 12 + size])
        pos += 12 + size
    return b"".join(kept)


@functools.lru_cache(maxsize=64)  # a dataset's small PNGs mostly share one IHDR; headers are immutable
def _plain_png_header(ihdr: bytes) -> ImageHeader:
    """The header of a plain PNG from its IHDR fields (width, height, depth, colour type)."""
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour_type = ihdr[8], ihdr[9]
    return ImageHeader(width, height, 1, False, False, _PNG_CHANNELS[colour_type] * depth // 8,
                       gray_alpha=colour_type == 4, profiled=False)


def _png_chunk_types(data: bytes) -> set[bytes]:
    """The types of the chunks before the image data."""
    types, pos = set(), 8
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            break
        types.add(kind)
        pos += 12 + size
    return types


JPEG_SAMPLING = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (1, 2): "4:4:0", (4, 1): "4:1:1"}


def _jpeg_frame(data: bytes) -> tuple[int, int] | None:
    """The JPEG's start-of-frame marker and sample precision, read from the segments before the scan."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, size = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker - 0xC0, data[pos + 4] if pos + 4 < len(data) else 0
        if marker == 0xDA:
            return None
        pos += 2 + size
    return None


def _check_signature(data: bytes, fmt: str, path: str) -> None:
    """Refusals that need no decoder: layouts some decoders read but no writer here keeps."""
    if fmt == "jpeg":
        frame = _jpeg_frame(data)
        if frame is not None and frame[0] in (3, 7, 11, 15):
            raise UnsupportedError(path, "lossless JPEG (the writer is lossy)")
        if frame is not None and frame[1] != 8:
            raise UnsupportedError(path, f"{frame[1]}-bit JPEG (only 8-bit samples)")
        scan = data.find(b"\xff\xda")
        if scan > 0 and data.rfind(b"\xff\xd9") < scan:  # 0xFF in coded data is always stuffed: this is EOI
            raise DecodeError(path, "truncated JPEG (no end-of-image marker after its scan; some decoders "
                                    "would fill the missing part with gray)")
    if fmt == "pnm" and data[:2] not in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        raise UnsupportedError(path, f"PNM of type {data[:2].decode('latin-1')!r} (only P1-P6; PAM is P7)")


def _jpeg_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    if im.mode not in ("L", "RGB"):
        raise UnsupportedError(path, f"{im.mode} JPEG (only gray and YCbCr colour JPEGs)")
    if im.mode == "RGB" and im.info.get("adobe_transform") == 0:
        raise UnsupportedError(path, "JPEG stored as RGB (Adobe transform 0): the writer would store it as YCbCr")
    if im.mode == "RGB" and _rgb_by_component_ids(im):
        raise UnsupportedError(path, "JPEG stored as RGB (components named R, G, B): the writer would store it as "
                                     "YCbCr")
    icc = im.info.get("icc_profile")  # Pillow's: OpenCV takes an MPF segment for a colour profile
    density = _jfif_density(data)
    if density and header.orientation >= 5:  # turned a quarter: the upright picture's x is the stored y
        density = density[:1] + density[3:5] + density[1:3]
    header = replace(header, carried=density, profiled=False,
                     icc=np.frombuffer(icc, dtype=np.uint8) if icc else None)
    progressive = bool(im.info.get("progressive") or im.info.get("progression"))
    if im.mode == "L":
        return replace(header, progressive=progressive)
    layers = getattr(im, "layer", [])
    luma, chroma = (layers[0][1], layers[0][2]), {(h, v) for _, h, v, _ in layers[1:]}
    sampling = JPEG_SAMPLING.get(luma) if chroma == {(1, 1)} else None
    if sampling is None:
        factors = " ".join(f"{h}x{v}" for _, h, v, _ in layers)
        raise UnsupportedError(path, f"JPEG chroma sampling {factors} (the writer keeps "
                                     f"{', '.join(JPEG_SAMPLING.values())})")
    return replace(header, subsampling=sampling, progressive=progressive)


def _rgb_by_component_ids(im: "Image.Image") -> bool:
    """Whether libjpeg decodes this 3-component JPEG as RGB because of its component ids ('R', 'G', 'B'),
    which it consults only when neither a JFIF nor an Adobe marker says what the colour space is."""
    ids = [x[0] if isinstance(x[0], int) else x[0][:1] for x in getattr(im, "layer", [])]  # int, or 1 byte
    return "jfif" not in im.info and "adobe" not in im.info and ids in ([82, 71, 66], [b"R", b"G", b"B"])


def _mpo_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    """A JPEG with an MPF segment (camera MPO, stereo pair, gain-map photo): one picture is a JPEG."""
    pictures = getattr(im, "n_frames", 1)
    if pictures > 1:
        raise UnsupportedError(path, f"JPEG holding {pictures} pictures (MPO: a stereo pair, a gain map or a "
                                     "preview): only the first would be kept")
    return _jpeg_check(data, im, header, path)


def _webp_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise UnsupportedError(path, f"animated WebP ({frames} frames)")
    return header


def _bmp_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    info_size = int.from_bytes(data[14:18], "little")
    bits = int.from_bytes(data[28:30] if info_size >= 40 else data[24:26], "little")
    if bits == 8 and im.mode == "L":  # the identity gray ramp: BMP's only way to store a grayscale picture
        return header  # noised as gray; OpenCV writes it back as 8 bits through the same ramp
    if bits <= 8:  # any other colour table: a label map
        return replace(header, label="1-bit" if bits == 1 else "palette")
    if bits not in (24, 32):
        raise UnsupportedError(path, f"{bits}-bit BMP (only 24- and 32-bit true colour, or palettes as labels)")
    if bits == 32 and im.mode != "RGBA":  # OpenCV reads it as 3 channels and would write 24 bits
        raise UnsupportedError(path, "32-bit BMP without an alpha mask (its fourth byte would be dropped)")
    return header


def _pnm_check(data: bytes, im: "Image.Image", header: ImageHeader, path: str) -> ImageHeader:
    magic = data[:2]
    if magic in (b"P1", b"P4"):
        return replace(header, label="1-bit")
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise UnsupportedError(path, f"PNM of type {magic.decode('latin-1')!r} (only P1-P6)")
    maxval = _pnm_maxval(data)
    if maxval not in (255, 65535):
        raise UnsupportedError(path, f"PNM with maximum value {maxval} (only 255 and 65535 keep their scale)")
    if magic in (b"P5", b"P6") and im.tile:  # a binary PNM may hold more images, one after another
        offset = im.tile[0][2]
        end = offset + im.width * im.height * (3 if magic == b"P6" else 1) * (2 if maxval > 255 else 1)
        if data[end:].lstrip()[:1] == b"P":
            raise UnsupportedError(path, "PNM holding several images: only the first would be kept")
    return replace(header, ascii=magic in (b"P2", b"P3"))


def _check_plain_pnm(data: bytes, pixels: np.ndarray, path: str) -> None:
    """Refuse a plain (ASCII) PNM that OpenCV reads leniently: it splits a token such as ``20x9`` or ``300,0``
    into two samples and takes a sample above the maximum value, where Pillow's reader, strict, refuses the
    file. What Pillow reads must be what OpenCV read, sample for sample."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            strict = np.asarray(im)
    except (ValueError, OSError, SyntaxError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DecodeError(path, f"malformed plain PNM samples ({text})") from None
    ours = pixels[..., ::-1] if pixels.ndim == 3 else pixels  # OpenCV's BGR
    if ours.ndim == 3 and ours.dtype == np.uint16:  # Pillow holds 16-bit colour as 8 bits: its parse is the check
        return
    if strict.shape != ours.shape or not np.array_equal(strict, ours):
        raise DecodeError(path, "malformed plain PNM samples (OpenCV and Pillow read them differently)")


def _pnm_maxval(data: bytes) -> int | None:
    """The maximum sample value of a P2/P3/P5/P6 header (comments skipped)."""
    tokens: list[bytes] = []
    for line in data[2:4096].split(b"\n"):
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 3:
            break
    try:
        return int(tokens[2])
    except (IndexError, ValueError):
        return None


_FORMAT_CHECKS = {"PNG": _png_check, "JPEG": _jpeg_check, "MPO": _mpo_check, "WEBP": _webp_check,
                  "BMP": _bmp_check, "PPM": _pnm_check}


def available_memory() -> int | None:
    """Memory the system can still give without swapping (Linux), else None."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_gray(im: "Image.Image") -> bool:
    if im.mode == "P":
        palette = im.getpalette() or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return False


def _orientation(im: "Image.Image") -> int:
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        value = Image.Exif()
        value.load(raw)
        orientation = int(value.get(0x0112, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _webp_is_lossless(data: bytes) -> bool:
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag in (b"VP8L", b"VP8 "):
            return tag == b"VP8L"
        pos += 8 + size + (size & 1)
    return False


@dataclass(frozen=True)
class Probe:
    """What the header says: a label map (``label`` set) or the layout to decode and keep."""

    label: str | None
    layout: Any  # an ImageHeader, or image_tiff.TiffLayout
    fmt: str  # the format the bytes are in (whatever the file's name says), and the output's


def sniff(data: bytes) -> str | None:
    """The image format the bytes are in, from their signature; None when unknown."""
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "pnm"
    return None


def probe(data: bytes, path: str, fmt: str, options: ReadOptions = ReadOptions()) -> Probe:
    """Read the header only. Raises :class:`UnsupportedError`, :class:`TooLargeError`, :class:`DecodeError`.

    A file is read, and written back, in the format its bytes are in: a PNG
    named ``.jpg`` stays a PNG under that name (writing it as a JPEG would
    drop its depth and alpha).
    """
    if not data:
        raise DecodeError(path, "empty file")
    fmt = sniff(data) or fmt
    if fmt == "tiff":
        from . import image_tiff

        layout, label = image_tiff.probe(data, path, options.max_pixels)
        if label and options.palette_images == "noise":
            raise UnsupportedError(path, f"noise on a {label} TIFF, a label map (--palette-images noise): "
                                         "its pages and storage would not be kept; noised palettes work "
                                         "on PNG and BMP")
        return Probe(label, layout, fmt)
    _check_signature(data, fmt, path)
    header = read_header(data, fmt, path)
    if header.label is None and header.width is not None and header.width * header.height > options.max_pixels:
        raise TooLargeError(path, f"{header.width}x{header.height} pixels is more than "
                                  f"--max-pixels {options.max_pixels}")
    return Probe(header.label if options.palette_images == "labels" else None, header, fmt)


def check_label(data: bytes, path: str, fmt: str) -> None:
    """Decode a label map once, so a broken one is refused rather than copied (raises :class:`DecodeError`)."""
    try:
        with _quiet_pillow():
            with Image.open(io.BytesIO(data)) as im:  # Pillow reads palettes and 1-bit images of every format
                for frame in range(getattr(im, "n_frames", 1)):
                    im.seek(frame)
                    im.load()
    except Exception as exc:
        raise _pillow_failed(exc, path, fmt) from None


def label_view(data: bytes, path: str, fmt: str) -> np.ndarray:
    """A label map's first page as 8-bit BGR in its palette's colours: for showing it (a preview), not noise."""
    try:
        with _quiet_pillow():
            with Image.open(io.BytesIO(data)) as im:
                rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise _pillow_failed(exc, path, fmt) from None
    return np.ascontiguousarray(rgb[..., ::-1])


def _pillow_failed(exc: Exception, path: str, fmt: str) -> DecodeError:
    text = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", " ".join(str(exc).split()))[:200]  # no addresses
    return DecodeError(path, f"cannot decode as {fmt.upper()} ({text})")


def decode(data: bytes, path: str, fmt: str, options: ReadOptions = ReadOptions(),
           probed: Probe | None = None) -> Picture:
    """Decode an image upright, with its bit depth, channels, alpha and pages.

    A label map (palette or 1-bit) comes back undecoded, with ``label`` set,
    unless ``options.palette_images`` is "noise". Raises :class:`TooLargeError`
    from the header alone, :class:`UnsupportedError` for a layout that cannot
    be kept, :class:`DecodeError` for anything that cannot be read.
    """
    probed = probed or probe(data, path, fmt, options)
    fmt = probed.fmt
    if probed.label:
        return Picture([], fmt, [], (0.0, 0.0), probed.layout, label=probed.label)
    if isinstance(probed.layout, ImageHeader):
        picture = _decode_flat(data, path, fmt, options, probed.layout)
    else:
        picture = _decode_tiff(data, path, probed.layout)
    if picture.pages[0].dtype.kind == "f":
        picture.limits = _float_limits(picture.pages, path, options.float_range)
    return picture


def _decode_tiff(data: bytes, path: str, layout: Any) -> Picture:
    from . import image_tiff

    _check_memory(path, layout.nbytes, None)
    pages = image_tiff.read_pages(data, path, layout)
    if len({p.dtype for p in pages}) > 1:
        raise UnsupportedError(path, "TIFF whose pages have different sample types")
    return Picture(pages, "tiff", [p.colour for p in layout.pages], image_limits(pages[0].dtype), layout)


def _decode_flat(data: bytes, path: str, fmt: str, options: ReadOptions, header: ImageHeader) -> Picture:
    if header.width is not None:
        if header.width * header.height > options.max_pixels:
            raise TooLargeError(path, f"{header.width}x{header.height} pixels is more than "
                                      f"--max-pixels {options.max_pixels}")
        _check_memory(path, header.width * header.height * header.pixel_bytes, (header.width, header.height))
    coded = data + b"\n" if header.ascii and data[-1:].strip() else data  # OpenCV wants a separator at the end
    try:
        with codec_stderr_silenced():
            pixels, icc = _decode_with_profile(np.frombuffer(coded, dtype=np.uint8), header.profiled)
            if icc is not None:
                header = replace(header, icc=icc)
    except cv2.error:  # OpenCV's text is a source location and an assertion, not a reason
        pixels = None
    if pixels is None:
        raise DecodeError(path, f"cannot decode as {fmt.upper()} (corrupt, truncated or another format)")
    if pixels.shape[0] * pixels.shape[1] > options.max_pixels:
        raise TooLargeError(path, f"{pixels.shape[1]}x{pixels.shape[0]} pixels is more than "
                                  f"--max-pixels {options.max_pixels}")
    if pixels.dtype not in SAMPLE_TYPES:
        raise UnsupportedError(path, f"{pixels.dtype} samples (only 8-bit, 16-bit and float images)")
    if header.ascii:
        _check_plain_pnm(data, pixels, path)
    if header.gray and pixels.ndim == 3:  # a gray palette: keep it gray (and its transparency)
        pixels = np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 3 else pixels[..., [0, 3]])
        header = replace(header, gray_alpha=pixels.ndim == 3)
    if header.gray_alpha and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = np.ascontiguousarray(pixels[..., [0, 3]])  # OpenCV expands gray+alpha to BGRA
    pixels = _upright(pixels, header.orientation)
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    colour = channels - 1 if channels in (2, 4) else channels
    return Picture([pixels], fmt, [colour], image_limits(pixels.dtype), header)


SMALL_IMAGE = 1 << 26  # working sets below 64 MB need no look at the system's free memory


def _check_memory(path: str, decoded: int, size: tuple[int, int] | None) -> None:
    need = decoded * WORKING_COPIES
    if need < SMALL_IMAGE:
        return
    available = available_memory()
    if available is not None and need > available:
        what = f"{size[0]}x{size[1]} pixels need" if size else "its pages need"
        raise TooLargeError(path, f"{what} about {need / 1e9:.1f} GB to process, only "
                                  f"{available / 1e9:.1f} GB of memory is available")


def _float_limits(pages: list[np.ndarray], path: str, given: tuple[float, float] | None) -> tuple[float, float]:
    """The range float samples are noised against: [0, 1], or --float-range; samples outside are refused."""
    lo, hi = given if given is not None else (0.0, 1.0)
    for page in pages:
        if not np.isfinite(page).all():
            raise UnsupportedError(path, "float samples that are NaN or infinite")
        low, high = (float(page.min()), float(page.max())) if page.size else (lo, hi)
        if low < lo or high > hi:  # the samples' own range in the reason, not one clamped to [lo, hi]
            hint = "give their range with --float-range LO:HI" if given is None else "widen --float-range"
            raise UnsupportedError(path, f"float samples from {low:g} to {high:g}, outside "
                                         f"[{lo:g}, {hi:g}] ({hint})")
    return lo, hi


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation, as a viewer would show the image."""
    if orientation == 1:
        return pixels
    transposed = pixels.swapaxes(0, 1)
    view = {
        2: pixels[:, ::-1],
        3: pixels[::-1, ::-1],
        4: pixels[::-1],
        5: transposed,
        6: transposed[:, ::-1],
        7: transposed[::-1, ::-1],
        8: transposed[::-1],
    }[orientation]
    return np.ascontiguousarray(view)


def encode(picture: Picture, path: str, options: WriteOptions) -> bytes | np.ndarray:
    """Encode a (noisy) picture the way its input was stored; returns the bytes."""
    if not isinstance(picture.layout, ImageHeader):
        from . import image_tiff

        return image_tiff.write(picture.pages, picture.layout, path, options.jpeg_quality)
    header, pixels = picture.layout, picture.pages[0]
    fmt, ext = picture.fmt, "." + ("tif" if picture.fmt == "tiff" else picture.fmt if picture.fmt != "pnm"
                                   else ("pgm" if pixels.ndim == 2 else "ppm"))
    if fmt == "png" and header.gray_alpha:
        import imagecodecs  # OpenCV writes 1, 3 or 4 channels only

        encoded = imagecodecs.png_encode(pixels, level=options.png_compression)
        return _carry_back(encoded, header, fmt) if header.carried else encoded
    if fmt == "webp" and header.lossless and pixels.ndim == 3 and pixels.shape[2] == 4:
        return _webp_lossless_exact(pixels, header)
    params: list[int] = []
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality,
                  cv2.IMWRITE_JPEG_PROGRESSIVE, int(header.progressive)]
        if header.subsampling:
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _JPEG_FACTORS[_jpeg_sampling(header, options)]]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, options.png_compression]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if header.lossless else options.jpeg_quality]
    elif fmt == "pnm":
        params = [cv2.IMWRITE_PXM_BINARY, 0 if header.ascii else 1]
    icc = header.icc if fmt in ICC_FORMATS else None
    with codec_stderr_silenced():
        ok, encoded = _encode_with_profile(ext, pixels, params, icc)
    if not ok and icc is not None:
        why = " (one JPEG segment holds 65,519 bytes)" if fmt == "jpeg" and icc.size > 65519 else ""
        raise UnsupportedError(path, f"a colour profile of {icc.size} bytes, which OpenCV cannot write into a "
                                     f"{fmt.upper()}{why}")
    if not ok:
        raise WriteError(path, f"OpenCV cannot write {pixels.dtype} {pixels.shape} as {fmt.upper()}")
    return _carry_back(encoded, header, fmt) if header.carried else encoded


def _webp_lossless_exact(bgra: np.ndarray, header: ImageHeader) -> bytes:
    """Lossless WebP with alpha through Pillow, in exact mode: OpenCV's writer rewrites the colour
    under fully transparent pixels, so σ = 0 would not give back every sample."""
    buffer = io.BytesIO()
    rgba = np.ascontiguousarray(bgra[..., [2, 1, 0, 3]])
    extra = {"icc_profile": header.icc.tobytes()} if header.icc is not None else {}
    Image.fromarray(rgba, "RGBA").save(buffer, "WEBP", lossless=True, exact=True, **extra)
    return buffer.getvalue()


_JPEG_FACTORS = {"4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                 "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:4:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
                 "4:1:1": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411}


def _jpeg_sampling(header: ImageHeader, options: WriteOptions) -> str:
    return header.subsampling if options.jpeg_subsampling == "keep" else options.jpeg_subsampling  # type: ignore


def _decode_with_profile(buffer: np.ndarray, profiled: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Decode keeping alpha and depth; also return the ICC colour profile, if any (and if ``profiled``).

    ``imdecodeWithMetadata`` exists from OpenCV 4.12 on; older versions lose the profile.
    """
    if not profiled or not hasattr(cv2, "imdecodeWithMetadata"):
        return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED), None
    pixels, kinds, blobs = cv2.imdecodeWithMetadata(buffer, flags=cv2.IMREAD_UNCHANGED)
    icc = next((blob for kind, blob in zip(kinds, blobs) if kind == cv2.IMAGE_METADATA_ICCP), None)
    return pixels, icc


def _encode_with_profile(ext: str, pixels: np.ndarray, params: list[int],
                         icc: np.ndarray | None) -> tuple[bool, np.ndarray]:
    """Encode, embedding the input's colour profile so the output looks the same in a viewer."""
    if icc is not None and hasattr(cv2, "imencodeWithMetadata"):
        try:
            return cv2.imencodeWithMetadata(ext, pixels, [cv2.IMAGE_METADATA_ICCP], [icc], params)
        except cv2.error:
            return False, None  # a profile OpenCV will not embed: dropping it would change how the output looks
    return cv2.imencode(ext, pixels, params)


def format_of(name: str) -> str:
    return FORMATS[os.path.splitext(name)[1].lower()]
