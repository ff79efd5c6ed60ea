"""noiseaug's benchmark suite (SPEC §5): ratios against codec floors, measured in one run.

    .venv/bin/python benchmarks/bench.py [--rounds R] [--workers N] [--small] [--large]
                                         [--only images|scaling|audio|kernel|startup|large|dask]

End-to-end rows run as separate processes over the same files, INTERLEAVED:
round i runs every approach once, in an order rotated by i, so a slow spell on
this shared machine hits all approaches alike. Reported are medians over the
rounds. Wall time includes interpreter start-up and pool creation, for every
approach alike. Peak RSS is the largest VmHWM (high-water resident set) of any
single process in the approach's process tree (parent, fork server, workers),
read from /proc/<pid>/status every 50 ms while the tree runs. The dataset is
generated first if it is missing (see make_dataset.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import make_dataset
import numpy as np
import soundfile as sf
from PIL import Image

import noiseaug
from noiseaug import seeding
from noiseaug.noise import BAND_VALUES, noise_inplace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOISEAUG = REPO / ".venv" / "bin" / "noiseaug"
PYTHON = Path(sys.executable)
BASELINES = HERE / "baselines.py"
OUT = "<OUT>"  # placeholder for a fresh output folder in a command line
POLL_SECONDS = 0.05
TIME_RSS = "/usr/bin/time maxrss_kb="  # prefix of the line /usr/bin/time adds in --large
Image.MAX_IMAGE_PIXELS = None  # only headers are read here, the 100-MP PNG included
MB = 1e6
IMAGE_SIGMA = 10.0
AUDIO_SIGMA = 0.01


# ---------------------------------------------------------------- measuring one process tree

@dataclass(frozen=True)
class Run:
    """One timed process tree."""

    seconds: float
    peak_rss: int  # bytes: largest VmHWM of any process in the tree
    returncode: int
    outputs: int  # files with an expected extension found in OUT afterwards
    stderr: str


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/*/stat (this kernel has no /proc/<pid>/task/*/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _vm_hwm(pid: int) -> int | None:
    """A process's peak resident set in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class TreePeak(threading.Thread):
    """Polls the VmHWM of every process under ``root`` until stopped."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        children = _children_map()
        todo = [self.root]
        while todo:
            pid = todo.pop()
            hwm = _vm_hwm(pid)
            if hwm is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            todo.extend(children.get(pid, ()))

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop.wait(POLL_SECONDS):
                return

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def measure(argv: list[str], out: Path | None, suffixes: tuple[str, ...] = ()) -> Run:
    """Run ``argv`` (``OUT`` replaced by ``out``), timing it and sampling its tree's RSS.

    The child's own ``ru_maxrss`` is not used: a child spawned from this
    process inherits this process's high-water mark through exec, so the
    polled VmHWM of each process of the tree is what is reported.
    """
    argv = [str(out) if a == OUT else a for a in argv]
    with tempfile.TemporaryFile() as err:
        actions = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        started = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
        sampler = TreePeak(pid)
        sampler.start()
        _, status = os.waitpid(pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    outputs = sum(1 for p in out.iterdir() if p.suffix.lower() in suffixes) if out and out.is_dir() else 0
    return Run(seconds, sampler.peak, os.waitstatus_to_exitcode(status), outputs, stderr)


# ---------------------------------------------------------------- approaches and file sets

@dataclass(frozen=True)
class Approach:
    """A row of a table: a label and the command line that does the work."""

    label: str
    argv: list[str]


@dataclass(frozen=True)
class FileSet:
    """A flat folder of inputs of one kind and format."""

    name: str
    folder: Path
    kind: str  # "image" or "audio"
    files: int
    bytes: int
    suffixes: tuple[str, ...]
    description: str

    def warm(self) -> None:
        """Read every input once, in chunks, so no approach pays for a cold page cache."""
        for path in self.folder.iterdir():
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def _image_detail(path: Path) -> str:
    """Size, channels and bit depth from the header alone (no decoding)."""
    with Image.open(path) as im:
        width, height = im.size
        bands = len(im.getbands())
    depth = 8
    if path.suffix.lower() == ".png":  # Pillow opens 16-bit RGB as 8-bit RGB; the IHDR knows
        with open(path, "rb") as fh:
            depth = fh.read(25)[24]
    return f"{width}x{height}x{bands} {depth}-bit"


def file_set(name: str, folder: Path, kind: str) -> FileSet:
    """Describe the files in ``folder`` from the first one's header."""
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    if kind == "image":
        detail = _image_detail(paths[0])
    else:
        info = sf.info(paths[0])
        detail = f"{info.duration:.0f} s {info.channels} ch {info.samplerate} Hz {info.format} {info.subtype}"
    total = sum(p.stat().st_size for p in paths)
    return FileSet(name, folder, kind, len(paths), total, tuple(sorted({p.suffix.lower() for p in paths})),
                   f"{len(paths)} files, {total / MB:.1f} MB, {detail}")


