"""Generate noiseaug's benchmark dataset, deterministically.

    python benchmarks/make_dataset.py [DIR] [--count N | --small] [--large]

Writes under DIR (default ``benchmarks/data/``, git-ignored):

    DIR/n{N}/jpeg/   N 1920x1080 colour JPEGs, quality 95
    DIR/n{N}/png/    N 1920x1080 8-bit colour PNGs, compression 3
    DIR/n{N}/photos/ the JPEGs and PNGs above together (hard links): the issue's image set
    DIR/n{N}/png16/  a few 1920x1080 16-bit colour PNGs
    DIR/n{N}/wav/    stereo 30 s 44.1 kHz PCM_16 WAVs (16; 4 with --small)
    DIR/n{N}/flac/   the same kind of music as PCM_16 FLAC (a few)
    DIR/large/wav/   with --large: one 60-minute stereo PCM_16 WAV, written in blocks
    DIR/large/png/   with --large: one 12500x8000 (100 MP) 8-bit colour PNG

Images are procedural "photos" (gradients, smooth blobs, hard-edged objects,
blurred-noise texture and a little sensor grain), not white noise, so JPEG and
PNG spend the time and bytes they spend on real photos. Audio is polyphonic
"music": notes that are sums of harmonics under attack/decay envelopes, over a
quiet noise floor. Every file comes from fixed seeds, so the same numpy,
OpenCV and libsndfile give the same bytes. Existing files are kept, and every
file is written under a temporary name and renamed, so an interrupted run
never leaves a truncated file that a later run would keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import soundfile as sf

DEFAULT_ROOT = Path(__file__).resolve().parent / "data"
HD = (1080, 1920)  # height, width
LARGE_IMAGE = (8000, 12500)  # 100 megapixels
SAMPLE_RATE = 44100
TRACK_SECONDS = 30.0
LONG_SECONDS = 60 * 60.0
STREAM_FRAMES = 1 << 20  # frames per block when streaming the long WAV
WAVETABLE = 4096  # samples per period of a timbre


@dataclass(frozen=True)
class Tier:
    """How many files of each kind one dataset size holds."""

    images: int  # per JPEG and PNG set
    png16: int
    wav: int
    flac: int

    @property
    def name(self) -> str:
        return f"n{self.images}"


def tier_for(count: int, small: bool) -> Tier:
    """The default tier (64 images per set), the --small one, or a custom image count."""
    return Tier(count, 2, 4, 2) if small else Tier(count, 4, 16, 4)


def tier_root(root: Path, tier: Tier) -> Path:
    """Where one tier's sets live."""
    return root / tier.name


# ---------------------------------------------------------------- images

def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Gaussian noise on a coarse grid, upsampled bicubically: blobs about ``cell`` px wide."""
    height, width = shape
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _objects_mask(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Label image of ``count`` hard-edged ellipses and polygons (0 = background)."""
    height, width = shape
    labels = np.zeros(shape, np.uint8)
    scale = min(height, width)
    for label in range(1, count + 1):
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        if rng.random() < 0.5:
            axes = (int(rng.uniform(0.03, 0.2) * scale), int(rng.uniform(0.03, 0.2) * scale))
            cv2.ellipse(labels, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, label, -1)
        else:
            radius = rng.uniform(0.05, 0.25) * scale
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
            cv2.fillPoly(labels, [points.astype(np.int32)], label)
    return labels


