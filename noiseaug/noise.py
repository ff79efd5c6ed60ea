"""Exact clipped Gaussian noise: out = clip(round_half_even(x + σ·Z), lo, hi).

Pure numpy, no I/O. Z is numpy's standard normal (ziggurat, tails included),
drawn in bands of rows into a small work buffer, so memory stays at the size
of the data plus one band whatever the size of the image or recording, and the
values drawn do not depend on the band size: the generator's stream is
consumed in the data's C order.

Integer data is computed in float32 when its grid has at most 2**16 steps (24
bits of mantissa leave 8 bits below the rounding point) and in float64 above
that (PCM_24 and PCM_32 audio); float data in its own precision.
"""

from __future__ import annotations

import numpy as np

BAND_VALUES = 1 << 16  # per work buffer: 256 KiB in float32, within L2 cache

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
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return 0.0, 1.0
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def image_sigma(sigma_8bit: float, dtype: np.dtype) -> float:
    """σ in 8-bit intensity units, expressed on this sample type's scale."""
    return sigma_8bit * IMAGE_FULL_SCALE[np.dtype(dtype)] / 255.0


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
) -> int:
    """Add clipped Gaussian noise to ``data`` in place; return how many values clipped.

    ``sigma``, ``lo`` and ``hi`` are in the data's own units. Integer data is
    rounded half to even onto the grid of multiples of ``step`` (a power of two:
    256 for 24-bit samples held in int32). Axis 0 is the band axis (rows,
    frames). With ``channels``, only the first ``channels`` entries of the last
    axis are noised (the rest, alpha, is left alone); with ``shared``, one
    noise value per position is added to all of those channels.
    """
    if data.size == 0:
        return 0
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
    if out.dtype.kind not in "iuf":
        raise TypeError(f"add_noise needs an integer or float array, not {out.dtype}")
    if limits is None:
        limits = image_limits(out.dtype) if out.dtype.kind == "f" else (
            float(np.iinfo(out.dtype).min), float(np.iinfo(out.dtype).max))
    if (alpha or shared) and out.ndim != 3:
        raise ValueError("alpha and shared need an (H, W, C) array")
    channels = out.shape[-1] - 1 if alpha else (out.shape[-1] if shared else None)
    noise_inplace(out, float(sigma), rng if rng is not None else np.random.default_rng(),
                  lo=limits[0], hi=limits[1], channels=channels, shared=shared)
    return out
