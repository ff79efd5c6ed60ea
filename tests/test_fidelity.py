"""SPEC §3's fidelity rule: every ok output keeps its input's layout; the rest is refused with a reason.

The differential matrix (``fidelity_cases``) runs at σ 0 and σ 10, with one
and two workers, through the real CLI in a subprocess (so a worker's warning
would show on stderr); then named tests pin each case the issue reported.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import records
from fidelity_cases import Case, cases, layout, samples

CASES = cases()
RUNS = (("s0", 0, 1), ("s10w1", 10, 1), ("s10w2", 10, 2))
SCALE = {np.dtype(np.uint8): 1.0, np.dtype(np.uint16): 257.0, np.dtype(np.float32): 1 / 255,
         np.dtype(np.float64): 1 / 255}


def noiseaug(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "noiseaug", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    src = root / "in"
    src.mkdir()
    for case in CASES:
        (src / case.name).write_bytes(case.make())
    runs = {}
    for name, sigma, workers in RUNS:
        proc = noiseaug("run", src, root / name, "--image-sigma", sigma, "--workers", workers, "--copy-other",
                        "--json", "-q")
        runs[name] = (root / name, proc, {r["input"]: r for r in records(root / name / "noiseaug-manifest.jsonl")[1]})
    return src, runs


def test_the_matrix_is_wide():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.expect for c in CASES} == {"ok", "label", "refused"}


@pytest.mark.parametrize("name", [name for name, _, _ in RUNS])
def test_runs_say_nothing_but_the_refusals(matrix, name):
    _, runs = matrix
    _, proc, _ = runs[name]
    refused = sorted(c.name for c in CASES if c.expect == "refused")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert sorted(line.split(": ")[2] for line in lines) == refused, proc.stderr  # no warning, no other text
    summary = json.loads(proc.stdout)
    assert summary["failed"] == len(refused)
    assert summary["files"]["label"]["ok"] == sum(c.expect == "label" for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_variant(matrix, case: Case):
    src, runs = matrix
    ext = ".tif" if case.name.endswith(".tif") else Path(case.name).suffix
    data = (src / case.name).read_bytes()
    for name, sigma, _ in RUNS:
        out, _, by_input = runs[name]
        record = by_input[case.name]
        target = out / case.name
        if case.expect == "refused":
            assert record["status"] == "error" and record["kind"] == "image"
            assert record["error"].startswith("not supported: ") and case.reason in record["error"], record
            assert not target.exists()
            continue
        assert record["status"] == "ok", record
        written = target.read_bytes()
        if case.expect == "label":
            assert record["kind"] == "label" and written == data
            continue
        assert layout(written, ext) == layout(data, ext)
        if case.lossless:
            _check_samples(samples(data, ext), samples(written, ext), sigma, case.alpha)
    w1, w2 = (runs[n][0] / case.name for n in ("s10w1", "s10w2"))
    if case.expect != "refused":
        assert w1.read_bytes() == w2.read_bytes()


def _check_samples(before: list[np.ndarray], after: list[np.ndarray], sigma: float, alpha: int) -> None:
    assert [b.shape for b in before] == [a.shape for a in after]
    assert [b.dtype for b in before] == [a.dtype for a in after]
    for x, y in zip(before, after):
        if sigma == 0:
            assert np.array_equal(x, y)
            continue
        colour = slice(None) if x.ndim == 2 else slice(0, x.shape[2] - alpha)
        if alpha:
            assert np.array_equal(x[..., x.shape[2] - alpha:], y[..., x.shape[2] - alpha:]), "alpha changed"
        residual = (y[..., colour].astype(np.float64) - x[..., colour]) / SCALE[x.dtype]
        tolerance = max(0.03, 5 / np.sqrt(2 * residual.size))  # five standard errors of a sample std
        assert abs(residual.std() / sigma - 1) < tolerance, residual.std()
        assert abs(residual.mean()) < 0.1 * sigma


# ---- one named test per case the issue reported ------------------------------------------------


def _run(cli, src, out, *args):
    return cli("run", src, out, "--workers", 1, *args)


def _tif(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    planar = kwargs.get("planarconfig") == "separate"
    tifffile.imwrite(buffer, np.moveaxis(array, -1, 0) if planar else array, metadata=None, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_planar_tiff_at_sigma_zero_keeps_every_sample(cli, dirs, dtype):
    src, out = dirs
    value = 0.5 if dtype == np.float32 else 40000
    constant = np.full((300, 200, 3), value, dtype)
    constant[..., 1] = value / 2
    (src / "planar.tif").write_bytes(_tif(constant, photometric="rgb", planarconfig="separate", compression="zlib"))
    _run(cli, src, out, "--image-sigma", 0)
    with tifffile.TiffFile(out / "planar.tif") as tif:
        assert tif.pages[0].planarconfig == 2
        assert np.array_equal(np.moveaxis(tif.asarray(), 0, -1), constant)


def test_unassociated_alpha_rgba_tiff_keeps_its_colours(cli, dirs):
    src, out = dirs
    Image.new("RGBA", (8, 8), (200, 100, 50, 128)).save(src / "rgba.tif")
    _run(cli, src, out, "--image-sigma", 0)
    with Image.open(out / "rgba.tif") as im:
        assert im.getpixel((0, 0)) == (200, 100, 50, 128)
        assert im.tag_v2.get(338) == (2,)  # ExtraSamples: unassociated alpha


def test_multi_page_tiff_keeps_every_page_each_with_its_own_noise(cli, dirs):
    src, out = dirs
    page = np.full((64, 64), 128, np.uint8)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tw:
        for _ in range(3):
            tw.write(page, metadata=None, compression="lzw")
    (src / "stack.tif").write_bytes(buffer.getvalue())
    _run(cli, src, out)
    with tifffile.TiffFile(out / "stack.tif") as tif:
        pages = [p.asarray() for p in tif.pages]
        assert [p.compression for p in tif.pages] == [5, 5, 5]
    assert len(pages) == 3
    noise = [p.astype(float) - 128 for p in pages]
    for a in noise:
        assert abs(a.std() - 10) < 0.5
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.05  # independent streams
    (record,) = records(out / "noiseaug-manifest.jsonl")[1]
    assert record["pages"] == 3


def test_gray_alpha_png_and_tiff_stay_gray_alpha(cli, dirs):
    src, out = dirs
    la = np.dstack([np.full((32, 32), 120, np.uint8), np.arange(32 * 32).reshape(32, 32).astype(np.uint8)])
    Image.fromarray(la, "LA").save(src / "la.png")
    (src / "la.tif").write_bytes(_tif(la, photometric="minisblack", extrasamples=["unassalpha"]))
    _run(cli, src, out)
    with Image.open(out / "la.png") as im:
        assert im.mode == "LA"
        got = np.asarray(im)
    assert np.array_equal(got[..., 1], la[..., 1]) and got[..., 0].std() > 5
    with tifffile.TiffFile(out / "la.tif") as tif:
        assert tif.pages[0].extrasamples == (2,) and tif.asarray().shape == (32, 32, 2)


def test_palette_mask_is_a_label_map(cli, dirs):
    src, out = dirs
    mask = Image.fromarray((np.arange(40 * 40).reshape(40, 40) % 5).astype(np.uint8), "P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * 753)
    mask.save(src / "mask.png")
    result = cli("run", src, out, "--workers", 1, "--json")
    summary = json.loads(result.stdout)
    assert summary["not_taken"]["labels"] == 1 and not (out / "mask.png").exists()
    assert "label maps" in result.stderr
    copied = out.parent / "copied"
    cli("run", src, copied, "--workers", 1, "--copy-other", "--json")
    assert (copied / "mask.png").read_bytes() == (src / "mask.png").read_bytes()
    (record,) = records(copied / "noiseaug-manifest.jsonl")[1]
    assert record["kind"] == "label" and record["status"] == "ok"


def test_palette_images_noise_opts_in(cli, dirs):
    src, out = dirs
    Image.fromarray(np.full((30, 30, 3), (200, 40, 90), np.uint8)).convert("P").save(src / "p.png")
    _run(cli, src, out, "--palette-images", "noise")
    with Image.open(out / "p.png") as im:
        assert im.mode == "RGB" and np.asarray(im).std() > 5


def test_one_bit_image_stays_one_bit(cli, dirs):
    src, out = dirs
    Image.fromarray(np.eye(24, dtype=bool)).save(src / "bits.png")
    _run(cli, src, out, "--copy-other")
    with Image.open(out / "bits.png") as im:
        assert im.mode == "1"


def test_jpeg_compressed_tiff_stays_jpeg_compressed(cli, dirs):
    src, out = dirs
    rgb = np.random.default_rng(1).integers(60, 190, (64, 64, 3), dtype=np.uint8)
    (src / "j.tif").write_bytes(_tif(rgb, photometric="rgb", compression="jpeg", subsampling=(2, 2),
                                     rowsperstrip=16))
    _run(cli, src, out)
    with tifffile.TiffFile(out / "j.tif") as tif:
        page = tif.pages[0]
        assert (page.compression, page.photometric, page.subsampling) == (7, 6, (2, 2))
    assert (out / "j.tif").stat().st_size < 3 * (src / "j.tif").stat().st_size


def test_progressive_and_444_jpeg_keep_their_mode(cli, dirs):
    src, out = dirs
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "p444.jpg", quality=95, subsampling=0, progressive=True)
    _run(cli, src, out)
    with Image.open(out / "p444.jpg") as im:
        assert im.info.get("progressive") and [(h, v) for _, h, v, _ in im.layer] == [(1, 1)] * 3
    (record,) = records(out / "noiseaug-manifest.jsonl")[1]
    assert record["subsampling"] == "4:4:4"


def test_jpeg_subsampling_option_overrides(cli, dirs):
    src, out = dirs
    Image.fromarray(np.full((32, 32, 3), 99, np.uint8)).save(src / "a.jpg", subsampling=0)
    _run(cli, src, out, "--jpeg-subsampling", "420")
    with Image.open(out / "a.jpg") as im:
        assert [(h, v) for _, h, v, _ in im.layer][0] == (2, 2)
    assert records(out / "noiseaug-manifest.jsonl")[1][0]["subsampling"] == "4:2:0"


def test_hdr_float_tiff_is_refused_unless_its_range_is_given(cli, dirs, tmp_path):
    src, out = dirs
    hdr = np.random.default_rng(3).uniform(0.5, 3.5, (40, 40)).astype(np.float32)
    (src / "hdr.tif").write_bytes(_tif(hdr, photometric="minisblack"))
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "outside [0, 1]" in result.stderr and "--float-range" in result.stderr
    assert f"float samples from {hdr.min():g} to {hdr.max():g}, outside" in result.stderr  # their own range
    assert not (out / "hdr.tif").exists()
    cli("run", src, tmp_path / "ranged", "--workers", 1, "--float-range", "0:4")
    noisy = tifffile.imread(tmp_path / "ranged" / "hdr.tif")
    assert abs((noisy - hdr).std() - 10 / 255 * 4) < 0.01 * 10 / 255 * 4 * 5


# ---- cases found by a trial on files the tests above do not make ---------------------------


def test_each_page_of_a_tiff_keeps_its_own_alpha(cli, dirs):
    src, out = dirs
    rng = np.random.default_rng(4)
    cmyk = rng.integers(60, 190, (20, 30, 4), dtype=np.uint8)
    rgba = rng.integers(60, 190, (20, 30, 4), dtype=np.uint8)
    gray = rng.integers(60, 190, (20, 30), dtype=np.uint8)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tw:
        tw.write(cmyk, photometric="separated", metadata=None)
        tw.write(rgba, photometric="rgb", extrasamples=["unassalpha"], metadata=None)
        tw.write(gray, photometric="minisblack", metadata=None)
    (src / "mixed.tif").write_bytes(buffer.getvalue())
    _run(cli, src, out)
    with tifffile.TiffFile(out / "mixed.tif") as tif:
        pages = [p.asarray() for p in tif.pages]
    assert np.array_equal(pages[1][..., 3], rgba[..., 3])  # alpha of page 1 untouched
    assert all((pages[1][..., c].astype(int) - rgba[..., c]).std() > 5 for c in range(3))
    assert (pages[0][..., 3].astype(int) - cmyk[..., 3]).std() > 5  # K is ink, noised
    assert (pages[2].astype(int) - gray).std() > 5


def test_a_file_keeps_the_format_its_bytes_are_in_whatever_its_name(cli, dirs):
    src, out = dirs
    deep = np.random.default_rng(5).integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "ok.jpg")
    import cv2

    (src / "really_png.jpg").write_bytes(cv2.imencode(".png", deep)[1].tobytes())
    _run(cli, src, out, "--image-sigma", 0)
    assert (out / "really_png.jpg").read_bytes()[:4] == b"\x89PNG"
    assert np.array_equal(cv2.imdecode(np.fromfile(out / "really_png.jpg", np.uint8), -1), deep)


def test_lossless_webp_with_alpha_is_exact_under_transparent_pixels(cli, dirs):
    src, out = dirs
    rgba = np.random.default_rng(6).integers(0, 256, (24, 24, 4), dtype=np.uint8)
    rgba[::2, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(src / "w.webp", lossless=True, exact=True)
    _run(cli, src, out, "--image-sigma", 0)
    with Image.open(out / "w.webp") as im:
        assert np.array_equal(np.asarray(im), rgba)


def _png_with(pixels: np.ndarray, mode: str | None, chunks: list[tuple[bytes, bytes]], **save) -> bytes:
    import struct
    import zlib

    buffer = io.BytesIO()
    (Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)).save(buffer, "PNG", **save)
    data = buffer.getvalue()
    extra = b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
                     for kind, body in chunks)
    return data[:33] + extra + data[33:]


def test_png_gamma_colour_and_density_and_jpeg_density_are_kept(cli, dirs):
    """OpenCV's writers drop how to show the pixels (PNG gAMA, cHRM, sRGB) and their density (PNG pHYs, the
    JPEG's JFIF density): the outputs get them back, valid (CRCs checked by Pillow), reproducibly."""
    src, out = dirs
    rng = np.random.default_rng(5)
    rgb, gray_alpha = rng.integers(0, 256, (12, 10, 3), np.uint8), rng.integers(0, 256, (12, 10, 2), np.uint8)
    gamma = (b"gAMA", (45455).to_bytes(4, "big"))
    chrm = (b"cHRM", b"".join(v.to_bytes(4, "big") for v in (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)))
    (src / "g.png").write_bytes(_png_with(rgb, "RGB", [gamma, chrm, (b"sRGB", b"\0")], dpi=(300, 300)))
    (src / "la.png").write_bytes(_png_with(gray_alpha, "LA", [gamma], dpi=(72, 72)))  # imagecodecs' writer
    (src / "w.png").write_bytes(_png_with(rgb[..., 0].astype(np.uint16) * 257, None, [gamma], dpi=(600, 600)))
    Image.fromarray(rgb).save(src / "j.jpg", dpi=(300, 300), quality=90)
    Image.fromarray(rgb).save(src / "plain.jpg", quality=90)
    _run(cli, src, out)
    for name in ("g.png", "la.png", "w.png", "j.jpg", "plain.jpg"):
        with Image.open(src / name) as a, Image.open(out / name) as b:
            assert {k: b.info.get(k) for k in ("dpi", "gamma", "srgb", "jfif_density", "jfif_unit")} == \
                   {k: a.info.get(k) for k in ("dpi", "gamma", "srgb", "jfif_density", "jfif_unit")}, name
            assert b.size == a.size and b.mode == a.mode
            b.verify()  # every chunk's CRC
    with Image.open(out / "g.png") as im:
        assert im.info["dpi"][0] == pytest.approx(300, abs=0.01) and im.info["gamma"] == 0.45455
        assert abs(np.asarray(im, float) - rgb).std() > 5  # noised, decodable
    assert (out / "plain.jpg").read_bytes()[13:18] == b"\0\0\1\0\1"
    assert cli("verify", "--regenerate", out / "noiseaug-manifest.jsonl").exit_code == 0


