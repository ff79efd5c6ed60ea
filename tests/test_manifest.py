"""The manifest (SPEC §4), incremental re-runs and `noiseaug verify`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import records, tree, write_image

FILE_FIELDS = {"type", "input", "output", "kind", "copy", "seed", "sigma", "sigma_full_scale",
               "input_sha256", "output_sha256", "input_bytes", "output_bytes", "height", "width",
               "channels", "dtype", "clipped_fraction", "status"}


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "in"
    rng = np.random.default_rng(1)
    for name in ("b/x.png", "a.png", "b/a.jpg", "c/d/e.png"):
        write_image(folder / name, rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not media", encoding="utf-8")
    return folder


def test_run_record_and_file_records_are_complete_and_sorted(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 2)
    run, recs = records(out / "noiseaug-manifest.jsonl")
    assert run["version"] and run["seeding"] and run["started"]
    assert {"python", "numpy", "opencv", "libsndfile"} <= set(run["versions"])
    assert run["options"]["image_sigma"] == "10" and run["input_root"] == str(src)
    assert [r["input"] for r in recs] == ["a.png", "b/a.jpg", "b/x.png", "c/d/e.png"]
    for r in recs:
        assert FILE_FIELDS <= set(r), FILE_FIELDS - set(r)
        assert r["status"] == "ok" and len(r["seed"]) == 32
        assert r["output_bytes"] == (out / r["output"]).stat().st_size


def test_rerun_is_up_to_date_and_rewrites_nothing(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in tree(out) if not p.endswith(".lock")}
    manifest = (out / "noiseaug-manifest.jsonl").read_bytes()
    for workers in (2, 1):
        result = cli("run", src, out, "--workers", workers, "--json")
        assert "up to date" in result.stderr
        summary = json.loads(result.stdout)
        assert summary["up_to_date"] is True and summary["skipped"] == 4 and summary["ok"] == 0
        assert {p: os.stat(out / p).st_mtime_ns for p in mtimes} == mtimes
    assert (out / "noiseaug-manifest.jsonl").read_bytes() == manifest


def test_same_size_and_mtime_skip_hashing_but_content_changes_are_caught(cli, src, tmp_path):
    out = tmp_path / "out"
    target = write_image(src / "flat.bmp", np.zeros((8, 8, 3), np.uint8))  # uncompressed: edits keep the size
    cli("run", src, out, "--workers", 1)
    stamp = os.stat(target)
    write_image(target, np.full((8, 8, 3), 200, np.uint8))
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same size and mtime: the quick check trusts it
    assert json.loads(cli("run", src, out, "--workers", 1, "--json").stdout)["skipped"] == 5
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # touched: hashed, found changed
    summary = json.loads(cli("run", src, out, "--workers", 1, "--json").stdout)
    assert summary["ok"] == 1 and summary["skipped"] == 4


def test_vanished_input_is_reported_and_its_output_left_alone(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    (src / "b" / "x.png").unlink()
    result = cli("run", src, out, "--workers", 1, "--json")
    assert json.loads(result.stdout)["gone"] == ["b/x.png"]
    assert "gone" in result.stderr and (out / "b" / "x.png").exists()
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert [r["input"] for r in recs if r.get("input_missing")] == ["b/x.png"]


def test_changed_input_is_redone_and_new_input_added(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    before = tree(out)
    write_image(src / "a.png", np.zeros((20, 30, 3), np.uint8))
    write_image(src / "new.png", np.zeros((5, 5, 3), np.uint8))
    result = cli("run", src, out, "--workers", 1, "--json")
    summary = json.loads(result.stdout)
    assert summary["ok"] == 2 and summary["skipped"] == 3
    after = tree(out)
    assert after["a.png"] != before["a.png"] and after["b/x.png"] == before["b/x.png"]
    assert "new.png" in after


def test_deleted_output_is_made_again(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    original = (out / "b" / "x.png").read_bytes()
    (out / "b" / "x.png").unlink()
    cli("run", src, out, "--workers", 1)
    assert (out / "b" / "x.png").read_bytes() == original


def test_verify_passes_then_names_a_flipped_byte(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    manifest = out / "noiseaug-manifest.jsonl"
    assert f"4 of 4 outputs in {out} match" in cli("verify", manifest).stderr
    cli("verify", manifest, "--regenerate")
    target = out / "b" / "x.png"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    result = cli("verify", manifest, code=1)
    assert "b/x.png" in result.stderr and "a.png" not in result.stderr.replace("3 of 4", "")
    (out / "a.png").unlink()
    result = cli("verify", manifest, "--json", code=1)
    assert {m["output"] for m in json.loads(result.stdout)["mismatches"]} == {"a.png", "b/x.png"}


def test_verify_says_each_problem_as_found_lists_a_bounded_number_and_reads_the_last_record(
        cli, src, tmp_path, monkeypatch):
    """A manifest of a million outputs is checked in bounded memory: its records are spooled to disk and read
    back sorted, the report lists the first LISTED problems and counts the rest, and the command line says
    every one as it is found. A later record of one output wins, as it does for a run reading its manifest."""
    import noiseaug
    from noiseaug import report

    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    manifest = out / "noiseaug-manifest.jsonl"
    for rel in ("a.png", "b/a.jpg", "b/x.png"):
        (out / rel).unlink()
    monkeypatch.setattr(report, "LISTED", 2)
    said: list[str] = []
    result = noiseaug.verify(manifest, said=said.append)
    assert len(result.mismatches) == 2 and result.to_dict()["not_listed"]["mismatches"] == 1
    assert said == [f"noiseaug: mismatch: {rel}: missing" for rel in ("a.png", "b/a.jpg", "b/x.png")]
    assert "1 of 4 outputs" in result.text() and result.exit_code == 1
    monkeypatch.undo()
    stderr = cli("verify", manifest, code=1).stderr
    assert [line for line in stderr.splitlines() if "mismatch" in line] == said
    lines = manifest.read_text(encoding="utf-8").splitlines()
    stale = json.loads(lines[-1])
    later = {**stale, "output_sha256": "0" * 64}
    manifest.write_text("\n".join([*lines, json.dumps(later)]) + "\n", encoding="utf-8")
    said = cli("verify", manifest, code=1).stderr
    assert f"mismatch: {stale['output']}: content differs" in said
    assert "records are not in order: the run that wrote them stopped before its final rewrite" in said


def test_merge_refuses_shards_that_disagree_about_an_output(cli, src, tmp_path):
    out = tmp_path / "out"
    for i in range(2):
        cli("run", src, out, "--shard", f"{i}/2", "--workers", 1)
    first, second = sorted(out.glob("noiseaug-manifest.shard-*-of-2.jsonl"))
    mine = first.read_text(encoding="utf-8").splitlines()
    theirs = second.read_text(encoding="utf-8").splitlines()
    taken = json.loads(mine[1])

    def second_with(record):  # the record put in its sorted place: the shard stays a finished one
        lines = sorted([*theirs[1:], json.dumps(record)], key=lambda line: json.loads(line)["input"].encode())
        second.write_text("\n".join([theirs[0], *lines]) + "\n", encoding="utf-8")

    second_with({**taken, "seed": "1" * 32})
    result = cli("merge", first, second, "-o", tmp_path / "merged.jsonl", code=2)
    assert f"disagree about {taken['output']!r}" in result.stderr and not (tmp_path / "merged.jsonl").exists()
    second_with(dict(reversed(taken.items())))  # the same record, its fields in another order: they agree
    cli("merge", first, second, "-o", tmp_path / "merged.jsonl")
    merged = (tmp_path / "merged.jsonl").read_text(encoding="utf-8").splitlines()[1:]
    assert merged == sorted(mine[1:] + theirs[1:], key=lambda line: json.loads(line)["input"].encode())


@pytest.mark.parametrize("bad", ["/etc/passwd", "../escape.png", "a/../../x.png"])
def test_verify_refuses_paths_outside_the_roots(cli, src, tmp_path, bad):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    manifest = out / "noiseaug-manifest.jsonl"
    lines = manifest.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["output"] = bad
    lines[1] = json.dumps(rec)
    manifest.write_text("\n".join(lines) + "\n")
    result = cli("verify", manifest, code=2)
    assert "refusing" in result.stderr


def test_non_utf8_file_name_round_trips_through_run_manifest_and_verify(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw = os.path.join(os.fsencode(src), b"caf\xe9 \xff.png")
    ok_path = write_image(tmp_path / "tmp.png", np.full((10, 10), 50, np.uint8))
    with open(raw, "wb") as fh:
        fh.write(ok_path.read_bytes())
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 2)
    _, [rec] = records(out / "noiseaug-manifest.jsonl")
    assert rec["status"] == "ok"
    assert base64.b64decode(rec["input_raw"]) == b"caf\xe9 \xff.png"
    assert base64.b64decode(rec["output_raw"]) == b"caf\xe9 \xff.png"
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9 \xff.png"))
    cli("verify", out / "noiseaug-manifest.jsonl", "--regenerate")
    again = json.loads(cli("run", src, out, "--workers", 1, "--json").stdout)  # and resumes from it
    assert again["up_to_date"] and again["skipped"] == 1


def test_copy_other_makes_a_complete_dataset(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--copy-other", "--workers", 1)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "not media"
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert {r["kind"] for r in recs if r["input"] == "notes.txt"} == {"other"}


def test_inputs_are_never_modified_and_links_not_followed(cli, src, tmp_path):
    outside = tmp_path / "secret"
    write_image(outside / "private.png", np.zeros((4, 4), np.uint8))
    os.symlink(outside, src / "link_dir")
    os.symlink(src / "a.png", src / "link.png")
    before = tree(src)
    cli("run", src, tmp_path / "out", "--workers", 2)
    assert tree(src) == before
    produced = tree(tmp_path / "out")
    assert not any("private" in p or "link" in p for p in produced)


def test_a_planted_link_at_an_output_path_is_replaced_not_followed(cli, src, tmp_path):
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    os.symlink(victim, out / "b" / "x.png")
    cli("run", src, out, "--workers", 1)
    assert victim.read_bytes() == b"keep me"
    assert not os.path.islink(out / "b" / "x.png")


def test_a_planted_directory_link_in_output_is_refused(cli, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "c")
    (out / "b").write_bytes(b"a file where a folder of outputs goes")
    result = cli("run", src, out, "--workers", 1, code=1)
    assert list(elsewhere.iterdir()) == []
    # the message names what is in the way, not the output it was on the way to
    assert "c/d/e.png: c in OUTPUT is a file or a link, not a folder: refusing to write through it" in result.stderr
    assert "b/a.jpg: b in OUTPUT is a file or a link, not a folder" in result.stderr
    assert (out / "b").read_bytes() == b"a file where a folder of outputs goes"


@pytest.mark.parametrize("how", ["default", "--manifest into OUTPUT", "merged through a link"])
def test_verify_checks_a_copied_output_folder_itself(cli, src, tmp_path, monkeypatch, how):
    """A manifest in OUTPUT's top folder verifies the folder it is in, however it got there: by default, by a
    --manifest naming that place (relative, as typed), or merged there through a linked path."""
    import shutil

    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    if how == "default":
        cli("run", src, out, "--workers", 1)
    elif how == "--manifest into OUTPUT":
        out.mkdir()
        cli("run", src, out, "--manifest", "out/noiseaug-manifest.jsonl", "--workers", 1)
    else:
        os.symlink(out, tmp_path / "link")
        for shard in ("0/2", "1/2"):
            cli("run", src, "link", "--shard", shard, "--workers", 1)
        cli("merge", *sorted(out.glob("noiseaug-manifest.shard-*")), "-o", "link/noiseaug-manifest.jsonl")
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)
    (backup / "a.png").write_bytes(b"damaged")
    result = cli("verify", backup / "noiseaug-manifest.jsonl", code=1)
    assert "a.png" in result.stderr and str(backup) in result.stderr


def test_verify_fails_on_a_manifest_cut_off_mid_line(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    manifest = out / "noiseaug-manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes()[:-40])
    result = cli("verify", manifest, code=1)
    assert "cut off" in result.stderr


def test_a_run_with_nothing_to_do_reads_neither_manifest_nor_files(src, tmp_path, monkeypatch):
    """The whole-run quick check: when every file matches the stat cache, no index is built at all."""
    import os

    import noiseaug
    from noiseaug import pipeline

    out = tmp_path / "out"
    noiseaug.run(src, out, workers=1)

    def no_index(*args, **kwargs):
        raise AssertionError("the long way was taken")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "RunIndex", no_index)
        summary = noiseaug.run(src, out, workers=1)
    assert summary.up_to_date and summary.total("skipped") == 4
    os.utime(src / "a.png", ns=(1, 1))  # a changed stamp: the long way, which confirms it by hash
    summary = noiseaug.run(src, out, workers=1)
    assert summary.up_to_date and summary.total("skipped") == 4
    (src / "b" / "x.png").unlink()  # a record the walk no longer reaches: the long way flags it
    summary = noiseaug.run(src, out, workers=1)
    assert summary.gone == ["b/x.png"]


def test_a_run_with_nothing_to_do_imports_no_codec_numpy_or_worker(cli, src, tmp_path):
    """Its start-up is most of its time: the modules that only the work needs stay unimported."""
    import subprocess
    import sys

    cli("run", src, tmp_path / "out", "--workers", 1)
    code = ("import sys, runpy\nsys.argv = ['noiseaug', 'run', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('noiseaug', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(m for m in ('numpy', 'cv2', 'PIL', 'soundfile', 'tifffile', 'multiprocessing', "
            "'noiseaug.worker', 'noiseaug.executors.pool') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out"), "--workers", "2"],
                          capture_output=True, text=True, check=True)
    assert "up to date" in done.stderr and done.stdout == "\n", done.stdout


@contextlib.contextmanager
def _quick_only(monkeypatch, shortcut: bool = False):
    """Within it, a run that does not end at the whole-run quick check fails; the check goes file by file
    unless ``shortcut`` (then it may take the folder shortcut a clean run left)."""
    from noiseaug import freshness, pipeline

    def no_index(*args, **kwargs):
        raise AssertionError("the long way was taken")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "RunIndex", no_index)
        if not shortcut:
            patch.setattr(freshness, "_same_folders", lambda *args: None)
        yield


@contextlib.contextmanager
def _shortcuts(monkeypatch):
    """Within it, what the folder shortcut answered, run by run (None: it did not hold)."""
    from noiseaug import freshness

    answers: list = []
    real = freshness._same_folders

    def spy(*args):
        answers.append(real(*args))
        return answers[-1]

    with monkeypatch.context() as patch:
        patch.setattr(freshness, "_same_folders", spy)
        yield answers


def test_the_quick_check_reads_the_stat_cache_in_the_walks_order(tmp_path, monkeypatch):
    """Names where byte order of whole paths and the walk's order differ ('-' and '.' sort before '/')."""
    import cv2
    import numpy as np

    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    for rel in ("a-c.png", "a.png", "a/b.png", "a/z/c.png", "a/z.png", "ab/x.png", "a b/y.png", "z.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / rel), np.full((4, 4), 100, np.uint8))
    noiseaug.run(src, out, workers=1)
    with _quick_only(monkeypatch):
        summary = noiseaug.run(src, out, workers=1)
    assert summary.up_to_date and summary.total("skipped") == 8


def test_a_stat_cache_keyed_the_old_way_is_rekeyed_and_then_quick_again(src, tmp_path, monkeypatch):
    import sqlite3

    import noiseaug

    out = tmp_path / "out"
    noiseaug.run(src, out, workers=1)
    db = sqlite3.connect(out / ".noiseaug-manifest.jsonl.state", isolation_level=None)
    rows = db.execute("SELECT * FROM stamps").fetchall()
    assert any(b"\0" in r[0] for r in rows)  # b/x.png, keyed the walk's way
    db.execute("DROP TABLE stamps")  # as the first caches had it: plain paths, no record sums
    db.execute("CREATE TABLE stamps (rel BLOB, copy INTEGER, input_size INTEGER, input_mtime INTEGER, output BLOB, "
               "output_size INTEGER, output_mtime INTEGER, kind TEXT, PRIMARY KEY (rel, copy)) WITHOUT ROWID")
    db.executemany("INSERT INTO stamps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [(r[0].replace(b"\0", b"/"), *r[1:8]) for r in rows])
    db.execute("PRAGMA user_version = 0")
    db.close()
    from noiseaug.storage import LocalStorage

    def no_reading(*args):
        raise AssertionError("a file was read: the rekeyed cache did not confirm it")

    with monkeypatch.context() as patch:  # the long way (a read-only look cannot rekey), by stamps alone
        patch.setattr(LocalStorage, "read", no_reading)
        patch.setattr(LocalStorage, "hash", no_reading)
        summary = noiseaug.run(src, out, workers=1)
    assert summary.up_to_date and summary.total("skipped") == 4
    with _quick_only(monkeypatch):
        summary = noiseaug.run(src, out, workers=1)
    assert summary.up_to_date and summary.total("skipped") == 4


def test_label_maps_left_alone_do_not_keep_a_rerun_from_the_quick_check(tmp_path, monkeypatch):
    from PIL import Image

    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "img" / "a.png", np.full((8, 8, 3), 100, np.uint8))
    (src / "mask").mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) % 4).convert("P").save(src / "mask" / "a.png")
    noiseaug.run(src, out, workers=1)
    with _quick_only(monkeypatch):
        summary = noiseaug.run(src, out, workers=1)
    assert summary.up_to_date and summary.total("skipped") == 1 and summary.walk.labels == 1
    os.utime(src / "mask" / "a.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="the long way"), _quick_only(monkeypatch):
        noiseaug.run(src, out, workers=1)  # a changed label map: looked at again
    summary = noiseaug.run(src, out, workers=1, copy_other=True)  # label maps copied now: not a no-op
    assert summary.counts["label", "ok"] == 1


def test_an_input_whose_output_is_noiseaugs_own_file_is_refused_in_its_folder_only(cli, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for folder in ["", "a/", "a/b/", "a/b/c/", "z/"]:  # depth first: a, a/b, a/b/c, back to a, then z
        write_image(src / f"{folder}x.png", np.full((4, 4), 7, np.uint8))
        (src / f"{folder}noiseaug-manifest.jsonl").write_text("not a manifest\n")
    write_image(src / "a/0.png", np.full((4, 4), 9, np.uint8))  # "a" before and after its subfolder "a/b"
    result = cli("run", src, out, "--copy-other", "--workers", 1, code=1)
    assert isinstance(result.exception, SystemExit)  # a failed file, not a crash
    _, recs = records(out / "noiseaug-manifest.jsonl")
    failed = {r["input"]: r["error"] for r in recs if r["status"] == "error"}
    assert failed == {"noiseaug-manifest.jsonl": "output noiseaug-manifest.jsonl is already taken by another "
                                                 "input or by noiseaug's own files"}
    assert sum(r["status"] == "ok" for r in recs) == 5 + 4 + 1
    assert (out / "a/b/noiseaug-manifest.jsonl").read_text() == "not a manifest\n"


@pytest.mark.parametrize("shard", ["0/2", "1/2"])
def test_a_shard_run_copies_no_input_over_any_runs_own_files(cli, tmp_path, shard):
    """A shard run's own names and every other run's (shards, the unsharded manifest, caches, locks) are
    noiseaug's at OUTPUT's top: an input named like one fails instead of being copied over it."""
    from noiseaug.manifest import state_path
    from noiseaug.pipeline import lock_name

    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "a.png", np.full((4, 4), 7, np.uint8))
    own = ["noiseaug-manifest.jsonl", "noiseaug-manifest.shard-0-of-2.jsonl", "noiseaug-manifest.shard-1-of-2.jsonl",
           "noiseaug-manifest.shard-4-of-9.jsonl", state_path(Path("noiseaug-manifest.shard-1-of-2.jsonl")).name,
           ".noiseaug-manifest.jsonl.index", lock_name((0, 1)), lock_name((0, 2)), lock_name((1, 2))]
    for name in own + ["noiseaug-manifest.jsonl.txt", "sub/noiseaug-manifest.shard-0-of-2.jsonl"]:
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_text("junk\n")
    cli("run", src, out, "--copy-other", "--shard", shard, "--workers", 1, code=None)
    index, count = (int(x) for x in shard.split("/"))
    manifest = out / f"noiseaug-manifest.shard-{index}-of-{count}.jsonl"
    _, recs = records(manifest)  # still a manifest: not written over by an input
    failed = {r["input"] for r in recs if r["status"] == "error"}
    taken = {r["input"] for r in recs}
    assert failed == taken & set(own) and failed, (failed, taken)
    assert all((out / name).read_bytes() != b"junk\n" for name in own if (out / name).exists())
    checked = cli("verify", manifest, code=1)  # 1: the refused inputs failed in the run; every output matches
    assert f"{len(taken) - len(failed)} of {len(taken) - len(failed)} outputs" in checked.stderr, checked.stderr


def test_claims_refuse_a_name_taken_in_a_folder_left_and_come_back_to():
    from noiseaug.index import Claims

    claims = Claims({"m.jsonl", "sub/m.jsonl"})
    assert not claims.claim("m.jsonl") and claims.claim("a/m.jsonl")
    assert claims.claim("a/x") and claims.claim("a/b/x") and claims.claim("a/b/c/x")
    assert not claims.claim("a/x")  # back in "a" from below it: its names are still known
    assert claims.claim("a/y") and claims.claim("x") and not claims.claim("x")
    assert not claims.claim("sub/m.jsonl") and claims.claim("sub/n.jsonl")  # "a" and below are left now
    with pytest.raises(AssertionError):
        claims.claim("a/b/z")


def _shortcut_tree(root):
    from PIL import Image

    for rel in ["a.png", "one/b.png", "one/deeper/c.png", "two/d.png"]:
        write_image(root / rel, np.full((8, 8, 3), 60, np.uint8))
    (root / "one" / "notes.txt").write_text("not taken\n")
    Image.fromarray(np.eye(8, dtype=np.uint8)).convert("P").save(root / "two" / "mask.png")
    os.symlink("a.png", root / "link.png")


def test_a_clean_run_leaves_a_folder_shortcut_that_a_rerun_takes_with_the_same_answer(tmp_path, monkeypatch):
    """A re-run after a clean run lists each folder once and steps through no file in Python: its answer (counts,
    label maps, files passed over) is the one the file-by-file check gives."""
    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    _shortcut_tree(src)
    noiseaug.run(src, out, workers=1, copies=2)
    with _quick_only(monkeypatch, shortcut=True), _shortcuts(monkeypatch) as answers:
        summary = noiseaug.run(src, out, workers=1, copies=2)
    assert answers[0] is not None  # the shortcut held
    assert summary.up_to_date and summary.total("skipped") == 8 and summary.walk.labels == 1
    assert (summary.walk.unsupported, summary.walk.links) == (1, 1)
    with _quick_only(monkeypatch):
        per_file = noiseaug.run(src, out, workers=1, copies=2)
    assert (per_file.counts, per_file.walk) == (summary.counts, summary.walk)
    (out / ".noiseaug.lock").touch()  # noiseaug's own files change without changing an output
    os.utime(out / ".noiseaug-manifest.jsonl.state", ns=(5, 5))
    with _quick_only(monkeypatch, shortcut=True), _shortcuts(monkeypatch) as answers:
        noiseaug.run(src, out, workers=1, copies=2)
    assert answers[0] is not None


def _change(kind, src, out):
    if kind == "input touched":
        os.utime(src / "one" / "b.png", ns=(7, 7))
    elif kind == "output rewritten":
        with open(out / "one" / "deeper" / "c_n1.png", "ab") as fh:
            fh.write(b"\0")
    elif kind == "output removed":
        (out / "two" / "d_n0.png").unlink()
    elif kind == "file added":
        write_image(src / "two" / "e.png", np.full((8, 8, 3), 70, np.uint8))
    elif kind == "other file added":
        (src / "one" / "deeper" / "readme.md").write_text("x\n")
    elif kind == "folder added":
        (src / "three").mkdir()
    elif kind == "input removed":
        (src / "one" / "deeper" / "c.png").unlink()


@pytest.mark.parametrize("kind, ok", [("input touched", 0), ("output rewritten", 1), ("output removed", 1),
                                      ("file added", 2), ("other file added", 0), ("folder added", 0),
                                      ("input removed", 0)])
def test_any_change_in_any_folder_defeats_the_shortcut_and_the_run_finds_it(tmp_path, monkeypatch, kind, ok):
    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    _shortcut_tree(src)
    noiseaug.run(src, out, workers=1, copies=2)
    _change(kind, src, out)
    with _shortcuts(monkeypatch) as answers:
        summary = noiseaug.run(src, out, workers=1, copies=2)
    assert answers == [None]
    assert summary.total("ok") == ok and summary.failed == 0
    assert summary.gone == (["one/deeper/c.png"] if kind == "input removed" else [])
    assert noiseaug.verify(out / "noiseaug-manifest.jsonl", regenerate=True).exit_code == 0


def test_the_shortcut_is_noted_only_after_a_clean_run_and_only_for_its_options(tmp_path, monkeypatch):
    import sqlite3

    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    _shortcut_tree(src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    noiseaug.run(src, out, workers=1)
    state = out / ".noiseaug-manifest.jsonl.state"
    with contextlib.closing(sqlite3.connect(state)) as db:
        assert db.execute("SELECT count(*) FROM folders").fetchone() == (0,)  # a file failed: no shortcut
    (src / "broken.png").unlink()
    noiseaug.run(src, out, workers=1)
    with contextlib.closing(sqlite3.connect(state)) as db:
        assert db.execute("SELECT count(*) FROM folders WHERE side = 0").fetchone() == (4,)  # '', one, deeper, two
    with _shortcuts(monkeypatch) as answers:
        noiseaug.run(src, out, workers=1, kinds=["image"], include=["*.png"])  # other options: not this shortcut
        noiseaug.run(src, out, workers=2)  # --workers does not change the answer
    assert answers[0] is None and answers[1] is not None


@pytest.mark.parametrize("copies", [1, 2])
def test_an_image_become_a_label_map_loses_its_records(tmp_path, copies):
    """Left alone, a label map has no record: the records of the picture it was go (a fresh run has none),
    and the manifest verifies, by hash and by regeneration."""
    from PIL import Image

    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "y.png", np.full((8, 8, 3), 90, np.uint8))
    write_image(src / "z.png", np.full((8, 8, 3), 30, np.uint8))
    noiseaug.run(src, out, workers=1, copies=copies)
    Image.fromarray(np.eye(8, dtype=np.uint8)).convert("P").save(src / "y.png")
    summary = noiseaug.run(src, out, workers=1, copies=copies)
    assert summary.walk.labels == 1 and summary.failed == 0
    assert not summary.up_to_date and summary.now_labels == ["y.png"]  # a change, said as such
    assert "label maps now (y.png)" in summary.text() and summary.to_dict()["now_labels"] == ["y.png"]
    assert [r["input"] for r in records(out / "noiseaug-manifest.jsonl")[1]] == ["z.png"] * copies
    assert noiseaug.verify(out / "noiseaug-manifest.jsonl", regenerate=True).exit_code == 0
    again = noiseaug.run(src, out, workers=1, copies=copies)
    assert again.up_to_date and again.walk.labels == 1


def test_a_gone_inputs_record_goes_once_its_output_is_gone_too(tmp_path):
    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.png", "b.png"):
        write_image(src / "d" / name, np.full((8, 8, 3), 90, np.uint8))
    noiseaug.run(src, out, workers=1)
    (src / "d" / "a.png").unlink()
    assert noiseaug.run(src, out, workers=1).gone == ["d/a.png"]  # flagged, its output kept
    assert [r.get("input_missing") for r in records(out / "noiseaug-manifest.jsonl")[1]] == [True, None]
    (out / "d" / "a.png").unlink()
    summary = noiseaug.run(src, out, workers=1)
    assert [r["input"] for r in records(out / "noiseaug-manifest.jsonl")[1]] == ["d/b.png"]
    assert noiseaug.verify(out / "noiseaug-manifest.jsonl").exit_code == 0
    assert noiseaug.run(src, out, workers=1).up_to_date and summary.gone == []


@pytest.mark.parametrize("shortcut", [False, True])
def test_a_gone_inputs_kept_record_does_not_send_every_later_no_op_the_long_way(tmp_path, monkeypatch, shortcut):
    """A record flagged input_missing (its output kept) made the quick check's count differ from the
    manifest's: every no-op after one deleted input went file by file (6-8 s for 70,000 files, 0.5 s
    before). It counts them now while their outputs are there, and goes the long way once one is gone (the
    run then drops that record), by the file-by-file check and by the folder shortcut alike."""
    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("d/a.png", "d/b.png", "e/c.png"):
        write_image(src / name, np.full((8, 8, 3), 90, np.uint8))
    noiseaug.run(src, out, workers=1)
    shutil.rmtree(src / "e")
    assert noiseaug.run(src, out, workers=1).gone == ["e/c.png"]
    with _quick_only(monkeypatch, shortcut=shortcut):
        assert noiseaug.run(src, out, workers=1).up_to_date
        assert noiseaug.run(src, out, workers=1).up_to_date
    (out / "e" / "c.png").unlink()  # alone in its output folder: noted there too
    with pytest.raises(AssertionError, match="the long way"), _quick_only(monkeypatch, shortcut=shortcut):
        noiseaug.run(src, out, workers=1)
    noiseaug.run(src, out, workers=1)
    assert [r["input"] for r in records(out / "noiseaug-manifest.jsonl")[1]] == ["d/a.png", "d/b.png"]
    with _quick_only(monkeypatch, shortcut=shortcut):
        assert noiseaug.run(src, out, workers=1).up_to_date


def test_a_rerun_after_input_or_output_moved_points_the_manifest_at_them(tmp_path):
    """Nothing to redo, but the run record's roots must follow, or verify looks in the old places."""
    import noiseaug

    src, out, manifest = tmp_path / "in", tmp_path / "out", tmp_path / "m" / "m.jsonl"
    manifest.parent.mkdir()
    write_image(src / "a.png", np.full((8, 8, 3), 90, np.uint8))
    noiseaug.run(src, out, workers=1, manifest=manifest)
    out.rename(tmp_path / "out2")
    src.rename(tmp_path / "in2")
    noiseaug.run(tmp_path / "in2", tmp_path / "out2", workers=1, manifest=manifest)
    run, _ = records(manifest)
    assert (run["input_root"], run["output_root"]) == (str(tmp_path / "in2"), str(tmp_path / "out2"))
    assert noiseaug.verify(manifest, regenerate=True).exit_code == 0
    assert noiseaug.run(tmp_path / "in2", tmp_path / "out2", workers=1, manifest=manifest).up_to_date


def test_an_input_that_comes_back_as_it_was_loses_its_flag(tmp_path, monkeypatch):
    """Gone (flagged input_missing), then back with the same size and mtime (mv away and back): the quick
    check must not call it up to date, or the flag stays for ever; the records end as a fresh run's."""
    import noiseaug

    src, out, fresh = tmp_path / "in", tmp_path / "out", tmp_path / "fresh"
    for name in ("a.png", "b.png"):
        write_image(src / "d" / name, np.full((8, 8, 3), 90, np.uint8))
    noiseaug.run(src, out, workers=1, copies=2)
    (src / "d" / "a.png").rename(tmp_path / "away.png")
    assert noiseaug.run(src, out, workers=1, copies=2).gone == ["d/a.png"]
    (tmp_path / "away.png").rename(src / "d" / "a.png")
    noiseaug.run(src, out, workers=1, copies=2)
    noiseaug.run(src, fresh, workers=1, copies=2)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(fresh / "noiseaug-manifest.jsonl")[1]
    with _quick_only(monkeypatch, shortcut=True):
        assert noiseaug.run(src, out, workers=1, copies=2).up_to_date


def test_overwrite_clears_the_way_when_a_folder_became_a_file(cli, tmp_path):
    """dd.png/ (a folder) gone and dd.png (a file) in its place: the old output folder is in the new output's
    way (one error a run); --overwrite removes the old outputs and the folders they leave empty."""
    import noiseaug

    src, out, fresh = tmp_path / "in", tmp_path / "out", tmp_path / "fresh"
    write_image(src / "dd.png" / "x" / "y.png", np.full((8, 8, 3), 90, np.uint8))
    write_image(src / "z.png", np.full((8, 8, 3), 40, np.uint8))
    noiseaug.run(src, out, workers=1)
    shutil.rmtree(src / "dd.png")
    write_image(src / "dd.png", np.full((8, 8, 3), 60, np.uint8))
    summary = noiseaug.run(src, out, workers=1)
    assert summary.failed == 1 and summary.gone == ["dd.png/x/y.png"]
    assert noiseaug.run(src, out, workers=1, overwrite=True).failed == 0
    noiseaug.run(src, fresh, workers=1)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(fresh / "noiseaug-manifest.jsonl")[1]
    assert (out / "dd.png").read_bytes() == (fresh / "dd.png").read_bytes()


def test_files_of_a_folder_that_cannot_be_listed_are_not_gone(tmp_path, monkeypatch):
    """A folder the walk cannot list (permissions, here simulated) is a problem of this run, not a deletion:
    its files' records stay as they were, unflagged."""
    import noiseaug
    from noiseaug.storage import local

    src, out = tmp_path / "in", tmp_path / "out"
    for rel in ("locked/a.png", "open/b.png"):
        write_image(src / rel, np.full((8, 8, 3), 90, np.uint8))
    noiseaug.run(src, out, workers=1)
    before = records(out / "noiseaug-manifest.jsonl")[1]
    real = local.list_folder

    def refuse(path):
        if path.endswith(b"/locked"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    real_stamp = local.stamp
    monkeypatch.setattr(local, "list_folder", refuse)
    monkeypatch.setattr(local, "stamp", lambda path: None if b"/locked/" in path else real_stamp(path))
    summary = noiseaug.run(src, out, workers=1)
    assert summary.failed == 1 and summary.gone == []
    assert records(out / "noiseaug-manifest.jsonl")[1] == before


def test_the_long_way_reads_no_previous_record_of_a_file_the_stat_cache_vouches_for(tmp_path, monkeypatch):
    """One input of many changed: the run reads the previous records of that one only (the others are
    confirmed by their cache rows beside the walk), and ends with the records a fresh run writes."""
    from PIL import Image

    import noiseaug
    from noiseaug.index import RunIndex

    src, out, fresh = tmp_path / "in", tmp_path / "out", tmp_path / "fresh"
    for i in range(12):
        write_image(src / f"d{i % 3}" / f"{i:02d}.png", np.full((8, 8, 3), 10 * i, np.uint8))
    Image.fromarray(np.eye(8, dtype=np.uint8)).convert("P").save(src / "d0" / "mask.png")
    (src / "d1" / "notes.txt").write_text("copied\n")
    noiseaug.run(src, out, workers=1, copies=2, copy_other=True)
    write_image(src / "d2" / "05.png", np.full((8, 8, 3), 99, np.uint8))  # changed: read, redone
    asked = []
    real = RunIndex.prior
    monkeypatch.setattr(RunIndex, "prior", lambda self, key, copies: asked.append(key) or real(self, key, copies))
    summary = noiseaug.run(src, out, workers=1, copies=2, copy_other=True)
    assert asked == [b"d2/05.png"] and summary.total("ok") == 2 and summary.total("skipped") == 24
    noiseaug.run(src, fresh, workers=1, copies=2, copy_other=True)
    assert records(out / "noiseaug-manifest.jsonl")[1] == records(fresh / "noiseaug-manifest.jsonl")[1]


def test_a_copied_label_map_keeps_its_record_when_copy_other_is_dropped_with_or_without_the_cache(tmp_path):
    """--copy-other is a selection option: without it a copied label map is outside the selection and its
    record stays, whether the stat cache vouches for it or the run looks at the file again."""
    import shutil as sh

    from PIL import Image

    import noiseaug

    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "a.png", np.full((8, 8, 3), 90, np.uint8))
    Image.fromarray(np.eye(8, dtype=np.uint8)).convert("P").save(src / "mask.png")
    noiseaug.run(src, out, workers=1, copy_other=True)
    sh.copytree(out, tmp_path / "bare")
    (tmp_path / "bare" / ".noiseaug-manifest.jsonl.state").unlink()
    write_image(src / "a.png", np.full((8, 8, 3), 70, np.uint8))  # some work to do
    for where in (out, tmp_path / "bare"):
        noiseaug.run(src, where, workers=1)
    kept = records(out / "noiseaug-manifest.jsonl")[1]
    assert [(r["input"], r["kind"]) for r in kept] == [("a.png", "image"), ("mask.png", "label")]
    assert records(tmp_path / "bare" / "noiseaug-manifest.jsonl")[1] == kept


@pytest.mark.parametrize("how", ["backup", "merge"])
def test_a_manifest_put_back_is_not_taken_at_the_stat_caches_word(cli, tmp_path, how):
    """The stat cache's rows confirmed the records they were written with: an older manifest put back (from
    a backup, or a merge of old shard manifests run again) must not have its stale records carried on the
    rows' stamps; the changed input is redone and verify holds."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "a.png", np.full((16, 16, 3), 100, np.uint8))
    write_image(src / "b.png", np.full((16, 16, 3), 50, np.uint8))
    manifest = out / "noiseaug-manifest.jsonl"
    if how == "backup":
        cli("run", src, out, "-q")
        old = manifest.read_bytes()
    else:
        cli("run", src, out, "-q", "--shard", "0/2")
        cli("run", src, out, "-q", "--shard", "1/2")
        shards = sorted(out.glob("noiseaug-manifest.shard-*.jsonl"))
        cli("merge", *shards, "-o", manifest)
    write_image(src / "a.png", np.full((16, 16, 3), 30, np.uint8))
    first = json.loads(cli("run", src, out, "--json").stdout)
    assert first["ok"] == 1 and first["skipped"] == 1  # a.png redone, its stamps noted with its new record
    if how == "backup":
        manifest.write_bytes(old)
    else:
        cli("merge", *shards, "-o", manifest)
    again = json.loads(cli("run", src, out, "--json").stdout)
    assert again["up_to_date"] is False and again["skipped"] == 1, again  # a.png's record is not a.png's now
    cli("verify", manifest)
    _, recs = records(manifest)
    (a,) = [r for r in recs if r["input"] == "a.png"]
    assert a["input_sha256"] == hashlib.sha256((src / "a.png").read_bytes()).hexdigest()


def test_verify_of_a_manifest_copied_out_of_output_alone_checks_the_recorded_output(cli, src, tmp_path):
    """Kept as a CI artifact, the manifest alone: verify looked beside it and found every output missing."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    (tmp_path / "kept").mkdir()
    shutil.copy(out / "noiseaug-manifest.jsonl", tmp_path / "kept" / "m.jsonl")
    said = cli("verify", tmp_path / "kept" / "m.jsonl").stderr
    assert f"outputs in {out} match" in said
    shutil.copytree(out, tmp_path / "moved")  # a copied OUTPUT still verifies itself
    assert f"in {tmp_path / 'moved'} match" in cli("verify", tmp_path / "moved" / "noiseaug-manifest.jsonl").stderr


@pytest.mark.parametrize("field", ["sigma", "height", "clipped_fraction", "input_bytes", "output_bytes"])
def test_verify_regenerate_names_a_record_field_edited_by_hand(cli, src, tmp_path, field):
    """A record whose sigma, shape, clipped fraction or sizes were edited passed verify --regenerate."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    lines = (out / "noiseaug-manifest.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    record[field] += 1
    lines[1] = json.dumps(record, ensure_ascii=False)
    (out / "noiseaug-manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    said = cli("verify", out / "noiseaug-manifest.jsonl", "--regenerate", code=1).stderr
    assert f"mismatch: {record['output']}: the record's {field} ({record[field]!r}) is not" in said, said


@pytest.mark.parametrize("edit,says", [
    (lambda r: r.update(type="weird"), "a record of type 'weird', not a file record"),
    (lambda r: r.update(output=None), "a file record has no valid 'output' path"),
    (lambda r: r.update(output=5), "a file record has no valid 'output' path"),
    (lambda r: r.pop("output"), "a file record has no valid 'output' path"),
    (lambda r: r.update(input=5), "a file record has no valid 'input' path"),
    (lambda r: r.update(input="../../etc/passwd"), "refusing input path '../../etc/passwd'"),
    (lambda r: r.update(output="/etc/passwd"), "refusing output path '/etc/passwd'"),
    (lambda r: r.update(copy="a"), "a file record's copy is 'a', not a whole number from 0"),
    (lambda r: r.update(copy=-1), "a file record's copy is -1, not a whole number from 0"),
    (lambda r: r.update(output_sha256=5), "a file record's output_sha256 is 5, not a SHA-256"),
    (lambda r: r.update(input_bytes="12"), "a file record's input_bytes is '12', not a size in bytes"),
    (lambda r: r.update(status="fine"), "a file record's status is 'fine', not one of ok, skipped, error"),
    (lambda r: r.update(copy=1 << 70), "a file record's copy is 1180591620717411303424, not a whole number"),
    (lambda r: r.pop("copy"), "a file record's copy is None, not a whole number from 0"),
    (lambda r: r.pop("status"), "a file record's status is None, not one of ok, skipped, error"),
    (lambda r: r.pop("output_sha256"), "a file record's output_sha256 is None, not a SHA-256"),
    (lambda r: r.update(input_bytes=None), "a file record's input_bytes is None, not a size in bytes"),
    (lambda r: r.update(sigma=float("nan")), "a file record's sigma is nan, not a finite number"),
    (lambda r: r.update(kind="audio"), "a file record's kind is 'audio', but 'a.png' is named as an image file"),
    (lambda r: r.update(kind="weird"), "a file record's kind is 'weird', not one of image, audio, other, label"),
    (lambda r: r.update(output="noiseaug-manifest.shard-1-of-2.jsonl"),
     "a file record's output is noiseaug's own file 'noiseaug-manifest.shard-1-of-2.jsonl'"),
    (lambda r: r.update(output="b//a.png"), "refusing output path 'b//a.png': an empty or '.' segment"),
    (lambda r: r.update(input="./a.png"), "refusing input path './a.png': an empty or '.' segment"),
    (lambda r: r.update(input_raw="@@@"), "a file record has no valid 'input' path"),
    (lambda r: r.update(status="error", error="two\nlines"), "an error record's error is 'two\\nlines', not a"),
])
def test_run_verify_and_merge_refuse_a_record_edited_out_of_shape(cli, src, tmp_path, edit, says):
    """A record of another type dropped out silently; an output of null or 5 gave a traceback (merge took it);
    run gave a traceback at its end on a record without an output, a number for a path or a copy that is no
    number, every time, and took a record climbing out of its roots (looking there) or a hash of 5. A manifest
    is input to all three: each refuses such a record in one line, exit 2, the manifest left as it is."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    lines = (out / "noiseaug-manifest.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    edit(record)
    lines[1] = json.dumps(record)
    (out / "noiseaug-manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = tree(out)
    for command in (["verify", out / "noiseaug-manifest.jsonl"],
                    ["merge", out / "noiseaug-manifest.jsonl", "-o", tmp_path / "merged.jsonl"],
                    ["run", src, out, "--workers", 1], ["run", src, out, "--workers", 1, "-v"]):
        said = cli(*command, code=2).stderr
        assert says in said and len(said.strip().splitlines()) == 1, said
    after = tree(out)
    assert after.pop(".noiseaug.lock") and before.pop(".noiseaug.lock")  # the lock says which run last held it
    assert after == before and not (tmp_path / "merged.jsonl").exists()


def test_small_things_said_right_about_merge_verify_and_image_sigma(cli, src, tmp_path):
    """merge wrote over any file named by -o; "1 manifests"; an output replaced by a link was "Too many levels
    of symbolic links"; image_sigma of an unsupported dtype was a bare KeyError."""
    import noiseaug

    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    (tmp_path / "photo.png").write_bytes(b"precious")
    said = cli("merge", out / "noiseaug-manifest.jsonl", "-o", tmp_path / "photo.png", code=2).stderr
    assert "exists and is no noiseaug manifest: it is not written over" in said
    assert (tmp_path / "photo.png").read_bytes() == b"precious"
    (tmp_path / "m.jsonl").touch()  # an empty file, as mktemp leaves one: written
    said = cli("merge", out / "noiseaug-manifest.jsonl", "-o", tmp_path / "m.jsonl").stderr
    assert " records from 1 manifest written to " in said
    cli("merge", out / "noiseaug-manifest.jsonl", "-o", tmp_path / "m.jsonl")  # an older result: written over
    name = json.loads((out / "noiseaug-manifest.jsonl").read_text().splitlines()[1])["output"]
    (out / name).unlink()
    (out / name).symlink_to(tmp_path / "photo.png")
    said = cli("verify", out / "noiseaug-manifest.jsonl", code=1).stderr
    assert f"mismatch: {name}: a symbolic link stands there (not followed)" in said
    with pytest.raises(ValueError, match="image samples are uint8, uint16 or float, not int16"):
        noiseaug.image_sigma(10, np.int16)


@pytest.mark.parametrize("raw", [5, "@@@"])
def test_a_run_record_whose_raw_root_is_no_base64_is_refused(cli, src, tmp_path, raw):
    """input_root_raw of 5 gave run and verify --regenerate a traceback; "@@@" was read as an empty root:
    verify could not read a single input, run said everything was up to date."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    manifest = out / "noiseaug-manifest.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    run = json.loads(lines[0])
    run["input_root_raw"] = raw
    lines[0] = json.dumps(run)
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    edited = manifest.read_bytes()
    (src / "a.png").touch()  # not up to date by the stat cache alone: the run reads its manifest
    for command in (["verify", manifest, "--regenerate"], ["run", src, out, "--workers", 1]):
        said = cli(*command, code=2).stderr
        assert said.strip() == "noiseaug: error: the run record's input_root_raw is not the base64 of a path", said
    assert manifest.read_bytes() == edited