def baseline(label: str, approach: str, fs: FileSet, workers: int) -> Approach:
    """A reference approach from baselines.py."""
    return Approach(label, [str(PYTHON), str(BASELINES), approach, str(fs.folder), OUT,
                            "--workers", str(workers)])


def noiseaug_run(fs: FileSet, workers: int, label: str = "noiseaug", *options: str) -> Approach:
    """``noiseaug run`` on a set: fresh OUT, manifest and hashing included."""
    sigma = ["--image-sigma", str(IMAGE_SIGMA)] if fs.kind == "image" else ["--audio-sigma", str(AUDIO_SIGMA)]
    return Approach(label, [str(NOISEAUG), "run", str(fs.folder), OUT, "--workers", str(workers),
                            "--no-progress", "-q", *sigma, "--kinds", fs.kind, *options])


def interleaved(approaches: list[Approach], fs: FileSet, rounds: int,
                workspace: Path) -> dict[str, list[Run]]:
    """Run every approach once per round, the order rotated each round."""
    fs.warm()
    results: dict[str, list[Run]] = {a.label: [] for a in approaches}
    for r in range(rounds):
        shift = r % len(approaches)
        for approach in approaches[shift:] + approaches[:shift]:
            out = workspace / f"{fs.name}-{approach.label}-{r}".replace(" ", "_")
            results[approach.label].append(measure(approach.argv, out, fs.suffixes))
            shutil.rmtree(out, ignore_errors=True)
    return results


# ---------------------------------------------------------------- printing

def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Print rows as columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  " + "  ".join(cells))


def _problems(runs: list[Run], expected: int) -> list[str]:
    notes = []
    for i, run in enumerate(runs):
        if run.returncode != 0 or run.outputs != expected:
            tail = run.stderr.strip().splitlines()[-3:]
            notes.append(f"round {i}: exit {run.returncode}, {run.outputs}/{expected} outputs; "
                         + " | ".join(tail))
    return notes


def report_set(fs: FileSet, approaches: list[Approach], results: dict[str, list[Run]],
               workers: int, rounds: int) -> None:
    """The table of one file set: medians, throughput, memory, ratios to both floors.

    The ratio of the fastest runs, (min/min), is printed next to the ratio of
    medians: on a busy shared machine the load only adds time, so the two
    bracket the undisturbed ratio.
    """
    print(f"\n{fs.name} set: {fs.description}; workers={workers}, rounds={rounds}")
    floor = statistics.median(r.seconds for r in results["codec floor"])
    floor_min = min(r.seconds for r in results["codec floor"])
    noisy = statistics.median(r.seconds for r in results["noisy floor"])
    rows, notes = [], []
    for approach in approaches:
        runs = results[approach.label]
        times = [r.seconds for r in runs]
        med = statistics.median(times)
        bad = _problems(runs, fs.files)
        notes += [f"{approach.label}: {n}" for n in bad]
        rows.append([approach.label + (" (!)" if bad else ""), f"{med:.3f}", f"{min(times):.3f}",
                     f"{max(times):.3f}", f"{fs.files / med:.1f}", f"{fs.bytes / MB / med:.1f}",
                     f"{max(r.peak_rss for r in runs) / MB:.0f}", f"{med / floor:.2f}",
                     f"{min(times) / floor_min:.2f}", f"{med / noisy:.2f}"])
    print_table(["approach", "median s", "min s", "max s", "files/s", "MB/s in",
                 "peak RSS/proc MB", "x codec floor", "(min/min)", "x noisy floor"], rows)
    for note in notes:
        print(f"  (!) {note}")
    print("  commands (<OUT> = a fresh temporary folder):")
    for approach in approaches:
        print(f"    {approach.label}: {shlex.join(approach.argv)}")


