"""Process one input file into its noisy copies and their manifest records.

Runs inside a worker process (or in-process with ``--workers 1``). Workers
read and write files themselves, so no pixel or sample crosses a process
boundary; they return plain records and never touch the manifest. Every
failure of one file, expected or not, becomes an ``"error"`` record with a
one-line reason, so one bad file never stops the batch.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import signal
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from . import seeding
from .config import Config, SigmaSpec
from .errors import DecodeError, FileError, WriteError
from .fileio import atomic_file, ensure_dir, hash_file, hash_stream, open_input, read_input, set_temp_tag
from .noise import escape_stream, image_limits, image_sigma, noise_inplace
from .signals import checkpoint

OK, ERROR = "ok", "error"
LABEL = "label"  # the kind of a label map (palette or 1-bit image) copied with --copy-other


@dataclass(frozen=True)
class Job:
    """One input file and what the previous manifest said about its copies."""

    rel: str
    kind: str
    size: int
    prior: tuple[dict[str, Any] | None, ...] = ()


@dataclass(frozen=True)
class Context:
    """What every job of a run shares; sent once to each worker."""

    input_root: str
    output_root: str
    config: Config
    temp_tag: str = "run"
    parent_pid: int = 0  # the run's main process; workers end when it is gone


@dataclass
class Rendered:
    """One noisy output, ready to be written, and the record fields known so far.

    ``write`` streams the output into an open binary file and returns the
    fields only known once it is written (clipping, output hash when cheap).
    """

    copy: int
    fields: dict[str, Any]
    write: Callable[[BinaryIO], dict[str, Any]]


_known_dirs: set[str] = set()


def reset_caches() -> None:
    """Forget the folders known to exist: a new run may find OUTPUT deleted and made anew."""
    _known_dirs.clear()


def init_worker(context: Context) -> None:
    """Set up a worker process: one thread, SIGINT left to the parent, exit with it."""
    reset_caches()
    set_temp_tag(context.temp_tag)
    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent decides: finish, or kill this worker
        signal.signal(signum, signal.SIG_IGN)
    limit_threads(context.config.kinds)
    if context.parent_pid:
        _exit_with(context.parent_pid)


def _exit_with(pid: int) -> None:
    """End this worker when process ``pid`` ends, even by SIGKILL.

    Pool workers do not notice on their own that the main process has died:
    they would wait forever, holding its pipes. A pidfd (Linux) becomes
    readable when the process exits; elsewhere the pid is polled.
    """
    import select
    import threading
    import time

    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
        os._exit(1)

    threading.Thread(target=watch, name="noiseaug-parent-watch", daemon=True).start()


def limit_threads(kinds: tuple[str, ...]) -> int | None:
    """Keep OpenCV to one thread so N workers use N cores, not N².

    Returns OpenCV's previous limit (to restore after an in-process run), or
    None when the run has no images and OpenCV is not even loaded.
    """
    if "image" not in kinds:
        return None
    from . import image_io

    return image_io.set_threads(1)


def output_rel(rel: str, template: str, copy: int) -> str:
    """The output's relative path: the input's folder and the --name template."""
    folder, base = os.path.split(rel)
    stem, ext = os.path.splitext(base)
    name = template.format(stem=stem, ext=ext, copy=copy)
    return f"{folder}/{name}" if folder else name


def path_fields(key: str, rel: str) -> dict[str, str]:
    """A relative path for a record; undecodable names also kept as base64 bytes."""
    try:
        rel.encode("utf-8")
        return {key: rel}
    except UnicodeEncodeError:
        raw = os.fsencode(rel)
        return {key: raw.decode("utf-8", "backslashreplace"),
                f"{key}_raw": base64.b64encode(raw).decode("ascii")}


def draw_sigma(spec: SigmaSpec, rng: np.random.Generator) -> float:
    """σ for one file: the value itself, or a uniform draw from the file's own RNG."""
    return float(rng.uniform(spec.low, spec.high)) if spec.is_range else spec.low


def carried(prior: dict[str, Any]) -> dict[str, Any]:
    """A previous record kept as it is, marked (privately) as skipped for the summary."""
    record = {k: v for k, v in prior.items() if k != "input_missing"}
    record["_skipped"] = True
    return record


def _copies(job: Job, cfg: Config) -> range:
    return copies_of(job.kind, cfg)


def copies_of(kind: str, cfg: Config) -> range:
    """The copy indices an input of this kind gets (copied files get one)."""
    return range(cfg.copies) if kind != "other" else range(1)


def failed_records(job: Job, cfg: Config, reason: str) -> list[dict[str, Any]]:
    """Error records for every copy of a job that could not run at all."""
    return [_error(r, reason) for r in _base_records(job, cfg)]


