"""Faults: dying and hanging workers, with real processes (SPEC §3, issue 'robustness')."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from conftest import records, tree, write_image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Small images plus one long recording that keeps a worker busy for a while."""
    src = tmp_path_factory.mktemp("data") / "in"
    for i in range(10):
        write_image(src / "small" / f"img{i}.png", np.full((32, 32, 3), 10 * i, np.uint8))
    (src / "long").mkdir()
    block = (np.random.default_rng(0).standard_normal((48000 * 10, 2)) * 0.1).astype(np.float32)
    with sf.SoundFile(src / "long" / "session.wav", "w", 48000, 2, "PCM_16") as f:
        for _ in range(60):  # ten minutes: about a second of work, far over the 0.3 s limit below
            f.write(block)
    return src


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def holder_of(path_part: str, pids: list[int]) -> int | None:
    """The process that has a file whose path contains ``path_part`` open."""
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if path_part in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return pid
        except OSError:
            continue
    return None


def run(src: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "noiseaug", "run", src, out, "--workers", "2",
                             "--no-progress", "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_killed_worker_costs_one_file_and_is_replaced(dataset, tmp_path):
    out = tmp_path / "out"
    proc = run(dataset, out)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        victim = holder_of("long/session.wav", descendants(proc.pid))
        time.sleep(0.005)
    assert victim is not None, "never saw a worker on the long file"
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout)
    assert summary["ok"] == 10 and summary["failed"] == 1
    _, recs = records(out / "noiseaug-manifest.jsonl")
    [lost] = [r for r in recs if r["status"] == "error"]
    assert lost["input"] == "long/session.wav" and "SIGKILL" in lost["error"]
    assert not list(out.rglob("*noiseaug-tmp")) and not (out / "long" / "session.wav").exists()
    again = subprocess.run([sys.executable, "-m", "noiseaug", "run", dataset, out, "--workers", "2", "--json"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and json.loads(again.stdout)["ok"] == 1  # and a re-run finishes the job


def test_a_file_over_the_time_limit_is_abandoned_and_the_rest_done(dataset, tmp_path):
    out = tmp_path / "out"
    proc = run(dataset, out, "--file-timeout", "0.3")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    _, recs = records(out / "noiseaug-manifest.jsonl")
    status = {r["input"]: (r["status"], r.get("error", "")) for r in recs}
    assert status.pop("long/session.wav")[1].startswith("took longer than --file-timeout 0.3 s")
    assert {s for s, _ in status.values()} == {"ok"} and len(status) == 10
    assert not list(out.rglob("*noiseaug-tmp"))
    assert "failed: long/session.wav: took longer" in stderr


def can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c",
                             f"mount -t tmpfs -o size=64k tmpfs '{probe}'"], capture_output=True)
    return result.returncode == 0


def test_a_full_disk_stops_the_run_cleanly(tmp_path):
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("needs a private tmpfs (unshare --map-root-user --mount), which this kernel refuses")
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(30):
        write_image(src / f"img{i:02d}.png", rng.integers(0, 256, (100, 100, 3), dtype=np.uint8))  # ~30 KB each
    out, copy, manifest = tmp_path / "out", tmp_path / "copy", tmp_path / "manifest.jsonl"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs '{out}' && "
              f"'{sys.executable}' -m noiseaug run '{src}' '{out}' --workers 2 --json --manifest '{manifest}' "
              f"> '{tmp_path}/summary.json' 2> '{tmp_path}/stderr.txt'; echo $? > '{tmp_path}/rc'; "
              f"cp -a '{out}' '{copy}'")
    subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], check=True, timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", stderr
    assert "No space left on device" in stderr and "stopped:" in stderr and "Traceback" not in stderr
    failed_lines = [line for line in stderr.splitlines() if line.startswith("noiseaug: failed:")]
    assert 1 <= len(failed_lines) <= 2  # stops at the first failed write (one per worker at most)
    assert not list(copy.rglob("*noiseaug-tmp"))
    _, recs = records(manifest)
    written = {p.name for p in copy.glob("*.png")}
    assert {r["output"] for r in recs if r["status"] == "ok"} == written and 3 < len(written) < 30
    for name in written:  # every file left under a final name is complete
        assert cv2.imdecode(np.frombuffer((copy / name).read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED) is not None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "No space left" in summary["stopped"]


def test_a_full_disk_while_writing_audio_stops_the_run_with_its_reason(tmp_path):
    """libsndfile writes through its own descriptor and says "System error": the run still stops at once."""
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("needs a private tmpfs (unshare --map-root-user --mount), which this kernel refuses")
    import soundfile as sf

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        sf.write(src / f"long{i}.wav", (rng.standard_normal((48000 * 4, 2)) * 3000).astype(np.int16), 48000,
                 subtype="PCM_16")  # 768 KB each, on a 1 MB disk
    out, manifest = tmp_path / "out", tmp_path / "manifest.jsonl"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs '{out}' && "
              f"'{sys.executable}' -m noiseaug run '{src}' '{out}' --workers 1 --manifest '{manifest}' "
              f"2> '{tmp_path}/stderr.txt'; echo $? > '{tmp_path}/rc'")
    subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], check=True, timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", stderr
    failed = [line for line in stderr.splitlines() if line.startswith("noiseaug: failed:")]
    assert len(failed) == 1 and "No space left on device" in failed[0] and "stopped:" in stderr, stderr


