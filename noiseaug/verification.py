"""``noiseaug verify``: prove a manifest's outputs, by hash or by regeneration."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, seeding
from .config import REDACTED, redact_url
from .errors import ManifestError, NoiseaugError, UsageError
from .index import TORN, UNORDERED, RecordSpool, spool_manifest, spooled
from .manifest import dumps, read_run, recorded_root, rel_str, safe_rel
from .report import Listed, printable, shown
from .storage import LocalStorage
from .storage.local import hash_stream
from .storage.remote import is_url


@dataclass
class VerifyReport:
    """What verify found: one entry per output that does not match (the first LISTED of them, and how many in
    all: a million missing outputs do not fill the memory); ``said`` gets each problem's line as it is found."""

    manifest: str
    output_root: str
    checked: int = 0
    not_checked: int = 0  # error records: there is no output to check
    mismatches: Listed = field(default_factory=Listed)  # (output, reason)
    failed: Listed = field(default_factory=Listed)  # (input, reason) of files that failed in the run
    notes: list[str] = field(default_factory=list)
    torn: bool = False  # the manifest's last line was cut off: one record could not be read
    pending: int = 0  # segments of records a run on object storage left beside the manifest: it did not finish
    inputs_gone: int = 0  # --regenerate: outputs of inputs flagged input_missing, checked by their hash alone
    unordered: bool = False  # the records are not in order: the run that wrote them did not finish (killed)
    unfinished: bool = False  # the run record says its run did not finish (interrupted, stopped or killed)
    said: Callable[[str], None] | None = field(default=None, repr=False)

    def mismatch(self, output: str, reason: str) -> None:
        self.mismatches.append((output, reason))
        if self.said is not None:
            self.said(_mismatch_line(output, reason))

    def failure(self, input_: str, reason: str) -> None:
        self.failed.append((input_, reason))
        if self.said is not None:
            self.said(_failed_line(input_, reason))

    @property
    def exit_code(self) -> int:
        return 1 if (self.mismatches or self.torn or self.failed or self.pending or self.unordered
                     or self.unfinished) else 0

    def lines(self) -> list[str]:
        """The problems listed (see ``said`` for all of them as they are found)."""
        return ([_mismatch_line(path, reason) for path, reason in self.mismatches]
                + [_failed_line(path, reason) for path, reason in self.failed])

    def text(self) -> str:
        lines = list(self.notes)
        good = self.checked - self.mismatches.total
        where = f"{printable(self.output_root)} match {printable(self.manifest)}"
        lines.append(f"{good} of {self.checked} outputs in {where}"
                     + (f"; {self.not_checked} failed in the run and have no output" if self.not_checked else ""))
        if self.inputs_gone:
            lines.append(f"{self.inputs_gone} output(s) of inputs that are gone (input_missing) were checked by "
                         "their hash, not regenerated")
        if self.torn:
            lines.append("the manifest's last line is cut off (a run was killed while writing it): "
                         "that record could not be read; run noiseaug again to complete the manifest")
        if self.unfinished and not self.pending:
            lines.append("the run that wrote the manifest did not finish (interrupted, stopped or killed), so "
                         "outputs it did not reach are not checked; run noiseaug again to complete the manifest")
        elif self.unordered and not self.pending:
            lines.append("the manifest's records are not in order: the run that wrote them stopped before its "
                         "final rewrite (killed?), so outputs it did not reach are not checked; run noiseaug again "
                         "to complete the manifest")
        if self.pending:
            lines.append(f"the run that wrote the manifest did not finish: {self.pending} segment(s) of its records "
                         "wait beside it (checked too); run noiseaug again to complete the manifest")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": shown(self.manifest), "output_root": shown(self.output_root), "checked": self.checked,
                "not_checked": self.not_checked,
                "matching": self.checked - self.mismatches.total, "exit_code": self.exit_code,
                "mismatches": [{"output": p, "reason": r} for p, r in self.mismatches], "torn": self.torn,
                "pending_segments": self.pending, "inputs_gone": self.inputs_gone,
                "unfinished": self.unordered or self.unfinished,
                "failed": [{"input": p, "reason": r} for p, r in self.failed],
                "not_listed": {"mismatches": self.mismatches.unlisted, "failed": self.failed.unlisted},
                "notes": self.notes}


def _mismatch_line(output: str, reason: str) -> str:
    return f"noiseaug: mismatch: {printable(output)}: {reason}"


def _failed_line(input_: str, reason: str) -> str:
    return f"noiseaug: failed in the run: {printable(input_)}: {reason}"


