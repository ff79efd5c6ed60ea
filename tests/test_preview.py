"""Preview pictures and contact sheets: geometry, labels, and that they show the real noise."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from noiseaug.preview import preview, residual_display

from conftest import read_image, records, write_image


def photo(height: int, width: int, dtype=np.uint8, channels: int = 3) -> np.ndarray:
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:height, 0:width]
    base = (0.2 + 0.6 * (x / width) * (y / height)) * top
    planes = [base * (0.7 + 0.1 * c) for c in range(channels)]
    if channels == 4:
        planes[3] = np.where(x < width // 2, top, top // 3)
    return np.stack(planes, axis=-1).astype(dtype).squeeze()


@pytest.mark.parametrize("name,pixels", [
    ("rgb.png", photo(200, 500)),
    ("deep.png", photo(150, 180, np.uint16)),
    ("rgba.png", photo(400, 400, channels=4)),
    ("gray.png", photo(100, 90, channels=1)),
])
def test_image_preview_geometry_labels_and_residual(cli, tmp_path, name, pixels):
    src = tmp_path / "in"
    write_image(src / name, pixels)
    picture = tmp_path / "p.png"
    result = cli("preview", src / name, "-o", picture, "--image-sigma", "5,10,25")
    assert str(picture) in result.stderr
    layout = preview(src / name, tmp_path / "again.png", image_sigma="5,10,25")
    shown = read_image(picture)
    assert shown.shape == (layout.height, layout.width, 3)
    assert [p.name for p in layout.panels] == ["original", "noisy", "residual"] * 3
    labels = [p.label for p in layout.panels if p.name == "noisy"]
    assert [lab.split()[1] for lab in labels] == ["sigma=5", "sigma=10", "sigma=25"]
    assert all("clipped" in lab for lab in labels)
    for panel in layout.panels:  # every panel lies inside the picture, with its label above it
        x, y, w, h = panel.box
        assert 0 <= x and x + w <= layout.width and y + h <= layout.height and y >= 40
        strip = shown[y - 40:y - 4, x:x + w]
        assert (strip < 128).any()  # some ink was drawn there

    # the residual panel is the real residual of what `run` writes (same seed scheme)
    cli("run", src, tmp_path / "out", "--image-sigma", 10, "--workers", 1)
    noisy = read_image(tmp_path / "out" / name)
    residual = [p for p in layout.panels if p.name == "residual"][1]
    x, y, w, h = residual.box
    ch = min(320, pixels.shape[0])
    cw = min(320, pixels.shape[1])
    top, left = (pixels.shape[0] - ch) // 2, (pixels.shape[1] - cw) // 2
    expected, _ = residual_display(pixels[top:top + ch, left:left + cw], noisy[top:top + ch, left:left + cw], 10)
    factor = w // cw
    assert factor >= 1 and h == ch * factor
    assert np.array_equal(shown[y:y + h:factor, x:x + w:factor], expected)
    assert 100 < expected.mean() < 155 and expected.std() > 20  # centred, visible


def tone_file(path, seconds: float, channels: int, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.4 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([signal] * channels, axis=1), rate, subtype="PCM_16")


@pytest.mark.parametrize("channels", [1, 2])
def test_audio_preview_shows_waveforms_spectrograms_and_measured_snr(cli, tmp_path, channels):
    path = tmp_path / "tone.wav"
    tone_file(path, 2.0, channels)
    picture = tmp_path / "a.png"
    cli("preview", path, "-o", picture, "--audio-snr-db", "20,5")
    layout = preview(path, tmp_path / "b.png", audio_snr_db="20,5")
    shown = read_image(picture)
    assert shown.shape == (layout.height, layout.width, 3)
    assert [p.name for p in layout.panels] == ["original-waveform", "original-spectrogram",
                                                "noisy-waveform", "noisy-spectrogram"] * 1 + \
        ["noisy-waveform", "noisy-spectrogram"]
    assert layout.snr_db == pytest.approx([20, 5], abs=0.3)
    assert "measured SNR 20." in layout.panels[2].label or "measured SNR 19.9" in layout.panels[2].label
    original, noisy = (layout.panels[i].box for i in (1, 3))
    quiet = shown[original[1]:original[1] + original[3], original[0]:original[0] + original[2]].mean()
    loud = shown[noisy[1]:noisy[1] + noisy[3], noisy[0]:noisy[0] + noisy[2]].mean()
    assert loud > quiet + 20  # the noise floor lights up the noisy spectrogram


def test_long_recording_preview_streams(tmp_path):
    """Memory does not grow with the length of the recording."""
    rate = 48000
    block = (0.1 * np.sin(np.arange(rate * 10) * 0.05)).astype(np.float32)
    peaks = {}
    for minutes in (1, 8):
        path = tmp_path / f"long{minutes}.wav"
        with sf.SoundFile(path, "w", rate, 2, "PCM_16") as f:
            for _ in range(minutes * 6):
                f.write(np.stack([block, block], axis=1))
        tracemalloc.start()
        layout = preview(path, tmp_path / "long.png", audio_sigma="0.01")
        peaks[minutes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rms = np.sqrt(np.mean(block.astype(np.float64) ** 2))
        assert layout.snr_db[0] == pytest.approx(20 * np.log10(rms / 0.01), abs=0.2)
    whole = rate * 60 * 8 * 2 * 8  # a float64 copy of the 8-minute recording
    assert peaks[8] < 1.2 * peaks[1] and peaks[8] < whole / 5, peaks


def test_run_preview_writes_a_contact_sheet(cli, tmp_path):
    src = tmp_path / "in"
    for i in range(5):
        write_image(src / f"img{i}.png", photo(60 + 10 * i, 80))
    tone_file(src / "tone.wav", 0.5, 1)
    result = cli("run", src, tmp_path / "out", "--preview", 4, "--workers", 1, "--json")
    sheet = read_image(tmp_path / "out" / "noiseaug-preview.png")
    assert sheet.ndim == 3 and sheet.shape[0] > 200 and sheet.shape[1] > 400
    assert "noiseaug-preview.png" in result.stderr and json.loads(result.stdout)["ok"] == 6


def test_no_input_takes_the_preview_pictures_name(cli, tmp_path):
    """--preview draws OUTPUT/noiseaug-preview.png: an input of that name at INPUT's top gets an error record,
    with or without --preview (so that a later --preview overwrites nothing the manifest vouches for)."""
    src, out = tmp_path / "in", tmp_path / "out"
    for rel in ["noiseaug-preview.png", "sub/noiseaug-preview.png", "a.png"]:
        write_image(src / rel, photo(40, 50))
    result = cli("run", src, out, "--workers", 1, "--json", "-q", code=1)
    assert json.loads(result.stdout)["failed"] == 1
    assert result.stderr.startswith("noiseaug: failed: noiseaug-preview.png: output noiseaug-preview.png is already "
                                    "taken")  # said as it happens, -q or not, as any failure is
    result = cli("run", src, out, "--workers", 1, "--preview", 2, code=1)
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert {r["input"]: r["status"] for r in recs} == {"a.png": "ok", "noiseaug-preview.png": "error",
                                                       "sub/noiseaug-preview.png": "ok"}
    assert "already taken by another input or by noiseaug's own files" in result.stderr
    assert read_image(out / "noiseaug-preview.png").shape[1] > 2 * 50  # the picture, not a noisy copy
    cli("verify", out / "noiseaug-manifest.jsonl", code=1)  # the failed file is listed; every ok output holds


def test_preview_of_a_file_whose_name_is_not_utf8_draws_its_escaped_name(tmp_path):
    """OpenCV's putText crashed the process (SIGSEGV) on a name that is not UTF-8; in a subprocess here, so
    that a crash fails this test and not the whole session."""
    import os
    import subprocess
    import sys

    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    write_image(Path(os.fsdecode(name)), photo(12, 12))
    done = subprocess.run([sys.executable, "-m", "noiseaug", "preview", name, "-o", tmp_path / "p.png"],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert cv2.imread(str(tmp_path / "p.png")) is not None


def test_preview_of_a_recording_with_a_nan_is_one_line_and_a_gsm_one_is_drawn(cli, tmp_path):
    """A NaN drew a garbage picture after numpy's warnings (a run refuses the file); a GSM 6.10 recording,
    which cannot seek, ended in a traceback."""
    signal = (0.3 * np.sin(np.arange(8000) / 10)).astype(np.float32)
    sf.write(tmp_path / "gsm.wav", signal, 8000, "GSM610")
    signal[5] = np.nan
    sf.write(tmp_path / "nan.wav", signal, 8000, "FLOAT")
    result = cli("preview", tmp_path / "nan.wav", "-o", tmp_path / "nan.png", code=1)
    assert result.stderr.strip() == "noiseaug: error: nan.wav: float samples that are not finite (NaN or infinity)"
    assert not (tmp_path / "nan.png").exists()
    cli("preview", tmp_path / "gsm.wav", "-o", tmp_path / "gsm.png")
    assert cv2.imread(str(tmp_path / "gsm.png")) is not None


def test_preview_refuses_what_it_cannot_show(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert "not an image" in cli("preview", tmp_path / "notes.txt", "-o", tmp_path / "p.png", code=2).stderr
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert "cannot decode" in cli("preview", tmp_path / "bad.png", "-o", tmp_path / "p.png", code=1).stderr
    write_image(tmp_path / "ok.png", photo(10, 10))
    cli("preview", tmp_path / "ok.png", "-o", tmp_path / "p.png", "--image-sigma", "-3", code=2)
    assert cv2.imread(str(tmp_path / "p.png")) is None
    nowhere = cli("preview", tmp_path / "ok.png", "-o", tmp_path / "no" / "p.png", code=2).stderr
    assert nowhere.strip().endswith("no does not exist") and len(nowhere.splitlines()) == 1


@pytest.mark.parametrize("rel", ["p.png", "sub/deeper/p.png"])
def test_the_noisy_panel_is_what_run_writes(cli, tmp_path, rel):
    """The preview's noisy image is the run's output, pixel for pixel (same renderer, same seed): a file below
    INPUT's top is seeded by its path from INPUT (--root), as run seeds it; it was seeded by its name alone."""
    import noiseaug
    from noiseaug import preview as pv

    src = tmp_path / "in"
    pixels = np.random.default_rng(4).integers(40, 220, (48, 56, 3), dtype=np.uint8)
    write_image(src / rel, pixels)
    noiseaug.run(src, tmp_path / "out", workers=1, image_sigma=9, seed=3)
    expected = pv._zoom(pv._to_display(read_image(tmp_path / "out" / rel)))[0]
    layout = pv.preview(src / rel, tmp_path / "pre.png", image_sigma="9", seed=3, root=src)
    cli("preview", src / rel, "-o", tmp_path / "cli.png", "--image-sigma", 9, "--seed", 3, "--root", src)
    guessed = pv.preview(src / rel, tmp_path / "guessed.png", image_sigma="9", seed=3)  # as if at INPUT's top
    x, y, w, h = next(p for p in layout.panels if p.name == "noisy").box
    for picture in ("pre.png", "cli.png"):
        assert np.array_equal(read_image(tmp_path / picture)[y:y + h, x:x + w], expected)
    assert np.array_equal(read_image(tmp_path / "guessed.png"), read_image(tmp_path / "pre.png")) == ("/" not in rel)
    assert layout.clipped == guessed.clipped or "/" in rel
    with pytest.raises(noiseaug.UsageError, match="is not under --root"):
        pv.preview(src / rel, tmp_path / "x.png", root=tmp_path / "out")
    (tmp_path / "linked").symlink_to(src)  # INPUT named through a link: the same folder
    pv.preview(src / rel, tmp_path / "linked.png", image_sigma="9", seed=3, root=tmp_path / "linked")
    assert np.array_equal(read_image(tmp_path / "linked.png"), read_image(tmp_path / "pre.png"))
    (src / "link.png").symlink_to(src / rel)  # run does not follow links: nor does preview, in one line
    said = cli("preview", src / "link.png", "-o", tmp_path / "l.png", code=2).stderr
    assert said.strip().endswith("is a symbolic link, which run does not follow: give the file it names")