def test_files_a_dead_worker_finished_but_had_not_reported_are_done_again(tmp_path, monkeypatch):
    """A worker reports finished files together; killed (here over --file-timeout) before it did, the files
    it had finished in its batch are done again by another worker: every input gets exactly one record."""
    import noiseaug
    from noiseaug.executors import pool

    monkeypatch.setattr(pool, "REPORT_EVERY", 600.0)  # nothing reported before the batch ends (forked workers)
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(5):
        write_image(src / "a" / f"{i}.png", np.full((32, 32, 3), 10 * i, np.uint8))
    write_image(src / "a" / "z.png", np.full((3000, 3000, 3), 128, np.uint8))  # small on disk, seconds of work
    summary = noiseaug.run(src, out, workers=2, file_timeout=0.3, image_sigma=20.0)
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert sorted(r["input"] for r in recs) == [f"a/{i}.png" for i in range(5)] + ["a/z.png"]
    status = {r["input"]: r["status"] for r in recs}
    assert status.pop("a/z.png") == "error" and set(status.values()) == {"ok"}
    assert summary.total("ok") == 5 and summary.failed == 1


def test_a_process_that_has_used_opencvs_threads_starts_workers_that_do_not_hang(src_small, tmp_path):
    """A library caller that used OpenCV holds its thread pool: forked workers would hang in their first
    OpenCV call. They start from a fork server instead (in a child process here, so a hang is a timeout)."""
    script = ("import os, cv2, numpy as np, noiseaug\n"
              "cv2.setNumThreads(2)\n"
              "cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (1000, 1000))  # OpenCV's pool runs threads now\n"
              "assert len(os.listdir('/proc/self/task')) > 1\n"
              f"summary = noiseaug.run({str(src_small)!r}, {str(tmp_path / 'out')!r}, workers=2)\n"
              "assert summary.total('ok') == 3 and summary.failed == 0\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@pytest.fixture
def src_small(tmp_path) -> Path:
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", np.full((16, 16, 3), 40 * i, np.uint8))
    return tmp_path / "in"


def test_workers_that_hang_while_starting_end_the_run_with_one_error(src_small, tmp_path):
    """A worker that never says it has started is killed and started again; when none will, the run stops with
    WorkerStartError, instead of waiting for ever (in a child process here, so a hang is a timeout)."""
    script = ("import time, noiseaug\n"
              "from noiseaug.executors import pool\n"
              "pool.START_SECONDS = 0.3\n"
              "pool._start_method = lambda: 'fork'  # the forked workers run the patched set-up\n"
              "pool.init_worker = lambda context: time.sleep(3600)\n"
              "try:\n"
              f"    noiseaug.run({str(src_small)!r}, {str(tmp_path / 'out')!r}, workers=2)\n"
              "except noiseaug.WorkerStartError as exc:  # exported: a caller catches it by name\n"
              "    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "worker processes do not start (one hung for 0.3 s while starting)" in result.stdout, result.stderr
    assert result.returncode == 0


def test_a_temporary_name_left_by_a_killed_process_of_the_same_pid_is_stepped_over(tmp_path, monkeypatch):
    """Temporary names are a per-process random part and a counter: one that a killed process (an earlier
    holder of this pid) left behind is not written through, nor does it fail the file; the next name is taken."""
    import itertools

    from noiseaug.storage import local

    monkeypatch.setattr(local, "_names", [os.getpid(), "cafe", itertools.count()])
    stale = tmp_path / f".cafe0.run.{os.getpid()}.noiseaug-tmp"
    stale.write_bytes(b"a killed run's")
    size, _ = local.put_file(str(tmp_path / "out.png"), b"new bytes", lambda: None)
    assert (tmp_path / "out.png").read_bytes() == b"new bytes" and size == 9
    assert stale.read_bytes() == b"a killed run's"  # left for the sweep, which knows it by its tag and pid
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.png", stale.name])


def test_a_worker_with_descriptors_past_1024_still_ends_with_its_parent(tmp_path):
    """--workers 300: each forked worker held the pipes of the others, its parent watch got a descriptor past
    1024, and select() failed with a traceback in every worker (whose watch was then gone)."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("needs a descriptor limit above 1200 to reach past select's 1024")
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    script = ("import os, resource, sys, time\n"
              "from noiseaug.executors.pool import _exit_with\n"
              "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2048), hard))\n"
              "held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]\n"
              f"_exit_with({parent.pid})\n"
              "print('watching', flush=True)\n"
              "time.sleep(30)\n")
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert worker.stdout.readline() == b"watching\n"
        time.sleep(0.3)
        parent.kill()
        parent.wait()
        _, stderr = worker.communicate(timeout=10)
        assert worker.returncode == 1  # gone with its parent, as _exit_with promises
        assert b"Traceback" not in stderr, stderr.decode()
    finally:
        for process in (parent, worker):
            process.kill()
            process.communicate()


def _run_with_encode_that(src: Path, out: Path, when: str, **options) -> dict:
    """``noiseaug.run(src, out, **options)`` in a fresh process whose image_io.encode first runs ``when``
    (Python lines that see ``path`` and ``call``, how many times this process has encoded that path): forked
    workers inherit it (this process may hold OpenCV's threads, whose workers start from a fork server)."""
    script = ("import json, os, signal, sys\n"
              "import noiseaug\n"
              "from noiseaug import image_io\n"
              "real, calls = image_io.encode, {}\n"
              "def encode(picture, path, options):\n"
              "    calls[path] = call = calls.get(path, 0) + 1\n"
              + "".join(f"    {line}\n" for line in when.splitlines()) +
              "    return real(picture, path, options)\n"
              "image_io.encode = encode\n"
              "summary = noiseaug.run(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))\n"
              "print(json.dumps(summary.to_dict()))\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, src, out, json.dumps(options)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_worker_killed_in_the_middle_of_a_group_of_small_images_costs_that_file_only(tmp_path):
    """Small images go through a worker a group at a time, stage by stage: a worker killed while rendering
    one of them (all of the group read, none written) fails that file alone; the group's others are done
    again by another worker, each with its one record."""
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(8):
        write_image(src / "a" / f"{i}.png", np.full((16, 16, 3), 20 * i, np.uint8))
    summary = _run_with_encode_that(src, out, "if path == 'a/3.png': os.kill(os.getpid(), signal.SIGKILL)",
                                    workers=2)
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert [r["input"] for r in recs] == [f"a/{i}.png" for i in range(8)]
    status = {r["input"]: (r["status"], r.get("error", "")) for r in recs}
    assert status.pop("a/3.png") == ("error", "the worker process working on this file was killed by SIGKILL "
                                               "(out of memory?)")
    assert {s for s, _ in status.values()} == {"ok"} and summary["failed"] == 1
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"{i}.png" for i in range(8) if i != 3]


def test_a_copy_that_fails_in_a_group_fails_alone_as_it_does_one_file_at_a_time(tmp_path):
    """A group renders its small images into memory before writing any: a failure while rendering a file's
    second copy is met where that copy would be written, so its first copy is written and recorded, the
    second fails, and the group's other files are untouched: the records of a run one file at a time."""
    src = tmp_path / "in"
    for i in range(6):
        write_image(src / f"{i}.png", np.full((16, 16), 30 * i, np.uint8))
    made = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        summary = _run_with_encode_that(src, out, "if path == '2.png' and call == 2: raise RuntimeError('no copy')",
                                        workers=workers, copies=2)
        assert summary["failed"] == 1 and summary["ok"] == 11
        made[workers] = tree(out)
        _, recs = records(out / "noiseaug-manifest.jsonl")
        [bad] = [r for r in recs if r["status"] == "error"]
        assert (bad["input"], bad["copy"], bad["error"]) == ("2.png", 1, "unexpected RuntimeError: no copy")
    for name in made[1]:
        if name.endswith(".png"):
            assert made[1][name] == made[2][name], name
    assert "2_n0.png" in made[2] and "2_n1.png" not in made[2]
