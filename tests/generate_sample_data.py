"""Make the small demo dataset in sample_data/ (committed; rerun to remake it).

    python tests/generate_sample_data.py sample_data

Procedural "photos" (sky, sun, hills, textured grass), so the noise is seen
on smooth gradients and on texture alike, in every layout noiseaug keeps:
colour JPEG (one with EXIF orientation 6, stored sideways), 8-bit and 16-bit
PNG, grayscale, RGBA with a soft alpha edge, TIFF, WebP, and a CSV that is
not media. Recordings: a melody with harmonics and envelopes, a stereo
chord, and vowel-like "speech" (harmonics of a wavering pitch shaped by
formants), as WAV PCM_16, WAV PCM_24, FLAC and Ogg Vorbis. Deterministic:
the same numpy gives the same pixels and samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from PIL import Image


def landscape(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB float image in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky_top = np.array([0.25, 0.45, 0.85], np.float32) * rng.uniform(0.8, 1.1)
    sky_low = np.array([0.85, 0.80, 0.70], np.float32)
    t = (y / height)[..., None]
    img = sky_top * (1 - t) + sky_low * t
    cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.1, 0.3) * height, 0.07 * height
    sun = np.clip(1.3 - np.hypot(x - cx, y - cy) / r, 0, 1)[..., None]
    img = img * (1 - sun) + np.array([1.0, 0.95, 0.7], np.float32) * sun
    texture = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 2.0)
    for layer, (base, amp) in enumerate([(0.55, 0.06), (0.7, 0.05)]):
        phase = rng.uniform(0, 6.28)
        ridge = height * (base + amp * np.sin(x / width * 6.0 + phase) + 0.02 * np.sin(x / 17.0))
        mask = (y > ridge)[..., None].astype(np.float32)
        colour = np.array([0.15 + 0.1 * layer, 0.45 - 0.1 * layer, 0.12], np.float32)
        shade = colour * (0.8 + 0.25 * texture[..., None]) * (0.7 + 0.3 * (y / height)[..., None])
        img = img * (1 - mask) + shade * mask
    return np.clip(img, 0, 1)


def to_bgr(img: np.ndarray, depth: int = 8) -> np.ndarray:
    scale, dtype = (255, np.uint8) if depth == 8 else (65535, np.uint16)
    return np.rint(img[..., ::-1] * scale).astype(dtype)


def envelope(n: int, rate: int, attack: float = 0.02, release: float = 0.15) -> np.ndarray:
    t = np.arange(n) / rate
    return np.minimum(1.0, t / attack) * np.exp(-t / release * 0.5) * np.minimum(1.0, (n / rate - t) / 0.01)


def melody(rate: int, seed: int) -> np.ndarray:
    """A little tune: notes with five harmonics and plucked envelopes."""
    rng = np.random.default_rng(seed)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    notes = []
    for _ in range(12):
        f0 = 220.0 * 2 ** (scale[rng.integers(0, len(scale))] / 12)
        n = int(rate * rng.choice([0.125, 0.25, 0.375]))
        t = np.arange(n) / rate
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k ** 1.5 for k in range(1, 6))
        notes.append(tone * envelope(n, rate))
    return 0.3 * np.concatenate(notes)


def chord(rate: int, seconds: float) -> np.ndarray:
    """A slowly beating stereo major chord."""
    t = np.arange(int(rate * seconds)) / rate
    left = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    right = sum(np.sin(2 * np.pi * f * 1.003 * t) for f in (261.6, 329.6, 392.0))
    fade = np.minimum(1.0, t / 0.2) * np.minimum(1.0, (seconds - t) / 0.5)
    return 0.2 * np.stack([left * fade, right * fade], axis=1)


def speech(rate: int, seed: int) -> np.ndarray:
    """Vowel-like syllables: harmonics of a wavering pitch weighted by formants."""
    rng = np.random.default_rng(seed)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]
    parts = []
    for _ in range(10):
        n = int(rate * rng.uniform(0.15, 0.3))
        t = np.arange(n) / rate
        pitch = 120 * (1 + 0.08 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        formants = vowels[rng.integers(0, len(vowels))]
        voice = np.zeros(n)
        for k in range(1, int(rate / 2 / 160)):
            weight = sum(np.exp(-((k * 120 - f) / 90.0) ** 2) for f in formants) + 0.02
            voice += weight * np.sin(k * phase) / k ** 0.5
        parts.append(voice * np.sin(np.pi * t / t[-1]) ** 2)
        parts.append(np.zeros(int(rate * rng.uniform(0.03, 0.12))))
    signal = np.concatenate(parts)
    return 0.25 * signal / np.abs(signal).max()


def main(out: Path) -> None:
    (out / "landscapes" / "day").mkdir(parents=True, exist_ok=True)
    (out / "landscapes" / "scans").mkdir(parents=True, exist_ok=True)
    (out / "icons").mkdir(parents=True, exist_ok=True)

    for i, seed in enumerate((1, 2)):
        cv2.imwrite(str(out / "landscapes" / "day" / f"photo_{i + 1:02d}.jpg"),
                    to_bgr(landscape(480, 640, seed)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    # Stored sideways with EXIF orientation 6, as phones do: viewers show it upright.
    upright = (landscape(480, 640, 3) * 255).round().astype(np.uint8)
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(out / "landscapes" / "day" / "phone_portrait.jpg", quality=90, exif=exif.tobytes())

    cv2.imwrite(str(out / "landscapes" / "day" / "hdr_16bit.png"), to_bgr(landscape(240, 320, 4), 16))
    gray = cv2.cvtColor(to_bgr(landscape(300, 400, 5)), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(out / "landscapes" / "scans" / "scan_gray.png"), gray)
    cv2.imwrite(str(out / "landscapes" / "scans" / "scan_16bit.tif"), to_bgr(landscape(200, 260, 6), 16))
    cv2.imwrite(str(out / "landscapes" / "day" / "evening.webp"), to_bgr(landscape(240, 320, 7)),
                [cv2.IMWRITE_WEBP_QUALITY, 90])

    # RGBA: a badge with a soft alpha edge; the alpha plane must come out unchanged.
    size = 256
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.hypot(x - size / 2, y - size / 2)
    alpha = np.clip((size * 0.45 - d) / 6.0, 0, 1)
    rgb = to_bgr(landscape(size, size, 8))
    badge = np.dstack([rgb, np.rint(alpha * 255).astype(np.uint8)])
    cv2.imwrite(str(out / "icons" / "badge_rgba.png"), badge)

    (out / "sounds" / "music").mkdir(parents=True, exist_ok=True)
    (out / "sounds" / "speech").mkdir(parents=True, exist_ok=True)
    sf.write(out / "sounds" / "music" / "melody.wav", melody(22050, 1), 22050, subtype="PCM_16")
    sf.write(out / "sounds" / "music" / "chord_24bit.wav", chord(22050, 2.0), 22050, subtype="PCM_24")
    voice = speech(16000, 2)
    sf.write(out / "sounds" / "speech" / "voice.flac", voice, 16000, subtype="PCM_16")
    sf.write(out / "sounds" / "speech" / "voice.ogg", voice, 16000, subtype="VORBIS")

    (out / "labels.csv").write_text(
        "path,label\n"
        "landscapes/day/photo_01.jpg,day\n"
        "landscapes/day/photo_02.jpg,day\n"
        "landscapes/day/phone_portrait.jpg,day\n"
        "landscapes/scans/scan_gray.png,scan\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "sample_data"))