def test_png_hdr_signalling_is_kept_and_a_pnm_of_several_images_is_refused(cli, dirs):
    """A PNG's cICP (BT.2100 PQ here), mDCv and cLLi say how to show HDR pixels: dropped, the output looked
    wrong. A binary PNM may hold several images one after another: only the first was written."""
    src, out = dirs
    rgb = np.random.default_rng(8).integers(0, 256, (12, 10, 3), np.uint8)
    hdr = [(b"cICP", bytes([9, 16, 0, 1])), (b"cLLi", (10000000).to_bytes(4, "big") + (4000000).to_bytes(4, "big"))]
    (src / "hdr.png").write_bytes(_png_with(rgb, "RGB", hdr))
    one = b"P5 10 12 255\n" + rgb[..., 0].tobytes()
    (src / "two.pgm").write_bytes(one + one)
    (src / "one.pgm").write_bytes(one)
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "two.pgm: not supported: PNM holding several images" in result.stderr and (out / "one.pgm").exists()
    data = (out / "hdr.png").read_bytes()
    for kind, body in hdr:
        at = data.find(kind)
        assert at > 0 and data[at + 4:at + 4 + len(body)] == body and at < data.find(b"IDAT"), kind
    with Image.open(out / "hdr.png") as im:
        im.verify()


