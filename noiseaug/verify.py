"""``noiseaug verify``: prove a manifest's outputs, by hash or by regeneration."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, seeding
from .errors import ManifestError, NoiseaugError, UsageError
from .manifest import load, rel_str, safe_rel, sort_key
from .report import printable
from .storage.local import hash_stream, read_input


@dataclass
class VerifyReport:
    """What verify found: one entry per output that does not match."""

    manifest: str
    output_root: str
    checked: int = 0
    not_checked: int = 0  # error records: there is no output to check
    mismatches: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason) of files that failed in the run
    notes: list[str] = field(default_factory=list)
    torn: bool = False  # the manifest's last line was cut off: one record could not be read

    @property
    def exit_code(self) -> int:
        return 1 if self.mismatches or self.torn or self.failed else 0

    def lines(self) -> list[str]:
        return ([f"noiseaug: mismatch: {printable(path)}: {reason}" for path, reason in self.mismatches]
                + [f"noiseaug: failed in the run: {printable(path)}: {reason}" for path, reason in self.failed])

    def text(self) -> str:
        lines = list(self.notes)
        good = self.checked - len(self.mismatches)
        lines.append(f"{good} of {self.checked} outputs in {self.output_root} match {self.manifest}"
                     + (f"; {self.not_checked} failed in the run and have no output" if self.not_checked else ""))
        if self.torn:
            lines.append("the manifest's last line is cut off (a run was killed while writing it): "
                         "that record could not be read; run noiseaug again to complete the manifest")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "output_root": self.output_root, "checked": self.checked,
                "not_checked": self.not_checked,
                "matching": self.checked - len(self.mismatches), "exit_code": self.exit_code,
                "mismatches": [{"output": p, "reason": r} for p, r in self.mismatches], "torn": self.torn,
                "failed": [{"input": p, "reason": r} for p, r in self.failed],
                "notes": self.notes}


def _output_root(given: Path | None, run: dict[str, Any], manifest: Path) -> Path:
    """Where a manifest's outputs are: given, else beside a manifest kept in OUTPUT
    (so a copied or moved OUTPUT verifies itself), else the recorded OUTPUT."""
    if given is not None:
        return given
    recorded = run.get("output_root")
    if run.get("options", {}).get("manifest") is None or not isinstance(recorded, str):
        return manifest.parent
    return Path(recorded)


def verify(manifest: str | os.PathLike, *, regenerate: bool = False,
           output_root: str | os.PathLike | None = None,
           input_root: str | os.PathLike | None = None) -> VerifyReport:
    """Check every output of a manifest; with ``regenerate``, rebuild and compare.

    Outputs are looked for under ``output_root``, by default the recorded
    OUTPUT if it exists, else the manifest's own folder; inputs (for
    ``regenerate``) under ``input_root``, by default the recorded INPUT.
    """
    path = Path(manifest)
    m = load(path)
    where = os.fsdecode(path)
    records = sorted(m.files.values(), key=sort_key)
    for record in records:
        safe_rel(record, "input", where)
        safe_rel(record, "output", where)
    out_root = _output_root(Path(output_root) if output_root else None, m.run, path)
    report = VerifyReport(where, os.fsdecode(out_root))
    if m.torn:
        report.torn = True
    if m.run.get("seeding") != seeding.SCHEME and regenerate:
        raise ManifestError(f"{where} was made with another noise scheme ({m.run.get('seeding')}) than this "
                            f"noiseaug {__version__} implements; --regenerate cannot rebuild its outputs "
                            "(the hash check without it still works)")
    regen = _Regenerator(m.run, Path(input_root) if input_root else None, report) if regenerate else None
    for record in records:
        if record.get("status") not in ("ok", "skipped"):
            report.not_checked += 1
            report.failed.append((record.get("input", "?"), record.get("error", "failed")))
            continue
        report.checked += 1
        out_rel = safe_rel(record, "output", where)
        problem = _check_hash(out_root, out_rel, record)
        if problem is None and regen is not None:
            problem = regen.check(record, out_root / out_rel)
        if problem is not None:
            report.mismatches.append((record["output"], problem))
    return report


def _check_hash(root: Path, rel: str, record: dict[str, Any]) -> str | None:
    try:
        data = read_input(os.path.join(root, rel))
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if hashlib.sha256(data).hexdigest() != record.get("output_sha256"):
        return "content differs from the recorded hash"
    return None


class _Regenerator:
    """Rebuilds outputs in memory from their inputs and the run's options."""

    def __init__(self, run: dict[str, Any], input_root: Path | None, report: VerifyReport) -> None:
        from .config import make_config
        from .pipeline import library_versions

        options = dict(run.get("options", {}))
        for key in ("workers", "overwrite", "dry_run", "manifest", "on_error"):
            options.pop(key, None)
        try:
            self.cfg = make_config(**options)
        except UsageError as exc:
            raise ManifestError(f"the manifest's options are not valid here: {exc}") from None
        recorded = run.get("input_root")
        self.root = input_root or (Path(recorded) if isinstance(recorded, str) else None)
        if self.root is None or not self.root.is_dir():
            raise UsageError("--regenerate needs the inputs: pass --input-root DIR")
        now = library_versions(self.cfg.kinds)
        then = run.get("versions", {})
        self.same_versions = all(then.get(k) == v for k, v in now.items() if k != "python")
        if not self.same_versions:
            changed = ", ".join(f"{k} {then.get(k)} -> {v}" for k, v in now.items()
                                if k != "python" and then.get(k) != v)
            report.notes.append(f"library versions differ from the run ({changed}): "
                                "comparing decoded samples instead of bytes")

    def check(self, record: dict[str, Any], output: Path) -> str | None:
        from .records import Job
        from .render import render
        from .storage import LocalStorage
        from .worker import read_source

        rel = rel_str(record, "input")
        source = LocalStorage(os.fsdecode(self.root))
        job = Job(rel, record["kind"], 0)
        try:
            data, digest, _ = read_source(job, source)
        except OSError as exc:
            return f"input {record['input']}: cannot read: {exc.strerror or exc}"
        if digest != record.get("input_sha256"):
            return f"input {record['input']} changed since the run"
        outputs = render(job, source, data, [int(record["copy"])], self.cfg)
        try:
            rendered = next(outputs)
            if rendered.fields.get("seed", record.get("seed")) != record.get("seed"):
                return "the recorded seed does not match the seeding scheme"
            with tempfile.TemporaryFile() as fh:
                rendered.write(fh)
                digest, _ = hash_stream(fh)
                if self.same_versions:
                    return None if digest == record.get("output_sha256") else "regenerated bytes differ"
                fh.seek(0)
                return _compare_decoded(job, fh.read(), read_input(output))
        except NoiseaugError as exc:
            return f"cannot regenerate: {exc}"
        finally:
            close = getattr(outputs, "close", None)  # a renderer that is a generator holds an open input
            if close is not None:
                close()


def _compare_decoded(job: Any, fresh: bytes, existing: bytes) -> str | None:
    import numpy as np

    from .render import decode_samples

    if not np.array_equal(decode_samples(job, fresh), decode_samples(job, existing)):
        return "regenerated samples differ"
    return None
