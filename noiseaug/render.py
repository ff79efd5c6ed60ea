"""One input, one seed, the options -> the noisy output's bytes and its record's fields.

``run`` (through the worker), ``verify --regenerate`` and ``preview`` all
come here, so what a preview shows and what verify rebuilds is what a run
writes. Codecs are reached through ``image_io`` and ``audio_io`` only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from . import seeding
from .config import Config, SigmaSpec
from .errors import DecodeError, UnsupportedError, WriteError
from .noise import image_limits, image_sigma, noise_inplace, recording_escapes
from .records import Job
from .signals import checkpoint
from .storage import Storage

AUDIO_IN_MEMORY = 1 << 24  # bytes: a smaller recording's output is encoded into memory, then written at once
REDECODE = 1 << 24  # bytes of pixels: a larger image's next copy is decoded again from its compressed bytes (when
#                     they are smaller than its pixels) rather than copied from pixels held beside the noisy ones


@dataclass
class Rendered:
    """One noisy output, ready to be written, and the record fields known so far.

    ``write`` streams the output into an open binary file and returns the
    fields only known once it is written (clipping, output hash when cheap).
    """

    copy: int
    fields: dict[str, Any]
    write: Callable[[BinaryIO], dict[str, Any]]
    data: Any = None  # the output's bytes, when they are all in memory (written with one call: see put)
    in_memory: bool = False  # small enough to be written into memory first, then with one call
    samples: int | None = None  # bytes of the samples it holds, when known before it is written (a recording)

    def encoded(self) -> "Rendered":
        """This output with its bytes made now, in memory (its fields then include what writing it told)."""
        buffer = io.BytesIO()
        told = self.write(buffer)
        return Rendered(self.copy, {**self.fields, **told}, self.write, buffer.getvalue(), samples=self.samples)


def draw_sigma(spec: SigmaSpec, rng: np.random.Generator) -> float:
    """σ for one file: the value itself, or a uniform draw from the file's own RNG."""
    return float(rng.uniform(spec.low, spec.high)) if spec.is_range else spec.low


def probe_image(rel: str, data: bytes | None, cfg: Config) -> Any:
    """The image's header (and whether it is a label map), before any pixel is decoded."""
    from . import image_io

    return image_io.probe(data or b"", rel, image_io.format_of(rel), read_options(cfg))


def read_options(cfg: Config) -> Any:
    """The codec's read options of a run's config (the same object for every file of a run)."""
    if _read_options[0] is not cfg:  # by identity: hashing a Config costs more than building these
        from .image_io import ReadOptions

        _read_options[:] = [cfg, ReadOptions(cfg.max_pixels, cfg.palette_images, cfg.float_range)]
    return _read_options[1]


def write_options(cfg: Config) -> Any:
    """The codec's write options of a run's config."""
    if _write_options[0] is not cfg:
        from .image_io import WriteOptions

        _write_options[:] = [cfg, WriteOptions(cfg.jpeg_quality, cfg.png_compression, cfg.jpeg_subsampling)]
    return _write_options[1]


_read_options: list[Any] = [None, None]  # (the config, its options): the last one asked for
_write_options: list[Any] = [None, None]


def _bytes_writer(encoded: Any) -> Callable[[BinaryIO], dict[str, Any]]:
    def write(fh: BinaryIO) -> dict[str, Any]:
        fh.write(encoded)
        return written_fields(encoded)
    return write


def written_fields(encoded: Any) -> dict[str, Any]:
    """The record fields of an output whose bytes are these: its SHA-256 and size."""
    return {"output_sha256": hashlib.sha256(encoded).hexdigest(), "output_bytes": len(memoryview(encoded).cast("B"))}


def render(job: Job, source: Storage, data: bytes | BinaryIO | None, copies: list[int], cfg: Config,
           probe: Any = None) -> Iterator[Rendered]:
    """The noisy outputs of one input for the given copy indices.

    ``data`` holds the input's bytes for images and copied files; audio is
    streamed from the open file ``data`` (left open: the caller's), else from
    ``source``. ``probe`` is the image's header, when already read; a label
    map is copied unchanged. Not a generator itself: the renderer it
    returns holds the only other reference to ``data``, and drops it once
    decoded (on a 100-megapixel PNG, the compressed bytes are a third of the peak).
    """
    opened = data if hasattr(data, "read") else None  # an open recording
    if job.kind == "image":
        assert data is not None and opened is None
        probe = probe if probe is not None else probe_image(job.rel, data, cfg)
        if probe.label is None:
            return _render_image(job.rel, data, copies, cfg, probe)
        return _render_label(job.rel, data)
    if job.kind == "audio":
        return _render_audio(job.rel, source, copies, cfg, opened)
    assert data is not None and opened is None
    return iter([Rendered(0, {}, _bytes_writer(data), data)])


