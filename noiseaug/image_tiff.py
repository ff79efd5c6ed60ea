"""TIFF through tifffile and imagecodecs; used by :mod:`image_io` only.

OpenCV's TIFF reader goes through libtiff's RGBA interface for every layout
it does not know: it decodes planar 16-bit and float files wrongly, multiplies
unassociated alpha into the colour, and reads the first page only. tifffile
reads the samples as they are stored (planar or chunky, tiled or striped,
every compression imagecodecs decodes) and writes them back with the same
tags, page by page. Every written file is read back (tags only) and compared
with its input's layout, so a layout the writer cannot keep is refused, never
written differently.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tifffile
from tifffile import COMPRESSION, EXTRASAMPLE, PHOTOMETRIC, PLANARCONFIG, SAMPLEFORMAT

from .errors import DecodeError, TooLargeError, UnsupportedError

# Tags the writer derives from the layout it is given; every other tag is copied.
_STRUCTURAL = {254, 256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 282, 283, 284, 296, 305, 306,
               317, 320, 322, 323, 324, 325, 330, 338, 339, 347, 529, 530, 531, 532, 32997, 32998, 34675}
_COPIED_TYPES = {1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 16, 17}  # integer, ASCII, byte and floating types
_PHOTOMETRIC = {PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE, PHOTOMETRIC.RGB, PHOTOMETRIC.SEPARATED,
                PHOTOMETRIC.YCBCR}
_SAMPLES = {(SAMPLEFORMAT.UINT, 8): np.uint8, (SAMPLEFORMAT.UINT, 16): np.uint16,
            (SAMPLEFORMAT.IEEEFP, 32): np.float32, (SAMPLEFORMAT.IEEEFP, 64): np.float64}
_ALPHA = (EXTRASAMPLE.ASSOCALPHA, EXTRASAMPLE.UNASSALPHA)


@dataclass(frozen=True)
class PageLayout:
    """How one page is stored, as the writer needs it to store it the same way."""

    photometric: int
    planar: bool
    extrasamples: tuple[int, ...]
    compression: int
    predictor: int
    tile: tuple[int, int] | None
    rowsperstrip: int | None
    subsampling: tuple[int, int] | None
    colour: int  # leading samples that are noised; the rest are alpha
    tags: dict[str, Any] = field(default_factory=dict)  # passed to TiffWriter.write as they are
    extratags: tuple[tuple, ...] = ()


@dataclass(frozen=True)
class TiffLayout:
    byteorder: str
    bigtiff: bool
    pages: tuple[PageLayout, ...]
    nbytes: int  # decoded size of all pages


def probe(data: bytes, path: str, max_pixels: int) -> tuple[TiffLayout | None, str | None]:
    """The file's layout, or (None, why) for a label map (palette or 1-bit).

    Raises :class:`UnsupportedError` for layouts noiseaug cannot keep,
    :class:`TooLargeError` for pages over ``max_pixels``.
    """
    try:
        with _quiet(), tifffile.TiffFile(io.BytesIO(data)) as tif:
            stored = _pages(tif)
            pages = [_page(page, path, max_pixels) for page in stored]
            byteorder, bigtiff = tif.byteorder, tif.is_bigtiff
            nbytes = sum(page.nbytes for page in stored)
    except (UnsupportedError, TooLargeError):
        raise
    except Exception as exc:  # tifffile's own errors and what malformed files make it raise
        raise DecodeError(path, f"cannot decode as TIFF ({_malformed(exc)})") from None
    if not pages:
        raise DecodeError(path, "cannot decode as TIFF (no image in the file)")
    labels = [p for p in pages if isinstance(p, str)]
    if labels:
        if len(labels) < len(pages):
            raise UnsupportedError(path, "TIFF mixing label pages (palette or 1-bit) with images")
        return None, labels[0]
    return TiffLayout(byteorder, bigtiff, tuple(pages), nbytes), None  # type: ignore[arg-type]


@contextlib.contextmanager
def _quiet() -> Any:
    """tifffile logs what it repairs in a broken file; the file's record says what matters."""
    logger = logging.getLogger("tifffile")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _pages(tif: Any) -> list[Any]:
    """The main chain of pages; counted first, which stops at a circular reference."""
    return [tif.pages[i] for i in range(len(tif.pages))]


