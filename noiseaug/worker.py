"""Process one input file into its noisy copies and what became of each (:class:`Outcome`).

Runs inside an executor's worker (or in-process with ``--workers 1``).
Workers read and write files themselves, so no pixel or sample crosses a
process boundary; they return outcomes and never touch the manifest. Every
failure of one file, expected or not, becomes an ``"error"`` record with a
one-line reason, so one bad file never stops the batch. Pool workers take
small images a group at a time, stage by stage (:func:`process_group`), with
the same outcomes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

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
        step = _prepare(job, ctx)
        return step if isinstance(step, list) else _complete(step, ctx)


STAGED_INPUT = 1 << 16  # bytes: an image or recording this small may go through process_group with others
STAGED_PIXELS = 1 << 18  # bytes of decoded pixels or samples, all copies: a file this small is rendered in the
#                          group's second stage, its outputs held until the third (any other as it is written)
GROUP = 16  # files a stage takes in turn before the next stage starts


def groups(batch: list[Job]) -> Iterator[tuple[int, list[Job]]]:
    """A batch as (index of its first job, jobs): runs of up to GROUP small images and recordings, any other
    file alone."""
    start = 0
    while start < len(batch):
        end = start + 1
        while end < len(batch) and end - start < GROUP and _small(batch[start]) and _small(batch[end]):
            end += 1
        yield start, batch[start:end]
        start = end


def _small(job: Job) -> bool:
    return job.kind in ("image", "audio") and job.size <= STAGED_INPUT


def process_group(jobs: list[Job], ctx: Context, on_file: Callable[[int], None],
                  stopping: Callable[[], bool] = lambda: False) -> Iterator[list[Outcome]]:
    """Each job's outcomes, in order, as :func:`process_job` gives them, done stage by stage: every file read
    and probed, then every small one rendered (decoded, noised, encoded) into memory, then every file
    written. Each stage's code, tables and system calls stay warm in the processor's caches across the
    group: gone through one file at a time, a 32×32 PNG paid a third of its time to evict and refetch them.
    ``on_file(i)`` is called as a stage starts on file i (the pool's slot says which file is in flight, and
    since when: a file alone is timed whole, one of a group stage by stage). ``stopping()`` is asked
    between files, as a worker taking files one at a time would: once it says so, the group ends after the
    file in hand (the others, read or rendered but not written, have no outcome: they are not done)."""
    pending: list[list[Outcome] | _Pending] = []
    try:
        with numpy_defaults():
            for i, job in enumerate(jobs):
                if i and stopping():
                    break
                on_file(i)
                pending.append(_prepare(job, ctx))
            for i, step in enumerate(pending):
                if isinstance(step, _Pending) and len(jobs) > 1 and (
                        step.job.kind == "audio" or _pixel_bytes(step.probe) * len(step.todo) <= STAGED_PIXELS):
                    if stopping():
                        break
                    on_file(i)
                    step.render_early(ctx)
        for i, step in enumerate(pending):
            if len(jobs) > 1:
                if i and stopping():
                    return
                on_file(i)
            if isinstance(step, _Pending):
                with numpy_defaults():
                    step = pending[i] = _complete(step, ctx)
            yield step
    finally:  # a group left before its end (a full disk): what is open is closed
        for step in pending:
            if isinstance(step, _Pending):
                step.close()


def _pixel_bytes(probe: Any) -> float:
    """The decoded size an image's header promises (infinite when it says none)."""
    layout = getattr(probe, "layout", None)
    if probe is None or probe.label is not None or layout is None:
        return math.inf
    if hasattr(layout, "nbytes"):  # a TIFF: every page
        return layout.nbytes
    return layout.width * layout.height * layout.pixel_bytes if layout.width and layout.height else math.inf


