"""Images through `noiseaug run`: what a file gets (SPEC §3)."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import read_image, records, write_image

GRAY_MID = np.full((600, 600), 128, np.uint8)


def run_one(cli, dirs, name, pixels, *args, ext=None, params=None):
    src, out = dirs
    write_image(src / name, pixels, ext=ext, params=params)
    cli("run", src, out, "--workers", 1, *args)
    return read_image(out / name), records(out / "noiseaug-manifest.jsonl")[1]


@pytest.mark.parametrize("name,value,scale", [("mid.png", 128, 1), ("mid16.png", 32768, 257)])
def test_residual_through_the_cli_has_the_requested_sigma(cli, dirs, name, value, scale):
    dtype = np.uint8 if scale == 1 else np.uint16
    x = np.full((700, 700, 3), value, dtype)
    y, [rec] = run_one(cli, dirs, name, x, "--image-sigma", 12)
    assert y.dtype == dtype and y.shape == x.shape
    r = (y.astype(np.float64) - value) / scale
    assert abs(r.mean()) < 5 * 12 / math.sqrt(r.size)
    assert abs(r.std() / 12 - 1) < 0.01
    assert np.abs(r).max() > 4 * 12
    assert rec["sigma"] == 12 and rec["sigma_full_scale"] == pytest.approx(12 / 255)
    assert rec["dtype"] == str(np.dtype(dtype)) and rec["channels"] == 3


def test_shared_channel_noise_is_one_plane(cli, dirs):
    y, _ = run_one(cli, dirs, "rgb.png", np.full((300, 300, 3), 100, np.uint8),
                   "--channel-noise", "shared", "--image-sigma", 20)
    assert np.array_equal(y[..., 0], y[..., 1]) and np.array_equal(y[..., 0], y[..., 2])
    assert y[..., 0].std() > 15


def test_clipped_fraction_is_recorded(cli, dirs):
    y, [rec] = run_one(cli, dirs, "black.png", np.zeros((400, 400), np.uint8), "--image-sigma", 10)
    assert y.max() < 80  # clipped at 0, never wrapped
    want = 0.5 * (1 + math.erf(-0.05 / math.sqrt(2)))  # P(round(10 Z) < 0)
    assert rec["clipped_fraction"] == pytest.approx(want, abs=0.01)


@pytest.mark.parametrize("name,pixels", [
    ("rgb.png", np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)),
    ("deep.png", np.random.default_rng(2).integers(0, 65536, (64, 80, 3), dtype=np.uint16)),
    ("gray16.png", np.random.default_rng(3).integers(0, 65536, (64, 80), dtype=np.uint16)),
    ("rgb.tif", np.random.default_rng(4).integers(0, 256, (64, 80, 3), dtype=np.uint8)),
    ("deep.tiff", np.random.default_rng(5).integers(0, 65536, (64, 80, 4), dtype=np.uint16)),
    ("float.tif", np.random.default_rng(6).random((64, 80, 3), dtype=np.float32)),
    ("rgb.bmp", np.random.default_rng(7).integers(0, 256, (64, 80, 3), dtype=np.uint8)),
    ("gray.pgm", np.random.default_rng(8).integers(0, 256, (64, 80), dtype=np.uint8)),
    ("rgb.ppm", np.random.default_rng(9).integers(0, 256, (64, 80, 3), dtype=np.uint8)),
])
def test_sigma_zero_round_trips_lossless_formats_exactly(cli, dirs, name, pixels):
    y, [rec] = run_one(cli, dirs, name, pixels, "--image-sigma", 0)
    assert y.dtype == pixels.dtype and y.shape == pixels.shape
    assert np.array_equal(y, pixels)
    assert rec["status"] == "ok" and rec["clipped_fraction"] == 0


def test_lossless_webp_stays_lossless(cli, dirs):
    pixels = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    y, _ = run_one(cli, dirs, "x.webp", pixels, "--image-sigma", 0, params=[cv2.IMWRITE_WEBP_QUALITY, 101])
    assert np.array_equal(y, pixels)


def test_alpha_plane_is_byte_identical_and_colour_is_noised(cli, dirs):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (120, 160, 4), dtype=np.uint8)
    y, [rec] = run_one(cli, dirs, "rgba.png", pixels, "--image-sigma", 25)
    assert y.shape == (120, 160, 4)
    assert np.array_equal(y[..., 3], pixels[..., 3])
    assert np.count_nonzero(y[..., :3] != pixels[..., :3]) > 0.8 * pixels[..., :3].size
    assert rec["channels"] == 4


def test_grayscale_stays_one_channel(cli, dirs):
    y, [rec] = run_one(cli, dirs, "g.png", GRAY_MID, "--image-sigma", 5)
    assert y.ndim == 2 and rec["channels"] == 1
    y, _ = run_one(cli, dirs, "g.jpg", GRAY_MID, "--image-sigma", 5)
    assert y.ndim == 2


def _exif_png(pixels_rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels_rgb).save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_viewer(cli, dirs, orientation):
    src, out = dirs
    rgb = np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    data = _exif_png(rgb, orientation)
    (src / "o.png").write_bytes(data)
    cli("run", src, out, "--image-sigma", 0, "--workers", 1)
    # OpenCV's colour mode applies EXIF orientation: the reference of what a viewer shows
    upright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(read_image(out / "o.png"), upright)


def test_phone_jpeg_with_orientation_6_comes_out_upright(cli, dirs):
    src, out = dirs
    upright = np.zeros((60, 100, 3), np.uint8)
    upright[:20, :30] = 255  # a white block at the top-left of the upright picture
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(src / "phone.jpg", quality=95, exif=exif.tobytes())
    cli("run", src, out, "--image-sigma", 0, "--workers", 1)
    y = read_image(out / "phone.jpg")
    assert y.shape == (60, 100, 3)
    assert y[:20, :30].mean() > 200 and y[25:, 35:].mean() < 50


def test_rgba_png_with_orientation_keeps_alpha_aligned(cli, dirs):
    src, out = dirs
    rgba = np.zeros((30, 50, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:10, :10, 3] = 7
    exif = Image.Exif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG", exif=exif.tobytes())
    (src / "a.png").write_bytes(buf.getvalue())
    cli("run", src, out, "--workers", 1)
    y = read_image(out / "a.png")
    assert y.shape == (50, 30, 4)
    assert np.array_equal(y[..., 3], np.ascontiguousarray(np.rot90(rgba[..., 3], k=1)))


def test_gray_alpha_png_stays_gray(cli, dirs):
    src, out = dirs
    la = np.dstack([np.full((40, 40), 120, np.uint8), np.full((40, 40), 200, np.uint8)])
    Image.fromarray(la, "LA").save(src / "la.png")
    cli("run", src, out, "--workers", 1, "--image-sigma", 20)
    y = read_image(out / "la.png")
    assert np.array_equal(y[..., 0], y[..., 1]) and np.array_equal(y[..., 1], y[..., 2])
    assert (y[..., 3] == 200).all() and y[..., 0].std() > 10


def test_jpeg_quality_and_png_compression_are_honoured(cli, tmp_path):
    src = tmp_path / "in"
    photo = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 3)
    write_image(src / "p.jpg", photo, params=[cv2.IMWRITE_JPEG_QUALITY, 100])
    write_image(src / "p.png", photo)
    sizes = {}
    for q, level in ((40, 0), (95, 9)):
        out = tmp_path / f"out{q}"
        cli("run", src, out, "--image-sigma", 2, "--jpeg-quality", q, "--png-compression", level, "--workers", 1)
        sizes[q] = ((out / "p.jpg").stat().st_size, (out / "p.png").stat().st_size)
        assert (out / "p.jpg").read_bytes()[:2] == b"\xff\xd8" and (out / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert sizes[40][0] < 0.6 * sizes[95][0]  # lower quality, smaller JPEG
    assert sizes[40][1] > sizes[95][1]  # level 0 stores, level 9 compresses
    assert np.array_equal(read_image(tmp_path / "out40" / "p.png"), read_image(tmp_path / "out95" / "p.png"))


def test_format_and_extension_are_kept(cli, dirs):
    src, out = dirs
    rgb = np.full((20, 20, 3), 90, np.uint8)
    magic = {"a.JPG": b"\xff\xd8", "b.jpeg": b"\xff\xd8", "c.Png": b"\x89PNG", "d.bmp": b"BM",
             "e.tiff": b"II", "f.webp": b"RIFF", "g.ppm": b"P6"}
    for name in magic:
        ext = "." + name.rsplit(".", 1)[1].lower()
        write_image(src / name, rgb, ext=ext)
    cli("run", src, out, "--workers", 1)
    for name, head in magic.items():
        assert (out / name).read_bytes().startswith(head), name


def test_gray_palette_png_noised_on_request_stays_gray(cli, dirs):
    src, out = dirs
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))
    Image.fromarray(gray).convert("P").save(src / "pal.png")
    cli("run", src, out, "--workers", 1, "--image-sigma", 8, "--palette-images", "noise")
    y = read_image(out / "pal.png")
    assert y.ndim == 2 and abs((y.astype(float) - gray).std() - 8) < 1


@pytest.mark.parametrize("name,fmt", [("c.jpg", "JPEG"), ("c.png", "PNG"), ("c.webp", "WEBP")])
def test_colour_profile_is_carried_to_the_output(cli, dirs, name, fmt):
    from PIL import ImageCms

    src, out = dirs
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(src / name, fmt, icc_profile=profile)
    cli("run", src, out, "--workers", 1)
    with Image.open(out / name) as im:
        assert im.info.get("icc_profile") == profile
