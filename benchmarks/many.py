"""Many small files (issue: a million files on one machine), measured beside their codec floor.

    .venv/bin/python benchmarks/many.py [--rounds 3] [--workers 2] [--images 20000] [--wavs 5000]
    .venv/bin/python benchmarks/many.py --million DIR     # 1,000,000 PNGs of 16x16 (made once): not in CI
    .venv/bin/python benchmarks/many.py --growth 20000,200000   # parent peak RSS at each size, bytes per file
    .venv/bin/python benchmarks/many.py --profile 4000   # cProfile of one in-process run (make profile)
    .venv/bin/python benchmarks/many.py --instructions 200   # user-space instructions per file (valgrind)

Sets: N PNGs of 32x32 in ten folders, M one-second 16 kHz mono PCM_16 WAVs.
For each set, INTERLEAVED rounds of: the codec floor (decode + re-encode in a
pool of the same size, chunks of 64 files) and ``noiseaug run`` (fresh
OUTPUT), both as commands timed from outside, start-up included: the floor is
this script run as ``--floor-pass`` (a Python that imports the codecs and
forks its pool, as a decode + re-encode tool would). The same floor run in
this already-warm process is reported beside it, for reference. The package
is byte-compiled first, as an installed one is (``pip`` compiles at install;
an editable checkout under PYTHONDONTWRITEBYTECODE would compile at every
start). Then the parent's peak RSS of one noiseaug run (``ru_maxrss`` of the
parent alone, in a wrapper), a no-op re-run's time, and ``find -printf '%s %T@'``
over the same tree. Medians of the rounds are reported, with the CPU each
file costs in the parent and in the workers (``getrusage`` of the parent and
of its waited-for children).
"""

from __future__ import annotations

import argparse
import compileall
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

PYTHON = sys.executable
CHUNK = 64
PARENT_RSS = ("import resource, runpy, sys\n"
              "sys.argv = ['noiseaug', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('noiseaug', run_name='__main__')\n"
              "except SystemExit:\n    pass\n"
              "me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
              "print('parent_maxrss_kb', me.ru_maxrss, me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime,"
              " file=sys.stderr)\n")


def make_pngs(root: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    blobs = [cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))[1].tobytes()
             for _ in range(256)]
    for i in range(count):
        folder = root / f"d{i % 10}"
        if i < 10:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:07d}.png").write_bytes(blobs[i % 256])


def make_wavs(root: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tone = 0.3 * np.sin(2 * np.pi * (200 + i % 800) * np.arange(16000) / 16000) + 0.01 * rng.standard_normal(16000)
        sf.write(root / f"s{i:05d}.wav", tone, 16000, subtype="PCM_16")


def _floor_one(paths: tuple[str, str]) -> None:
    src, dst = paths
    if src.endswith(".png"):
        data = np.fromfile(src, np.uint8)
        ok, out = cv2.imencode(".png", cv2.imdecode(data, cv2.IMREAD_UNCHANGED), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        out.tofile(dst)
    else:
        samples, rate = sf.read(src, dtype="int16")
        sf.write(dst, samples, rate, subtype="PCM_16")


def floor(src: Path, out: Path, workers: int) -> float:
    """The codec floor as a command: this script's ``--floor-pass``, timed from outside as noiseaug is."""
    started = time.perf_counter()
    subprocess.run([PYTHON, __file__, "--floor-pass", str(src), str(out), str(workers)], check=True)
    return time.perf_counter() - started


def floor_warm(src: Path, out: Path, workers: int) -> float:
    """Decode + re-encode every file, in a pool, chunks of 64, from this process (codecs already imported)."""
    started = time.perf_counter()
    jobs = []
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = out / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(path), str(target)))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_floor_one, jobs, chunksize=CHUNK):
            pass
    return time.perf_counter() - started