def test_a_jpeg_turned_upright_by_a_quarter_swaps_its_densities(cli, dirs):
    """EXIF orientation 6 turns a 60x40 picture stored at 72x144 dpi into a 40x60 one: its density is 144x72."""
    src, out = dirs
    rgb = np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(src / "turned.jpg", quality=95, dpi=(72, 144), exif=exif.tobytes())
    Image.fromarray(rgb).save(src / "level.jpg", quality=95, dpi=(72, 144))
    _run(cli, src, out)
    with Image.open(out / "turned.jpg") as im:
        assert im.size == (40, 60) and im.info["jfif_density"] == (144, 72)
    with Image.open(out / "level.jpg") as im:
        assert im.size == (60, 40) and im.info["jfif_density"] == (72, 144)


def test_an_rgb_jpeg_is_refused_as_an_rgb_tiff_is(cli, dirs):
    import imagecodecs

    src, out = dirs
    rgb = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    (src / "rgb.jpg").write_bytes(imagecodecs.jpeg8_encode(rgb, level=95, colorspace="RGB", outcolorspace="RGB"))
    Image.fromarray(rgb).save(src / "ycc.jpg", quality=95)
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "rgb.jpg: not supported: JPEG stored as RGB (Adobe transform 0)" in result.stderr
    assert (out / "ycc.jpg").exists() and not (out / "rgb.jpg").exists()