def is_up_to_date(job: Job, ctx: Context) -> bool:
    """Whether every copy of a job matches its previous record (for --dry-run)."""
    try:
        digest, _ = hash_file(os.path.join(ctx.input_root, job.rel))
    except OSError:
        return False
    return all(
        c < len(job.prior) and _up_to_date(job.prior[c], digest, ctx.output_root, r["_out"])
        for c, r in ((c, _base_record(job, c, ctx.config)) for c in _copies(job, ctx.config)))


def process_job(job: Job, ctx: Context) -> list[dict[str, Any]]:
    """Read the input, skip copies that are up to date, render and write the rest."""
    cfg = ctx.config
    src = os.path.join(ctx.input_root, job.rel)
    try:
        data, digest, size = read_source(job, src)
    except OSError as exc:
        return [_error(r, f"cannot read: {exc.strerror or exc}") for r in _base_records(job, cfg)]
    try:
        probe = probe_image(job.rel, data, cfg) if job.kind == "image" else None
    except FileError as exc:
        return [_error({**r, "input_sha256": digest, "input_bytes": size}, exc.reason)
                for r in _base_records(job, cfg)]
    label = probe is not None and probe.label is not None
    if label and not cfg.copy_other:
        return [{"type": "file", **path_fields("input", job.rel), "kind": LABEL, "copy": 0, "status": "not taken",
                 "_not_taken": True}]
    base = _base_records(job, cfg, label)
    for r in base:
        r.update(input_sha256=digest, input_bytes=size)

    records: dict[int, dict[str, Any]] = {}
    todo = []
    for r in base:
        prior = job.prior[r["copy"]] if r["copy"] < len(job.prior) else None
        if _up_to_date(prior, digest, ctx.output_root, r["_out"]) and prior.get("kind") == r["kind"]:
            records[r["copy"]] = carried(prior)
        else:
            todo.append(r)
    if todo:
        outputs = render(job, src, data, [r["copy"] for r in todo], cfg, probe)
        data = None  # the renderer holds the input now, and lets it go once decoded
        records.update(_write_outputs(ctx, outputs, base, todo))
    return [records[c] for c in sorted(records)]