def _output_root(given: str | None, run: dict[str, Any], manifest: str, first: str | None) -> str:
    """Where a manifest's outputs are: given, else beside a manifest kept in OUTPUT (so a copied or moved
    OUTPUT verifies itself) unless it was copied out alone (its ``first`` output is not beside it but under
    the recorded OUTPUT), else the recorded OUTPUT."""
    if given is not None:
        return given
    recorded = recorded_root(run, "output_root")
    beside = manifest.rstrip("/").rpartition("/")[0] if is_url(manifest) else os.fsdecode(Path(manifest).parent)
    if recorded is None:
        return beside
    if run.get("options", {}).get("manifest") is not None:
        return recorded
    if first is None or is_url(manifest) or is_url(recorded) or os.path.lexists(os.path.join(beside, first)):
        return beside
    return recorded if os.path.lexists(os.path.join(recorded, first)) else beside


def open_root(where: str, options: dict[str, Any]) -> Any:
    """A folder or URL as a :class:`~noiseaug.storage.Storage`, for reading."""
    if is_url(where):
        from .storage.remote import FsspecStorage

        return FsspecStorage(where, options)
    return LocalStorage(where)


def _fetch(manifest: str, options: dict[str, Any], spool: str) -> tuple[Path, int]:
    """A manifest's local path: itself, or a copy of one on object storage with the segments of records a
    killed run left beside it appended, as the next run would (and how many there were)."""
    if not is_url(manifest):
        return Path(manifest), 0
    from .storage.remote import split_object_url

    folder, name = split_object_url(manifest)
    local = Path(spool) / name
    storage = open_root(folder, options)
    if not storage.fetch(name, local):
        raise ManifestError(f"{redact_url(manifest)}: no such manifest")
    try:
        segments = storage.list_prefix(f".{name}.segments")
    except NoiseaugError:  # a reader allowed to get objects but not to list them: the manifest alone is checked
        segments = []
    with open(local, "ab") as fh:
        for rel in segments:
            storage.fetch_into(rel, fh)
    return local, len(segments)


def verify(manifest: str | os.PathLike, *, regenerate: bool = False,
           output_root: str | os.PathLike | None = None,
           input_root: str | os.PathLike | None = None,
           storage_options: dict[str, Any] | None = None,
           said: Callable[[str], None] | None = None) -> VerifyReport:
    """Check every output of a manifest; with ``regenerate``, rebuild and compare. ``said`` gets each
    problem's line as it is found (the report lists the first LISTED of each kind).

    Outputs are looked for under ``output_root``, by default the recorded
    OUTPUT if it exists, else the manifest's own folder; inputs (for
    ``regenerate``) under ``input_root``, by default the recorded INPUT.
    Each may be a folder or a URL (``s3://bucket/prefix``; ``storage_options``
    go to its file system).
    """
    options = storage_options or {}
    with tempfile.TemporaryDirectory(prefix="noiseaug-verify-") as spool_folder:
        path, pending = _fetch(os.fsdecode(manifest), options, spool_folder)
        where, run = redact_url(os.fsdecode(manifest)), read_run(path)
        with spooled(spool_folder) as spool:
            unfinished = spool_manifest(spool, path, 0, lambda r: (safe_rel(r, "input", where),
                                                                   safe_rel(r, "output", where)))
            report = _verify(run, where, spool, regenerate, output_root, input_root, options, said)
        report.torn, report.unordered, report.pending = unfinished == TORN, unfinished == UNORDERED, pending
        report.unfinished = run.get("finished") is False
        return report


def _verify(run: dict[str, Any], where: str, spool: RecordSpool, regenerate: bool, output_root: Any,
            input_root: Any, options: dict[str, Any], said: Callable[[str], None] | None) -> VerifyReport:
    """Check each output of the manifest whose run record is ``run`` and whose file records ``spool`` holds
    (every path already checked safe)."""
    first = next((safe_rel(r, "output", where) for r in map(json.loads, (t[-1] for t in spool.outputs()))
                  if r.get("status") in ("ok", "skipped")), None)
    out_root = _output_root(os.fsdecode(output_root) if output_root else None, run, where, first)
    target = open_root(out_root, options)
    report = VerifyReport(where, target.root, said=said)
    if run.get("seeding") != seeding.SCHEME and regenerate:
        raise ManifestError(f"{where} was made with another noise scheme ({run.get('seeding')}) than this "
                            f"noiseaug {__version__} implements; --regenerate cannot rebuild its outputs "
                            "(the hash check without it still works)")
    regen = _Regenerator(run, os.fsdecode(input_root) if input_root else None, report, options) \
        if regenerate else None
    for texts in spool.outputs():
        record = json.loads(texts[-1])
        if record.get("status") not in ("ok", "skipped"):
            report.not_checked += 1
            report.failure(record.get("input", "?"), record.get("error", "failed"))
            continue
        report.checked += 1
        out_rel = safe_rel(record, "output", where)
        problem = _check_hash(target, out_rel, record)
        if problem is None and regen is not None and record.get("input_missing"):
            report.inputs_gone += 1  # nothing to rebuild it from: the run that flagged it left the output alone
        elif problem is None and regen is not None:
            problem = regen.check(record, target, out_rel)
        if problem is not None:
            report.mismatch(record["output"], problem)
    return report


