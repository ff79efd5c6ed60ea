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

import io
import os
import warnings
from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image

from .errors import DecodeError, TooLargeError
from .fileio import codec_stderr_silenced

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
Image.MAX_IMAGE_PIXELS = None  # the limit is ours: --max-pixels

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
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    width: int | None
    height: int | None
    orientation: int  # EXIF orientation 1..8; 1 when absent or already applied
    gray: bool  # a gray image that OpenCV expands to BGR(A): gray+alpha, or a gray palette
    lossless: bool  # lossless WebP (VP8L), kept lossless on writing
    pixel_bytes: int = 8  # decoded bytes per pixel (8 when the mode is unknown)
    icc: np.ndarray | None = None  # the colour profile, carried to the output (PNG, JPEG, WebP)


def set_threads(count: int) -> int:
    """Limit OpenCV's own thread pool (workers run one thread each); returns the old limit."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    return previous


def read_header(data: bytes, fmt: str) -> ImageHeader:
    """Probe the header with Pillow; unknown layouts fall back to OpenCV alone."""
    lossless = fmt == "webp" and _webp_is_lossless(data)
    try:
        with warnings.catch_warnings(), codec_stderr_silenced():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                orientation = 1 if fmt == "tiff" else _orientation(im)
                return ImageHeader(width, height, orientation, _is_gray(im), lossless,
                                   DECODED_BYTES.get(im.mode, 8))
    except Exception:  # Pillow could not parse it; OpenCV gets the last word
        return ImageHeader(None, None, 1, False, lossless)


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
    if im.mode in ("LA", "La"):
        return True
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


def decode(data: bytes, path: str, fmt: str, max_pixels: int) -> tuple[np.ndarray, ImageHeader]:
    """Decode an image upright, with its bit depth, channels and alpha.

    Raises :class:`TooLargeError` from the header alone, :class:`DecodeError`
    for anything OpenCV cannot read or a sample type noiseaug does not handle.
    """
    if not data:
        raise DecodeError(path, "empty file")
    header = read_header(data, fmt)
    if header.width is not None:
        if header.width * header.height > max_pixels:
            raise TooLargeError(path, f"{header.width}x{header.height} pixels is more than "
                                      f"--max-pixels {max_pixels}")
        need = header.width * header.height * header.pixel_bytes * WORKING_COPIES
        available = available_memory()
        if available is not None and need > available:
            raise TooLargeError(path, f"{header.width}x{header.height} pixels need about {need / 1e9:.1f} GB "
                                      f"to process, only {available / 1e9:.1f} GB of memory is available")
    try:
        with codec_stderr_silenced():
            pixels, icc = _decode_with_profile(np.frombuffer(data, dtype=np.uint8))
            header = replace(header, icc=icc)
    except cv2.error:  # OpenCV's text is a source location and an assertion, not a reason
        pixels = None
    if pixels is None:
        raise DecodeError(path, f"cannot decode as {fmt.upper()} (corrupt, truncated or another format)")
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise TooLargeError(path, f"{pixels.shape[1]}x{pixels.shape[0]} pixels is more than "
                                  f"--max-pixels {max_pixels}")
    if pixels.dtype not in SAMPLE_TYPES:
        raise DecodeError(path, f"{pixels.dtype} samples are not supported "
                                "(only 8-bit, 16-bit and float images)")
    if header.gray and pixels.ndim == 3 and pixels.shape[2] == 3:
        pixels = np.ascontiguousarray(pixels[..., 0])  # a gray palette: keep it gray
    return _upright(pixels, header.orientation), header


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


def encode(pixels: np.ndarray, ext: str, header: ImageHeader, *,
           jpeg_quality: int, png_compression: int) -> np.ndarray:
    """Encode in the format named by ``ext``; returns the encoded bytes as an array."""
    fmt = FORMATS[ext.lower()]
    params: list[int] = []
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, png_compression]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if header.lossless else jpeg_quality]
    elif fmt == "pnm":
        params = [cv2.IMWRITE_PXM_BINARY, 1]
    with codec_stderr_silenced():
        ok, encoded = _encode_with_profile(ext.lower(), pixels, params, header.icc if fmt in ICC_FORMATS else None)
    if not ok:
        raise ValueError(f"OpenCV cannot write {pixels.dtype} {pixels.shape} as {fmt.upper()}")
    return encoded


def _decode_with_profile(buffer: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Decode keeping alpha and depth; also return the ICC colour profile, if any.

    ``imdecodeWithMetadata`` exists from OpenCV 4.12 on; older versions lose the profile.
    """
    if not hasattr(cv2, "imdecodeWithMetadata"):
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
            pass  # a profile OpenCV will not embed: the pixels still go out
    return cv2.imencode(ext, pixels, params)


def format_of(name: str) -> str:
    return FORMATS[os.path.splitext(name)[1].lower()]