def noiseaug(src: Path, out: Path, workers: int) -> tuple[float, float, float, float]:
    """One ``noiseaug run``: (seconds, the parent's peak RSS in MB, the parent's CPU s, the workers' CPU s)."""
    started = time.perf_counter()
    proc = subprocess.run([PYTHON, "-c", PARENT_RSS, "run", str(src), str(out), "--workers", str(workers), "-q",
                           "--no-progress"], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    seconds = time.perf_counter() - started
    line = [x for x in proc.stderr.splitlines() if x.startswith("parent_maxrss_kb")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"noiseaug failed: {proc.stderr[-500:]}")
    _, rss, parent, children = line[0].split()
    return seconds, int(rss) / 1024, float(parent), float(children)


def find_seconds(src: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["find", str(src), "-printf", "%s %T@\n"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def startup_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "noiseaug", "--version"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def bench_set(name: str, src: Path, work: Path, workers: int, rounds: int) -> None:
    files = sum(1 for p in src.rglob("*") if p.is_file())
    floors, warm, runs, rss, cpu = [], [], [], [], []
    for r in range(rounds):
        order = ["floor", "warm", "noiseaug"] if r % 2 == 0 else ["noiseaug", "warm", "floor"]
        for label in order:
            out = work / f"{name}-{label}-{r}"
            if label == "floor":
                floors.append(floor(src, out, workers))
            elif label == "warm":
                warm.append(floor_warm(src, out, workers))
            else:
                seconds, peak, parent, children = noiseaug(src, out, workers)
                runs.append(seconds)
                rss.append(peak)
                cpu.append((parent, children))
    last = work / f"{name}-noiseaug-{rounds - 1}"
    noop = [noiseaug(src, last, workers)[0] for _ in range(rounds)]
    finds = [find_seconds(src) for _ in range(rounds)]
    start = statistics.median(startup_seconds() for _ in range(3))
    f, n = statistics.median(floors), statistics.median(runs)
    print(f"\n{name}: {files} files, workers={workers}, rounds={rounds} (medians)")
    w = statistics.median(warm)
    print(f"  codec floor      {f:8.2f} s  {files / f:8.0f} files/s   (a command, start-up included)")
    print(f"  noiseaug         {n:8.2f} s  {files / n:8.0f} files/s   ratio {n / f:.2f}x")
    print(f"  floor, warm      {w:8.2f} s  {files / w:8.0f} files/s   (in this process: noiseaug {n / w:.2f}x it)")
    parent, children = (statistics.median(c[i] for c in cpu) / files * 1e6 for i in (0, 1))
    print(f"  CPU per file     {parent:8.0f} us in the parent, {children:.0f} us in the workers")
    print(f"  parent peak RSS  {max(rss):8.1f} MB")
    print(f"  no-op re-run     {statistics.median(noop):8.2f} s  (start-up {start:.2f} s: "
          f"{statistics.median(noop) - start:.2f} s after it)")
    print(f"  find -printf     {statistics.median(finds):8.3f} s")


def million(root: Path, workers: int, count: int = 1_000_000) -> None:
    """The million-file set: made once under ``root``, then one round of each, outputs under ``root`` too."""
    src = root / "png"
    if not src.exists():
        make_pngs(src, count, 16)
    with tempfile.TemporaryDirectory(prefix="noiseaug-million-", dir=root) as tmp:
        f = floor(src, Path(tmp) / "floor", workers)
        seconds, peak, parent, children = noiseaug(src, Path(tmp) / "out", workers)
        print(f"{count:,} PNG 16x16: floor {f:.1f} s, noiseaug {seconds:.1f} s (ratio {seconds / f:.2f}x), parent "
              f"peak RSS {peak:.1f} MB, CPU per file {parent / count * 1e6:.0f} us in the parent, "
              f"{children / count * 1e6:.0f} us in the workers")
        for _ in range(3):
            print(f"  no-op re-run {noiseaug(src, Path(tmp) / 'out', workers)[0]:.2f} s, "
                  f"find -printf {find_seconds(src):.2f} s")


def growth(sizes: list[int], workers: int) -> None:
    """The parent's peak RSS over sets of 16x16 PNGs of each size, and its growth per file."""
    peaks = []
    for count in sizes:
        with tempfile.TemporaryDirectory(prefix="noiseaug-growth-") as tmp:
            make_pngs(Path(tmp) / "png", count, 16)
            seconds, peak, parent, children = noiseaug(Path(tmp) / "png", Path(tmp) / "out", workers)
        peaks.append(peak)
        print(f"{count:9d} files: {seconds:7.1f} s, parent peak RSS {peak:6.1f} MB, CPU per file "
              f"{parent / count * 1e6:.0f} us in the parent, {children / count * 1e6:.0f} us in the workers")
    if len(sizes) > 1:
        per_file = (peaks[-1] - peaks[0]) * 1024 * 1024 / (sizes[-1] - sizes[0])
        print(f"growth between {sizes[0]} and {sizes[-1]} files: {per_file:.0f} bytes per file")


def profile(count: int) -> None:
    """Where one in-process run (``--workers 1``) spends its time, by cProfile: the top functions."""
    import cProfile
    import pstats

    import noiseaug

    with tempfile.TemporaryDirectory(prefix="noiseaug-profile-") as tmp:
        make_pngs(Path(tmp) / "png", count, 32)
        profiler = cProfile.Profile()
        profiler.runcall(noiseaug.run, Path(tmp) / "png", Path(tmp) / "out", workers=1)
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)


def _harness(kind: str, src: Path, count: int, mode: str) -> None:
    """One process: 20 files each way to warm up, then ``count`` files the ``mode`` way (for valgrind)."""
    from noiseaug.config import Config
    from noiseaug.records import Job
    from noiseaug.silence import held_devnull
    from noiseaug.storage.local import LocalStorage
    from noiseaug.worker import Context, limit_threads, process_job

    files = sorted(p for p in src.rglob("*") if p.is_file())[:count + 20]
    rels = [str(p.relative_to(src)) for p in files]
    limit_threads(("image",))
    with tempfile.TemporaryDirectory(prefix="noiseaug-instructions-") as out:
        for folder in {os.path.dirname(rel) for rel in rels}:
            os.makedirs(os.path.join(out, folder), exist_ok=True)
        ctx = Context(LocalStorage(str(src)), LocalStorage(out), Config(workers=1), "run", os.getpid())
        jobs = [Job(rel, "image" if kind == "png" else "audio", p.stat().st_size) for p, rel in zip(files, rels)]
        with held_devnull(stderr=True):
            for i, (job, path) in enumerate(zip(jobs, files)):
                if i < 20 or mode == "noiseaug":
                    process_job(job, ctx)
                if i < 20 or mode == "floor":
                    _floor_one((str(path), os.path.join(out, job.rel)))


def instructions(count: int) -> None:
    """User-space instructions per file, noiseaug's worker path beside the floor's, in one process, and the
    parent's own in a real run: counted by valgrind (callgrind), so a shared, noisy machine does not move them
    (system calls are not counted)."""
    with tempfile.TemporaryDirectory(prefix="noiseaug-instructions-") as tmp:
        make_pngs(Path(tmp) / "png", count + 20, 32)
        make_wavs(Path(tmp) / "wav", count + 20)
        for kind in ("png", "wav"):
            counted = {}
            for mode in ("floor", "noiseaug"):
                for n in (0, count):
                    counted[mode, n] = _callgrind([__file__, "--harness", kind, str(Path(tmp) / kind), str(n), mode])
            floor_, ours = ((counted[m, count] - counted[m, 0]) / count for m in ("floor", "noiseaug"))
            print(f"{kind}: floor {floor_ / 1e6:.2f} M instructions a file, noiseaug {ours / 1e6:.2f} M "
                  f"({ours / floor_:.2f}x)")
        sizes = (count, 3 * count)
        for n in sizes:
            make_pngs(Path(tmp) / f"run{n}", n, 32)
        parent = [_callgrind(["-m", "noiseaug", "run", str(Path(tmp) / f"run{n}"), str(Path(tmp) / f"out{n}"), "-q",
                              "--workers", "2"]) for n in sizes]
        print(f"png: the parent of a run (2 workers) {(parent[1] - parent[0]) / (sizes[1] - sizes[0]) / 1e6:.2f} M "
              "instructions a file, on top of its workers'")


def _callgrind(args: list[str]) -> int:
    """Instructions of one Python process run with ``args`` under callgrind (the process itself, not the workers
    it forks)."""
    with tempfile.TemporaryDirectory(prefix="noiseaug-callgrind-") as out:
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", PYTHON, *args],
                              capture_output=True, text=True, check=True)
        pid = int(proc.stderr.split("==", 2)[1])  # valgrind's lines start with ==PID==
        return int(re.search(r"^(?:summary|totals): (\d+)", Path(out, f"cg.{pid}").read_text(errors="replace"),
                             re.M).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--wavs", type=int, default=5000)
    parser.add_argument("--million", type=Path, help="only the million-file set: 1,000,000 PNGs of 16x16 made "
                                                      "under this folder (if not there yet), one round of the "
                                                      "floor and noiseaug, no-op re-runs and find")
    parser.add_argument("--growth", help="only the parent's peak RSS over sets of these sizes (16x16 PNGs), "
                                         "e.g. 20000,200000, and the growth per file between the first and last")
    parser.add_argument("--profile", type=int, metavar="N", help="only a cProfile of one in-process run over N PNGs")
    parser.add_argument("--instructions", type=int, metavar="N", help="only user-space instructions per file over "
                                                                      "N PNGs and N WAVs, beside the floor's "
                                                                      "(valgrind)")
    parser.add_argument("--harness", nargs=4, help=argparse.SUPPRESS)  # KIND SRC N MODE: one counted process
    parser.add_argument("--floor-pass", nargs=3, help=argparse.SUPPRESS)  # SRC OUT WORKERS: the floor, a command
    args = parser.parse_args()
    if args.floor_pass:
        floor_warm(Path(args.floor_pass[0]), Path(args.floor_pass[1]), int(args.floor_pass[2]))
        return
    compileall.compile_dir(Path(__file__).parent.parent / "noiseaug", quiet=1)
    if args.harness:
        _harness(args.harness[0], Path(args.harness[1]), int(args.harness[2]), args.harness[3])
        return
    if args.instructions:
        instructions(args.instructions)
        return
    if args.million:
        million(args.million, args.workers)
        return
    if args.growth:
        growth([int(n) for n in args.growth.split(",")], args.workers)
        return
    if args.profile:
        profile(args.profile)
        return
    with tempfile.TemporaryDirectory(prefix="noiseaug-many-") as tmp:
        root = Path(tmp)
        if args.images:
            make_pngs(root / "png", args.images, 32)
            bench_set(f"{args.images} PNG 32x32 (ten folders)", root / "png", root, args.workers, args.rounds)
        if args.wavs:
            make_wavs(root / "wav", args.wavs)
            bench_set(f"{args.wavs} WAV 1 s 16 kHz mono PCM_16", root / "wav", root, args.workers, args.rounds)


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