# ---------------------------------------------------------------- sections

def bench_images(sets: list[FileSet], workers: int, rounds: int, workspace: Path) -> None:
    """JPEG, PNG and 16-bit PNG sets: floors, naive numpy and noiseaug."""
    for fs in sets:
        approaches = [baseline("codec floor", "codec-floor", fs, workers),
                      baseline("noisy floor", "noisy-floor", fs, workers),
                      baseline("naive numpy", "naive", fs, workers),
                      noiseaug_run(fs, workers)]
        report_set(fs, approaches, interleaved(approaches, fs, rounds, workspace), workers, rounds)


def bench_scaling(fs: FileSet, rounds: int, workspace: Path) -> None:
    """Throughput with 2 workers over 1, for noiseaug and for the codec floor (the machine's ceiling)."""
    approaches = [noiseaug_run(fs, 1, "noiseaug w1"), noiseaug_run(fs, 2, "noiseaug w2"),
                  baseline("codec floor w1", "codec-floor", fs, 1),
                  baseline("codec floor w2", "codec-floor", fs, 2)]
    results = interleaved(approaches, fs, rounds, workspace)
    med = {label: statistics.median(r.seconds for r in runs) for label, runs in results.items()}
    print(f"\nScaling on the {fs.name} set ({fs.description}); rounds={rounds}")
    print_table(["approach", "median s", "files/s"],
                [[label + (" (!)" if _problems(results[label], fs.files) else ""),
                  f"{med[label]:.3f}", f"{fs.files / med[label]:.1f}"] for label in med])
    ours = med["noiseaug w1"] / med["noiseaug w2"]
    ceiling = med["codec floor w1"] / med["codec floor w2"]
    print(f"  noiseaug 2-worker/1-worker throughput: {ours:.2f}x (SPEC >= 1.8: {_verdict(ours >= 1.8)}); "
          f"codec floor on this machine: {ceiling:.2f}x")
    print("  (noiseaug --workers 1 runs in-process; --workers 2 forks a pool of worker processes)")