def test_a_header_pillow_cannot_read_is_refused_not_guessed_by_opencv(cli, dirs):
    """A PNG with a damaged ancillary chunk (libpng skips it, Pillow refuses the file) or with an XMP too large
    for Pillow: OpenCV alone would decode a palette mask as RGB, mark it ok, and decode a huge one whole past
    --max-pixels. Without Pillow's header nothing can be checked, so the file gets a one-line error."""
    import struct
    import zlib

    src, out = dirs
    mask = Image.fromarray((np.arange(256, dtype=np.uint8).reshape(16, 16) // 32), "P")
    mask.putpalette([(i * 37) % 256 for i in range(768)])
    plain = io.BytesIO()
    mask.save(plain, "PNG")
    data = plain.getvalue()
    body = b"Comment\0hello"
    (src / "crc.png").write_bytes(data[:33] + struct.pack(">I", len(body)) + b"tEXt" + body + b"\0\0\0\0" + data[33:])
    xmp = b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(b"<x:xmpmeta/>" + b" " * (2 << 20))
    (src / "xmp.png").write_bytes(data[:33] + struct.pack(">I", len(xmp)) + b"iTXt" + xmp
                                  + struct.pack(">I", zlib.crc32(b"iTXt" + xmp)) + data[33:])
    (src / "mask.png").write_bytes(data)
    result = cli("run", src, out, "--workers", 1, "--copy-other", code=1)
    recs = {r["input"]: r for r in records(out / "noiseaug-manifest.jsonl")[1]}
    assert recs["mask.png"]["kind"] == "label" and recs["mask.png"]["status"] == "ok"
    for name in ("crc.png", "xmp.png"):
        assert recs[name]["status"] == "error" and recs[name]["error"].startswith("cannot decode its header (")
        assert not (out / name).exists() and f"{name}: cannot decode its header" in result.stderr


def test_an_rgb_jpeg_named_by_its_component_ids_and_a_multi_picture_jpeg_are_refused(cli, dirs):
    """libjpeg decodes a JPEG without JFIF or Adobe marker whose components are named R, G, B as RGB; a JPEG
    with an MPF segment (MPO) may hold more pictures than the first. Neither can be written back as it is."""
    import imagecodecs

    src, out = dirs
    rgb = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = imagecodecs.jpeg8_encode(rgb, level=95, colorspace="RGB", outcolorspace="RGB")  # ids R, G, B
    adobe = data.find(b"\xff\xee")
    assert adobe > 0 and b"JFIF" not in data
    after = adobe + 2 + int.from_bytes(data[adobe + 2:adobe + 4], "big")
    (src / "rgb_ids.jpg").write_bytes(data[:adobe] + data[after:])  # the Adobe marker cut out
    Image.fromarray(rgb).save(src / "pair.jpg", "MPO", save_all=True, append_images=[Image.fromarray(rgb[::-1])])
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "rgb_ids.jpg: not supported: JPEG stored as RGB (components named R, G, B)" in result.stderr
    assert "pair.jpg: not supported: JPEG holding 2 pictures (MPO" in result.stderr
    assert not (out / "rgb_ids.jpg").exists() and not (out / "pair.jpg").exists()


def test_a_jpeg_with_an_mpf_segment_keeps_its_own_colour_profile(cli, dirs):
    """OpenCV took a JPEG's MPF segment (multi-picture index) for a colour profile and embedded it, alone or
    glued to the real one: a corrupt profile in an ok output. The profile is the ICC_PROFILE segments' now."""
    import struct

    from PIL import ImageCms

    src, out = dirs
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "MPO", save_all=True, append_images=[Image.fromarray(rgb[::-1])],
                              quality=95, subsampling=0, progressive=True, icc_profile=icc)
    data = bytearray(buffer.getvalue())
    count = data.find(struct.pack("<H", 0xB001) if data[data.find(b"MPF\0") + 4] == ord("I")
                      else struct.pack(">H", 0xB001))
    data[count + 8:count + 12] = (1).to_bytes(4, "little" if data[data.find(b"MPF\0") + 4] == ord("I") else "big")
    (src / "one.jpg").write_bytes(bytes(data[:data.find(b"\xff\xd9\xff\xd8") + 2]))  # one picture, one entry
    with Image.open(src / "one.jpg") as im:
        assert getattr(im, "n_frames", 1) == 1 and im.info["icc_profile"] == icc and "mp" in im.info
    cli("run", src, out, "--workers", 1)
    rec = records(out / "noiseaug-manifest.jsonl")[1][0]
    assert rec["status"] == "ok" and rec["subsampling"] == "4:4:4"
    with Image.open(out / "one.jpg") as im:
        assert im.info.get("progressive") and im.info.get("icc_profile") == icc


def test_a_jpeg_whose_colour_profile_opencv_cannot_write_says_so(cli, dirs):
    """A profile over 64 KB (several APP2 segments, as large LUT profiles are) failed as "OpenCV cannot write
    uint8 (16, 16, 3) as JPEG", blaming the pixels; and a profile OpenCV refused was silently dropped."""
    import struct

    src, out = dirs
    icc = bytearray(150_000)
    icc[0:4], icc[36:40] = struct.pack(">I", len(icc)), b"acsp"
    rgb = np.random.default_rng(9).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "big.jpg", quality=95, icc_profile=bytes(icc))
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "big.jpg: not supported: a colour profile of 150000 bytes, which OpenCV cannot write into a JPEG " \
           "(one JPEG segment holds 65,519 bytes)" in result.stderr and not (out / "big.jpg").exists()