def decode_samples(job: Job, data: bytes) -> np.ndarray:
    """The samples an output decodes to, for comparisons across library versions."""
    if job.kind == "image":
        from . import image_io

        options = image_io.ReadOptions(2**62, "noise", (-math.inf, math.inf))
        pages = image_io.decode(data, job.rel, image_io.format_of(job.rel), options).pages
        return np.concatenate([p.ravel() for p in pages])
    if job.kind == "audio":
        from . import audio_io

        return audio_io.decode_all(data)
    return np.frombuffer(data, dtype=np.uint8)


def noise_image(pixels: np.ndarray, sigma_8bit: float, rng: np.random.Generator, *, shared: bool,
                colour: int | None = None, limits: tuple[float, float] | None = None) -> float:
    """Noise an image's first ``colour`` channels in place; returns the clipped fraction.

    ``sigma_8bit`` is in 8-bit units, scaled to the samples' range: the
    type's full scale, or ``limits`` (float images with a given range).
    By default alpha is taken to be the last channel of 2- and 4-channel images.
    """
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    if colour is None:
        colour = channels - 1 if channels in (2, 4) else channels
    lo, hi = limits if limits is not None else image_limits(pixels.dtype)
    sigma = image_sigma(sigma_8bit, pixels.dtype) if pixels.dtype.kind != "f" else sigma_8bit * (hi - lo) / 255.0
    clipped = noise_inplace(pixels, sigma, rng, lo=lo, hi=hi, channels=colour if pixels.ndim == 3 else None,
                            shared=shared and colour > 1)
    return clipped / max(1, pixels.shape[0] * pixels.shape[1] * colour)


def noise_picture(picture: Any, sigma_8bit: float, seed: int, rng: np.random.Generator, *,
                  shared: bool) -> float:
    """Noise every page of a picture in place, each from its own stream; the clipped fraction."""
    clipped = total = 0.0
    for index, page in enumerate(picture.pages):
        checkpoint()
        page_rng = rng if index == 0 else seeding.page_generator(seed, index)
        colour = picture.colours[index]
        values = page.shape[0] * page.shape[1] * colour
        clipped += values * noise_image(page, sigma_8bit, page_rng, shared=shared, colour=colour,
                                        limits=picture.limits)
        total += values
    return clipped / max(1.0, total)


def _render_label(rel: str, data: bytes) -> Iterator[Rendered]:
    """A label map, copied unchanged once it is known to decode."""
    from . import image_io

    image_io.check_label(data, rel, image_io.format_of(rel))
    yield Rendered(0, {}, _bytes_writer(data), data)


def _render_image(rel: str, data: bytes, copies: list[int], cfg: Config, probe: Any) -> Iterator[Rendered]:
    from . import image_io

    picture: Any = image_io.decode(data, rel, probe.fmt, read_options(cfg), probe)
    pixels = sum(page.nbytes for page in picture.pages)
    again = data if len(copies) > 1 and pixels > REDECODE and len(data) < pixels else None
    del data  # a large image's compressed bytes need not stay beside its pixels and its encoding
    first = picture.pages[0]
    shape = {"height": first.shape[0], "width": first.shape[1],
             "channels": first.shape[2] if first.ndim == 3 else 1, "dtype": _dtype_name(first.dtype)}
    del first  # a page held here would outlive the noisy copies made from it
    options = write_options(cfg)
    layout = picture.fields(options)
    for i, copy in enumerate(copies):
        seed = seeding.file_seed(cfg.seed, os.fsencode(rel), copy)
        rng = seeding.generator(seed)
        sigma = draw_sigma(cfg.image_sigma, rng)
        if picture is None:  # the copy before noised it in place: decoded again (see REDECODE)
            picture = image_io.decode(again, rel, probe.fmt, read_options(cfg), probe)
        keep = i < len(copies) - 1 and again is None
        noisy, picture = (picture.copy(), picture) if keep else (picture, None)
        clipped = noise_picture(noisy, sigma, seed, rng, shared=cfg.channel_noise == "shared")
        encoded = image_io.encode(noisy, rel, options)
        noisy = None  # gone before the output is written and the next copy made: memory stays near one image
        yield Rendered(copy, {
            "seed": f"{seed:032x}",
            "sigma": sigma,
            "sigma_full_scale": sigma / 255.0,
            **shape, **layout,
            "clipped_fraction": clipped,
        }, _bytes_writer(encoded), encoded)
        encoded = None