def bench_dask(fs: FileSet, rounds: int, workspace: Path) -> None:
    """--executor dask on a LocalCluster against the local pool, 1 and 2 workers; local -> S3 (a moto server on
    127.0.0.1, in this process) beside local -> local."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_EC2_METADATA_DISABLED="true")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    dask = ["--executor", "dask"]
    approaches = [noiseaug_run(fs, 1, "pool w1"), noiseaug_run(fs, 2, "pool w2"),
                  Approach("dask w1", noiseaug_run(fs, 1).argv + dask),
                  Approach("dask w2", noiseaug_run(fs, 2).argv + dask),
                  Approach("pool w2 -> S3", noiseaug_run(fs, 2).argv)]
    fs.warm()
    results: dict[str, list[Run]] = {a.label: [] for a in approaches}
    try:
        for r in range(rounds):
            shift = r % len(approaches)
            for approach in approaches[shift:] + approaches[:shift]:
                out = workspace / f"dask-{approach.label}-{r}".replace(" ", "_")
                if approach.label.endswith("S3"):
                    argv = [f"s3://bench/{r}" if a == OUT else a for a in approach.argv]
                    run = measure(argv, None)
                    results[approach.label].append(Run(run.seconds, run.peak_rss, run.returncode,
                                                       fs.files if run.returncode == 0 else 0, run.stderr))
                else:
                    results[approach.label].append(measure(approach.argv, out, fs.suffixes))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        server.stop()
    _report_dask(fs, approaches, results, rounds)


def _report_dask(fs: FileSet, approaches: list[Approach], results: dict[str, list[Run]], rounds: int) -> None:
    med = {label: statistics.median(r.seconds for r in runs) for label, runs in results.items()}
    print(f"\nDask and S3 on the {fs.name} set ({fs.description}); rounds={rounds}")
    print_table(["approach", "median s", "min s", "files/s", "MB/s in", "peak RSS/proc MB"],
                [[label + (" (!)" if _problems(runs, fs.files) else ""), f"{med[label]:.3f}",
                  f"{min(r.seconds for r in runs):.3f}", f"{fs.files / med[label]:.1f}",
                  f"{fs.bytes / MB / med[label]:.1f}", f"{max(r.peak_rss for r in runs) / MB:.0f}"]
                 for label, runs in results.items()])
    ratio = med["dask w2"] / med["pool w2"]
    pool_up, dask_up = med["pool w1"] / med["pool w2"], med["dask w1"] / med["dask w2"]
    print(f"  dask w2 / pool w2 wall time: {ratio:.2f}x (target <= 1.10: {_verdict(ratio <= 1.10)})")
    print(f"  2-vs-1-worker speed-up: dask {dask_up:.2f}x, pool {pool_up:.2f}x "
          f"(target within 5 %: {_verdict(abs(dask_up / pool_up - 1) <= 0.05)})")
    s3_ratio = med["pool w2 -> S3"] / med["pool w2"]
    print(f"  local -> S3 (moto on 127.0.0.1) / local -> local, 2 workers: {s3_ratio:.2f}x")
    for label, runs in results.items():
        for note in _problems(runs, fs.files):
            print(f"  (!) {label}: {note}")
    print("  commands (<OUT> = a fresh temporary folder, or s3://bench/<round>):")
    for approach in approaches:
        print(f"    {approach.label}: {shlex.join(approach.argv)}")


def audio_supported(workspace: Path) -> bool:
    """Whether ``noiseaug run --kinds audio`` writes an output for one tiny WAV."""
    src, out = workspace / "probe-in", workspace / "probe-out"
    src.mkdir()
    tone = (np.sin(np.arange(4410) / 10.0) * 8000).astype(np.int16)
    sf.write(src / "probe.wav", np.stack([tone, tone], axis=1), 44100, subtype="PCM_16")
    subprocess.run([str(NOISEAUG), "run", str(src), str(out), "--workers", "1", "--no-progress",
                    "-q", "--kinds", "audio"], capture_output=True, check=False)
    supported = (out / "probe.wav").is_file()
    shutil.rmtree(src)
    shutil.rmtree(out, ignore_errors=True)
    return supported


def bench_audio(sets: list[FileSet], workers: int, rounds: int, workspace: Path, supported: bool) -> None:
    """WAV and FLAC sets: read+write floors, naive float64 numpy and (if supported) noiseaug."""
    if not supported:
        print("\naudio: noiseaug does not support audio yet")
    for fs in sets:
        approaches = [baseline("codec floor", "codec-floor", fs, workers),
                      baseline("noisy floor", "noisy-floor", fs, workers),
                      baseline("naive numpy", "naive", fs, workers)]
        if supported:
            approaches.append(noiseaug_run(fs, workers))
        report_set(fs, approaches, interleaved(approaches, fs, rounds, workspace), workers, rounds)


def _interleaved_timings(rows: dict[str, tuple[Callable[[], object], Callable[[object], object]]],
                         reps: int) -> dict[str, list[float]]:
    """Wall times of ``call(prepare())`` per row, only the call timed, rows interleaved.

    Repetition i times every row once, in an order rotated by i, so that this
    shared machine's slow spells (its speed moves by 2x within minutes) hit
    every row alike and the ratios between rows hold.
    """
    labels = list(rows)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for rep in range(reps):
        turn = rep % len(labels)
        for label in labels[turn:] + labels[:turn]:
            prepare, call = rows[label]
            argument = prepare()
            started = time.perf_counter()
            call(argument)
            times[label].append(time.perf_counter() - started)
    return times


def bench_kernel(reps: int) -> None:
    """ns/sample of noiseaug's noise kernel against the naive pipeline and the raw RNG.

    The kernel works in place, so each repetition runs on a fresh copy and only
    the kernel call is timed. Raw bits are timed for one 32-bit draw per
    sample (samples/2 64-bit words: one float32 normal each) and for one 16-bit
    draw per sample (samples/4 words), whichever the kernel consumes. The
    int16 row runs the same table path on 16-bit PCM, the uint16 row the
    float path of 16-bit images; where the AVX2 loops run, a row shows the
    scalar loop too.
    """
    from noiseaug import noise

    image = make_dataset.photo(make_dataset.HD, 7)
    image16 = image.astype(np.uint16) * 257
    pcm = ((image.astype(np.int16) - 128) * 64).reshape(-1, 2)  # as many samples, stereo, -20 dBFS or so
    samples = image.size
    rng = seeding.generator(0)  # the per-file generator noiseaug uses, so raw bits are the ones it consumes
    band = np.empty(BAND_VALUES, np.float32)
    simd = noise._kernel is not None and noise._kernel.simd()

    def kernel(source: np.ndarray, sigma: float, lo: float, hi: float, vector: bool = True):
        def call(copy: np.ndarray) -> None:
            if simd and not vector:
                noise._kernel.simd(False)
            try:
                noise_inplace(copy, sigma, rng, lo=lo, hi=hi)
            finally:
                if simd:
                    noise._kernel.simd(True)
        return source.copy, call

    def plain(fn: Callable[[], object]):
        return (lambda: None), (lambda _: fn())

    def raw_in_bands(words: int) -> None:
        for start in range(0, words, BAND_VALUES // 2):
            rng.bit_generator.random_raw(min(BAND_VALUES // 2, words - start))

    def normal_in_bands() -> None:
        for start in range(0, samples, BAND_VALUES):
            rng.standard_normal(out=band[:min(BAND_VALUES, samples - start)], dtype=np.float32)

    kernel8, kernel16 = "noiseaug noise_inplace, uint8", "noiseaug noise_inplace, uint16"
    naive = "naive np.random.randn f64"
    pcm16 = f"noiseaug noise_inplace, int16 PCM, sigma {AUDIO_SIGMA:g} FS"
    raw32, raw16 = "raw bits, 32/sample: random_raw(samples/2)", "raw bits, 16/sample: random_raw(samples/4)"
    rows = {kernel8: kernel(image, IMAGE_SIGMA, 0, 255)}
    if simd:
        rows["noiseaug noise_inplace, uint8, scalar loop"] = kernel(image, IMAGE_SIGMA, 0, 255, vector=False)
    rows.update({
        pcm16: kernel(pcm, AUDIO_SIGMA * 32768, -32768, 32767),
        kernel16: kernel(image16, IMAGE_SIGMA * 257, 0, 65535),
        naive: plain(lambda: np.clip(image + np.random.randn(*image.shape) * IMAGE_SIGMA, 0, 255).astype(np.uint8)),
        "naive, Generator.standard_normal f64": plain(
            lambda: np.clip(image + rng.standard_normal(image.shape) * IMAGE_SIGMA, 0, 255).astype(np.uint8)),
        raw32: plain(lambda: rng.bit_generator.random_raw((samples + 1) // 2)),
        raw32 + ", banded": plain(lambda: raw_in_bands((samples + 1) // 2)),
        raw16: plain(lambda: rng.bit_generator.random_raw((samples + 3) // 4)),
        "standard_normal f32, one call": plain(lambda: rng.standard_normal(samples, dtype=np.float32)),
        "standard_normal f32 into a band buffer": plain(normal_in_bands),
    })
    timings = _interleaved_timings(rows, reps)
    ns = {label: statistics.median(t) / samples * 1e9 for label, t in timings.items()}
    print(f"\nNoise kernel on one {image.shape[0]}x{image.shape[1]}x{image.shape[2]} image "
          f"({samples:,} samples), sigma {IMAGE_SIGMA:g} (x257 for uint16), {reps} interleaved repetitions, "
          f"perf_counter; AVX2 loops: {'yes' if simd else 'no'}")
    print_table(["what", "median ns/sample", "min ns/sample", "median ms"],
                [[label, f"{ns[label]:.2f}", f"{min(t) / samples * 1e9:.2f}",
                  f"{statistics.median(t) * 1e3:.1f}"] for label, t in timings.items()])
    speedup = ns[naive] / ns[kernel8]
    print(f"  naive/kernel (uint8) = {speedup:.1f}x (SPEC >= 10: {_verdict(speedup >= 10)}); "
          f"uint16 kernel: {ns[naive] / ns[kernel16]:.1f}x")
    for raw in (raw32, raw16):
        ratio = ns[kernel8] / ns[raw]
        print(f"  kernel (uint8) / {raw} = {ratio:.1f}x (SPEC <= 2: {_verdict(ratio <= 2)})")


def bench_startup(workspace: Path, reps: int = 5) -> None:
    """Median wall time of ``noiseaug --help``, of a run over an empty folder, and of a bare interpreter.

    The empty run is the fixed cost every ``noiseaug run`` pays before its
    first file (imports, option parsing, manifest, lock).
    """
    empty = workspace / "empty"
    empty.mkdir()
    commands = {"noiseaug --help": [str(NOISEAUG), "--help"],
                "noiseaug run EMPTY OUT --workers 1": [str(NOISEAUG), "run", str(empty), OUT, "--workers", "1",
                                                       "--no-progress", "-q"],
                "python -c pass": [str(PYTHON), "-c", "pass"]}
    runs: dict[str, list[Run]] = {label: [] for label in commands}
    for label, argv in commands.items():
        for i in range(reps):
            out = workspace / f"startup-{i}"
            runs[label].append(measure(argv, out))
            shutil.rmtree(out, ignore_errors=True)
    med = {label: statistics.median(r.seconds for r in rs) for label, rs in runs.items()}
    print(f"\nStart-up, {reps} runs each")
    print_table(["command", "median s", "min s", "peak RSS MB"],
                [[label, f"{med[label]:.3f}", f"{min(r.seconds for r in rs):.3f}",
                  f"{max(r.peak_rss for r in rs) / MB:.0f}"] for label, rs in runs.items()])
    print(f"  SPEC --help < 0.3 s: {_verdict(med['noiseaug --help'] < 0.3)}")


def bench_large_image(png: Path, workspace: Path) -> None:
    """Peak RSS of one noiseaug worker on the 100-MP PNG, against its decoded size."""
    fs = file_set("100-MP PNG", png.parent, "image")
    with Image.open(png) as im:
        decoded = im.size[0] * im.size[1] * len(im.getbands())  # 8-bit
    _report_large(fs, decoded, [noiseaug_run(fs, 1, "noiseaug --workers 1"),
                                noiseaug_run(fs, 1, "noiseaug --workers 1 --copies 3", "--copies", "3"),
                                baseline("codec floor, 1 worker", "codec-floor", fs, 1)],
                  workspace, lambda rss: (rss < 3 * decoded, "SPEC < 3x decoded"))


def bench_large_audio(wav: Path, workspace: Path, supported: bool) -> None:
    """Peak RSS of one noiseaug worker on the 60-minute WAV (if audio is supported)."""
    fs = file_set("60-min WAV", wav.parent, "audio")
    info = sf.info(wav)
    decoded = info.frames * info.channels * 2
    approaches = [baseline("codec floor, 1 worker (whole file)", "codec-floor", fs, 1)]
    if supported:
        approaches.insert(0, noiseaug_run(fs, 1, "noiseaug --workers 1"))
    else:
        print("\naudio: noiseaug does not support audio yet (no noiseaug row for the 60-minute WAV)")
    _report_large(fs, decoded, approaches, workspace, lambda rss: (rss < 200 * MB, "SPEC < 200 MB"))


def _report_large(fs: FileSet, decoded: int, approaches: list[Approach], workspace: Path,
                  limit: Callable[[int], tuple[bool, str]]) -> None:
    """One run of each approach under ``/usr/bin/time``, whose max RSS cross-checks the polled VmHWM."""
    fs.warm()
    print(f"\nMemory on the {fs.name} ({fs.description}); decoded size {decoded / MB:.0f} MB; one run each")
    rows, notes = [], []
    for approach in approaches:
        out = workspace / f"large-{approach.label}".replace(" ", "_")
        run = measure(["/usr/bin/time", "-f", f"{TIME_RSS}%M", *approach.argv], out, fs.suffixes)
        shutil.rmtree(out, ignore_errors=True)
        notes += [f"{approach.label}: {n}" for n in _problems([run], fs.files)]
        time_kb = [line for line in run.stderr.splitlines() if line.startswith(TIME_RSS)]
        time_rss = f"{int(time_kb[-1][len(TIME_RSS):]) * 1024 / MB:.0f}" if time_kb else "?"
        ok, rule = limit(run.peak_rss)
        rows.append([approach.label, f"{run.seconds:.2f}", f"{run.peak_rss / MB:.0f}", time_rss,
                     f"{run.peak_rss / decoded:.2f}",
                     f"{rule}: {_verdict(ok)}" if approach.label.startswith("noiseaug") else "-"])
    print_table(["approach", "seconds", "peak RSS/proc MB", "/usr/bin/time max RSS MB", "x decoded", "SPEC"],
                rows)
    for note in notes:
        print(f"  (!) {note}")
    for approach in approaches:
        print(f"    {approach.label}: {shlex.join(approach.argv)}")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------- main

def print_header(args: argparse.Namespace) -> None:
    """What ran where: enough to compare two runs of this suite."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "noiseaug"],
                           capture_output=True, text=True, check=False).stdout.strip()
    print(f"noiseaug benchmarks, {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"noiseaug {noiseaug.__version__} at {commit}{' (noiseaug/ modified)' if dirty else ''}; "
          f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
          f"libsndfile {sf.__libsndfile_version__}")
    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"workers={args.workers}, rounds={args.rounds}; times are medians over rounds; peak RSS = max "
          f"VmHWM over the processes of one approach's tree (polled every {POLL_SECONDS * 1000:.0f} ms), "
          "max over rounds")


