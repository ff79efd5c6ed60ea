"""The outcome of a run: counts, bytes, time, failures, and the exit code."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .discover import WalkStats

if TYPE_CHECKING:
    from .discover import Candidate
    from .records import Job, Outcome

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143
LISTED = 1000  # entries a summary keeps of each list (failures, gone inputs, ...): every one is in the manifest


class Listed(list):  # type: ignore[type-arg]
    """A list that keeps its first LISTED entries and counts them all: a summary's memory does not grow with the
    dataset, even when a million files fail. ``total`` is how many were appended, ``last`` the last of them."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.total = len(self)
        self.last = self[-1] if self else None

    def append(self, item: Any) -> None:
        self.total += 1
        self.last = item
        if len(self) < LISTED:
            super().append(item)

    @property
    def unlisted(self) -> int:
        return self.total - len(self)


class Reporter:
    """Hooks through which a run tells its progress; the default says nothing."""

    def discovered(self, candidate: Candidate) -> None:
        """A file was found and will be processed."""

    def finished(self, job: Job, outcomes: list[Outcome]) -> None:
        """A file's copies are done (ok, skipped, failed, or not taken)."""

    def planned(self, job: Job, action: str) -> None:
        """--dry-run: what would happen to a file ("process" or "skip")."""

    def planned_removal(self, rel: str) -> None:
        """--dry-run --overwrite: an output of the previous run that the run would remove."""

    def note(self, text: str, always: bool = False) -> None:
        """Something worth saying with -v (how the run goes, not about one file); ``always``: unless --quiet."""

    def close(self) -> None:
        """The run is over."""