@dataclass
class _Pending:
    """A file between the stages of :func:`process_group`: read and probed, its outputs still to make."""

    job: Job
    data: bytes | BinaryIO | None  # the input's bytes, or an open recording
    probe: Any
    base: list[dict[str, Any]]  # every copy's record so far
    todo: list[dict[str, Any]]  # the copies to render and write
    outcomes: dict[int, Outcome]  # the copies already settled (up to date)
    rendered: list[Rendered] | None = None  # rendered early (process_group): written by _complete
    error: Exception | None = None  # what rendering the next copy raised, raised again where it is written
    rest: Iterator[Rendered] = iter(())  # the copies left to render as they are written (a recording too long)

    def __post_init__(self) -> None:
        self.opened = self.data if hasattr(self.data, "close") else None  # closed at the end, whoever read it

    def render_early(self, ctx: Context) -> None:
        """Render the copies into memory now, a recording's while its samples stay small (the others are
        rendered as they are written); a failure is kept for :func:`_complete` to meet where it would."""
        data, self.data, self.rendered = self.data, None, []
        copies = [r["copy"] for r in self.todo]
        try:
            outputs = render(self.job, ctx.source, data, copies, ctx.config, self.probe)
            for rendered in outputs:
                if rendered.data is None:  # a recording: its bytes are made as it is written
                    if rendered.samples is None or rendered.samples * len(copies) > STAGED_PIXELS or \
                            not rendered.in_memory:
                        self.rest = itertools.chain([rendered], outputs)
                        return
                    rendered = rendered.encoded()
                self.rendered.append(rendered)
        except Exception as exc:
            self.error = exc

    def outputs(self, ctx: Context) -> Iterator[Rendered]:
        if self.rendered is None:
            data, self.data = self.data, None  # the renderer holds the input now, and lets it go once decoded
            return render(self.job, ctx.source, data, [r["copy"] for r in self.todo], ctx.config, self.probe)
        return _replayed(self.rendered, self.error, self.rest)

    def close(self) -> None:
        if self.opened is not None:  # an open recording
            self.opened.close()


def _replayed(rendered: list[Rendered], error: Exception | None, rest: Iterator[Rendered]) -> Iterator[Rendered]:
    yield from rendered
    if error is not None:
        raise error
    yield from rest


def _prepare(job: Job, ctx: Context) -> list[Outcome] | _Pending:
    """Read and probe the input and settle the copies that are up to date: its outcomes when that is all,
    else what is left to render and write."""
    cfg = ctx.config
    try:
        data, digest, size = read_source(job, ctx.source)
    except OSError as exc:
        fatal = exc.errno == errno.ECONNREFUSED  # a storage that cannot be reached: stop, not fail file after file
        return [Outcome(error_record(r, f"cannot read: {exc.strerror or exc}"), fatal=fatal)
                for r in base_records(job, cfg)]
    try:
        step = _settle(job, ctx, data, {"input_sha256": digest, "input_bytes": size})
    except BaseException:
        if hasattr(data, "close"):
            data.close()
        raise
    if isinstance(step, list) and hasattr(data, "close"):
        data.close()
    return step


def _complete(step: _Pending, ctx: Context) -> list[Outcome]:
    """Render (unless done already) and write a prepared file's outputs: its outcomes, by copy."""
    try:
        step.outcomes.update(_write_outputs(ctx, step.job, step.outputs(ctx), step.base, step.todo))
    finally:
        step.close()
    return [_stamped(step.outcomes[c], step.job, ctx) for c in sorted(step.outcomes)]


def ends_batch(outcomes: list[Outcome], config: Config) -> bool:
    """Whether a worker stops its batch after these outcomes: a failure the next file would share (a full disk,
    an unreachable storage), or any failure under --on-error fail (the run stops at it: the rest is not tried)."""
    return any(o.fatal or (config.on_error == "fail" and o.status == "error") for o in outcomes)


def _settle(job: Job, ctx: Context, data: bytes | BinaryIO | None,
            known: dict[str, Any]) -> list[Outcome] | _Pending:
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
        return _Pending(job, data, probe, base, todo, outcomes)
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
            rendered = None  # its bytes go before the next copy is made, not after
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