def _write_outputs(ctx: Context, outputs: Iterator[Rendered], base: list[dict[str, Any]],
                   todo: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Write each rendered output; a failure becomes the error record of the copies not written."""
    records: dict[int, dict[str, Any]] = {}
    try:
        for rendered in outputs:
            r = base[rendered.copy]
            r.update(rendered.fields)
            _write(ctx.output_root, r, rendered)
            records[r["copy"]] = r
    except FileError as exc:
        failed = _error_records(todo, records, exc.reason)
        if isinstance(exc, WriteError) and exc.fatal:
            for record in failed.values():
                record["_fatal"] = True
        records.update(failed)
    except MemoryError:
        records.update(_error_records(todo, records, "out of memory"))
    except Exception as exc:  # a codec bug must cost one file, not the run
        text = str(exc).splitlines()[0] if str(exc) else ""
        records.update(_error_records(todo, records, f"unexpected {type(exc).__name__}: {text}".rstrip(": ")))
    return records


def probe_image(rel: str, data: bytes | None, cfg: Config) -> Any:
    """The image's header (and whether it is a label map), before any pixel is decoded."""
    from . import image_io

    return image_io.probe(data or b"", rel, image_io.format_of(rel), read_options(cfg))


def read_options(cfg: Config) -> Any:
    from .image_io import ReadOptions

    return ReadOptions(cfg.max_pixels, cfg.palette_images, cfg.float_range)


def write_options(cfg: Config) -> Any:
    from .image_io import WriteOptions

    return WriteOptions(cfg.jpeg_quality, cfg.png_compression, cfg.jpeg_subsampling)


def read_source(job: Job, src: str) -> tuple[bytes | None, str, int]:
    """Images are read whole (the codec needs them in memory); audio is only hashed."""
    if job.kind == "audio":
        digest, size = hash_file(src)
        return None, digest, size
    data = read_input(src)
    return data, hashlib.sha256(data).hexdigest(), len(data)


def _error_records(todo: list[dict], done: dict[int, dict], reason: str) -> dict[int, dict]:
    return {r["copy"]: _error(r, reason) for r in todo if r["copy"] not in done}


def _base_records(job: Job, cfg: Config, label: bool = False) -> list[dict[str, Any]]:
    if label:  # a label map is copied once, under its own name, like any other file
        return [_base_record(job, 0, cfg, LABEL)]
    return [_base_record(job, c, cfg) for c in _copies(job, cfg)]


def _base_record(job: Job, copy: int, cfg: Config, kind: str | None = None) -> dict[str, Any]:
    kind = kind or job.kind
    out = output_rel(job.rel, cfg.name, copy) if kind in ("image", "audio") else job.rel
    record: dict[str, Any] = {"type": "file"}
    record.update(path_fields("input", job.rel))
    record.update(path_fields("output", out))
    record.update(kind=kind, copy=copy, status=OK)
    record["_out"] = out
    return record


def _error(record: dict[str, Any], reason: str) -> dict[str, Any]:
    keep = {k: v for k, v in record.items() if k in (
        "type", "input", "input_raw", "output", "output_raw", "kind", "copy",
        "seed", "input_sha256", "input_bytes")}
    return {**keep, "status": ERROR, "error": " ".join(reason.split())}


def _up_to_date(prior: dict[str, Any] | None, digest: str, out_root: str, out_rel: str) -> bool:
    if not prior or prior.get("status") != OK:
        return False
    if prior.get("input_sha256") != digest or prior.get("output") != path_fields("output", out_rel)["output"]:
        return False
    try:
        existing, _ = hash_file(os.path.join(out_root, out_rel))
    except OSError:
        return False
    return existing == prior.get("output_sha256")


def _write(out_root: str, record: dict[str, Any], rendered: Rendered) -> None:
    out_rel = record.pop("_out")
    folder = ensure_dir(out_root, os.path.dirname(out_rel), _known_dirs)
    with atomic_file(os.path.join(folder, os.path.basename(out_rel))) as fh:
        record.update(rendered.write(fh))
        checkpoint()  # abandoned now, the output is not renamed into place
        if "output_sha256" not in record:
            record["output_sha256"], record["output_bytes"] = hash_stream(fh)


def _bytes_writer(encoded: Any) -> Callable[[BinaryIO], dict[str, Any]]:
    def write(fh: BinaryIO) -> dict[str, Any]:
        fh.write(encoded)
        return {"output_sha256": hashlib.sha256(encoded).hexdigest(),
                "output_bytes": len(memoryview(encoded).cast("B"))}
    return write


def render(job: Job, src: str, data: bytes | None, copies: list[int], cfg: Config,
           probe: Any = None) -> Iterator[Rendered]:
    """The noisy outputs of one input for the given copy indices.

    ``data`` holds the input's bytes for images and copied files; audio is
    streamed from ``src``. ``probe`` is the image's header, when already read;
    a label map is copied unchanged. Not a generator itself: the renderer it
    returns holds the only other reference to ``data``, and drops it once
    decoded (on a 100-megapixel PNG, the compressed bytes are a third of the peak).
    """
    if job.kind == "image":
        assert data is not None
        probe = probe if probe is not None else probe_image(job.rel, data, cfg)
        if probe.label is None:
            return _render_image(job.rel, data, copies, cfg, probe)
        return _render_label(job.rel, data)
    if job.kind == "audio":
        return _render_audio(job.rel, src, copies, cfg)
    assert data is not None
    return iter([Rendered(0, {}, _bytes_writer(data))])


def decode_samples(job: Job, data: bytes) -> np.ndarray:
    """The samples an output decodes to, for comparisons across library versions."""
    if job.kind == "image":
        from . import image_io

        options = image_io.ReadOptions(2**62, "noise", (-math.inf, math.inf))
        pages = image_io.decode(data, job.rel, image_io.format_of(job.rel), options).pages
        return np.concatenate([p.ravel() for p in pages])
    if job.kind == "audio":
        from . import audio_io

        return audio_io.decode_all(data)
    return np.frombuffer(data, dtype=np.uint8)


def noise_image(pixels: np.ndarray, sigma_8bit: float, rng: np.random.Generator, *, shared: bool,
                colour: int | None = None, limits: tuple[float, float] | None = None) -> float:
    """Noise an image's first ``colour`` channels in place; returns the clipped fraction.

    ``sigma_8bit`` is in 8-bit units, scaled to the samples' range: the
    type's full scale, or ``limits`` (float images with a given range).
    By default alpha is taken to be the last channel of 2- and 4-channel images.
    """
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    if colour is None:
        colour = channels - 1 if channels in (2, 4) else channels
    lo, hi = limits if limits is not None else image_limits(pixels.dtype)
    sigma = image_sigma(sigma_8bit, pixels.dtype) if pixels.dtype.kind != "f" else sigma_8bit * (hi - lo) / 255.0
    clipped = noise_inplace(pixels, sigma, rng, lo=lo, hi=hi, channels=colour if pixels.ndim == 3 else None,
                            shared=shared and colour > 1)
    return clipped / max(1, pixels.shape[0] * pixels.shape[1] * colour)


def noise_picture(picture: Any, sigma_8bit: float, seed: int, rng: np.random.Generator, *,
                  shared: bool) -> float:
    """Noise every page of a picture in place, each from its own stream; the clipped fraction."""
    clipped = total = 0.0
    for index, page in enumerate(picture.pages):
        checkpoint()
        page_rng = rng if index == 0 else seeding.page_generator(seed, index)
        colour = picture.colours[index]
        values = page.shape[0] * page.shape[1] * colour
        clipped += values * noise_image(page, sigma_8bit, page_rng, shared=shared, colour=colour,
                                        limits=picture.limits)
        total += values
    return clipped / max(1.0, total)


def _render_label(rel: str, data: bytes) -> Iterator[Rendered]:
    """A label map, copied unchanged once it is known to decode."""
    from . import image_io

    image_io.check_label(data, rel, image_io.format_of(rel))
    yield Rendered(0, {}, _bytes_writer(data))


def _render_image(rel: str, data: bytes, copies: list[int], cfg: Config, probe: Any) -> Iterator[Rendered]:
    from . import image_io

    picture = image_io.decode(data, rel, image_io.format_of(rel), read_options(cfg), probe)
    del data  # a large image's compressed bytes need not stay beside its pixels and its encoding
    first = picture.pages[0]
    shape = {"height": first.shape[0], "width": first.shape[1],
             "channels": first.shape[2] if first.ndim == 3 else 1, "dtype": str(first.dtype)}
    options = write_options(cfg)
    for i, copy in enumerate(copies):
        seed = seeding.file_seed(cfg.seed, os.fsencode(rel), copy)
        rng = seeding.generator(seed)
        sigma = draw_sigma(cfg.image_sigma, rng)
        noisy = picture if i == len(copies) - 1 else picture.copy()
        clipped = noise_picture(noisy, sigma, seed, rng, shared=cfg.channel_noise == "shared")
        encoded = image_io.encode(noisy, rel, options)
        yield Rendered(copy, {
            "seed": f"{seed:032x}",
            "sigma": sigma,
            "sigma_full_scale": sigma / 255.0,
            **shape, **picture.fields(options),
            "clipped_fraction": clipped,
        }, _bytes_writer(encoded))


def _render_audio(rel: str, src: str, copies: list[int], cfg: Config) -> Iterator[Rendered]:
    from . import audio_io
    from .audio_io import AudioError

    with open_input(src) as fh:
        try:
            snd = audio_io.open_read(fh)
        except AudioError as exc:
            raise DecodeError(rel, f"cannot decode as audio: {exc}") from None
        with snd:
            layout = audio_io.layout_of(snd)
            metadata = snd.copy_metadata()
            try:
                level = audio_io.rms(snd, layout) if cfg.audio_snr_db is not None else None
            except AudioError as exc:
                raise DecodeError(rel, str(exc)) from None
            for copy in copies:
                seed = seeding.file_seed(cfg.seed, os.fsencode(rel), copy)
                rng = seeding.generator(seed)
                fields: dict[str, Any] = {"seed": f"{seed:032x}"}
                if level is not None:
                    assert cfg.audio_snr_db is not None
                    snr_db = draw_sigma(cfg.audio_snr_db, rng)
                    sigma = level / 10 ** (snr_db / 20)
                    fields["snr_db"] = snr_db
                    if level == 0:
                        fields["warning"] = "silent: no signal to set --audio-snr-db against, so sigma is 0"
                else:
                    assert cfg.audio_sigma is not None
                    sigma = draw_sigma(cfg.audio_sigma, rng)
                fields.update(sigma=sigma, sigma_full_scale=sigma, samplerate=layout.samplerate,
                              channels=layout.channels, format=layout.format, subtype=layout.subtype,
                              endian=layout.endian)
                yield Rendered(copy, fields, _audio_writer(rel, snd, layout, metadata, sigma, rng, seed))


def _audio_writer(rel: str, snd: Any, layout: Any, metadata: dict[str, str], sigma: float,
                  rng: np.random.Generator, seed: int) -> Callable[[BinaryIO], dict[str, Any]]:
    from . import audio_io
    from .audio_io import AudioError

    def write(fh: BinaryIO) -> dict[str, Any]:
        clipped = frames = 0
        try:
            out = audio_io.open_write(fh, layout, metadata)
        except AudioError as exc:
            raise WriteError(rel, str(exc)) from None
        with out:
            try:
                escapes = escape_stream(rng)  # one for the whole recording: blocks do not matter
                for block in audio_io.blocks(snd, layout):
                    checkpoint()
                    clipped += noise_inplace(block, sigma * layout.full_scale, rng, lo=layout.lo,
                                             hi=layout.hi, step=layout.step, escapes=escapes)
                    out.write(block)
                    frames += block.shape[0]
            except AudioError as exc:
                raise DecodeError(rel, str(exc)) from None
        if layout.format == "OGG":
            fh.seek(0)
            fixed = audio_io.set_ogg_serials(fh.read(), seed)
            fh.seek(0)
            fh.write(fixed)
            fh.truncate()
        return {"frames": frames, "clipped_fraction": clipped / max(1, frames * layout.channels)}
    return write