def photo(shape: tuple[int, int], seed: int, dtype: type = np.uint8) -> np.ndarray:
    """A photo-like BGR image of ``dtype`` (uint8 or uint16), built one channel at a time.

    Luminance = gradient + large smooth blobs + objects with hard edges +
    blurred-noise texture whose strength varies over the image (smooth "sky"
    next to textured "foliage") + grain of about 1.2 8-bit levels. Working per
    channel in float32 keeps a 100-MP image to a few single-channel buffers.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    scale = min(height, width)
    light = 0.45 + 0.25 * rng.uniform(-1, 1) * yy + 0.15 * rng.uniform(-1, 1) * xx
    light = light + 0.08 * _smooth_field(rng, shape, max(8, scale // 4))
    light += 0.04 * _smooth_field(rng, shape, 32) + 0.03 * _smooth_field(rng, shape, 8)
    labels = _objects_mask(rng, shape, int(rng.integers(6, 14)))
    object_light = rng.uniform(-0.3, 0.3, 256).astype(np.float32)
    object_light[0] = 0.0
    light += object_light[labels]
    strength = np.clip(_smooth_field(rng, shape, max(8, scale // 6)) * 0.6 + 0.5, 0.0, 1.0)
    texture = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), 1.6)
    light += 0.2 * strength * texture
    del strength, texture
    full = 255.0 if dtype == np.uint8 else 65535.0
    out = np.empty((height, width, 3), dtype)
    tints = rng.uniform(0.75, 1.25, (256, 3)).astype(np.float32)
    for channel in range(3):
        value = light * tints[labels, channel]
        value += 0.03 * _smooth_field(rng, shape, max(8, scale // 3))
        value += rng.standard_normal(shape, dtype=np.float32) * (1.2 / 255.0)
        np.clip(value * full, 0.0, full, out=value)
        np.rint(value, out=value)
        out[..., channel] = value
    return out


def write_image(path: Path, pixels: np.ndarray, params: list[int]) -> None:
    """Encode with OpenCV by extension and write atomically."""
    ok, encoded = cv2.imencode(path.suffix, pixels, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    _atomic_bytes(path, encoded.tobytes())


# ---------------------------------------------------------------- audio

def _timbres(rng: np.random.Generator, count: int = 6, harmonics: int = 12) -> np.ndarray:
    """One period of ``count`` harmonic sums (wavetables), peak-normalised."""
    phase = np.arange(WAVETABLE) / WAVETABLE * 2 * np.pi
    tables = np.zeros((count, WAVETABLE), np.float32)
    for t in range(count):
        rolloff = rng.uniform(0.8, 2.0)
        for k in range(1, harmonics + 1):
            tables[t] += rng.uniform(0.3, 1.0) / k**rolloff * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        tables[t] /= np.abs(tables[t]).max()
    return tables


@dataclass(frozen=True)
class Score:
    """The notes of a piece, sorted by start frame, with the timbres they use."""

    start: np.ndarray  # frame index
    length: np.ndarray  # frames
    freq: np.ndarray  # Hz
    gain: np.ndarray
    decay: np.ndarray  # seconds
    timbre: np.ndarray  # index into tables
    pan: np.ndarray  # 0 = left .. 1 = right
    tables: np.ndarray

    @property
    def longest(self) -> int:
        return int(self.length.max())


def compose(seconds: float, seed: int, voices: int = 4) -> Score:
    """Random melodies on a pentatonic scale, one per voice, back to back."""
    rng = np.random.default_rng(seed)
    scale = np.array([0, 2, 4, 7, 9])
    columns: dict[str, list] = {k: [] for k in ("start", "length", "freq", "gain", "decay", "timbre", "pan")}
    tempo = rng.uniform(0.18, 0.35)  # seconds per beat
    for voice in range(voices):
        octave = 2 + voice
        timbre, pan = int(rng.integers(0, 6)), float(rng.uniform(0.1, 0.9))
        t = float(rng.uniform(0, 0.5))
        while t < seconds:
            beats = int(rng.choice([1, 1, 2, 2, 3, 4]))
            semitone = 12 * octave + int(rng.choice(scale)) + 12 * int(rng.integers(0, 2))
            columns["start"].append(int(t * SAMPLE_RATE))
            columns["length"].append(int(min(beats * tempo * 1.6, seconds - t) * SAMPLE_RATE) + 1)
            columns["freq"].append(27.5 * 2 ** (semitone / 12))
            columns["gain"].append(rng.uniform(0.1, 0.25) / (1 + 0.3 * voice))
            columns["decay"].append(rng.uniform(0.2, 1.2) * beats * tempo)
            columns["timbre"].append(timbre)
            columns["pan"].append(pan)
            t += beats * tempo
    order = np.argsort(columns["start"], kind="stable")
    arrays = {k: np.asarray(v)[order] for k, v in columns.items()}
    return Score(tables=_timbres(rng), **arrays)


def render(score: Score, first: int, frames: int, seed: int) -> np.ndarray:
    """Frames [first, first + frames) of the piece as int16 stereo.

    Notes are rendered from their own start, so a block's samples do not
    depend on where blocks begin; the noise floor is seeded per block, so
    streaming must use the same block size to give the same bytes.
    """
    mix = np.zeros((frames, 2), np.float32)
    lo = np.searchsorted(score.start, first - score.longest, side="left")
    hi = np.searchsorted(score.start, first + frames, side="left")
    for n in range(lo, hi):
        a = max(first, int(score.start[n]))
        b = min(first + frames, int(score.start[n] + score.length[n]))
        if a >= b:
            continue
        t = (np.arange(a, b, dtype=np.float64) - score.start[n]) / SAMPLE_RATE
        envelope = (1 - np.exp(-t / 0.01)) * np.exp(-t / score.decay[n]) * score.gain[n]
        index = (t * score.freq[n] * WAVETABLE).astype(np.int64) & (WAVETABLE - 1)
        note = (score.tables[score.timbre[n]][index] * envelope).astype(np.float32)
        mix[a - first:b - first, 0] += note * (1 - score.pan[n])
        mix[a - first:b - first, 1] += note * score.pan[n]
    mix += np.random.default_rng([seed, first]).standard_normal(mix.shape, dtype=np.float32) * 3e-4
    return np.clip(np.rint(mix * 32767), -32768, 32767).astype(np.int16)


def write_track(path: Path, seconds: float, seed: int, fmt: str) -> None:
    """A stereo PCM_16 piece, rendered and written in blocks (bounded memory)."""
    score = compose(seconds, seed)
    total = int(seconds * SAMPLE_RATE)
    tmp = path.with_name(f".{path.name}.tmp")
    with sf.SoundFile(tmp, "w", SAMPLE_RATE, 2, "PCM_16", format=fmt) as out:
        for first in range(0, total, STREAM_FRAMES):
            out.write(render(score, first, min(STREAM_FRAMES, total - first), seed))
    os.replace(tmp, path)


# ---------------------------------------------------------------- files

def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _make(path: Path, build: Callable[[Path], None]) -> None:
    """Build ``path`` unless it exists; say so on stderr."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"make_dataset: writing {path}", file=sys.stderr, flush=True)
    build(path)


