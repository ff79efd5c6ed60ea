"""Process one input file into its noisy copies and what became of each (:class:`Outcome`).

Runs inside an executor's worker (or in-process with ``--workers 1``).
Workers read and write files themselves, so no pixel or sample crosses a
process boundary; they return outcomes and never touch the manifest. Every
failure of one file, expected or not, becomes an ``"error"`` record with a
one-line reason, so one bad file never stops the batch.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from .config import Config
from .errors import FileError, WriteError
from .freshness import confirmed
from .noise import numpy_defaults
from .records import Job, Outcome, base_records, carried, error_record, output_of
from .render import Rendered, probe_image, render, written_fields
from .signals import checkpoint
from .storage import Storage
from .storage.local import hash_stream


@dataclass(frozen=True)
class Context:
    """What every job of a run shares; sent once to each worker."""

    source: Storage  # INPUT
    target: Storage  # OUTPUT
    config: Config
    temp_tag: str = "run"
    parent_pid: int = 0  # the run's main process; pool workers end when it is gone


def limit_threads(kinds: tuple[str, ...]) -> int | None:
    """Keep OpenCV to one thread so N workers use N cores, not N².

    Returns OpenCV's previous limit (to restore after an in-process run), or
    None when the run has no images and OpenCV is not even loaded.
    """
    if "image" not in kinds:
        return None
    from . import image_io

    return image_io.set_threads(1)


def process_job(job: Job, ctx: Context) -> list[Outcome]:
    """Read the input, keep the copies that are up to date, render and write the rest (under numpy's own
    floating-point error handling, whatever a library caller set: see :func:`~noiseaug.noise.numpy_defaults`)."""
    with numpy_defaults():
        return _process_job(job, ctx)


def _process_job(job: Job, ctx: Context) -> list[Outcome]:
    cfg = ctx.config
    try:
        data, digest, size = read_source(job, ctx.source)
    except OSError as exc:
        fatal = exc.errno == errno.ECONNREFUSED  # a storage that cannot be reached: stop, not fail file after file
        return [Outcome(error_record(r, f"cannot read: {exc.strerror or exc}"), fatal=fatal)
                for r in base_records(job, cfg)]
    try:
        return _process(job, ctx, data, {"input_sha256": digest, "input_bytes": size})
    finally:
        if hasattr(data, "close"):  # an open recording
            data.close()


def ends_batch(outcomes: list[Outcome], config: Config) -> bool:
    """Whether a worker stops its batch after these outcomes: a failure the next file would share (a full disk,
    an unreachable storage), or any failure under --on-error fail (the run stops at it: the rest is not tried)."""
    return any(o.fatal or (config.on_error == "fail" and o.status == "error") for o in outcomes)


def _process(job: Job, ctx: Context, data: bytes | BinaryIO | None, known: dict[str, Any]) -> list[Outcome]:
    cfg, digest = ctx.config, known["input_sha256"]
    try:
        probe = probe_image(job.rel, data, cfg) if job.kind == "image" else None
    except FileError as exc:
        return [Outcome(error_record({**r, **known}, exc.reason)) for r in base_records(job, cfg)]
    label = probe is not None and probe.label is not None
    if label and not cfg.copy_other:
        return [Outcome(None, not_taken="label map")]
    if label and job.own_name_taken:
        reason = f"output {job.rel} is already taken by another input (a label map is copied under its own name)"
        return [Outcome(error_record({**r, **known}, reason)) for r in base_records(job, cfg, label)]
    base = [{**r, **known} for r in base_records(job, cfg, label)]
    outcomes: dict[int, Outcome] = {}
    todo = []
    for record in base:
        prior = job.prior[record["copy"]] if record["copy"] < len(job.prior) else None
        out_rel = output_of(job, record["copy"], cfg, record["kind"])
        if confirmed(prior, digest, ctx.target, out_rel, record["kind"]):
            outcomes[record["copy"]] = carried(prior)
        else:
            todo.append(record)
    if todo:
        outputs = render(job, ctx.source, data, [r["copy"] for r in todo], cfg, probe)
        data = None  # the renderer holds the input now, and lets it go once decoded
        outcomes.update(_write_outputs(ctx, job, outputs, base, todo))
    return [_stamped(outcomes[c], job, ctx) for c in sorted(outcomes)]


def _stamped(outcome: Outcome, job: Job, ctx: Context) -> Outcome:
    """An ok outcome with its output's (size, stamp), read where the output is (None if it cannot be)."""
    rec = outcome.record
    if rec is not None and rec.get("status") == "ok" and outcome.out_stat is None:
        try:
            outcome.out_stat = ctx.target.stat(output_of(job, rec["copy"], ctx.config, rec["kind"]))
        except OSError:
            outcome.out_stat = None
    return outcome


