"""Fuzzing ``noiseaug run`` with a corpus of malformed images and recordings.

The corpus (tests/fuzz_corpus.py) is deterministic: hundreds of truncated,
bit-flipped, empty, misnamed, absurd-header and garbage files, plus a few
valid ones. noiseaug runs as a real subprocess, with a timeout so a hang
fails the test. The contract checked, per README and SPEC §3-§4:

- the process ends with exit 0 or 1 (1 exactly when some file failed), and
  never prints a traceback;
- the manifest has exactly one file record per input (copy 0), ``ok`` or
  ``error``; an error has a one-line reason and is named on exactly one
  ``noiseaug: failed: PATH: REASON`` line of stderr, and has no output;
- nothing but noiseaug writes to stderr: a codec library's own messages
  (libpng, libmpg123, ...) come from worker processes sharing the stream and
  land inside noiseaug's lines;
- every ``ok`` output exists, has its recorded SHA-256 and decodes; every
  valid file is ``ok``;
- no temporary file is left behind, and the inputs are unchanged;
- failures are deterministic: ``--workers 1`` gives the same status, reason
  and output bytes per file as ``--workers 2``.

Some mutations still decode (a flipped bit in JPEG entropy data, a WAV whose
data size says "streamed"): the test never assumes a mutated file fails.

Every problem found is collected, named with the file's mutation, and
reported together.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import records, tree
from fuzz_corpus import kind_of, write_all

TIMEOUT = 300  # seconds; a hang must fail the test, not the CI job
FAILED_PREFIX = "noiseaug: failed: "
TMP_SUFFIX = ".noiseaug-tmp"
MANIFEST = "noiseaug-manifest.jsonl"


@dataclass
class Corpus:
    root: Path
    bad: dict[str, str]  # relative path -> mutation
    good: list[str]
    digests: dict[str, str]  # relative path -> SHA-256 before the runs

    def what(self, rel: str) -> str:
        if rel in self.bad:
            return self.bad[rel]
        return "valid file" if rel in self.good else "not in the corpus"

    @property
    def files(self) -> set[str]:
        return set(self.bad) | set(self.good)


@dataclass
class Run:
    out: Path
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST


def _digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in tree(root).items()}


def run_noiseaug(corpus: Path, out: Path, workers: int) -> Run:
    """``python -m noiseaug run CORPUS OUT --workers N --json --copy-other`` in its own process group."""
    cmd = [sys.executable, "-m", "noiseaug", "run", os.fsdecode(corpus), os.fsdecode(out),
           "--workers", str(workers), "--json", "--copy-other"]  # label maps get records too
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=out.parent, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
        stdout, stderr = proc.communicate()
        pytest.fail(f"noiseaug run --workers {workers} hung: no exit after {TIMEOUT} s\n"
                    f"stderr tail:\n{stderr.decode(errors='replace')[-3000:]}")
    return Run(out, proc.returncode, stdout.decode("utf-8", errors="replace"),
               stderr.decode("utf-8", errors="replace"), time.monotonic() - start)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("fuzz") / "corpus"
    bad, good = write_all(root)
    assert len(bad) >= 320 and good
    assert all(len(data) < 64 * 1024 for data in tree(root).values())
    return Corpus(root, bad, good, _digests(root))


@pytest.fixture(scope="module")
def run2(corpus: Corpus) -> Run:
    return run_noiseaug(corpus.root, corpus.root.parent / "out-w2", workers=2)


def _tracebacks(stderr: str) -> list[str]:
    """Each traceback on stderr: the line before it, its frames and its exception line."""
    lines = stderr.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if "Traceback" in line:
            end = i + 1
            while end < len(lines) and lines[end].startswith(" "):
                end += 1
            blocks.append("\n".join(lines[max(0, i - 1):end + 1]))
    return blocks


# what codec libraries print on their own (libpng, libjpeg, libtiff, libmpg123, a cffi callback)
_CODEC_CHATTER = re.compile(r"libpng (error|warning)|libmpg123|JFIF|Corrupt JPEG|Premature end of JPEG|"
                            r"samples per pixel|TIFF[A-Z][a-z]|Exception ignored|Traceback")


def _foreign_lines(stderr: str) -> list[str]:
    """stderr lines with a codec library's own output (it may be glued to one of noiseaug's lines)."""
    return [line for line in stderr.splitlines() if _CODEC_CHATTER.search(line)]


def _file_records(run: Run, corpus: Corpus, problems: list[str]) -> dict[str, dict[str, Any]]:
    """One record per corpus file (copy 0), keyed by input; anything else is a problem."""
    assert run.manifest.is_file(), f"no manifest at {run.manifest}\nstderr tail:\n{run.stderr[-3000:]}"
    run_record, recs = records(run.manifest)
    assert run_record["type"] == "run"
    by_input: dict[str, dict[str, Any]] = {}
    for rec in recs:
        rel = rec.get("input")
        if rec.get("type") != "file":
            problems.append(f"record that is not a file record: {rec}")
        elif rel not in corpus.files:
            problems.append(f"record for an input that is not in the corpus: {rec}")
        elif rec.get("copy") != 0:
            problems.append(f"{rel} ({corpus.what(rel)}): record for copy {rec.get('copy')}: {rec}")
        elif rel in by_input:
            problems.append(f"{rel} ({corpus.what(rel)}): more than one record: {by_input[rel]} and {rec}")
        else:
            by_input[rel] = rec
    for rel in sorted(corpus.files - set(by_input)):
        problems.append(f"{rel} ({corpus.what(rel)}): no record in the manifest")
    return by_input


def _decode_problem(path: Path, kind: str) -> str | None:
    data = path.read_bytes()
    if kind == "label":  # copied unchanged: Pillow, the reader of palette and 1-bit images, must read it
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as exc:  # noqa: BLE001 - any failure to read the output is the finding
            return f"Pillow cannot decode it: {exc}"
        return None
    if kind == "image":
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            return f"cv2.imdecode raised {' '.join(str(exc).split())[:200]}"
        return None if pixels is not None and pixels.size else "cv2.imdecode cannot decode it"
    try:
        sf.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any failure to read the output is the finding
        return f"soundfile.info raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def test_fuzz_corpus_gives_one_clean_record_per_file(corpus: Corpus, run2: Run):
    problems: list[str] = []
    print(f"\n{len(corpus.bad)} malformed + {len(corpus.good)} valid files; "
          f"noiseaug --workers 2 took {run2.seconds:.1f} s, exit {run2.code}")

    if run2.code not in (0, 1):
        problems.append(f"exit code {run2.code} (a crash or a refusal), wanted 0 or 1")
    tracebacks = _tracebacks(run2.stderr)
    if tracebacks:  # worker processes share stderr, so a traceback may be cut by other lines
        raised = sorted({m.group(0) for m in re.finditer(r"^\s*\w+(Error|Exception)\b.*$", run2.stderr, re.M)})
        problems.append(f"{len(tracebacks)} traceback(s) on stderr; exceptions {raised}; the first:\n"
                        + tracebacks[0])

    by_input = _file_records(run2, corpus, problems)
    failed_lines = [line for line in run2.stderr.splitlines() if line.startswith(FAILED_PREFIX)]
    errors = {rel: rec for rel, rec in by_input.items() if rec.get("status") == "error"}

    for rel, rec in sorted(by_input.items()):
        what = corpus.what(rel)
        status = rec.get("status")
        out = run2.out / rec.get("output", rel)
        if status not in ("ok", "error"):
            problems.append(f"{rel} ({what}): status {status!r}, wanted 'ok' or 'error': {rec}")
            continue
        kinds = {kind_of(rel)} | ({"label"} if kind_of(rel) == "image" else set())  # label maps are copied
        if rec.get("kind") not in kinds:
            problems.append(f"{rel} ({what}): kind {rec.get('kind')!r}, wanted {kind_of(rel)!r}")
        if status == "error":
            reason = rec.get("error")
            if not isinstance(reason, str) or not reason.strip() or "\n" in reason or "\r" in reason:
                problems.append(f"{rel} ({what}): error reason is not a non-empty line: {reason!r}")
            named = [line for line in failed_lines if line.startswith(f"{FAILED_PREFIX}{rel}: ")]
            if len(named) != 1:
                problems.append(f"{rel} ({what}): named on {len(named)} 'noiseaug: failed:' lines, wanted 1: {named}")
            elif named[0] != f"{FAILED_PREFIX}{rel}: {reason}":
                problems.append(f"{rel} ({what}): stderr says {named[0]!r}, the manifest says {reason!r}")
            if os.path.lexists(out):
                problems.append(f"{rel} ({what}): error ({reason}) but an output exists at {rec.get('output')}")
            if rel in corpus.good:
                problems.append(f"{rel} (valid file): error: {reason}")
            continue
        if not out.is_file():
            problems.append(f"{rel} ({what}): ok but no output at {rec.get('output')}")
            continue
        data = out.read_bytes()
        if rec.get("output_sha256") != hashlib.sha256(data).hexdigest():
            problems.append(f"{rel} ({what}): output SHA-256 differs from its record")
        why = _decode_problem(out, rec.get("kind", kind_of(rel)))
        if why:
            problems.append(f"{rel} ({what}): ok, but its output does not decode: {why}")

    if len(failed_lines) != len(errors):
        named = {line[len(FAILED_PREFIX):] for line in failed_lines}
        extra = sorted(line for line in named if not any(line.startswith(f"{rel}: ") for rel in errors))
        problems.append(f"{len(failed_lines)} 'noiseaug: failed:' lines for {len(errors)} error records; "
                        f"lines naming no error record: {extra[:20]}")
    if run2.code in (0, 1) and run2.code != (1 if errors else 0):
        problems.append(f"exit code {run2.code} with {len(errors)} error records")
    try:
        summary = json.loads(run2.stdout)
        ok_count = sum(rec.get("status") == "ok" for rec in by_input.values())
        if (summary.get("ok"), summary.get("failed")) != (ok_count, len(errors)):
            problems.append(f"--json summary says ok={summary.get('ok')} failed={summary.get('failed')}, "
                            f"the manifest {ok_count} ok and {len(errors)} errors")
    except json.JSONDecodeError as exc:
        problems.append(f"stdout is not one JSON object ({exc}): {run2.stdout[:300]!r}")

    outputs = {rec["output"] for rec in by_input.values() if rec.get("status") == "ok"}
    for folder, _, names in os.walk(run2.out):
        for name in names:
            rel = Path(folder, name).relative_to(run2.out).as_posix()
            if name.endswith(TMP_SUFFIX):
                problems.append(f"temporary file left behind: {rel}")
            elif rel not in outputs and rel != MANIFEST and not (folder == os.fsdecode(run2.out)
                                                                  and name.startswith(".noiseaug")):
                problems.append(f"file in OUTPUT that is no ok output: {rel}")

    if _digests(corpus.root) != corpus.digests:
        problems.append("the corpus changed: inputs must only be read")

    foreign = [line for line in _foreign_lines(run2.stderr) if "Traceback" not in line]
    if foreign:  # workers share stderr: such text lands inside noiseaug's failure lines, at random
        problems.append(f"{len(foreign)} stderr line(s) hold a codec library's own output, e.g. "
                        + "; ".join(list(dict.fromkeys(foreign))[:8]))
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_fuzz_failures_do_not_depend_on_workers(corpus: Corpus, run2: Run):
    run1 = run_noiseaug(corpus.root, corpus.root.parent / "out-w1", workers=1)
    print(f"\nnoiseaug --workers 1 took {run1.seconds:.1f} s, exit {run1.code}")
    assert run1.code in (0, 1), f"--workers 1: exit {run1.code}\nstderr tail:\n{run1.stderr[-3000:]}"
    assert run2.code in (0, 1), f"--workers 2: exit {run2.code}\nstderr tail:\n{run2.stderr[-3000:]}"

    ignored: list[str] = []  # the first test reports missing and duplicate records
    one = _file_records(run1, corpus, ignored)
    two = _file_records(run2, corpus, ignored)
    assert set(one) == set(two) == corpus.files, "\n".join(ignored)

    problems = []
    for rel in sorted(corpus.files):
        a, b = one[rel], two[rel]
        what = corpus.what(rel)
        if a.get("status") != b.get("status"):
            problems.append(f"{rel} ({what}): --workers 1 {a.get('status')} ({a.get('error', '')}), "
                            f"--workers 2 {b.get('status')} ({b.get('error', '')})")
        elif a.get("status") == "error" and a.get("error") != b.get("error"):
            problems.append(f"{rel} ({what}): reasons differ: --workers 1 {a.get('error')!r}, "
                            f"--workers 2 {b.get('error')!r}")
        elif a.get("status") == "ok" and a.get("output_sha256") != b.get("output_sha256"):
            problems.append(f"{rel} ({what}): ok in both runs, but the outputs differ")
    if _digests(corpus.root) != corpus.digests:
        problems.append("the corpus changed: inputs must only be read")
    assert not problems, f"{len(problems)} difference(s) between --workers 1 and --workers 2:\n" + "\n".join(problems)
