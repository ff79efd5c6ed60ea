"""Exact clipped Gaussian noise: out = clip(round_half_even(x + σ·Z), lo, hi).

Pure numpy, no I/O. Z is numpy's standard normal (ziggurat, tails included),
drawn in bands of rows into a small work buffer, so memory stays at the size
of the data plus one band whatever the size of the image or recording, and the
values drawn do not depend on the band size: the generator's stream is
consumed in the data's C order.

Integer data is computed in float32 when its grid has at most 2**16 steps (24
bits of mantissa leave 8 bits below the rounding point) and in float64 above
that (PCM_24 and PCM_32 audio); float data in its own precision.

8-bit images and 16-bit PCM take a faster exact path. For an integer x,
round(x + σZ) = x + round(σZ) (ties have probability zero), so only the
discrete law of K = round(σZ) matters; and since x lies in [0, 255], every
K ≤ −256 (or ≥ 256) clips to the same output, so the tails are lumped into
those two values, which is exact, not a truncation (±65536 for 16-bit PCM).
K is drawn from 16 random bits through a table holding each value
floor(P(K=k)·2¹⁶) times; the draws that land outside those entries (under 1%
for 8-bit images, a few percent for audio-sized σ) are drawn again, exactly,
from the leftover law: through a second table of the same kind, and what
that leaves from a cumulative table with 53-bit uniforms. Escapes use their
own streams, spawned from the generator's seed sequence, so the result does
not depend on how the data is cut into bands or blocks. The table loop is compiled
(``_kernel.c``, with AVX2 loops used where the CPU has them) when a C compiler
was available at install time, and numpy otherwise; all give the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

KERNEL_VERSION = 5  # the calling convention expected of _kernel.c
try:
    from . import _kernel
except ImportError:  # no compiler at install time: the numpy loop below does the same
    _kernel = None
if getattr(_kernel, "VERSION", None) != KERNEL_VERSION:  # a build left over from older sources
    _kernel = None

BAND_VALUES = 1 << 16  # per work buffer: 256 KiB in float32, within L2 cache
SMALL_CALL = 1 << 13  # values: up to here the compiled loops draw through capsules (see _table_call)

# Full scale of each image sample type: σ in 8-bit units is scaled by
# full_scale / 255 (×1 for uint8, ×257 for uint16, ÷255 for float images).
IMAGE_FULL_SCALE: dict[np.dtype, float] = {
    np.dtype(np.uint8): 255.0,
    np.dtype(np.uint16): 65535.0,
    np.dtype(np.float32): 1.0,
    np.dtype(np.float64): 1.0,
}


def image_limits(dtype: np.dtype) -> tuple[float, float]:
    """The range an image of this sample type is clipped to."""
    limits = _LIMITS.get(dtype)
    if limits is None:
        dtype = np.dtype(dtype)
        limits = _LIMITS[dtype] = (0.0, 1.0) if dtype.kind == "f" else (float(np.iinfo(dtype).min),
                                                                         float(np.iinfo(dtype).max))
    return limits


_LIMITS: dict[Any, tuple[float, float]] = {}  # by sample type: np.iinfo costs a few µs a call


def numpy_defaults() -> Any:
    """numpy's own floating-point error handling, whatever the caller set (``np.seterr(under="raise")`` made a
    library run with --workers 1 fail files a pool run did): for the length of a ``with``, this thread only."""
    return np.errstate(divide="warn", over="warn", under="ignore", invalid="warn")


def image_sigma(sigma_8bit: float, dtype: np.dtype) -> float:
    """σ in 8-bit intensity units, expressed on this sample type's scale."""
    scale = IMAGE_FULL_SCALE.get(np.dtype(dtype))
    if scale is None:
        raise ValueError(f"image samples are uint8, uint16 or float, not {np.dtype(dtype)}")
    return sigma_8bit * scale / 255.0


LUMP8 = 256  # |K| >= 256 clips to the same 8-bit output: lumped into ±256 exactly
LUMP16 = 65536  # likewise for 16-bit PCM samples
COARSE_SHIFT = 4  # the coarse first table's runs: 2**4 draws an entry (as in _kernel.c)
SPLIT = np.iinfo(np.int32).max  # a coarse entry whose draws have more than one value


