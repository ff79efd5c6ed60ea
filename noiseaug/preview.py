"""Pictures of what a setting does: previews of one file, contact sheets of a run.

Drawn with OpenCV and numpy only. Image previews show, per σ, a 1:1 crop of
the original, the noisy version and the residual amplified so that ±3σ spans
the whole gray range: noise is seen at the scale it is added, not averaged
away by downscaling. Audio previews show the waveform envelope and a
log-frequency spectrogram of the original and of each noisy version, both
computed in one streaming pass, so long recordings need no more memory than
short ones. The noise is the one ``noiseaug run`` would add to the file, seeded
by its path relative to ``root`` (INPUT; by default the file's own folder), copy
0; a label map ``run`` leaves alone is shown left alone.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from . import audio_io, image_io, seeding
from .config import MAX_PIXELS, MAX_SNR_DB, SigmaSpec, make_config
from .discover import kind_of
from .errors import DecodeError, UsageError
from .noise import IMAGE_FULL_SCALE, numpy_defaults
from .records import Job
from .render import draw_sigma, noise_image, render
from .report import printable
from .storage import LocalStorage
from .storage.local import atomic_write, open_input, read_input

BACKGROUND = (250, 250, 250)
INK = (30, 30, 30)
FONT = cv2.FONT_HERSHEY_SIMPLEX
CROP = 320  # image panels: up to this many source pixels shown at 1:1
LABEL_H = 44
PAD = 12
PLOT_W, WAVE_H, SPEC_H = 880, 130, 210
NFFT = 2048


@dataclass
class Panel:
    """Where a panel sits in the picture, and what its label says."""

    name: str  # "original", "noisy", "residual", "waveform", "spectrogram", "input", "output"
    label: str
    box: tuple[int, int, int, int]  # x, y, width, height of the picture area (below its label)
    row: int = 0


@dataclass
class Layout:
    """The picture's panels, for tests and for anyone scripting previews."""

    width: int = 0
    height: int = 0
    title: str = ""
    panels: list[Panel] = field(default_factory=list)
    snr_db: list[float] = field(default_factory=list)
    clipped: list[float] = field(default_factory=list)


def parse_values(text: str | float | Sequence[float], what: str, signed: bool = False) -> list[SigmaSpec]:
    """'5,10,25' (or one number) as a list of values, each a number or a range A:B (drawn per file, as run
    draws it): non-negative (σ), or any finite ones (``signed``: an SNR in dB, within run's bounds)."""
    items = [text] if isinstance(text, (int, float)) else (
        str(text).split(",") if isinstance(text, str) else list(text))
    specs = [SigmaSpec.parse(v if isinstance(v, (int, float)) else str(v).strip(), what)
             for v in items if str(v).strip()]
    if not specs:
        raise UsageError(f"{what} takes values separated by commas, not {text!r}")
    for spec in specs:
        if signed and max(abs(spec.low), abs(spec.high)) > MAX_SNR_DB:
            raise UsageError(f"{what} takes values within ±{MAX_SNR_DB:g}, not {text!r}")
        if not signed and spec.low < 0:
            raise UsageError(f"{what} takes non-negative values, not {text!r}")
    return specs


def preview(path: str | os.PathLike, output: str | os.PathLike, *, image_sigma: Any = 10,
            audio_sigma: Any = None, audio_snr_db: Any = None, seed: int = 0,
            channel_noise: str = "per-channel", max_pixels: int = MAX_PIXELS,
            root: str | os.PathLike | None = None, palette_images: str = "labels") -> Layout:
    """Draw a preview picture of ``path`` with the given noise settings into ``output`` (PNG).

    ``root`` is the INPUT folder ``run`` would be given: the file is seeded by its path relative to it, as
    ``run`` seeds it (by default, the file's own folder: as if it sat at INPUT's top)."""
    src = os.fspath(path)
    kind = kind_of(os.path.basename(src))
    if os.path.islink(src):
        raise UsageError(f"{src} is a symbolic link, which run does not follow: give the file it names")
    if not os.path.isfile(src):
        raise UsageError(f"{src} is not a file")
    if os.path.exists(output) and os.path.samefile(output, src):
        raise UsageError(f"-o {os.fspath(output)} is FILE itself: a preview never writes over its input")
    if palette_images not in ("labels", "noise"):
        raise UsageError(f"--palette-images takes labels or noise, not {palette_images!r}")
    top, rel = _seeded_as(src, root)
    with numpy_defaults():  # as a run's worker renders: whatever np.seterr the caller set
        picture, layout = _drawn_picture(src, kind, top, rel, image_sigma, audio_sigma, audio_snr_db, seed,
                                         channel_noise == "shared", image_io.ReadOptions(max_pixels, palette_images))
    _save(picture, output)
    return layout