def shown(text: str) -> str:
    """A file system string as valid UTF-8 text: bytes that are not UTF-8 (held as surrogates) as ``\\xNN``,
    the way the manifest shows such names (``--json`` must stay UTF-8 that any parser reads)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """A file name made safe for one terminal line: undecodable bytes as ``\\xNN``, control characters
    escaped."""
    text = shown(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Summary:
    """What a run did. ``exit_code`` follows SPEC §1."""

    input_root: str
    output_root: str
    manifest: str
    counts: Counter = field(default_factory=Counter)  # (kind, status) -> outputs
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    walk: WalkStats = field(default_factory=WalkStats)
    failures: Listed = field(default_factory=Listed)  # (input, output, reason), one per output
    gone: Listed = field(default_factory=Listed)  # inputs in the old manifest, now missing
    now_labels: Listed = field(default_factory=Listed)  # noised last time, label maps left alone now: records dropped
    clipped_sum: Counter = field(default_factory=Counter)  # kind -> sum of clipped fractions (running: no list)
    clipped_count: Counter = field(default_factory=Counter)  # kind -> outputs with a clipped fraction
    kind_bytes: Counter = field(default_factory=Counter)  # (kind, "in"|"out") -> bytes
    clipped_max: dict[str, float] = field(default_factory=dict)  # kind -> largest clipped fraction
    interrupted: bool = False
    signal: str | None = None  # SIGINT or SIGTERM, when interrupted
    stopped: str | None = None  # why the run stopped before the end (not Ctrl-C)
    dry_run: bool = False
    planned: Counter = field(default_factory=Counter)  # dry run: (kind, "process"|"skip") -> files
    planned_bytes: Counter = field(default_factory=Counter)
    unmatched: list[str] = field(default_factory=list)  # --include/--exclude patterns that matched nothing
    removed: int = 0  # --overwrite: outputs of the previous run that this run does not produce, removed
    would_remove: int = 0  # --overwrite --dry-run: those the run would remove
    warned: int = 0  # outputs written with a warning in their record (said on stderr as they were written)
    manifest_failed: str | None = None  # why the manifest's final rewrite (or upload) failed: it is not as the run ends

    def add(self, record: dict[str, Any], skipped: bool = False) -> None:
        """Count one output; ``skipped`` when it was up to date and left alone."""
        kind, status = record.get("kind", "?"), "skipped" if skipped else record["status"]
        self.counts[kind, status] += 1
        if status == "ok":
            if record.get("copy", 0) == 0:
                self.bytes_in += record.get("input_bytes", 0)
                self.kind_bytes[kind, "in"] += record.get("input_bytes", 0)
            self.bytes_out += record.get("output_bytes", 0)
            self.kind_bytes[kind, "out"] += record.get("output_bytes", 0)
            if "clipped_fraction" in record:  # running sums: memory does not grow with the dataset
                fraction = record["clipped_fraction"]
                self.clipped_sum[kind] += fraction
                self.clipped_count[kind] += 1
                self.clipped_max[kind] = max(self.clipped_max.get(kind, 0.0), fraction)
            self.warned += "warning" in record
        elif status == "error":
            self.failures.append((record["input"], record.get("output", ""), record.get("error", "failed")))

    def total(self, status: str) -> int:
        return sum(n for (_, s), n in self.counts.items() if s == status)

    @property
    def failed(self) -> int:
        return self.total("error") + len(self.walk.problems)

    @property
    def up_to_date(self) -> bool:
        if self.dry_run:
            return sum(n for (_, action), n in self.planned.items() if action == "process") == 0
        return (not self.interrupted and not self.stopped and self.total("ok") == 0
                and self.failed == 0 and self.total("skipped") > 0 and not self.now_labels)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_TERMINATED if self.signal == "SIGTERM" else EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.stopped else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        kinds = sorted({k for k, _ in self.counts} | {k for k, _ in self.planned})
        per_kind = {k: {s: self.counts[k, s] for s in ("ok", "skipped", "error")} for k in kinds}
        out: dict[str, Any] = {
            "input": shown(self.input_root), "output": shown(self.output_root), "manifest": shown(self.manifest),
            "exit_code": self.exit_code, "interrupted": self.interrupted,
            "dry_run": self.dry_run, "up_to_date": self.up_to_date, "stopped": self.stopped,
            "files": per_kind,
            "ok": self.total("ok"), "skipped": self.total("skipped"), "failed": self.failed,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.rate, 2),
            "clipped_fraction_mean": self._clipped_mean(list(self.clipped_max)) or 0.0,
            "clipped_fraction_max": max(self.clipped_max.values(), default=0.0),
            "not_taken": {"unsupported": self.walk.unsupported, "filtered": self.walk.filtered,
                          "other_shard": self.walk.other_shard, "links": self.walk.links,
                          "special": self.walk.special, "labels": self.walk.labels},
            "failures": [{"input": shown(i), "output": shown(o), "error": shown(e)}
                         for i, o, e in sorted(self.failures)],
            "problems": [shown(p) for p in self.walk.problems],
            "gone": [shown(g) for g in self.gone],
            "now_labels": [shown(n) for n in self.now_labels],
            "unmatched_globs": [shown(u) for u in self.unmatched],
            "removed": self.removed,
            "warnings": self.warned,
            "not_listed": {"failures": self.failures.unlisted, "gone": self.gone.unlisted,
                           "now_labels": self.now_labels.unlisted},
        }
        if self.dry_run:
            out["plan"] = {k: {a: self.planned[k, a] for a in ("process", "skip")} for k in kinds}
            out["plan_bytes"] = {k: self.planned_bytes[k] for k in kinds}
            out["plan_remove"] = self.would_remove
        return out

    @property
    def rate(self) -> float:
        done = self.total("ok")
        return done / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        """The human summary for stderr: an aligned table and the failures."""
        if self.dry_run:
            return self._plan_text()
        kinds = sorted({k for k, _ in self.counts})
        lines = _table(self._rows(kinds)) if kinds else []
        lines.append(f"{self.seconds:.2f} s, {self.rate:.1f} files/s")
        if self.would_remove:
            lines.append(f"would remove {self.would_remove} output(s) of the previous run that this run does not "
                         "produce (--overwrite)")
        not_taken = self._not_taken()
        if not_taken:
            lines.append("not taken: " + not_taken)
        lines.extend(self._warnings())
        if self.gone:
            shown = ", ".join(printable(g) for g in self.gone[:5]) + (", ..." if self.gone.total > 5 else "")
            lines.append(f"{self.gone.total} input(s) of the previous run are gone ({shown}); "
                         "their outputs were left alone and their records flagged input_missing")
        if self.now_labels:
            shown = ", ".join(printable(g) for g in self.now_labels[:5]) + (", ..." if self.now_labels.total > 5
                                                                             else "")
            lines.append(f"{self.now_labels.total} input(s) noised last time are label maps now ({shown}): left "
                         "alone without --copy-other and their records dropped; the outputs made from what they "
                         "were stay (--overwrite removes them)")
        if self.walk.problems:
            lines.append(f"{len(self.walk.problems)} path(s) of INPUT could not be taken (no record, not counted "
                         "in the table: they fail the run):")
        for problem in self.walk.problems:
            lines.append(f"failed: {printable(problem)}")
        said = sorted(dict.fromkeys((path, reason) for path, _, reason in self.failures))  # by input, as the manifest
        for path, reason in said[:20]:
            lines.append(f"failed: {printable(path)}: {reason}")
        more = max(0, len(said) - 20) + self.failures.unlisted
        if more:
            lines.append(f"... and {more} more failures, each in the manifest with its reason")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        if self.interrupted:
            lines.append(f"interrupted by {self.signal or 'SIGINT'}: the manifest holds what was done; "
                         "run again to continue")
        elif self.up_to_date:
            lines.append("everything is up to date")
        elif not self.counts and not self.walk.problems and not self.stopped:
            lines.append("no input file was selected: nothing to do")
        lines.append(f"manifest: {printable(self.manifest)}" + (f" (its final rewrite failed: {self.manifest_failed})"
                                                      if self.manifest_failed else ""))
        return "\n".join(lines)

    def _rows(self, kinds: list[str]) -> list[tuple[str, ...]]:
        rows = [("", "ok", "skipped", "failed", "in", "out", "clipped mean", "max")]
        for kind in kinds + (["total"] if len(kinds) > 1 else []):
            pick = kinds if kind == "total" else [kind]
            mean = self._clipped_mean(pick)
            top = max((self.clipped_max[k] for k in pick if k in self.clipped_max), default=None)
            rows.append((kind, *(str(sum(self.counts[k, s] for k in pick)) for s in ("ok", "skipped", "error")),
                         _size(sum(self.kind_bytes[k, "in"] for k in pick)),
                         _size(sum(self.kind_bytes[k, "out"] for k in pick)),
                         f"{100 * mean:.3f}%" if mean is not None else "-",
                         f"{100 * top:.3f}%" if top is not None else "-"))
        return rows

    def _clipped_mean(self, kinds: list[str]) -> float | None:
        count = sum(self.clipped_count[k] for k in kinds)
        return sum(self.clipped_sum[k] for k in kinds) / count if count else None

    def _not_taken(self) -> str:
        w = self.walk
        parts = [(w.unsupported, "unsupported (use --copy-other to copy them)"),
                 (w.filtered, "filtered out"), (w.other_shard, "in other shards"),
                 (w.links, "symbolic links (not followed)"), (w.special, "special files"),
                 (w.labels, "label maps (palette or 1-bit images: --copy-other copies them, "
                            "--palette-images noise noises them)")]
        return ", ".join(f"{n} {what}" for n, what in parts if n)

    def _warnings(self) -> list[str]:
        lines = [f"noiseaug: warning: {printable(option)} matched no file" for option in self.unmatched]
        if self.warned:
            lines.append(f"noiseaug: warning: {self.warned} output(s) written with a warning: see the \"warning\" "
                         "field of their records")
        if self.removed:
            lines.append(f"removed {self.removed} output(s) of the previous run that this run does not produce "
                         "(--overwrite)")
        return lines

    def _plan_text(self) -> str:
        lines = ["dry run: nothing written"]
        for kind in sorted({k for k, _ in self.planned}):
            lines.append(f"{kind}: {self.planned[kind, 'process']} to process, "
                         f"{self.planned[kind, 'skip']} up to date, "
                         f"{_size(self.planned_bytes[kind])} to read")
        if self.would_remove:
            lines.append(f"would remove {self.would_remove} output(s) of the previous run that this run does not "
                         "produce (--overwrite)")
        not_taken = self._not_taken()
        if not_taken:
            lines.append("not taken: " + not_taken)
        lines.extend(self._warnings())
        return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text: the first column to the left, the others to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()
            for r in rows]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
