"""Same seed, same bytes, whatever the workers; every file its own stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import read_image, records, tree, write_image


@pytest.fixture
def dataset(tmp_path):
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(12):
        write_image(src / f"class{i % 3}" / f"img{i:02d}.png", rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    write_image(src / "photo.jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return src


def file_records(out):
    return [{k: v for k, v in r.items()} for r in records(out / "noiseaug-manifest.jsonl")[1]]


def test_workers_1_and_2_give_identical_bytes_and_records(cli, dataset, tmp_path):
    cli("run", dataset, tmp_path / "w1", "--workers", 1)
    cli("run", dataset, tmp_path / "w2", "--workers", 2)
    assert tree(tmp_path / "w1").keys() == tree(tmp_path / "w2").keys()
    for name, data in tree(tmp_path / "w1").items():
        if name != "noiseaug-manifest.jsonl" and not name.startswith(".noiseaug"):
            assert tree(tmp_path / "w2")[name] == data, name
    assert file_records(tmp_path / "w1") == file_records(tmp_path / "w2")
    assert len(file_records(tmp_path / "w1")) == 13


def test_same_seed_same_bytes_other_seed_other_bytes(cli, dataset, tmp_path):
    cli("run", dataset, tmp_path / "a", "--seed", 5, "--workers", 1)
    cli("run", dataset, tmp_path / "b", "--seed", 5, "--workers", 1)
    cli("run", dataset, tmp_path / "c", "--seed", 6, "--workers", 1)
    a, b, c = (tree(tmp_path / d) for d in "abc")
    name = "class0/img00.png"
    assert a[name] == b[name] and a[name] != c[name]
    assert file_records(tmp_path / "a") == file_records(tmp_path / "b")


def test_identical_files_at_two_paths_get_different_noise(cli, tmp_path):
    src = tmp_path / "in"
    pixels = np.full((50, 50, 3), 128, np.uint8)
    write_image(src / "x" / "same.png", pixels)
    write_image(src / "y" / "same.png", pixels)
    cli("run", src, tmp_path / "out", "--workers", 1)
    x = read_image(tmp_path / "out" / "x" / "same.png")
    y = read_image(tmp_path / "out" / "y" / "same.png")
    assert not np.array_equal(x, y)
    assert abs(np.corrcoef(x.ravel().astype(float), y.ravel().astype(float))[0, 1]) < 0.05


def test_copies_follow_the_name_template_and_differ(cli, tmp_path):
    src = tmp_path / "in"
    write_image(src / "sub" / "cat.png", np.full((30, 30), 100, np.uint8))
    cli("run", src, tmp_path / "d", "--copies", 3, "--workers", 1)
    names = sorted(tree(tmp_path / "d"))
    assert [n for n in names if n.endswith(".png")] == ["sub/cat_n0.png", "sub/cat_n1.png", "sub/cat_n2.png"]
    outs = [read_image(tmp_path / "d" / "sub" / f"cat_n{k}.png") for k in range(3)]
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    cli("run", src, tmp_path / "t", "--copies", 2, "--name", "aug{copy}_{stem}{ext}", "--workers", 1)
    assert {"sub/aug0_cat.png", "sub/aug1_cat.png"} <= set(tree(tmp_path / "t"))
    recs = file_records(tmp_path / "t")
    assert [(r["output"], r["copy"]) for r in recs] == [("sub/aug0_cat.png", 0), ("sub/aug1_cat.png", 1)]
    assert recs[0]["seed"] != recs[1]["seed"]


def test_sigma_range_is_drawn_per_file_and_recorded(cli, dataset, tmp_path):
    cli("run", dataset, tmp_path / "r", "--image-sigma", "2:30", "--workers", 2)
    sigmas = [r["sigma"] for r in file_records(tmp_path / "r")]
    assert all(2 <= s <= 30 for s in sigmas) and len(set(sigmas)) == len(sigmas)
    cli("run", dataset, tmp_path / "r2", "--image-sigma", "2:30", "--workers", 1)
    assert [r["sigma"] for r in file_records(tmp_path / "r2")] == sigmas


def test_listing_order_and_sharding_do_not_change_outputs(cli, dataset, tmp_path):
    cli("run", dataset, tmp_path / "full", "--workers", 1)
    full = tree(tmp_path / "full")
    seen = {}
    for i in range(3):
        cli("run", dataset, tmp_path / "sharded", "--shard", f"{i}/3", "--workers", 1)
    for name, data in tree(tmp_path / "sharded").items():
        if name.endswith((".png", ".jpg")):
            seen[name] = data
            assert full[name] == data, name
    assert len(seen) == 13


def test_small_recordings_and_images_grouped_by_a_pool_worker_come_out_as_one_at_a_time(cli, tmp_path):
    """Pool workers take small files a group at a time (read all, render all into memory, write all);
    --workers 1 takes them one at a time. Every kind of small recording (an Ogg's serials, a float WAV's
    peak, a WAVEX's mask, a clipped float's warning), images between them, a cut WAV, copies and an SNR:
    the same bytes and the same records either way."""
    import soundfile as sf

    src = tmp_path / "in"
    (src / "mix").mkdir(parents=True)
    rng = np.random.default_rng(3)
    tone = 0.4 * np.sin(np.arange(1600) / 7.0)[:, None] * np.ones((1, 2)) + 0.01 * rng.standard_normal((1600, 2))
    for name, fmt, subtype in [("a16.wav", "WAV", "PCM_16"), ("b24.wav", "WAV", "PCM_24"),
                               ("cu8.wav", "WAV", "PCM_U8"), ("dfl.flac", "FLAC", "PCM_16"),
                               ("eogg.ogg", "OGG", "VORBIS"), ("frf.rf64", "RF64", "FLOAT"),
                               ("gai.aiff", "AIFF", "PCM_16"), ("hx.wav", "WAVEX", "PCM_16"),
                               ("iw64.w64", "W64", "PCM_16"), ("jau.au", "AU", "FLOAT")]:
        sf.write(src / "mix" / name, tone, 8000, format=fmt, subtype=subtype)
        write_image(src / "mix" / f"{name}.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    sf.write(src / "mix" / "kloud.wav", tone * 3, 8000, subtype="FLOAT")  # beyond full scale: a warning
    cut = (src / "mix" / "a16.wav").read_bytes()
    (src / "mix" / "lcut.wav").write_bytes(cut[:len(cut) // 2])
    made = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cli("run", src, out, "--workers", workers, "--copies", 2, "--audio-snr-db", "10:30", code=1)
        made[workers] = tree(out)
        lines = (out / "noiseaug-manifest.jsonl").read_text(encoding="utf-8").splitlines()[1:]
        made[workers]["records"] = "\n".join(lines).encode()
    assert made[1].keys() == made[2].keys()
    for name in made[1]:
        if not name.startswith(".noiseaug") and name != "noiseaug-manifest.jsonl":
            assert made[1][name] == made[2][name], name
    recs = [json.loads(line) for line in made[2]["records"].decode().splitlines()]
    assert len(recs) == 2 * 22 and sum(r["status"] == "error" for r in recs) == 2  # the cut WAV's two copies
    assert sum("warning" in r for r in recs) == 2 and all(r["status"] == "ok" for r in recs
                                                          if not r["input"].endswith("lcut.wav"))


def test_a_large_image_decoded_again_for_each_copy_gives_the_bytes_a_copy_of_its_pixels_gives(tmp_path,
                                                                                              monkeypatch):
    """With several copies, a large image whose compressed bytes are smaller than its pixels is decoded
    again for each copy instead of keeping its pixels beside the noisy copy (the worker's peak stays near
    one image: 484 -> 314 MB for three copies of a 100-MP gray PNG). The outputs must not change."""
    import noiseaug
    from noiseaug import render

    src = tmp_path / "in"
    write_image(src / "flat.png", np.full((4200, 4200), 90, np.uint8))  # 17.6 MB of pixels, a few KB on disk
    assert (src / "flat.png").stat().st_size < 4200 * 4200 > render.REDECODE
    noiseaug.run(src, tmp_path / "again", workers=1, copies=3)
    monkeypatch.setattr(render, "REDECODE", 1 << 40)
    noiseaug.run(src, tmp_path / "kept", workers=1, copies=3)
    for name in ("flat_n0.png", "flat_n1.png", "flat_n2.png"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "kept" / name).read_bytes(), name
    assert records(tmp_path / "again" / "noiseaug-manifest.jsonl")[1] == \
        records(tmp_path / "kept" / "noiseaug-manifest.jsonl")[1]
