"""SIGINT and SIGTERM to the whole process group, once and twice (SPEC §1): real processes, real signals.

Children start with default signal dispositions whatever pytest inherited
(a background job in a non-interactive shell ignores SIGINT, and POSIX
passes that on), in a session of their own so ``os.killpg`` reaches the run
and its workers as a terminal's Ctrl-C or a CI cancellation would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

from conftest import clean_run, random_images, records, tree

HOUSEKEEPING = (".noiseaug.lock", ".noiseaug-manifest.jsonl.state", "noiseaug-manifest.jsonl")


def _defaults() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def start(src: Path, out: Path, workers: int, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "noiseaug", "run", src, out, "--workers", str(workers),
                             "--no-progress", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_defaults)


def outputs(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(out).items() if not k.startswith(HOUSEKEEPING)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    names = [f"d{i % 3}/im{i:02d}.png" for i in range(40)]
    return random_images(tmp_path_factory.mktemp("sig") / "in", names, (512, 512, 3), seed=1, blur=3)


@pytest.fixture(scope="module")
def clean(dataset, tmp_path_factory) -> Path:
    return clean_run(dataset, tmp_path_factory.mktemp("sigclean") / "out")


def interrupt(dataset: Path, out: Path, workers: int, signals: list[int], after: int = 4, pattern: str = "*.png",
              delay: float = 0.0, options: tuple[str, ...] = (), done: Callable[[Path], int] | None = None):
    """Start a run, wait for ``after`` outputs (or ``after`` by ``done``), send ``signals`` to its process group;
    (code, stderr).

    A second signal is sent once the run has said it is stopping (two signals
    sent at once may arrive as one, as POSIX allows).
    """
    done = done or (lambda out: sum(1 for _ in out.rglob(pattern)) if out.exists() else 0)
    for _ in range(3):  # on a loaded machine the run may finish before the signal: try again
        proc = start(dataset, out, workers, *options)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if done(out) >= after:
                break
            time.sleep(0.002)
        time.sleep(delay)  # into the next files: equal files keep the workers in step, ending together
        if proc.poll() is None:
            os.killpg(proc.pid, signals[0])
            first = b""
            if len(signals) > 1:
                first = proc.stderr.readline()
                for signum in signals[1:]:
                    os.killpg(proc.pid, signum)
            _, stderr = proc.communicate(timeout=120)
            return proc.returncode, (first + stderr).decode("utf-8", "replace")
        proc.communicate()
        for path in sorted(out.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
    pytest.fail("the run finished every time before it could be interrupted")


def resume_equals_clean(dataset: Path, out: Path, clean: Path) -> None:
    subprocess.run([sys.executable, "-m", "noiseaug", "run", dataset, out, "-q"], check=True)
    assert outputs(out) == outputs(clean)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(clean / "noiseaug-manifest.jsonl")[1]
    assert not list(out.rglob("*noiseaug-tmp"))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_to_the_group_finishes_files_in_flight(dataset, clean, tmp_path, workers, signum, code):
    out = tmp_path / "out"
    returncode, stderr = interrupt(dataset, out, workers, [signum])
    assert returncode == code, stderr
    assert "noiseaug: stopping; finishing" in stderr and "Traceback" not in stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert 4 <= len(recs) < 40 and all(r["status"] == "ok" for r in recs)  # nothing abandoned, nothing invented
    assert recs == sorted(recs, key=lambda r: r["input"])
    assert not list(out.rglob("*noiseaug-tmp"))
    assert (out / ".noiseaug.lock").read_text().strip() == "clean"
    resume_equals_clean(dataset, out, clean)


def test_a_signal_stops_a_worker_between_the_small_files_of_its_group(tmp_path):
    """Small inputs go through a pool worker 16 at a time, stage by stage: a worker that looked for a stop
    only between groups wrote up to 16 more files after Ctrl-C. Small on disk, slow to write (a plain
    1500x1500 gray PNG is 5 KB and 2.3 MB of noisy pixels): one signal must cost a file or so per worker."""
    from conftest import write_image

    src = tmp_path / "in"
    for i in range(48):
        write_image(src / "flat" / f"g{i:02d}.png", np.full((1500, 1500), 4 * i, np.uint8))
    assert all(p.stat().st_size < 65536 for p in (src / "flat").iterdir())
    out = tmp_path / "out"
    returncode, stderr = interrupt(src, out, 2, [signal.SIGINT], after=2)
    assert returncode == 130, stderr
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert 2 <= len(recs) <= 2 + 4 and all(r["status"] == "ok" for r in recs), [r["input"] for r in recs]
    assert sorted(p.name for p in (out / "flat").iterdir()) == sorted(r["output"][5:] for r in recs)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Few long FLAC recordings: each is in flight for a second or so, coded block by block, so a
    signal lands inside one (where an in-process run checks for it)."""
    src = tmp_path_factory.mktemp("sigbig") / "in"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        samples = (rng.standard_normal((48000 * 120, 2)) * 3000).astype(np.int16)
        sf.write(src / f"long{i}.flac", samples, 48000, subtype="PCM_16")
    return src


