"""SIGINT to the process group at random moments, under load: every run must stop cleanly.

    .venv/bin/python benchmarks/sigint_stress.py [--runs 50] [--workers 2]

Makes a small image set, one clean run, then for each trial: starts a CPU hog
(a busy process per core), starts ``noiseaug run`` in its own session, sends
SIGINT to the group after a random delay, and checks that the run exited 130
(or 0 if it finished first), left no temporary file, and that a re-run ends
byte-identical to the clean run (outputs and manifest file records). Not in
``make test``: fifty trials take a few minutes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

NOISEAUG = [sys.executable, "-m", "noiseaug", "run"]


def hog(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        sum(i * i for i in range(10_000))


def make_set(root: Path) -> Path:
    src = root / "in"
    rng = np.random.default_rng(0)
    for i in range(60):
        folder = src / f"d{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        img = cv2.GaussianBlur(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"im{i:02d}.png"), img)
    return src


def tree(root: Path) -> dict[str, bytes]:
    skip = (".noiseaug", "noiseaug-manifest.jsonl")
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(skip)}


def file_records(manifest: Path) -> list[str]:
    return manifest.read_text().splitlines()[1:]


def trial(src: Path, out: Path, clean: Path, workers: int, rng: random.Random) -> str | None:
    hogs = [multiprocessing.Process(target=hog, args=(time.monotonic() + 30,)) for _ in range(os.cpu_count() or 2)]
    for h in hogs:
        h.start()
    try:
        proc = subprocess.Popen([*NOISEAUG, str(src), str(out), "--workers", str(workers), "-q"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(rng.uniform(0.0, 2.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    text = stderr.decode(errors="replace")
    if proc.returncode == -signal.SIGINT and "noiseaug" not in text.split("KeyboardInterrupt")[0]:
        # SIGINT before Python ran noiseaug's first line (interpreter start-up, runpy): Python's own handler
        # ends the process by the signal, which a shell reports as 130; nothing was written yet
        pass
    elif proc.returncode not in (130, 0):
        return f"exit {proc.returncode}: {text[-300:]!r}"
    elif "Traceback" in text:
        return f"traceback: {text[-300:]!r}"
    left = [p for p in out.rglob("*noiseaug-tmp")]
    if left:
        return f"{len(left)} temporary file(s) left"
    subprocess.run([*NOISEAUG, str(src), str(out), "-q"], check=True)
    if tree(out) != tree(clean) or file_records(out / "noiseaug-manifest.jsonl") != file_records(
            clean / "noiseaug-manifest.jsonl"):
        return "the re-run does not equal a clean run"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = make_set(root)
        clean = root / "clean"
        subprocess.run([*NOISEAUG, str(src), str(clean), "-q"], check=True)
        failures = 0
        for i in range(args.runs):
            out = root / "out"
            shutil.rmtree(out, ignore_errors=True)
            problem = trial(src, out, clean, args.workers, rng)
            print(f"trial {i + 1:2d}: {problem or 'ok'}", flush=True)
            failures += problem is not None
        print(f"{args.runs - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