def _link(src: Path, dst: Path) -> None:
    """A hard link (no bytes copied), or a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_tier(root: Path, tier: Tier) -> Path:
    """Write one tier's JPEG, PNG, 16-bit PNG, WAV and FLAC sets; return its folder."""
    base = tier_root(root, tier)
    jpeg, png = [cv2.IMWRITE_JPEG_QUALITY, 95], [cv2.IMWRITE_PNG_COMPRESSION, 3]
    for i in range(tier.images):
        _make(base / "jpeg" / f"photo_{i:03d}.jpg", lambda p, s=i: write_image(p, photo(HD, s), jpeg))
        _make(base / "png" / f"photo_{i:03d}.png", lambda p, s=10_000 + i: write_image(p, photo(HD, s), png))
    for source in ("jpeg", "png"):
        for path in sorted((base / source).iterdir()):
            _make(base / "photos" / path.name, lambda p, src=path: _link(src, p))
    for i in range(tier.png16):
        _make(base / "png16" / f"photo16_{i:03d}.png",
              lambda p, s=20_000 + i: write_image(p, photo(HD, s, np.uint16), png))
    for i in range(tier.wav):
        _make(base / "wav" / f"track_{i:03d}.wav", lambda p, s=30_000 + i: write_track(p, TRACK_SECONDS, s, "WAV"))
    for i in range(tier.flac):
        _make(base / "flac" / f"track_{i:03d}.flac",
              lambda p, s=40_000 + i: write_track(p, TRACK_SECONDS, s, "FLAC"))
    return base


def large_paths(root: Path) -> tuple[Path, Path]:
    """The 60-minute WAV and the 100-MP PNG, each alone in its folder."""
    return root / "large" / "wav" / "long_60min.wav", root / "large" / "png" / "huge_100mp.png"


def make_large(root: Path) -> tuple[Path, Path]:
    """Write the --large files; return their paths."""
    wav, png = large_paths(root)
    _make(wav, lambda p: write_track(p, LONG_SECONDS, 50_000, "WAV"))
    _make(png, lambda p: write_image(p, photo(LARGE_IMAGE, 60_000), [cv2.IMWRITE_PNG_COMPRESSION, 3]))
    return wav, png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT, metavar="DIR")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--count", type=int, default=64, metavar="N", help="images per JPEG/PNG set (default 64)")
    size.add_argument("--small", action="store_true", help="8 images per set, fewer audio files")
    parser.add_argument("--large", action="store_true", help="also the 60-minute WAV and the 100-MP PNG")
    args = parser.parse_args(argv)
    tier = tier_for(8 if args.small else args.count, args.small)
    print(make_tier(args.root, tier))
    if args.large:
        for path in make_large(args.root):
            print(path)


if __name__ == "__main__":
    main()