@dataclass(frozen=True)
class _Law:
    """round(σZ) as tables of 16-bit draws.

    ``first`` holds each k floor(P(K=k)·2¹⁶) times, then the escape mark
    (its dtype's minimum). An escape is drawn from ``second``, built the same
    way from the leftover law, and an escape from that, from ``cdf`` of what
    is left (53-bit uniforms). Every level is exact; together they are the
    law of round(σZ), with the tails lumped into ±lump.
    """

    first: np.ndarray
    second: np.ndarray
    values: np.ndarray
    cdf: np.ndarray

    @functools.cached_property
    def first32(self) -> np.ndarray:
        """``first`` widened to int32, as the compiled loops read it (whole vector lanes)."""
        return self.first.astype(np.int32)

    @functools.cached_property
    def coarse(self) -> np.ndarray:
        """``first32`` by runs of 16 draws: their value where all 16 share it, else SPLIT (look in ``first32``).

        4096 entries (16 KiB) the 8-bit loop reads before the full table, for
        small images only: there the full table's 256 KiB, evicted by the codecs
        since the last file, cost a cache miss per draw; a long call warms it
        and is faster without the extra step. Same values either way.
        """
        runs = self.first32.reshape(-1, 1 << COARSE_SHIFT)
        return np.where((runs == runs[:, :1]).all(axis=1), runs[:, 0], SPLIT).astype(np.int32)