def test_lossless_and_12_bit_jpegs_are_refused(cli, dirs):
    import imagecodecs

    src, out = dirs
    gray = np.random.default_rng(7).integers(0, 256, (16, 16), dtype=np.uint8)
    (src / "lossless.jpg").write_bytes(imagecodecs.ljpeg_encode(gray))
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "lossless.jpg: not supported: lossless JPEG" in result.stderr


def test_an_8_bit_bmp_is_gray_through_the_gray_ramp_and_a_label_map_through_any_other_table(cli, dirs):
    """BMP stores grayscale through a colour table: the identity gray ramp (what cv2.imwrite and Pillow write
    for one channel) is a grayscale picture, noised and written back as 8 bits; another table is a label map."""
    import cv2

    src, out = dirs
    (src / "gray_cv.bmp").write_bytes(cv2.imencode(".bmp", np.full((40, 50), 128, np.uint8))[1].tobytes())
    Image.fromarray(np.full((40, 50), 128, np.uint8), "L").save(src / "gray_pil.bmp")
    mask = Image.fromarray(np.eye(9, dtype=np.uint8) * 3, "P")
    mask.putpalette([255 - v for v in range(256) for _ in range(3)])  # gray, but not the ramp: labels
    mask.save(src / "m.bmp")
    result = cli("run", src, out, "--workers", 1, "--copy-other", "--json")
    assert json.loads(result.stdout)["files"]["label"]["ok"] == 1
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert {r["input"]: (r["kind"], r.get("channels")) for r in recs} == {
        "gray_cv.bmp": ("image", 1), "gray_pil.bmp": ("image", 1), "m.bmp": ("label", None)}
    for name in ("gray_cv.bmp", "gray_pil.bmp"):
        data = (out / name).read_bytes()
        assert int.from_bytes(data[28:30], "little") == 8  # still 8 bits a pixel
        with Image.open(out / name) as im:
            assert im.mode == "L"
            residual = np.asarray(im, np.float64) - 128
        assert abs(residual.std() - 10) < 0.5 and abs(residual.mean()) < 0.5
    assert (out / "m.bmp").read_bytes() == (src / "m.bmp").read_bytes()


