"""Interruptions, resumption, shards and merge (SPEC §2, §4): real processes, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import clean_run, random_images, records, tree, write_image

HOUSEKEEPING = (".noiseaug.lock", ".noiseaug-manifest.jsonl.state")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    names = [f"c{i % 4}/img{i:02d}.png" for i in range(48)]
    return random_images(tmp_path_factory.mktemp("data") / "in", names, (384, 384, 3), seed=0, blur=4)


@pytest.fixture(scope="module")
def clean(dataset, tmp_path_factory) -> Path:
    return clean_run(dataset, tmp_path_factory.mktemp("clean") / "out")


def outputs(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(out).items() if not k.startswith(HOUSEKEEPING) and k != "noiseaug-manifest.jsonl"}


def start(dataset: Path, out: Path, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "noiseaug", "run", dataset, out, "--workers", str(workers),
                             "--no-progress", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_outputs(out: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sum(1 for p in out.rglob("*.png")) if out.exists() else 0
        if done >= count or proc.poll() is not None:
            return
        time.sleep(0.005)
    raise AssertionError(f"no {count} outputs after {timeout} s")


@pytest.mark.parametrize("after,workers", [(1, 1), (12, 2), (30, 1), (40, 2)])
def test_sigkill_at_any_point_then_resume_equals_a_clean_run(dataset, clean, tmp_path, after, workers):
    out = tmp_path / "out"
    proc = start(dataset, out, workers)
    wait_for_outputs(out, after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".png")]
    for path in leftovers:  # only complete files under final names
        assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED) is not None
    subprocess.run([sys.executable, "-m", "noiseaug", "run", dataset, out, "--workers", "2", "-q"], check=True)
    assert outputs(out) == outputs(clean)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(clean / "noiseaug-manifest.jsonl")[1]
    assert not [p for p in out.rglob("*noiseaug-tmp")]


def test_sigint_exits_130_with_a_valid_manifest_and_resumes(dataset, clean, tmp_path):
    out = tmp_path / "out"
    for _ in range(3):  # on a loaded machine the run may finish before this process gets to signal it
        proc = start(dataset, out, 2)
        wait_for_outputs(out, 8, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            break
        proc.communicate()
        shutil.rmtree(out)
    else:
        pytest.fail("the run finished every time before it could be interrupted")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr and b"interrupted" in stderr
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert 8 <= len(recs) < 48 and all(r["status"] == "ok" for r in recs)
    assert recs == sorted(recs, key=lambda r: r["input"])
    for rec in recs:
        assert (out / rec["output"]).exists()
    assert not [p for p in out.rglob("*noiseaug-tmp")]
    subprocess.run([sys.executable, "-m", "noiseaug", "run", dataset, out, "-q"], check=True)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(clean / "noiseaug-manifest.jsonl")[1]


def test_shards_merged_equal_the_unsharded_manifest(cli, dataset, clean, tmp_path):
    out = tmp_path / "out"
    for i in range(3):
        cli("run", dataset, out, "--shard", f"{i}/3", "--workers", 1)
    shard_manifests = sorted(out.glob("noiseaug-manifest.shard-*-of-3.jsonl"))
    sizes = [len(records(m)[1]) for m in shard_manifests]
    assert len(shard_manifests) == 3 and sum(sizes) == 48 and min(sizes) > 5
    merged = tmp_path / "merged.jsonl"
    cli("merge", *shard_manifests, "-o", merged)
    assert records(merged)[1] == records(clean / "noiseaug-manifest.jsonl")[1]
    assert outputs(out).keys() >= outputs(clean).keys()
    assert all(outputs(out)[k] == v for k, v in outputs(clean).items())
    result = cli("merge", *shard_manifests[:2], "-o", tmp_path / "partial.jsonl", code=1)
    assert "shards 2/3 are missing" in result.stderr and not (tmp_path / "partial.jsonl").exists()
    result = cli("merge", *shard_manifests[:2], "-o", tmp_path / "partial.jsonl", "--allow-missing")
    assert "2/3" in result.stderr and len(records(tmp_path / "partial.jsonl")[1]) == sum(sizes[:2])
    cli("run", dataset, out, "--shard", "1/2", "--workers", 1)  # shards of other counts, as a job array of 2
    halves = {n: out / f"noiseaug-manifest.shard-{n}.jsonl" for n in ("0-of-2", "1-of-2")}
    result = cli("merge", shard_manifests[0], halves["1-of-2"], "-o", tmp_path / "mixed.jsonl", code=1)
    assert "of different counts do not cover every file" in result.stderr  # 0/3 and 1/2 miss a third of half
    moved = tmp_path / "elsewhere"  # INPUT mounted at another path on the machine of shard 0/2 (SPEC §2)
    shutil.copytree(dataset, moved)
    cli("run", moved, out, "--shard", "0/2", "--workers", 1)
    cli("merge", shard_manifests[0], *halves.values(), "-o", tmp_path / "mixed.jsonl")  # 0/2 + 1/2 cover all
    assert records(tmp_path / "mixed.jsonl")[1] == records(clean / "noiseaug-manifest.jsonl")[1]
    data = shard_manifests[0].read_bytes()
    shard_manifests[0].write_bytes(data[:-20])  # what a shard killed while appending leaves
    result = cli("merge", *shard_manifests, "-o", tmp_path / "torn.jsonl", code=1)
    assert "its last line is cut off" in result.stderr and not (tmp_path / "torn.jsonl").exists()
    unsorted = tmp_path / "unsorted.jsonl"  # a shard killed between records: appended, never rewritten in order
    lines = shard_manifests[1].read_text(encoding="utf-8").splitlines()
    unsorted.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n", encoding="utf-8")
    result = cli("merge", shard_manifests[2], unsorted, "-o", tmp_path / "u.jsonl", "--allow-missing")
    assert "its records are not in order" in result.stderr and "not complete" in result.stderr
    result = cli("merge", *shard_manifests, "-o", tmp_path / "torn.jsonl", "--allow-missing")
    assert "not complete" in result.stderr and len(records(tmp_path / "torn.jsonl")[1]) == sum(sizes) - 1


def test_merge_refuses_manifests_of_different_runs(cli, dataset, tmp_path):
    cli("run", dataset, tmp_path / "a", "--shard", "0/2", "--workers", 1, "--include", "c0/*")
    cli("run", dataset, tmp_path / "a", "--shard", "1/2", "--workers", 1, "--include", "c0/*", "--seed", 1)
    result = cli("merge", *sorted((tmp_path / "a").glob("noiseaug-manifest.shard-*")), "-o", tmp_path / "m.jsonl",
                 code=2)
    assert "seed" in result.stderr and not (tmp_path / "m.jsonl").exists()


def test_a_makefile_calling_noiseaug_twice_does_no_work_the_second_time(dataset, tmp_path):
    noiseaug = [sys.executable, "-m", "noiseaug"]
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        "NOISEAUG ?= noiseaug\n"
        "noisy/noiseaug-manifest.jsonl: $(shell find in -type f)\n"
        "\t$(NOISEAUG) run in noisy --workers 2 --json > summary.json\n", encoding="utf-8")
    os.symlink(dataset, tmp_path / "in")
    env = {**os.environ, "NOISEAUG": " ".join(noiseaug)}
    subprocess.run(["make", "-s"], cwd=tmp_path, check=True, env=env)
    first = json.loads((tmp_path / "summary.json").read_text())
    assert first["ok"] == 48
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "noisy").rglob("*")}
    second = subprocess.run(["make", "-s"], cwd=tmp_path, check=True, env=env, capture_output=True, text=True)
    assert "up to date" in second.stdout or second.stdout == ""
    # and the tool itself, forced to run, does nothing either
    forced = subprocess.run(["make", "-s", "-B"], cwd=tmp_path, check=True, env=env)
    assert forced.returncode == 0
    assert json.loads((tmp_path / "summary.json").read_text())["up_to_date"] is True
    assert {p: p.stat().st_mtime_ns for p in mtimes if not p.name.endswith(".lock")} == \
        {p: t for p, t in mtimes.items() if not p.name.endswith(".lock")}


@pytest.mark.parametrize("content", [b"", b'{"type": "run", "tool": "noiseau'])
def test_a_run_killed_before_its_first_manifest_line_is_resumed(cli, dataset, clean, tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "noiseaug-manifest.jsonl").write_bytes(content)
    cli("run", dataset, out, "--workers", 2)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(clean / "noiseaug-manifest.jsonl")[1]


def test_merge_into_a_missing_folder_is_a_usage_error(cli, dataset, tmp_path):
    cli("run", dataset, tmp_path / "a", "--shard", "0/2", "--workers", 1, "--include", "c0/*")
    shard = next((tmp_path / "a").glob("noiseaug-manifest.shard-*"))
    assert "does not exist" in cli("merge", shard, "-o", tmp_path / "nope" / "m.jsonl", code=2).stderr
    before = shard.read_bytes()
    os.symlink(shard, tmp_path / "alias.jsonl")
    for target in (shard, tmp_path / "alias.jsonl"):  # the result over one of its own inputs: refused
        assert "is one of the manifests to merge" in cli("merge", shard, "-o", target, code=2).stderr
    assert shard.read_bytes() == before


def test_a_manifest_says_whether_its_run_finished_and_verify_and_merge_read_it(cli, tmp_path):
    """A shard stopped by SIGTERM (a Slurm time limit) rewrites a sorted manifest, and one killed with SIGKILL
    may leave its records in order: merge took either as a whole shard, and verify passed them. The run record
    now ends saying whether its run finished; a run continuing a manifest says "no" in place before its first
    appended record, and its final rewrite says what it did."""
    import noiseaug
    from noiseaug.manifest import ManifestWriter, read_run

    src = tmp_path / "in"
    for i in range(6):
        write_image(src / f"f{i}.png", np.full((8, 8, 3), 10 * i, np.uint8))
    (src / "f3.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):  # --on-error fail stops at the bad file: its shard does not finish
        noiseaug.run(src, out, workers=1, shard=shard, on_error="fail")
    manifests = sorted(out.glob("noiseaug-manifest.shard-*-of-2.jsonl"))
    finished = {m.name: read_run(m)["finished"] for m in manifests}
    assert sorted(finished.values()) == [False, True], finished
    stopped = next(m for m in manifests if not finished[m.name])
    assert "the run that wrote the manifest did not finish" in cli("verify", stopped, code=1).stderr
    result = cli("merge", *manifests, "-o", tmp_path / "m.jsonl", code=1)
    assert "its run did not finish" in result.stderr and not (tmp_path / "m.jsonl").exists()
    cli("merge", *manifests, "-o", tmp_path / "m.jsonl", "--allow-missing")
    assert read_run(tmp_path / "m.jsonl")["finished"] is False and cli("verify", tmp_path / "m.jsonl", code=1)
    (src / "f3.png").unlink()
    for shard in ("0/2", "1/2"):
        noiseaug.run(src, out, workers=1, shard=shard)
    assert all(read_run(m)["finished"] for m in manifests)
    cli("merge", *manifests, "-o", tmp_path / "whole.jsonl")
    assert read_run(tmp_path / "whole.jsonl")["finished"] is True
    cli("verify", tmp_path / "whole.jsonl")
    one = manifests[0]
    size = one.stat().st_size
    writer = ManifestWriter(one, read_run(one), append=True)  # a run continuing it, killed after one record
    writer.write(records(one)[1][0])
    writer.close()
    assert read_run(one)["finished"] is False and one.stat().st_size > size
    assert "did not finish" in cli("verify", one, code=1).stderr