def _table(p: np.ndarray, ks: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A 2¹⁶-entry table for the law ``p`` over ``ks``, and the probability it leaves out."""
    counts = np.floor(p * 65536).astype(np.int64)
    counts[np.argmax(counts)] -= max(0, int(counts.sum()) - 65536)  # rounding must not overfill
    table = np.full(65536, np.iinfo(dtype).min, dtype=dtype)
    table[:counts.sum()] = np.repeat(ks.astype(dtype), counts)
    return table, np.maximum(p - counts / 65536.0, 0.0)


def _normalised(mass: np.ndarray) -> np.ndarray:
    total = mass.sum()
    return mass / total if total > 0 else np.full(mass.size, 1.0 / mass.size)


@functools.lru_cache(maxsize=64)
def _rounded_law(sigma: float, lump: int = LUMP8) -> _Law:
    """The law of round(σZ), values with |k| >= ``lump`` lumped into ±lump (they all clip alike)."""
    dtype = np.int16 if lump <= LUMP8 else np.int32
    ks = np.arange(-lump, lump + 1)
    root2s = sigma * math.sqrt(2.0)
    erfc = np.array([math.erfc((k - 0.5) / root2s) for k in range(1, lump + 1)])
    upper = 0.5 * (erfc[:-1] - erfc[1:])  # P(k - 1/2 <= σZ < k + 1/2), precise in the tail
    tail = 0.5 * erfc[-1]  # P(σZ >= lump - 1/2)
    centre = math.erf(0.5 / root2s)
    half = np.concatenate([upper, [tail]])
    p = np.concatenate([half[::-1], [centre], half])
    first, leftover = _table(p, ks, dtype)
    second, rest = _table(_normalised(leftover), ks, dtype)
    cdf = np.cumsum(_normalised(rest))
    cdf[-1] = 1.0
    return _Law(first, second, ks.astype(dtype), cdf)


@dataclass(frozen=True)
class EscapeStreams:
    """The streams that table escapes draw from: one per table level."""

    second: np.random.Generator
    last: np.random.Generator


def _noise_uint8(data: np.ndarray, sigma: float, rng: np.random.Generator,
                 channels: int | None, shared: bool, escapes: EscapeStreams | list[bytearray] | None) -> int:
    """The exact table path for 8-bit images (see the module's docstring)."""
    law = _rounded_law(float(sigma), LUMP8)
    total = data.shape[-1] if data.ndim == 3 else 1
    noised = total if channels is None else channels
    shared = shared and data.ndim == 3
    pixels = data.reshape(-1, total)
    shape = (total, noised, shared, law.coarse) if pixels.size <= SMALL_CALL else (total, noised, shared)
    if escapes is None and _kernel is not None and kernel_problem() is None:
        from .seeding import fresh_states  # streams for this call only: their states, not their generators

        states = fresh_states(rng, 2)
        if states is not None:
            return _table_call(_kernel.add_table_noise, pixels.reshape(-1), rng, law, states, *shape)
    if isinstance(escapes, list):  # states: only made where the compiled loops run
        return _table_call(_kernel.add_table_noise, pixels.reshape(-1), rng, law, escapes, *shape)
    streams = escapes if escapes is not None else escape_stream(rng)
    if _compiled(rng, streams):
        return _table_call(_kernel.add_table_noise, pixels.reshape(-1), rng, law, streams, *shape)
    return _table_noise_numpy(pixels, rng, law, streams, noised, shared, (0, 255))


def _noise_int16(data: np.ndarray, sigma: float, rng: np.random.Generator,
                 escapes: EscapeStreams | list[bytearray]) -> int:
    """The exact table path for 16-bit PCM: every value noised, clipped to int16."""
    law = _rounded_law(float(sigma), LUMP16)
    values = data.reshape(-1, 1)
    limits = (-32768, 32767)
    if isinstance(escapes, list):  # as states: the compiled loops were checked when they were made
        return _table_call(_kernel.add_table_noise_i16, values.reshape(-1), rng, law, escapes)
    if _compiled(rng, escapes):
        return _table_call(_kernel.add_table_noise_i16, values.reshape(-1), rng, law, escapes)
    return _table_noise_numpy(values, rng, law, escapes, 1, False, limits)


def _table_call(loop: Callable[..., int], values: np.ndarray, rng: np.random.Generator, law: _Law,
                streams: EscapeStreams | list[bytearray], *shape: object) -> int:
    """Run a compiled table loop on ``values``, drawing from ``rng`` and the escape streams.

    A small array (a 32×32 image, a short block) takes its words through the
    generators' capsules: a call per word costs less there than reading and
    writing back three state dicts, about 10 µs. Larger ones step SFC64 inline.
    Escape streams made for this call only come as their two SFC64 states.
    """
    if isinstance(streams, list):
        escapes: tuple[object, ...] = (streams[0], law.second, streams[1], law.cdf, law.values)
        if values.size <= SMALL_CALL:
            with rng.bit_generator.lock:
                return loop(values, rng.bit_generator.capsule, law.first32, escapes, *shape)
        with _words(rng) as bits:
            return loop(values, bits, law.first32, escapes, *shape)
    if values.size <= SMALL_CALL:
        first, second, last = rng.bit_generator, streams.second.bit_generator, streams.last.bit_generator
        with first.lock, second.lock, last.lock:
            return loop(values, first.capsule, law.first32,
                        (second.capsule, law.second, last.capsule, law.cdf, law.values), *shape)
    with _words(rng) as bits, _escape_words(law, streams) as tables:
        return loop(values, bits, law.first32, tables, *shape)


def _compiled(rng: np.random.Generator, streams: EscapeStreams) -> bool:
    """Whether the compiled loops can run: built, checked, and three distinct generators.

    The compiled loops interleave the three streams; one generator in two
    roles would give other bytes than the numpy twin, which draws them in turn.
    """
    generators = {id(g.bit_generator) for g in (rng, streams.second, streams.last)}
    return _kernel is not None and len(generators) == 3 and kernel_problem() is None


_kernel_check: list[str | None] = []  # once per process: [] unchecked, [None] sound, [why] switched off


def kernel_problem() -> str | None:
    """Why the compiled loops are not used, or None when they are (or were never built).

    The C loops step SFC64 themselves, from the state dict numpy exposes. The
    first call compares them, on 8-bit samples, with the numpy
    twin and with numpy's own ``random_raw`` afterwards; a numpy whose state
    dict or generator changed would fail every file or give other noise, so
    any difference switches the loops off for this process.
    """
    if _kernel is None:
        return None
    if not _kernel_check:
        _kernel_check.append(None)  # the check itself runs the compiled loops
        try:
            _kernel_check[0] = _self_check()
        except Exception as exc:  # a changed state dict fails here, not in every file
            _kernel_check[0] = f"{type(exc).__name__}: {exc}"
    return _kernel_check[0]


def _self_check() -> str | None:
    state = np.random.SFC64(1).state
    words = np.asarray(state["state"]["state"])
    if state.get("bit_generator") != "SFC64" or words.shape != (4,) or words.dtype != np.uint64:
        return "numpy's SFC64 state is not laid out as the compiled loops expect"
    # the 16-bit loop steps SFC64 the same way; both sizes: words through capsules, and SFC64 stepped inline
    for dtype, sigma, lo, hi, size in ((np.uint8, 30.0, 0.0, 255.0, 4099),
                                       (np.uint8, 30.0, 0.0, 255.0, SMALL_CALL + 3)):
        results = []
        for compiled in (True, False):
            rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence(2024)))
            values = np.full(size, 100, dtype)
            streams = escape_stream(rng)
            if compiled:
                clipped = noise_inplace(values, sigma, rng, lo=lo, hi=hi, escapes=streams)
            else:
                law = _rounded_law(sigma, LUMP8 if dtype == np.uint8 else LUMP16)
                clipped = _table_noise_numpy(values.reshape(-1, 1), rng, law, streams, 1, False, (int(lo), int(hi)))
            results.append((values.tobytes(), clipped, rng.bit_generator.random_raw(2).tolist(),
                            streams.second.bit_generator.random_raw(2).tolist()))
        if results[0] != results[1]:
            return f"the compiled loops and numpy disagree on {size} {np.dtype(dtype).name} samples"
    return None