def test_a_preview_shows_a_label_map_left_alone_and_never_writes_over_its_input(cli, tmp_path):
    """run leaves palette and 1-bit images alone (label maps): the preview drew them noised. And ``-o FILE``
    replaced the input with the picture."""
    from PIL import Image

    from noiseaug import preview as pv

    classes = (np.indices((40, 60)).sum(axis=0) // 7 % 4).astype(np.uint8)
    mask = Image.fromarray(classes, "P")
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    mask.save(tmp_path / "mask.png")
    Image.fromarray(classes % 2 * 255).convert("1").save(tmp_path / "bits.tif")
    for name in ("mask.png", "bits.tif"):
        layout = pv.preview(tmp_path / name, tmp_path / "pre.png", image_sigma="20")
        panels = {p.name: p for p in layout.panels}
        assert "label map: left alone" in panels["noisy"].label and layout.clipped == [0.0]
        shown = read_image(tmp_path / "pre.png")
        crops = [shown[b[1]:b[1] + b[3], b[0]:b[0] + b[2]] for b in (panels[k].box for k in ("original", "noisy"))]
        assert np.array_equal(*crops) and len(np.unique(crops[0].reshape(-1, 3), axis=0)) == (4 if "png" in name else 2)
    noised = pv.preview(tmp_path / "mask.png", tmp_path / "pre.png", image_sigma="20", palette_images="noise")
    assert noised.clipped[0] > 0 and "sigma=20" in next(p.label for p in noised.panels if p.name == "noisy")
    before = (tmp_path / "mask.png").read_bytes()
    said = cli("preview", tmp_path / "mask.png", "-o", tmp_path / "." / "mask.png", code=2).stderr
    assert said.strip().endswith("a preview never writes over its input") and len(said.splitlines()) == 1
    assert (tmp_path / "mask.png").read_bytes() == before


@pytest.mark.parametrize("rel", ["t.flac", "voices/t.flac"])
def test_the_audio_preview_measures_what_run_writes(tmp_path, rel):
    import noiseaug
    from noiseaug import preview as pv

    src = tmp_path / "in"
    (src / rel).parent.mkdir(parents=True)
    t = np.arange(16000) / 16000
    sf.write(src / rel, (0.3 * np.sin(2 * np.pi * 440 * t)), 16000, subtype="PCM_16")
    noiseaug.run(src, tmp_path / "out", workers=1, audio_snr_db=12, seed=5)
    layout = pv.preview(src / rel, tmp_path / "pre.png", audio_snr_db="12", seed=5, root=src)
    x = sf.read(src / rel, dtype="float64")[0]
    y = sf.read(tmp_path / "out" / rel, dtype="float64")[0]
    measured = 10 * np.log10(np.sum(x**2) / np.sum((y - x) ** 2))
    assert layout.snr_db[0] == pytest.approx(measured, abs=1e-9)


def test_a_range_is_drawn_as_run_draws_it(tmp_path):
    """preview refused --image-sigma 4:12, which run takes: each row now draws from the file's own stream."""
    import json

    import noiseaug
    from noiseaug import preview as pv

    src = tmp_path / "in"
    write_image(src / "d/p.png", np.random.default_rng(4).integers(40, 220, (40, 40, 3), dtype=np.uint8))
    sf.write(src / "t.wav", 0.3 * np.sin(np.arange(8000) / 5), 8000, subtype="PCM_16")
    noiseaug.run(src, tmp_path / "out", workers=1, image_sigma="4:12", audio_snr_db="10:20", seed=3)
    recs = {r["input"]: r for r in map(json.loads, (tmp_path / "out" / "noiseaug-manifest.jsonl").read_text()
                                       .splitlines()[1:])}
    layout = pv.preview(src / "d/p.png", tmp_path / "pre.png", image_sigma="4:12", seed=3, root=src)
    noisy = next(p for p in layout.panels if p.name == "noisy")
    assert noisy.label.startswith(f"noisy  sigma={recs['d/p.png']['sigma']:g} (drawn from 4:12)")
    x, y, w, h = noisy.box
    expected = pv._zoom(pv._to_display(read_image(tmp_path / "out" / "d/p.png")))[0]
    assert np.array_equal(read_image(tmp_path / "pre.png")[y:y + h, x:x + w], expected)
    heard = pv.preview(src / "t.wav", tmp_path / "pre.png", audio_snr_db="10:20", seed=3, root=src)
    assert f"target SNR {recs['t.wav']['snr_db']:g} dB (drawn from 10:20)" in heard.panels[-1].label