def _drawn_picture(src: str, kind: str, top: str, rel: str, image_sigma: Any, audio_sigma: Any, audio_snr_db: Any,
                   seed: int, shared: bool, options: image_io.ReadOptions) -> tuple[np.ndarray, Layout]:
    if kind == "image":
        layout, picture = _image_preview(src, rel, parse_values(image_sigma, "--image-sigma"), seed, shared, options)
    elif kind == "audio":
        if audio_sigma is not None and audio_snr_db is not None:
            raise UsageError("--audio-sigma and --audio-snr-db exclude each other: give one")
        snr = audio_snr_db is not None
        values = parse_values(audio_snr_db if snr else (audio_sigma if audio_sigma is not None else 0.01),
                              "--audio-snr-db" if snr else "--audio-sigma", signed=snr)
        layout, picture = _audio_preview(top, rel, values, snr, seed)
    else:
        raise UsageError(f"{src}: not an image or a recording noiseaug knows (see the supported extensions)")
    return picture, layout


def _seeded_as(src: str, root: str | os.PathLike | None) -> tuple[str, str]:
    """(INPUT's folder, the file's path relative to it with forward slashes): what ``run`` seeds it by."""
    top = os.path.realpath(root if root is not None else os.path.dirname(os.path.abspath(src)))
    if not os.path.isdir(top):
        raise UsageError(f"--root {os.fspath(root or top)} is not a folder")
    rel = os.path.relpath(os.path.realpath(src), top)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise UsageError(f"{src} is not under --root {os.fspath(root or top)}")
    return top, rel.replace(os.sep, "/")


def _drawn(spec: SigmaSpec) -> str:
    """How a label says a value was drawn from a range (nothing for a plain value)."""
    return f" (drawn from {spec})" if spec.is_range else ""


def _save(picture: np.ndarray, output: str | os.PathLike) -> None:
    ok, data = cv2.imencode(".png", picture)
    if not ok:
        raise UsageError(f"cannot encode the preview as PNG ({picture.shape})")
    atomic_write(os.path.abspath(os.fspath(output)), data)


# ---- drawing helpers -------------------------------------------------------------------------


def _text(canvas: np.ndarray, text: str, x: int, y: int, width: int, scale: float = 0.55) -> None:
    """Write one line, shrunk until it fits ``width`` (never clipped). OpenCV's fonts draw ASCII only, and a
    name that is not UTF-8 crashed it: anything else is written as its escape."""
    text = printable(text).encode("ascii", "backslashreplace").decode("ascii")
    while scale > 0.3 and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        scale -= 0.05
    while cv2.getTextSize(text, FONT, scale, 1)[0][0] > width and len(text) > 4:
        text = text[:-4] + "..."
    cv2.putText(canvas, text, (x, y), FONT, scale, INK, 1, cv2.LINE_AA)


def _canvas(width: int, height: int) -> np.ndarray:
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    return canvas