def _page(page: Any, path: str, max_pixels: int) -> PageLayout | str:
    if not isinstance(page, tifffile.TiffPage):
        page = page.aspage()
    if page.photometric == PHOTOMETRIC.PALETTE:
        return "palette"
    if page.bitspersample == 1:
        return "1-bit"
    if page.imagewidth * page.imagelength > max_pixels:
        raise TooLargeError(path, f"{page.imagewidth}x{page.imagelength} pixels is more than "
                                  f"--max-pixels {max_pixels}")
    if not page.shape or 0 in page.shape:
        raise DecodeError(path, "cannot decode as TIFF (a page has no pixels)")
    _check(page, path)
    extras = _extras(page)
    alpha_at = next((i for i, e in enumerate(extras) if e in _ALPHA), len(extras))
    tile = (page.tilelength, page.tilewidth) if page.is_tiled else None
    ycbcr = page.photometric == PHOTOMETRIC.YCBCR
    return PageLayout(
        photometric=int(PHOTOMETRIC.RGB if ycbcr else page.photometric),
        planar=page.planarconfig == PLANARCONFIG.SEPARATE and page.samplesperpixel > 1,
        extrasamples=extras, compression=int(page.compression), predictor=int(page.predictor),
        tile=tile, rowsperstrip=None if tile else min(page.rowsperstrip, page.imagelength),
        subsampling=tuple(page.subsampling) if ycbcr and page.subsampling else None,
        colour=page.samplesperpixel - (len(extras) - alpha_at),
        tags=_plain_tags(page), extratags=_extra_tags(page))


def _extras(page: Any) -> tuple[int, ...]:
    """ExtraSamples, completed when a writer left them out (OpenCV writes RGBA without the tag).

    A lone fourth sample of an RGB page is alpha, as libtiff and tifffile take
    it; other extra samples without a tag are data (noised).
    """
    extras = tuple(int(e) for e in page.extrasamples)
    base = 4 if page.photometric == PHOTOMETRIC.SEPARATED else 3 if page.photometric in (
        PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR) else 1
    missing = page.samplesperpixel - base - len(extras)
    if missing <= 0:
        return extras
    if missing == 1 and not extras and base == 3:
        return (int(EXTRASAMPLE.UNASSALPHA),)
    return extras + (int(EXTRASAMPLE.UNSPECIFIED),) * missing


def _check(page: Any, path: str) -> None:
    """Refuse, with the reason, what cannot be noised and written back as it is."""
    if page.compression in (COMPRESSION.SGILOG, COMPRESSION.SGILOG24):
        raise UnsupportedError(path, "LogLuv (SGILOG) TIFF: its samples are encoded luminance, not stored values")
    kind = (page.sampleformat, page.bitspersample)
    if kind not in _SAMPLES:
        what = {SAMPLEFORMAT.INT: "signed integer", SAMPLEFORMAT.IEEEFP: "float", SAMPLEFORMAT.VOID: "untyped",
                SAMPLEFORMAT.COMPLEXINT: "complex integer",
                SAMPLEFORMAT.COMPLEXIEEEFP: "complex float"}.get(page.sampleformat, "unsigned")
        raise UnsupportedError(path, f"TIFF with {page.bitspersample}-bit {what} samples "
                                     "(only 8/16-bit unsigned and 32/64-bit float are noised)")
    if page.photometric not in _PHOTOMETRIC:
        raise UnsupportedError(path, f"TIFF with photometric {PHOTOMETRIC(page.photometric).name}")
    if page.photometric == PHOTOMETRIC.YCBCR and page.compression != COMPRESSION.JPEG:
        raise UnsupportedError(path, "TIFF with YCbCr samples outside JPEG compression")
    if page.compression == COMPRESSION.JPEG and page.photometric == PHOTOMETRIC.RGB and page.samplesperpixel >= 3:
        raise UnsupportedError(path, "JPEG-compressed TIFF with RGB (not YCbCr) samples: the writer would "
                                     "store them as YCbCr")
    if page.compression == COMPRESSION.OJPEG:
        raise UnsupportedError(path, "TIFF with old-style JPEG compression (6)")
    if page.imagedepth > 1:
        raise UnsupportedError(path, "volumetric TIFF (ImageDepth > 1)")
    if page.subifds:
        raise UnsupportedError(path, "TIFF with SubIFDs (pyramid levels or previews)")