def _write_outputs(ctx: Context, job: Job, outputs: Iterator[Rendered], base: list[dict[str, Any]],
                   todo: list[dict[str, Any]]) -> dict[int, Outcome]:
    """Write each rendered output; a failure becomes the error record of the copies not written."""
    done: dict[int, Outcome] = {}
    try:
        for rendered in outputs:
            record = base[rendered.copy]
            record.update(rendered.fields)
            out_stat = _write(ctx, output_of(job, record["copy"], ctx.config, record["kind"]), record, rendered)
            done[record["copy"]] = Outcome(record, out_stat=out_stat)
    except FileError as exc:
        fatal = isinstance(exc, WriteError) and exc.fatal
        done.update(_failed(todo, done, exc.reason, fatal))
    except MemoryError:
        done.update(_failed(todo, done, "out of memory"))
    except Exception as exc:  # a codec bug must cost one file, not the run
        text = str(exc).splitlines()[0] if str(exc) else ""
        done.update(_failed(todo, done, f"unexpected {type(exc).__name__}: {text}".rstrip(": ")))
    return done


def _failed(todo: list[dict[str, Any]], done: dict[int, Outcome], reason: str,
            fatal: bool = False) -> dict[int, Outcome]:
    return {r["copy"]: Outcome(error_record(r, reason), fatal=fatal) for r in todo if r["copy"] not in done}


def _blame_the_disk(fh: Any, out_rel: str, exc: Exception) -> None:
    """A codec that writes through its own file descriptor (libsndfile) reports a full disk as a
    "System error": ask the file system, so the run stops at once with the real reason."""
    if isinstance(exc, WriteError):
        return
    try:
        full = os.fstatvfs(fh.fileno()).f_bavail == 0
    except (OSError, AttributeError, ValueError):
        return
    if full:
        raise WriteError(out_rel, "cannot write: No space left on device", errno.ENOSPC) from exc


def read_source(job: Job, source: Storage) -> tuple[bytes | BinaryIO, str, int]:
    """Images and copied files are read whole (a codec needs them in memory); audio is hashed from
    the file it is then decoded from (opened once): the caller closes it."""
    if job.kind == "audio":
        fh = source.open(job.rel)
        try:
            digest, size = hash_stream(fh)
        except BaseException:
            fh.close()
            raise
        return fh, digest, size
    data = source.read(job.rel)
    return data, hashlib.sha256(data).hexdigest(), len(data)


def _write(ctx: Context, out_rel: str, record: dict[str, Any], rendered: Rendered) -> tuple[int, int] | None:
    """Write one output; its (size, stamp) when the storage says so as it writes (else None: asked later)."""
    if rendered.data is not None:  # all in memory: one call, no file object
        record.update(written_fields(rendered.data))
        return ctx.target.put(out_rel, rendered.data, checkpoint)  # abandoned before the rename: no output
    if rendered.in_memory:  # small: encoded into memory, hashed there, written at once
        buffer = io.BytesIO()
        record.update(rendered.write(buffer))
        data = buffer.getbuffer()
        record.update(written_fields(data))
        return ctx.target.put(out_rel, data, checkpoint)
    with ctx.target.write(out_rel) as fh:
        try:
            record.update(rendered.write(fh))
        except Exception as exc:
            _blame_the_disk(fh, out_rel, exc)
            raise
        checkpoint()  # abandoned now, the output is not renamed into place
        if "output_sha256" not in record:
            record["output_sha256"], record["output_bytes"] = hash_stream(fh)
    return None