@contextlib.contextmanager
def _words(rng: np.random.Generator) -> Iterator[object]:
    """Where the compiled loops draw 64-bit words from, for the length of a call.

    For SFC64, its state, stepped inline in C and stored back afterwards
    (three times cheaper than a call per word); for any other bit
    generator, its capsule. Either way the generator ends where
    ``random_raw`` would have left it. Its lock is held meanwhile, as
    numpy's own methods hold it, so another thread's draws are not lost.
    """
    generator = rng.bit_generator
    with generator.lock:
        if type(generator) is not np.random.SFC64:
            yield generator.capsule
            return
        state = generator.state
        words = np.array(state["state"]["state"], dtype=np.uint64)
        try:
            yield words
        finally:
            state["state"]["state"] = words
            generator.state = state


@contextlib.contextmanager
def _escape_words(law: _Law, streams: EscapeStreams) -> Iterator[tuple[object, ...]]:
    """The escapes' generators and tables, as the compiled loops take them."""
    with _words(streams.second) as second, _words(streams.last) as last:
        yield second, law.second, last, law.cdf, law.values


def escape_stream(rng: np.random.Generator) -> EscapeStreams:
    """Streams for the table escapes, independent of how many bits the table path used.

    Pass the same one to every block of one recording, so that the noise does
    not depend on the block size.
    """
    try:
        second, last = rng.spawn(2)
    except (TypeError, ValueError):  # a generator built without a SeedSequence
        seeds = rng.bit_generator.random_raw(8).tolist()
        second, last = (np.random.Generator(np.random.SFC64(seeds[i:i + 4])) for i in (0, 4))
    return EscapeStreams(second, last)


def recording_escapes(rng: np.random.Generator) -> EscapeStreams | list[bytearray]:
    """:func:`escape_stream` for every block of one recording.

    Where the compiled loops run, the two streams are their SFC64 states
    (each loop steps them in place, so the next block goes on where this one
    stopped): the same words as the generators', without building them.
    """
    if _kernel is not None and kernel_problem() is None:
        from .seeding import fresh_states

        states = fresh_states(rng, 2)
        if states is not None:
            return states
    return escape_stream(rng)