@pytest.fixture(scope="module")
def big_clean(big, tmp_path_factory) -> Path:
    return clean_run(big, tmp_path_factory.mktemp("sigbigclean") / "out")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_signal_abandons_files_in_flight_and_the_next_run_sweeps(big, big_clean, tmp_path, workers):
    out = tmp_path / "out"
    returncode, stderr = interrupt(big, out, workers, [signal.SIGINT, signal.SIGINT], after=1, pattern="*.flac",
                                   delay=0.2)
    assert returncode == 130, stderr
    assert "abandoning the files in flight" in stderr and "Traceback" not in stderr
    _, recs = records(out / "noiseaug-manifest.jsonl")
    for rec in recs:
        assert rec["status"] == "ok" or rec["error"].startswith("abandoned"), rec
    assert any(r["status"] == "error" for r in recs)  # the abandoned file is recorded, not lost
    assert (out / ".noiseaug.lock").read_text().strip() != "clean"  # tells the next run to sweep
    resume_equals_clean(big, out, big_clean)


def test_an_interrupted_overwrite_is_continued_by_a_plain_run_not_vouched_for_by_the_old_stat_cache(
        dataset, clean, tmp_path):
    """--overwrite, then Ctrl-C: the stat cache of the run before it still vouched for its outputs (noted with the
    new manifest), so a plain re-run with the new options kept the old outputs as up to date, then failed with
    a traceback, every time. Not retried here: the interrupted run must not finish (nothing to clean up)."""
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    returncode, stderr = interrupt(dataset, out, 1, [signal.SIGINT], after=3, options=("--image-sigma", "5",
                                   "--overwrite"), done=_records_at_sigma_5)
    assert returncode == 130, stderr
    assert 3 <= _records_at_sigma_5(out) < 40
    fresh = clean_run(dataset, tmp_path / "fresh", "--image-sigma", "5")
    again = subprocess.run([sys.executable, "-m", "noiseaug", "run", dataset, out, "-q", "--image-sigma", "5"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert outputs(out) == outputs(fresh)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(fresh / "noiseaug-manifest.jsonl")[1]


def _records_at_sigma_5(out: Path) -> int:
    """File records in OUTPUT's manifest, once it is the one of a run with --image-sigma 5 (else 0)."""
    lines = (out / "noiseaug-manifest.jsonl").read_bytes().splitlines()
    return len(lines) - 1 if lines and b'"image_sigma": "5"' in lines[0] else 0


def test_a_run_killed_twice_between_manifest_appends_still_resumes(dataset, clean, tmp_path):
    out = tmp_path / "out"
    for after in (6, 14):  # two SIGKILLs: the second run appends to a manifest the first left torn
        proc = start(dataset, out, 2)
        while proc.poll() is None and sum(1 for _ in out.rglob("*.png")) < after:
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        manifest = out / "noiseaug-manifest.jsonl"
        data = manifest.read_bytes()
        if data.endswith(b"\n"):  # tear the last record, as a kill inside a write would
            manifest.write_bytes(data[:-20])
    resume_equals_clean(dataset, out, clean)


def test_signals_that_come_during_one_long_c_call_all_count():
    """CPython runs a handler once for a signal that came twice inside one C call (a codec's, with
    --workers 1): the second Ctrl-C must still abandon, not be lost."""
    import hashlib
    import threading

    from noiseaug.signals import Stopper

    def send():
        time.sleep(0.2)
        for _ in range(2):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.05)

    with Stopper() as stopper:
        sender = threading.Thread(target=send)
        sender.start()
        hashlib.pbkdf2_hmac("sha256", b"key", b"salt", 3_000_000)  # about a second in C, no signal checks
        sender.join()
        for _ in range(100):  # the handler runs at the next bytecode; a slow machine may need a moment
            if stopper.count:
                break
            time.sleep(0.01)
        assert stopper.count == 2 and stopper.abandoning
        assert stopper.wakeup_fd is not None and os.read(stopper.wakeup_fd, 16)  # still wakes a waiting loop