def test_a_32_bit_bmp_without_an_alpha_mask_is_refused(cli, dirs):
    """Pillow writes RGBA as 32-bit BI_RGB, whose fourth byte OpenCV drops: a 24-bit output would be a silently
    different file; with an alpha mask (as OpenCV writes 4 channels) the fourth byte is alpha, kept."""
    src, out = dirs
    rgba = np.random.default_rng(3).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(src / "bi_rgb32.bmp")
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "bi_rgb32.bmp: not supported: 32-bit BMP without an alpha mask" in result.stderr
    assert not (out / "bi_rgb32.bmp").exists()


def test_preview_of_a_gray_alpha_png(cli, dirs, tmp_path):
    src, _ = dirs
    Image.fromarray(np.full((30, 30, 2), 128, np.uint8), "LA").save(src / "la.png")
    cli("preview", src / "la.png", "-o", tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_a_logluv_tiff_is_refused_with_its_reason(cli, dirs):
    import cv2

    src, out = dirs
    rgb = np.random.default_rng(8).random((16, 16, 3), dtype=np.float32)
    (src / "log.tif").write_bytes(cv2.imencode(".tif", rgb, [cv2.IMWRITE_TIFF_COMPRESSION, 34676])[1].tobytes())
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "not supported: LogLuv (SGILOG) TIFF" in result.stderr


def test_dry_run_knows_a_label_map_is_left_alone(cli, dirs):
    src, out = dirs
    Image.fromarray((np.arange(400).reshape(20, 20) % 3).astype(np.uint8), "P").save(src / "mask.png")
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(src / "photo.png")
    result = cli("run", src, out, "--dry-run", "-v", "--json")
    assert "label map, would be left alone: mask.png" in result.stderr
    assert "would process: photo.png" in result.stderr
    plan = json.loads(result.stdout)
    assert plan["plan"]["image"]["process"] == 1 and plan["not_taken"]["labels"] == 1


def test_a_tiff_the_reader_chokes_on_says_so_in_the_files_terms(cli, dirs, monkeypatch):
    """A malformed TIFF can make tifffile raise Python's own errors (a tuple compared with an int): the record
    says the file is malformed, not what Python said."""
    import noiseaug
    from noiseaug import image_tiff

    src, out = dirs
    tifffile.imwrite(src / "bent.tif", np.zeros((8, 8), np.uint8))

    def choke(*args, **kwargs):
        raise TypeError("'>' not supported between instances of 'tuple' and 'int'")

    monkeypatch.setattr(image_tiff.tifffile, "TiffFile", choke)
    summary = noiseaug.run(src, out, workers=1)
    assert summary.failures == [("bent.tif", "bent.tif", "cannot decode as TIFF (malformed tags or structure)")]