def _table_noise_numpy(pixels: np.ndarray, rng: np.random.Generator, law: _Law, streams: EscapeStreams,
                       noised: int, shared: bool, limits: tuple[int, int]) -> int:
    """numpy twin of the compiled loops: same bits, same bytes, in bands of whole 64-bit words.

    ``pixels`` is (positions, values per position); the first ``noised``
    values of each position get noise, one value for all of them if ``shared``.
    """
    per_pixel = 1 if shared else noised
    band = max(4, 4 * BAND_VALUES // per_pixel // 4 * 4)
    clipped = 0
    escaped_all = []
    for start in range(0, pixels.shape[0], band):
        part = pixels[start:start + band]
        count = part.shape[0] * per_pixel
        words = rng.bit_generator.random_raw((count + 3) // 4)
        draws = words.astype("<u8", copy=False).view("<u2")[:count]
        k = law.first[draws].astype(np.int32).reshape(part.shape[0], per_pixel)
        escape = k == np.iinfo(law.first.dtype).min
        escaped_all.append(np.flatnonzero(escape) + start * per_pixel)
        k[escape] = 0
        clipped += _add_clipped(part[:, :noised], k, limits)
    escaped = np.concatenate(escaped_all)
    if not escaped.size:
        return clipped
    words = streams.second.bit_generator.random_raw(escaped.size)
    k = law.second[(words & np.uint64(0xFFFF)).astype(np.intp)].astype(np.int32)
    missed = k == np.iinfo(law.second.dtype).min
    keep = ~missed
    clipped += _add_at(pixels, escaped[keep], k[keep], noised, shared, limits)
    return clipped + _fill_missed(pixels, escaped[missed], law, streams, noised, shared, limits)


def _fill_missed(pixels: np.ndarray, missed: np.ndarray, law: _Law, streams: EscapeStreams,
                 noised: int, shared: bool, limits: tuple[int, int]) -> int:
    """Draw the positions that escaped both tables from the cumulative table, in order."""
    if not missed.size:
        return 0
    uniform = (streams.last.bit_generator.random_raw(missed.size) >> np.uint64(11)) * (1.0 / 2**53)
    k = law.values[np.minimum(np.searchsorted(law.cdf, uniform, side="right"), law.values.size - 1)]
    return _add_at(pixels, missed, k.astype(np.int32), noised, shared, limits)


def _add_at(pixels: np.ndarray, draws: np.ndarray, k: np.ndarray, noised: int, shared: bool,
            limits: tuple[int, int]) -> int:
    """Add noise value k[i] at draw position draws[i]; returns how many values clipped."""
    if shared:
        rows, cols = np.repeat(draws, noised), np.tile(np.arange(noised), draws.size)
        k = np.repeat(k, noised)
    else:
        rows, cols = np.divmod(draws, noised)
    total = pixels[rows, cols].astype(np.int32) + k
    clipped = int(np.count_nonzero((total < limits[0]) | (total > limits[1])))
    pixels[rows, cols] = np.clip(total, limits[0], limits[1])
    return clipped


def _add_clipped(values: np.ndarray, k: np.ndarray, limits: tuple[int, int]) -> int:
    """values = clip(values + k) in place (k broadcast over shared channels); returns the clipped count."""
    total = values.astype(np.int32) + k
    clipped = int(np.count_nonzero((total < limits[0]) | (total > limits[1])))
    np.clip(total, limits[0], limits[1], out=total)
    values[...] = total
    return clipped


def _work_dtype(dtype: np.dtype, lo: float, hi: float, step: int) -> np.dtype:
    if dtype.kind == "f":
        return dtype
    return np.dtype(np.float32) if (hi - lo) / step <= 2**16 else np.dtype(np.float64)


def noise_inplace(
    data: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    *,
    lo: float,
    hi: float,
    step: int = 1,
    channels: int | None = None,
    shared: bool = False,
    escapes: EscapeStreams | list[bytearray] | None = None,
) -> int:
    """Add clipped Gaussian noise to ``data`` in place; return how many values clipped.

    ``sigma``, ``lo`` and ``hi`` are in the data's own units. Integer data is
    rounded half to even onto the grid of multiples of ``step`` (a power of two:
    256 for 24-bit samples held in int32). Axis 0 is the band axis (rows,
    frames). With ``channels``, only the first ``channels`` entries of the last
    axis are noised (the rest, alpha, is left alone); with ``shared``, one
    noise value per position is added to all of those channels. The exact
    table paths (8-bit images, 16-bit PCM) draw rare escapes from
    ``escapes`` (see :func:`escape_stream`), made from ``rng`` when not given.
    """
    if data.size == 0 or channels == 0:
        return 0
    if (data.dtype == np.uint8 and step == 1 and (lo, hi) == (0.0, 255.0) and data.flags.c_contiguous
            and sigma > 0):
        return _noise_uint8(data, sigma, rng, channels, shared, escapes)
    if (data.dtype == np.int16 and step == 1 and (lo, hi) == (-32768.0, 32767.0) and data.flags.c_contiguous
            and sigma > 0 and channels is None):
        streams = escapes if escapes is not None else escape_stream(rng)
        if data.flags.aligned:
            return _noise_int16(data, sigma, rng, streams)
        aligned = data.copy()  # the compiled loop reads whole int16s; same noise, only slower
        clipped = _noise_int16(aligned, sigma, rng, streams)
        data[...] = aligned
        return clipped
    return _noise_banded(data, sigma, rng, lo, hi, step, channels, shared)


def _noise_banded(data: np.ndarray, sigma: float, rng: np.random.Generator, lo: float, hi: float, step: int,
                  channels: int | None, shared: bool) -> int:
    """Float normals in bands of rows (16-bit images, float images, PCM beyond 16 bits), rounded and clipped."""
    integer = data.dtype.kind in "iu"
    wdtype = _work_dtype(data.dtype, lo, hi, step)
    target = data if channels is None else data[..., :channels]
    row_shape = target.shape[1:]
    row_values = max(1, int(np.prod(row_shape, dtype=np.int64)))
    band_rows = max(1, BAND_VALUES // row_values)
    buf = np.empty((band_rows, *row_shape), dtype=wdtype)
    zbuf = np.empty((band_rows, *row_shape[:-1], 1), dtype=wdtype) if shared else buf
    inv_step = 1.0 / step
    clipped = 0
    for start in range(0, target.shape[0], band_rows):
        view = target[start:start + band_rows]
        rows = view.shape[0]
        work, z = buf[:rows], zbuf[:rows]
        rng.standard_normal(out=z, dtype=wdtype)
        with np.errstate(over="ignore"):  # a σ beyond float32 (--audio-snr-db -1000): ±inf, clipped below
            z *= sigma
        if shared:
            np.add(view, z, out=work, casting="unsafe")
        else:
            np.add(work, view, out=work, casting="unsafe")
        if integer:
            if step != 1:
                work *= inv_step
            np.rint(work, out=work)
            lo_w, hi_w = lo * inv_step, hi * inv_step
        else:
            lo_w, hi_w = lo, hi
        clipped += int(np.count_nonzero(work < lo_w)) + int(np.count_nonzero(work > hi_w))
        np.clip(work, lo_w, hi_w, out=work)
        if integer and step != 1:
            work *= step
        np.copyto(view, work, casting="unsafe")
    return clipped


def add_noise(
    array: np.ndarray,
    sigma: float,
    rng: np.random.Generator | None = None,
    *,
    alpha: bool = False,
    shared: bool = False,
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Return a noisy copy of ``array``: clip(round_half_even(array + sigma·Z)).

    ``sigma`` is in the array's own units (use :func:`image_sigma` to convert
    from 8-bit units). Integer arrays are rounded and clipped to their dtype's
    range; float arrays are clipped to ``limits``, by default [0, 1] as for
    images (pass ``(-1, 1)`` for audio). With ``alpha`` the last channel of an
    (H, W, C) array is copied unchanged; with ``shared`` one noise plane is
    added to every colour channel.
    """
    if sigma < 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma must be finite and non-negative, not {sigma!r}")
    out = np.array(array, copy=True, order="C")
    if out.dtype.kind not in "iuf" or out.dtype.kind == "f" and out.dtype not in (np.float32, np.float64):
        raise TypeError(f"add_noise needs an integer, float32 or float64 array, not {out.dtype}")
    if out.dtype.kind == "f" and not np.isfinite(out).all():  # as a file's would be: noise cannot be added to it
        raise ValueError("add_noise needs finite samples: the array holds NaN or infinity")
    rng = _generator(rng)
    if limits is None:
        limits = image_limits(out.dtype) if out.dtype.kind == "f" else (
            float(np.iinfo(out.dtype).min), float(np.iinfo(out.dtype).max))
    if (alpha or shared) and out.ndim != 3:
        raise ValueError("alpha and shared need an (H, W, C) array")
    channels = out.shape[-1] - 1 if alpha else (out.shape[-1] if shared else None)
    with numpy_defaults():
        noise_inplace(out, float(sigma), rng, lo=limits[0], hi=limits[1], channels=channels, shared=shared)
    return out


def _generator(rng: Any) -> np.random.Generator:
    """``add_noise``'s rng: a Generator as it is, a seed (an int) as ``np.random.default_rng(seed)``, None as a
    fresh one; anything else (a RandomState, which has no spawnable streams) refused in one line."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), an int seed or None, "
                    f"not {type(rng).__name__}")
