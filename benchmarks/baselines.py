"""The reference approaches noiseaug is compared with, one process pool each.

    python benchmarks/baselines.py APPROACH IN_DIR OUT_DIR [--workers N]

APPROACH is one of:

- ``codec-floor``: decode + re-encode + write with the settings noiseaug uses
  (JPEG quality 95, PNG compression 3; audio in its own format and subtype),
  no noise. What any tool that rewrites the files must pay.
- ``noisy-floor``: the same plus one saturating add of a precomputed integer
  Gaussian noise array (cv2.add). The encoder then sees noisy pixels/samples,
  which are slower to compress than clean ones, so this is the true lower
  bound for noise of the same strength.
- ``naive``: the textbook numpy pipeline, float64
  ``np.random.randn`` noise, ``np.clip`` and ``astype``.

Every file in IN_DIR (not recursive) is processed by a ``fork`` pool of N
workers, each limited to one OpenCV thread, and written to OUT_DIR under its
own name. Images use σ = 10 in 8-bit units (×257 for 16-bit), audio σ = 0.01
of full scale, as noiseaug's defaults. Audio must be PCM_16.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from pathlib import Path
from typing import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as noiseaug's CLI: no idle BLAS thread spinning

import cv2
import numpy as np
import soundfile as sf

IMAGE_SIGMA = 10.0  # 8-bit units
AUDIO_SIGMA = 0.01  # fraction of full scale
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
AUDIO_EXTS = {".wav", ".flac"}
NOISE_POOL = (1 << 20) + 7  # precomputed noise values, tiled; longer than deflate's window

_approach = ""
_noise_pool: np.ndarray | None = None
_noise_cache: dict[tuple[tuple[int, ...], str], np.ndarray] = {}


def init_worker(approach: str) -> None:
    """Pool initializer: one OpenCV thread, and the noise pool for ``noisy-floor``."""
    global _approach, _noise_pool
    cv2.setNumThreads(1)
    _approach = approach
    np.random.seed(0)
    if approach == "noisy-floor":
        _noise_pool = np.random.default_rng(0).standard_normal(NOISE_POOL, dtype=np.float32)


def precomputed_noise(shape: tuple[int, ...], dtype: np.dtype, sigma: float) -> np.ndarray:
    """Integer Gaussian noise of σ ``sigma`` for data of ``shape``/``dtype``, made once per shape.

    Tiling a pool of 2**20 + 7 draws costs one memcpy per new shape; the
    period is far longer than what PNG's deflate or JPEG's 8x8 blocks see.
    """
    key = (shape, np.dtype(dtype).str)
    if key not in _noise_cache:
        assert _noise_pool is not None, "init_worker('noisy-floor') was not called"
        wide = np.int16 if np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.int16)) else np.int32
        tiled = np.resize(np.rint(_noise_pool * sigma), int(np.prod(shape)))
        _noise_cache[key] = tiled.astype(wide).reshape(shape)
    return _noise_cache[key]


def _cv_depth(dtype: np.dtype) -> int:
    return {np.dtype(np.uint8): cv2.CV_8U, np.dtype(np.uint16): cv2.CV_16U,
            np.dtype(np.int16): cv2.CV_16S}[np.dtype(dtype)]


def _image_limits(dtype: np.dtype) -> tuple[float, float, float]:
    """(lo, hi, σ scale) of an 8- or 16-bit image."""
    return (0.0, 255.0, 1.0) if np.dtype(dtype) == np.uint8 else (0.0, 65535.0, 257.0)


def image_file(src: Path, dst: Path) -> None:
    """Decode, transform per the approach, encode with noiseaug's settings, write."""
    pixels = cv2.imdecode(np.frombuffer(src.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    lo, hi, scale = _image_limits(pixels.dtype)
    if _approach == "noisy-floor":
        noise = precomputed_noise(pixels.shape, pixels.dtype, IMAGE_SIGMA * scale)
        pixels = cv2.add(pixels, noise, dtype=_cv_depth(pixels.dtype))
    elif _approach == "naive":
        pixels = np.clip(pixels + np.random.randn(*pixels.shape) * IMAGE_SIGMA * scale,
                         lo, hi).astype(pixels.dtype)
    ext = src.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, encoded = cv2.imencode(ext, pixels, params)
    if not ok:
        raise RuntimeError(f"cannot encode {src}")
    dst.write_bytes(encoded)


def audio_file(src: Path, dst: Path) -> None:
    """Read, transform per the approach, write in the same format and subtype."""
    info = sf.info(src)
    if info.subtype != "PCM_16":
        raise ValueError(f"{src}: only PCM_16 is benchmarked, not {info.subtype}")
    if _approach == "naive":
        samples, rate = sf.read(src, dtype="float64", always_2d=True)
        samples = np.clip(samples + np.random.randn(*samples.shape) * AUDIO_SIGMA, -1.0, 1.0)
    else:
        samples, rate = sf.read(src, dtype="int16", always_2d=True)
        if _approach == "noisy-floor":
            noise = precomputed_noise(samples.shape, samples.dtype, AUDIO_SIGMA * 32768)
            samples = cv2.add(samples, noise, dtype=cv2.CV_16S)
    sf.write(dst, samples, rate, subtype=info.subtype, format=info.format)


def process(paths: tuple[Path, Path]) -> None:
    """One file, dispatched on its extension."""
    src, dst = paths
    handler: Callable[[Path, Path], None] = image_file if src.suffix.lower() in IMAGE_EXTS else audio_file
    handler(src, dst)


def run(approach: str, in_dir: Path, out_dir: Path, workers: int) -> None:
    """Process every supported file of ``in_dir`` in a pool."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(p, out_dir / p.name) for p in sorted(in_dir.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS | AUDIO_EXTS]
    with multiprocessing.get_context("fork").Pool(workers, init_worker, (approach,)) as pool:
        for _ in pool.imap_unordered(process, jobs, chunksize=1):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("approach", choices=("codec-floor", "noisy-floor", "naive"))
    parser.add_argument("in_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run(args.approach, args.in_dir, args.out_dir, args.workers)


if __name__ == "__main__":
    main()