def _plain_tags(page: Any) -> dict[str, Any]:
    tags: dict[str, Any] = {"subfiletype": int(page.subfiletype), "software": page.software or False,
                            "description": page.description or None, "datetime": page.datetime and
                            page.tags.valueof(306) or None, "iccprofile": page.iccprofile}
    if 282 in page.tags and 283 in page.tags:
        tags["resolution"] = (page.tags[282].value, page.tags[283].value)
        tags["resolutionunit"] = page.tags.valueof(296, 2)
    return tags


def _extra_tags(page: Any) -> tuple[tuple, ...]:
    """Every other tag (orientation, GeoTIFF keys, XMP, copyright ...) as extratags to copy."""
    return tuple((tag.code, int(tag.dtype), tag.count, tag.value, False) for tag in page.tags.values()
                 if tag.code not in _STRUCTURAL and int(tag.dtype) in _COPIED_TYPES)


def read_pages(data: bytes, path: str, layout: TiffLayout) -> list[np.ndarray]:
    """Every page's samples, chunky (height, width[, samples]) whatever their storage."""
    pages = []
    try:
        with _quiet(), tifffile.TiffFile(io.BytesIO(data)) as tif:
            for page, pl in zip(_pages(tif), layout.pages):
                samples = page.asarray(maxworkers=1)
                if pl.planar:
                    samples = np.moveaxis(samples, 0, -1)
                pages.append(np.ascontiguousarray(samples))
    except Exception as exc:
        raise DecodeError(path, f"cannot decode as TIFF ({_one_line(exc)})") from None
    return pages


def write(pages: list[np.ndarray], layout: TiffLayout, path: str, jpeg_quality: int) -> bytes:
    """The pages as a TIFF stored like the input, checked by reading its tags back."""
    buffer = io.BytesIO()
    try:
        with _quiet(), tifffile.TiffWriter(buffer, bigtiff=layout.bigtiff, byteorder=layout.byteorder,  # type: ignore
                                 shaped=False) as tw:
            for samples, pl in zip(pages, layout.pages):
                tw.write(np.moveaxis(samples, -1, 0) if pl.planar else samples, **_write_args(pl, jpeg_quality))
    except Exception as exc:
        raise UnsupportedError(path, f"the TIFF writer cannot keep this layout ({_one_line(exc)})") from None
    data = buffer.getvalue()
    _compare(data, layout, path)
    return data


def _write_args(pl: PageLayout, jpeg_quality: int) -> dict[str, Any]:
    jpeg = pl.compression == COMPRESSION.JPEG
    return dict(pl.tags, photometric=pl.photometric, planarconfig="separate" if pl.planar else "contig",
                extrasamples=pl.extrasamples or None, compression=pl.compression,
                compressionargs={"level": jpeg_quality} if jpeg else None,
                predictor=pl.predictor if pl.predictor > 1 else None, tile=pl.tile,
                rowsperstrip=pl.rowsperstrip, subsampling=pl.subsampling if jpeg else None,
                metadata=None, extratags=pl.extratags, maxworkers=1)


def _compare(data: bytes, layout: TiffLayout, path: str) -> None:
    with _quiet(), tifffile.TiffFile(io.BytesIO(data)) as tif:
        written = [_page(p, path, 2**62) for p in _pages(tif)]
    for index, (want, got) in enumerate(zip(layout.pages, written)):
        if isinstance(got, str):
            raise UnsupportedError(path, f"the TIFF writer turned page {index} into a {got} image")
        for name in ("photometric", "planar", "extrasamples", "compression", "predictor", "tile",
                     "rowsperstrip", "subsampling"):
            if getattr(want, name) != getattr(got, name):
                raise UnsupportedError(path, f"the TIFF writer cannot keep {name} {getattr(want, name)} "
                                             f"of page {index} (it wrote {getattr(got, name)})")
    if len(written) != len(layout.pages):
        raise UnsupportedError(path, f"the TIFF writer wrote {len(written)} pages of {len(layout.pages)}")


def _malformed(exc: Exception) -> str:
    """Why tifffile gave up, in the file's terms: its own messages as they are, Python's (a comparison of a
    tuple with an int, a missing key) as what they mean for the file."""
    if isinstance(exc, (TypeError, AttributeError, IndexError, KeyError, ZeroDivisionError, OverflowError)):
        return "malformed tags or structure"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