def byte_compile() -> None:
    """Byte-compile noiseaug, as ``pip install`` does for users.

    An editable install run with PYTHONDONTWRITEBYTECODE set (as on this
    project's CI machines) would otherwise compile every module from source
    on every run, about 50 ms that no installed copy pays.
    """
    subprocess.run([str(PYTHON), "-m", "compileall", "-q", str(REPO / "noiseaug")], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="workers for every approach (default 2)")
    parser.add_argument("--small", action="store_true", help="the small dataset (8 images per set)")
    parser.add_argument("--large", action="store_true", help="also memory on a 60-min WAV and a 100-MP PNG")
    parser.add_argument("--only", choices=("images", "scaling", "audio", "kernel", "startup", "large", "dask"),
                        help="run one section (large: only the --large memory section)")
    args = parser.parse_args()
    want = {args.only} if args.only else {"images", "scaling", "audio", "kernel", "startup", "dask"}
    if args.large:
        want.add("large")

    tier = make_dataset.tier_for(8 if args.small else 64, args.small)
    root = make_dataset.DEFAULT_ROOT
    data = make_dataset.make_tier(root, tier) if want & {"images", "scaling", "audio", "dask"} else None
    wav, png = make_dataset.make_large(root) if "large" in want else (None, None)
    byte_compile()
    print_header(args)
    with tempfile.TemporaryDirectory(prefix="noiseaug-bench-") as tmp:
        workspace = Path(tmp)
        supported = audio_supported(workspace) if want & {"audio", "large"} else False
        jpeg = file_set("JPEG", data / "jpeg", "image") if data is not None else None
        if data is not None and "images" in want:
            sets = [file_set("JPEG + PNG", data / "photos", "image"), jpeg, file_set("PNG", data / "png", "image"),
                    file_set("PNG 16-bit", data / "png16", "image")]
            bench_images(sets, args.workers, args.rounds, workspace)
        if jpeg is not None and "scaling" in want:
            bench_scaling(jpeg, args.rounds, workspace)
        if data is not None and "dask" in want:
            bench_dask(file_set("JPEG + PNG", data / "photos", "image"), args.rounds, workspace)
        if data is not None and "audio" in want:
            bench_audio([file_set("WAV", data / "wav", "audio"), file_set("FLAC", data / "flac", "audio")],
                        args.workers, args.rounds, workspace, supported)
        if wav is not None and png is not None:
            bench_large_image(png, workspace)
            bench_large_audio(wav, workspace, supported)
        if "kernel" in want:
            bench_kernel(reps=9)
        if "startup" in want:
            bench_startup(workspace)


if __name__ == "__main__":
    main()