def _check_hash(target: Any, rel: str, record: dict[str, Any]) -> str | None:
    try:
        data = target.read(rel)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP and exc.strerror == os.strerror(errno.ELOOP):  # the output itself, not a folder
            return "a symbolic link stands there (not followed)"
        return f"cannot read: {exc.strerror or exc}"
    if hashlib.sha256(data).hexdigest() != record.get("output_sha256"):
        return "content differs from the recorded hash"
    if len(data) != record.get("output_bytes"):
        return f"the record's output_bytes ({record.get('output_bytes')}) is not the output's size ({len(data)})"
    return None


class _Regenerator:
    """Rebuilds outputs in memory from their inputs and the run's options."""

    def __init__(self, run: dict[str, Any], input_root: str | None, report: VerifyReport,
                 storage_options: dict[str, Any]) -> None:
        from .config import make_config
        from .pipeline import library_versions

        options = dict(run.get("options", {}))
        for key in ("workers", "overwrite", "dry_run", "manifest", "on_error", "executor", "scheduler",
                    "storage_options"):
            options.pop(key, None)
        try:
            self.cfg = make_config(**options)
        except UsageError as exc:
            raise ManifestError(f"the manifest's options are not valid here: {exc}") from None
        recorded = recorded_root(run, "input_root")
        root = input_root or (recorded if recorded is not None and REDACTED not in recorded else None)
        if root is None or not (is_url(root) or Path(root).is_dir()):
            raise UsageError("--regenerate needs the inputs: pass --input-root DIR")
        self.source = open_root(root, storage_options)
        now = library_versions(self.cfg.kinds)
        then = run.get("versions", {})
        self.same_versions = all(then.get(k) == v for k, v in now.items() if k != "python")
        if not self.same_versions:
            changed = ", ".join(f"{k} {then.get(k)} -> {v}" for k, v in now.items()
                                if k != "python" and then.get(k) != v)
            report.notes.append(f"library versions differ from the run ({changed}): "
                                "comparing decoded samples instead of bytes")

    def check(self, record: dict[str, Any], target: Any, out_rel: str) -> str | None:
        from .noise import numpy_defaults

        with numpy_defaults():  # as a run's worker renders: whatever np.seterr the caller set
            return self._check(record, target, out_rel)

    def _check(self, record: dict[str, Any], target: Any, out_rel: str) -> str | None:
        from .records import Job
        from .worker import read_source

        rel = rel_str(record, "input")
        source = self.source
        job = Job(rel, record["kind"], 0)
        try:
            data, digest, size = read_source(job, source)
        except OSError as exc:
            return f"input {record['input']}: cannot read: {exc.strerror or exc}"
        try:
            if digest != record.get("input_sha256"):
                return f"input {record['input']} changed since the run"
            if size != record.get("input_bytes"):
                return f"the record's input_bytes ({record.get('input_bytes')}) is not the input's size ({size})"
            return self._regenerate(record, target, out_rel, job, data)
        finally:
            if hasattr(data, "close"):  # an open recording
                data.close()

    def _regenerate(self, record: dict[str, Any], target: Any, out_rel: str, job: Any, data: Any) -> str | None:
        from .render import render

        outputs = render(job, self.source, data, [int(record["copy"])], self.cfg)
        try:
            rendered = next(outputs)
            if rendered.fields.get("seed", record.get("seed")) != record.get("seed"):
                return "the recorded seed does not match the seeding scheme"
            with tempfile.TemporaryFile() as fh:
                fields = {**rendered.fields, **(rendered.write(fh) or {})}
                digest, _ = hash_stream(fh)
                if self.same_versions:
                    if digest != record.get("output_sha256"):
                        return "regenerated bytes differ"
                    return _fields_differ(record, fields)
                fh.seek(0)
                return _compare_decoded(job, fh.read(), target.read(out_rel))
        except NoiseaugError as exc:
            return f"cannot regenerate: {exc}"
        finally:
            close = getattr(outputs, "close", None)  # a renderer that is a generator holds an open input
            if close is not None:
                close()


def _fields_differ(record: dict[str, Any], fields: dict[str, Any]) -> str | None:
    """Which field of the record (sigma, shape, clipped fraction, ...) is not what regenerating it gave."""
    for key, value in json.loads(dumps(fields)).items():  # as the record holds them (lists, not tuples)
        if record.get(key) != value:
            return f"the record's {key} ({record.get(key)!r}) is not what the run makes ({value!r})"
    return None


def _compare_decoded(job: Any, fresh: bytes, existing: bytes) -> str | None:
    import numpy as np

    from .render import decode_samples

    if not np.array_equal(decode_samples(job, fresh), decode_samples(job, existing)):
        return "regenerated samples differ"
    return None
