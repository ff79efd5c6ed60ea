"""What a run shows on stderr while it goes: a tqdm bar, failures, and -v lines."""

from __future__ import annotations

import sys
import time
from typing import Any

from .discover import Candidate
from .records import Job, Outcome, path_fields
from .report import Reporter, printable


class ConsoleReporter(Reporter):
    """Progress bar (files, with MB done of MB found) and one line per failure.

    The bar's total grows while the walk is still finding files. Failures are
    printed even with ``quiet``; ``verbose`` adds one line per file.
    """

    def __init__(self, *, bar: bool, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.bytes_found = 0
        self.bytes_done = 0
        self._bar: Any = None
        self._last_postfix = 0.0
        if bar and not quiet:
            from tqdm import tqdm

            self._monitor = tqdm.monitor_interval
            tqdm.monitor_interval = 0  # no monitor thread: workers are forked from this process (restored at close)
            self._bar = tqdm(total=0, unit="file", file=sys.stderr, dynamic_ncols=True,
                             smoothing=0.1, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                             "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def discovered(self, candidate: Candidate) -> None:
        self.bytes_found += candidate.size
        if self._bar is not None:
            self._bar.total += 1

    def note(self, text: str, always: bool = False) -> None:
        if (self.verbose or always) and not self.quiet:
            self._print(f"noiseaug: {text}")

    def planned(self, job: Job, action: str) -> None:
        if self.verbose and not self.quiet:
            said = {"process": "would process", "skip": "up to date", "label": "label map, would be left alone"}
            self._print(f"{said[action]}: {shown(job.rel)}")

    def planned_removal(self, rel: str) -> None:
        if self.verbose and not self.quiet:
            self._print(f"would remove: {shown(rel)}")

    def finished(self, job: Job, outcomes: list[Outcome]) -> None:
        self.bytes_done += job.size
        records = [o.record for o in outcomes if o.record is not None]
        name = shown(job.rel)
        reasons = list(dict.fromkeys(r.get("error") for r in records if r["status"] == "error"))
        for reason in reasons:  # one line per input and reason, not one per copy
            self._print(f"noiseaug: failed: {name}: {reason}")
        if not self.quiet:
            warned = dict.fromkeys(o.record["warning"] for o in outcomes
                                   if o.record is not None and "warning" in o.record and not o.skipped)
            for warning in warned:
                self._print(f"noiseaug: warning: {name}: {warning}")
        if self.verbose and not self.quiet:
            self._say_each(outcomes, name)
        if self._bar is not None:
            self._bar.update(1)
            now = time.monotonic()
            if now - self._last_postfix > 0.25:
                self._last_postfix = now
                self._set_postfix()

    def _say_each(self, outcomes: list[Outcome], name: str) -> None:
        for outcome in outcomes:
            if outcome.record is None:
                self._print(f"{outcome.not_taken}, left alone: {name}")
            elif outcome.status != "error":
                status = "skipped" if outcome.skipped else outcome.status
                self._print(f"{status}: {name} -> {printable(outcome.record['output'])}")

    def _set_postfix(self) -> None:
        self._bar.set_postfix_str(f"{self.bytes_done / 1e6:.1f}/{self.bytes_found / 1e6:.1f} MB",
                                  refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._set_postfix()
            self._bar.close()
            self._bar = None
            from tqdm import tqdm

            tqdm.monitor_interval = self._monitor


def shown(rel: str) -> str:
    """An input's path as the manifest and the summary show it (undecodable bytes as ``\\xff``), made safe
    for one terminal line."""
    return printable(path_fields("input", rel)["input"])