def _to_display(pixels: np.ndarray) -> np.ndarray:
    """Any decoded image as 8-bit BGR; alpha composited over a checkerboard."""
    if pixels.dtype == np.uint16:
        view = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype.kind == "f":
        view = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        view = pixels
    if view.ndim == 2:
        return cv2.cvtColor(view, cv2.COLOR_GRAY2BGR)
    if view.shape[2] == 2:  # gray+alpha
        view = np.dstack([view[..., 0], view[..., 0], view[..., 0], view[..., 1]])
    if view.shape[2] == 4:
        rows, cols = np.indices(view.shape[:2])
        checker = np.where(((rows // 8) + (cols // 8)) % 2 == 0, 200, 255).astype(np.float32)[..., None]
        alpha = view[..., 3:4].astype(np.float32) / 255.0
        return (view[..., :3] * alpha + checker * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(view[..., :3])


def _zoom(view: np.ndarray) -> tuple[np.ndarray, int]:
    """Enlarge small crops by a whole factor (nearest neighbour keeps each pixel visible)."""
    factor = max(1, min(4, CROP // max(view.shape[:2])))
    if factor > 1:
        view = cv2.resize(view, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    return view, factor


# ---- images ----------------------------------------------------------------------------------


def _image_preview(src: str, rel: str, sigmas: list[SigmaSpec], seed: int, shared: bool,
                   options: image_io.ReadOptions) -> tuple[Layout, np.ndarray]:
    data = read_input(src)
    name = os.path.basename(src)
    fmt = image_io.format_of(name)
    label_map = image_io.probe(data, name, fmt, options).label  # one run leaves alone is shown so
    if label_map:
        pixels, colour, limits = image_io.label_view(data, name, fmt), 3, None
    else:
        decoded = image_io.decode(data, name, fmt, options)
        pixels, colour, limits = decoded.pages[0], decoded.colours[0], decoded.limits
    height, width = pixels.shape[:2]
    top, left = max(0, (height - CROP) // 2), max(0, (width - CROP) // 2)
    crop = np.ascontiguousarray(pixels[top:top + CROP, left:left + CROP])
    shown, factor = _zoom(_to_display(crop))
    ph, pw = shown.shape[:2]
    columns, rows = 3, len(sigmas)
    layout = Layout(width=PAD + columns * (pw + PAD), title=f"{name}: {width}x{height} {pixels.dtype}, "
                    f"{pixels.shape[2] if pixels.ndim == 3 else 1} channel(s); "
                    f"crop {crop.shape[1]}x{crop.shape[0]} at ({left}, {top})"
                    + (f", shown x{factor}" if factor > 1 else ""))
    title_h = 40
    layout.width = max(layout.width, 640)
    layout.height = title_h + rows * (LABEL_H + ph + PAD) + PAD
    canvas = _canvas(layout.width, layout.height)
    _text(canvas, layout.title, PAD, 26, layout.width - 2 * PAD, 0.6)
    for row, spec in enumerate(sigmas):
        rng = seeding.generator(seeding.file_seed(seed, os.fsencode(rel), 0))
        sigma = draw_sigma(spec, rng)  # as run draws it: first, from the file's own stream
        noisy = pixels.copy()
        clipped = 0.0 if label_map else noise_image(noisy, sigma, rng, shared=shared, colour=colour, limits=limits)
        layout.clipped.append(clipped)
        noisy_crop = noisy[top:top + CROP, left:left + CROP]
        residual, gain = residual_display(crop, noisy_crop, sigma)
        y = title_h + row * (LABEL_H + ph + PAD)
        panels = [("original", "original", shown),
                  ("noisy", f"{label_map} label map: left alone by run (see --palette-images)" if label_map else
                   f"noisy  sigma={sigma:g}{_drawn(spec)}  clipped {100 * clipped:.2f}%",
                   _zoom(_to_display(noisy_crop))[0]),
                  ("residual", f"residual x{gain:.2f} (+-3 sigma = black..white)", _zoom(residual)[0])]
        for col, (kind, label, picture) in enumerate(panels):
            x = PAD + col * (pw + PAD)
            _text(canvas, label, x, y + 28, pw)
            canvas[y + LABEL_H:y + LABEL_H + ph, x:x + pw] = picture
            layout.panels.append(Panel(kind, label, (x, y + LABEL_H, pw, ph), row))
    return layout, canvas


def residual_display(original: np.ndarray, noisy: np.ndarray, sigma_8bit: float) -> tuple[np.ndarray, float]:
    """The residual in 8-bit units, mapped so that ±3σ spans 0..255 around mid-gray (BGR)."""
    scale = IMAGE_FULL_SCALE[np.dtype(original.dtype)]
    colour = original if original.ndim == 2 else original[..., :3 if original.shape[2] >= 3 else 1]
    noisy_colour = noisy if noisy.ndim == 2 else noisy[..., :colour.shape[2]]
    diff = (noisy_colour.astype(np.float32) - colour.astype(np.float32)) * np.float32(255.0 / scale)
    gain = 127.5 / (3 * sigma_8bit) if sigma_8bit > 0 else 1.0
    shown = np.clip(np.rint(127.5 + diff * np.float32(gain)), 0, 255).astype(np.uint8)
    if shown.ndim == 2 or shown.shape[2] == 1:
        shown = cv2.cvtColor(shown.reshape(shown.shape[:2]), cv2.COLOR_GRAY2BGR)
    return shown, gain


# ---- audio -----------------------------------------------------------------------------------


class _Track:
    """Streaming waveform envelope and spectrogram of one (mono-mixed) signal."""

    def __init__(self, frames: int, rate: int) -> None:
        self.frames = max(1, frames)
        self.low = np.full(PLOT_W, np.inf)
        self.high = np.full(PLOT_W, -np.inf)
        self.power = np.zeros((PLOT_W, NFFT // 2 + 1))
        self.count = np.zeros(PLOT_W)
        self.hop = max(1, min(NFFT, self.frames // PLOT_W))
        self.window = np.hanning(NFFT).astype(np.float64)
        self.pending = np.zeros(0)
        self.start = 0  # frame index of pending[0]
        self.seen = 0

    def add(self, mono: np.ndarray) -> None:
        columns = (np.arange(self.seen, self.seen + len(mono)) * PLOT_W) // self.frames
        np.minimum.at(self.low, columns, mono)
        np.maximum.at(self.high, columns, mono)
        self.seen += len(mono)
        self.pending = np.concatenate([self.pending, mono])
        count = (len(self.pending) - NFFT) // self.hop + 1
        if count > 0:
            starts = np.arange(count) * self.hop
            frames = np.lib.stride_tricks.sliding_window_view(self.pending, NFFT)[starts]
            spectrum = np.abs(np.fft.rfft(frames * self.window, axis=1)) ** 2
            cols = np.minimum(PLOT_W - 1, ((self.start + starts + NFFT // 2) * PLOT_W) // self.frames)
            np.add.at(self.power, cols, spectrum)
            np.add.at(self.count, cols, 1)
            self.pending = self.pending[count * self.hop:]
            self.start += count * self.hop


def _audio_preview(top: str, name: str, values: list[SigmaSpec], snr: bool,
                   seed: int) -> tuple[Layout, np.ndarray]:
    """The original and, for each value, exactly what ``run`` writes (rendered by the same code, then read back)."""
    source = LocalStorage(top)
    with source.open(name) as fh:
        original, layout_, signal_energy = _read_track(fh, name)
    noisy, drawn, noise_energy = [], [], []
    for value in values:
        exact = f"{value.low!r}:{value.high!r}" if value.is_range else value.low  # str(value) rounds to 6 digits
        cfg = make_config(seed=seed, workers=1, **({"audio_snr_db": exact} if snr else {"audio_sigma": exact}))
        outputs = render(Job(name, "audio", 0), source, None, [0], cfg)  # holds the input open while it writes
        rendered = next(outputs)
        drawn.append(rendered.fields)
        with tempfile.TemporaryFile() as out, source.open(name) as clean:
            rendered.write(out)
            outputs.close()
            out.seek(0)
            track, energy = _compare(clean, out, name)
        noisy.append(track)
        noise_energy.append(energy)
    seconds = layout_.frames / layout_.samplerate
    layout = Layout(title=f"{name}: {layout_.format}/{layout_.subtype}, {layout_.samplerate} Hz, "
                          f"{layout_.channels} channel(s), {seconds:.1f} s"
                          + (" (channels mixed for display)" if layout_.channels > 1 else ""))
    layout.snr_db = [10 * math.log10(signal_energy / e) if e > 0 and signal_energy > 0 else math.inf
                     for e in noise_energy]
    labels = ["original"] + [
        (f"noisy  target SNR {f['snr_db']:g} dB{_drawn(v)} (sigma={f['sigma']:.4g})" if snr
         else f"noisy  sigma={f['sigma']:g}{_drawn(v)} of full scale")
        + f"  measured SNR {m:.2f} dB" for v, f, m in zip(values, drawn, layout.snr_db)]
    tracks = [original] + noisy
    axis_w = 60
    layout.width = axis_w + PLOT_W + PAD
    block_h = LABEL_H + WAVE_H + 6 + SPEC_H + 22
    title_h = 40
    layout.height = title_h + len(tracks) * (block_h + PAD) + PAD
    canvas = _canvas(layout.width, layout.height)
    _text(canvas, layout.title, PAD, 26, layout.width - 2 * PAD, 0.6)
    for row, (track, label) in enumerate(zip(tracks, labels)):
        y = title_h + row * (block_h + PAD)
        _text(canvas, label, axis_w, y + 28, PLOT_W)
        wave_box = (axis_w, y + LABEL_H, PLOT_W, WAVE_H)
        spec_box = (axis_w, y + LABEL_H + WAVE_H + 6, PLOT_W, SPEC_H)
        _draw_wave(canvas, track, wave_box)
        _draw_spectrogram(canvas, track, spec_box, layout_.samplerate)
        _draw_time_axis(canvas, spec_box, seconds)
        kind = "original" if row == 0 else "noisy"
        layout.panels.append(Panel(f"{kind}-waveform", label, wave_box, row))
        layout.panels.append(Panel(f"{kind}-spectrogram", label, spec_box, row))
    return layout, canvas


def _open(fh: Any, name: str) -> Any:
    try:
        return audio_io.open_read(fh)
    except audio_io.AudioError as exc:
        raise DecodeError(name, f"cannot decode as audio: {exc}") from None


def _read_track(fh: Any, name: str) -> tuple[_Track, audio_io.Layout, float]:
    """A recording as a display track (channels mixed), its layout and its energy."""
    with _open(fh, name) as snd:
        layout_ = audio_io.layout_of(snd)
        track, energy = _Track(layout_.frames, layout_.samplerate), 0.0
        for block in audio_io.blocks(snd, layout_):
            values = _as_float(block, layout_)
            if not layout_.integer and not np.isfinite(values).all():  # said as a run says it, not drawn
                raise DecodeError(name, "float samples that are not finite (NaN or infinity)")
            track.add(values.mean(axis=1))
            energy += float(np.square(values).sum())
    return track, layout_, energy


def _compare(clean_fh: Any, dirty_fh: Any, name: str) -> tuple[_Track, float]:
    """The noisy recording's display track, and the energy of noisy − clean, block by block (bounded memory;
    a lossy codec may pad the noisy one: only the samples both have count)."""
    with _open(clean_fh, name) as clean, _open(dirty_fh, name) as dirty:
        a, b = audio_io.layout_of(clean), audio_io.layout_of(dirty)
        track, energy = _Track(b.frames, b.samplerate), 0.0
        for x, y in zip(audio_io.blocks(clean, a), audio_io.blocks(dirty, b)):
            fx, fy = _as_float(x, a), _as_float(y, b)
            track.add(fy.mean(axis=1))
            n = min(len(fx), len(fy))
            energy += float(np.square(fy[:n] - fx[:n]).sum())
    return track, energy


def _as_float(block: np.ndarray, layout: audio_io.Layout) -> np.ndarray:
    if layout.integer:
        return block.astype(np.float64) / layout.full_scale
    return block.astype(np.float64)


def _draw_wave(canvas: np.ndarray, track: _Track, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    canvas[y:y + h, x:x + w] = (255, 255, 255)
    mid = y + h // 2
    cv2.line(canvas, (x, mid), (x + w - 1, mid), (210, 210, 210), 1)
    seen = np.isfinite(track.low)
    top = np.clip(mid - track.high * (h / 2 - 2), y, y + h - 1).astype(int)
    bottom = np.clip(mid - track.low * (h / 2 - 2), y, y + h - 1).astype(int)
    for col in np.nonzero(seen)[0]:
        cv2.line(canvas, (x + int(col), int(top[col])), (x + int(col), int(bottom[col])), (150, 80, 20), 1)
    for value, text in ((1.0, "+1"), (-1.0, "-1")):
        _text(canvas, text, x - 34, int(mid - value * (h / 2 - 2)) + (12 if value > 0 else -2), 30, 0.4)


def _draw_spectrogram(canvas: np.ndarray, track: _Track, box: tuple[int, int, int, int], rate: int) -> None:
    x, y, w, h = box
    filled = track.count > 0
    power = np.zeros_like(track.power)
    power[filled] = track.power[filled] / track.count[filled, None]
    if filled.any() and not filled.all():  # short files: carry each column's spectrum to its neighbours
        idx = np.maximum.accumulate(np.where(filled, np.arange(len(filled)), -1))
        idx[idx < 0] = np.argmax(filled)
        power = power[idx]
    reference = (np.hanning(NFFT).sum() / 2) ** 2  # a full-scale sine peaks at 0 dB
    db = 10 * np.log10(power / reference + 1e-12)
    low, high = max(20.0, rate / NFFT), rate / 2
    freqs = np.geomspace(low, high, h)[::-1]
    bins = np.clip(np.rint(freqs / (rate / NFFT)).astype(int), 0, NFFT // 2)
    image = np.clip((db[:, bins].T + 100) / 100 * 255, 0, 255).astype(np.uint8)
    canvas[y:y + h, x:x + w] = cv2.applyColorMap(image, cv2.COLORMAP_INFERNO)
    for f in (100, 1000, 10000):
        if low <= f <= high:
            row = y + int((1 - math.log(f / low) / math.log(high / low)) * (h - 1))
            cv2.line(canvas, (x - 4, row), (x, row), INK, 1)
            _text(canvas, f"{f // 1000}k" if f >= 1000 else str(f), x - 40, row + 4, 34, 0.4)
    _text(canvas, "Hz", x - 40, y + h - 2, 34, 0.4)


def _draw_time_axis(canvas: np.ndarray, box: tuple[int, int, int, int], seconds: float) -> None:
    x, y, w, h = box
    _text(canvas, "0 s", x, y + h + 16, 60, 0.4)
    end = f"{seconds:.1f} s"
    tw = cv2.getTextSize(end, FONT, 0.4, 1)[0][0]
    _text(canvas, end, x + w - tw, y + h + 16, tw + 2, 0.4)
    _text(canvas, "dB: -100 (black) .. 0 (yellow)", x + w // 2 - 110, y + h + 16, 240, 0.4)


# ---- contact sheet of a run ------------------------------------------------------------------


def _shown(record: dict[str, Any]) -> bool:
    return record.get("status") == "ok" and record.get("kind") in ("image", "audio")


def contact_sheet(records: Callable[[], Iterable[dict[str, Any]]], input_root: str, output_root: str, count: int,
                  output: str | os.PathLike) -> Layout:
    """``count`` evenly chosen outputs of a run, each beside its input. ``records`` gives the run's records
    afresh each time it is called: they are read twice (to count, then to pick), never held all at once."""
    from .manifest import rel_str

    total = sum(1 for r in records() if _shown(r))
    if not total or count <= 0:
        raise UsageError("no image or recording was written: nothing to show")
    wanted = {int(i * total / min(count, total)) for i in range(min(count, total))}
    picks = [r for i, r in enumerate(r for r in records() if _shown(r)) if i in wanted]
    thumb = 220
    cols = 2
    cell_w, cell_h = thumb, thumb + 24
    pair_w = cols * cell_w + PAD
    per_row = max(1, 1200 // (pair_w + PAD * 2))
    rows = math.ceil(len(picks) / per_row)
    layout = Layout(width=PAD + per_row * (pair_w + 2 * PAD), title=f"noiseaug: {len(picks)} of {total} outputs")
    layout.height = 40 + rows * (cell_h + LABEL_H + PAD) + PAD
    canvas = _canvas(layout.width, layout.height)
    _text(canvas, layout.title + " (input | output)", PAD, 26, layout.width - 2 * PAD, 0.6)
    for i, record in enumerate(picks):
        x0 = PAD + (i % per_row) * (pair_w + 2 * PAD)
        y0 = 40 + (i // per_row) * (cell_h + LABEL_H + PAD)
        _text(canvas, record["input"], x0, y0 + 16, pair_w)
        sigma = f"sigma={record['sigma']:.3g}" + (f", {100 * record['clipped_fraction']:.2f}% clipped"
                                                   if "clipped_fraction" in record else "")
        _text(canvas, sigma, x0, y0 + 36, pair_w, 0.45)
        for j, (root, key) in enumerate(((input_root, "input"), (output_root, "output"))):
            x = x0 + j * (cell_w + PAD)
            box = (x, y0 + LABEL_H, thumb, thumb)
            picture = _thumbnail(os.path.join(root, rel_str(record, key)), record["kind"], thumb)
            if picture is not None:
                h, w = picture.shape[:2]
                canvas[box[1]:box[1] + h, x:x + w] = picture
            layout.panels.append(Panel(key, record["input"], box, i))
    _save(canvas, output)
    return layout


def _thumbnail(path: str, kind: str, size: int) -> np.ndarray | None:
    try:
        if kind == "image":
            name = os.path.basename(path)
            options = image_io.ReadOptions(2**40, "noise", (-math.inf, math.inf))
            pixels = image_io.decode(read_input(path), name, image_io.format_of(name), options).pages[0]
            view = _to_display(pixels)
            scale = size / max(view.shape[:2])
            return cv2.resize(view, (max(1, int(view.shape[1] * scale)), max(1, int(view.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        with open_input(path) as fh, audio_io.open_read(fh) as snd:
            layout = audio_io.layout_of(snd)
            track = _Track(layout.frames, layout.samplerate)
            for block in audio_io.blocks(snd, layout):
                track.add(_as_float(block, layout).mean(axis=1))
        picture = _canvas(PLOT_W, 200)
        _draw_wave(picture, track, (40, 10, PLOT_W - 50, 180))
        return cv2.resize(picture, (size, int(size * 200 / PLOT_W)), interpolation=cv2.INTER_AREA)
    except (OSError, DecodeError, audio_io.AudioError, ValueError):
        return None