@functools.lru_cache(maxsize=32)
def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)``, as the record says it (numpy builds the string anew every time)."""
    return str(dtype)


def _render_audio(rel: str, source: Storage, copies: list[int], cfg: Config,
                  opened: BinaryIO | None) -> Iterator[Rendered]:
    from . import audio_io
    from .audio_io import AudioError

    with contextlib.nullcontext(opened) if opened is not None else source.open(rel) as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:  # said as such, not as whatever libsndfile makes of no bytes
            raise DecodeError(rel, "empty file")
        problem, mask = audio_io.inspect_container(fh)
        if problem is not None:
            raise UnsupportedError(rel, problem)
        fh.seek(0)
        try:
            snd = audio_io.open_read(fh)
        except AudioError as exc:
            raise DecodeError(rel, f"cannot decode as audio: {exc}") from None
        with snd:
            layout = audio_io.layout_of(snd)
            metadata = snd.copy_metadata()
            try:
                level = audio_io.rms(snd, layout) if cfg.audio_snr_db is not None else None
            except AudioError as exc:
                raise DecodeError(rel, str(exc)) from None
            for copy in copies:
                seed = seeding.file_seed(cfg.seed, os.fsencode(rel), copy)
                rng = seeding.generator(seed)
                fields: dict[str, Any] = {"seed": f"{seed:032x}"}
                if level is not None:
                    assert cfg.audio_snr_db is not None
                    snr_db = draw_sigma(cfg.audio_snr_db, rng)
                    sigma = level / 10 ** (snr_db / 20)
                    fields["snr_db"] = snr_db
                    if level == 0:
                        fields["warning"] = "silent: no signal to set --audio-snr-db against, so sigma is 0"
                else:
                    assert cfg.audio_sigma is not None
                    sigma = draw_sigma(cfg.audio_sigma, rng)
                fields.update(sigma=sigma, sigma_full_scale=sigma, samplerate=layout.samplerate,
                              channels=layout.channels, format=layout.format, subtype=layout.subtype,
                              endian=layout.endian)
                yield Rendered(copy, fields, _audio_writer(rel, snd, layout, metadata, sigma, rng, seed, mask),
                               in_memory=size <= AUDIO_IN_MEMORY,
                               samples=layout.frames * layout.channels * layout.dtype.itemsize
                               if layout.frames > 0 else None)


def _peak(rel: str, block: np.ndarray) -> float:
    """The largest magnitude of a float block; a NaN or infinite sample refuses the file (images are refused
    for the same reason): noise cannot be added to it, and it would go into the output as it is."""
    peak = float(np.abs(block).max())
    if not math.isfinite(peak):
        raise DecodeError(rel, "float samples that are not finite (NaN or infinity)")
    return peak


def _audio_writer(rel: str, snd: Any, layout: Any, metadata: dict[str, str], sigma: float,
                  rng: np.random.Generator, seed: int,
                  mask: tuple[int, int] | None = None) -> Callable[[BinaryIO], dict[str, Any]]:
    from . import audio_io
    from .audio_io import AudioError

    def write(fh: BinaryIO) -> dict[str, Any]:
        clipped = frames = 0
        loudest = 0.0  # of a float recording, whose full scale is 1: louder samples are clipped to it
        try:
            out = audio_io.open_write(fh, layout, metadata)
        except AudioError as exc:
            raise WriteError(rel, str(exc)) from None
        with out:
            try:
                escapes = recording_escapes(rng)  # one for the whole recording: blocks do not matter
                for block in audio_io.blocks(snd, layout):
                    checkpoint()
                    if not layout.integer and block.size:
                        loudest = max(loudest, _peak(rel, block))
                    clipped += noise_inplace(block, sigma * layout.full_scale, rng, lo=layout.lo,
                                             hi=layout.hi, step=layout.step, escapes=escapes)
                    out.write(block)
                    frames += block.shape[0]
            except AudioError as exc:
                raise DecodeError(rel, str(exc)) from None
        if layout.format == "OGG":
            fh.seek(0)
            fixed = audio_io.set_ogg_serials(fh.read(), seed)
            fh.seek(0)
            fh.write(fixed)
            fh.truncate()
        elif layout.format == "RF64" and layout.subtype in ("FLOAT", "DOUBLE"):
            audio_io.clear_peak_time(fh)
        if mask is not None:  # a WAVEX's channel mask byte for byte, whatever libsndfile made of it
            audio_io.set_channel_mask(fh, mask[1])
        done: dict[str, Any] = {"frames": frames, "clipped_fraction": clipped / max(1, frames * layout.channels)}
        if loudest > 1.0:  # SPEC §3 clips float audio to [-1, 1]: said, as a silent file's sigma of 0 is
            done["warning"] = (f"float samples beyond full scale (up to {loudest:.4g}) were clipped to [-1, 1]: "
                               "the output is not the input's level")
        return done
    return write
