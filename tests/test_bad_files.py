"""Bad files: one error record and one stderr line each; the rest still done."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import read_image, records, write_image


def test_bad_files_are_recorded_and_good_files_done(cli, tmp_path):
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(src / f"good{i}.png", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    good_jpg = write_image(src / "good.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).read_bytes()
    (src / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_bytes(b"this is not a picture\n")
    (src / "jpeg_named.png").write_bytes(good_jpg)  # wrong extension but decodable: kept as named
    big = write_image(tmp_path / "big.png", np.zeros((300, 400), np.uint8))
    (src / "huge.png").write_bytes(big.read_bytes())

    result = cli("run", src, tmp_path / "out", "--max-pixels", 100000, "--workers", 2, code=1)
    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    by_input = {r["input"]: r for r in recs}
    assert len(recs) == 10
    bad = {"truncated.jpg", "empty.png", "text.png", "huge.png"}
    for name in bad:
        assert by_input[name]["status"] == "error"
        reason = by_input[name]["error"]
        assert reason and "\n" not in reason
        assert f"failed: {name}: {reason}" in result.stderr
    assert "more than --max-pixels 100000" in by_input["huge.png"]["error"]
    for name, rec in by_input.items():
        if name not in bad:
            assert rec["status"] == "ok", rec
            read_image(tmp_path / "out" / name)
    assert "Traceback" not in result.stderr
    for name in bad:
        assert not (tmp_path / "out" / name).exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_on_error_fail_stops_early_with_a_valid_manifest(cli, tmp_path, workers):
    """The first failure stops the run: with a pool, the worker that met it does not go on through its batch
    (64 small files; the other worker may have done any number of files before the failure was seen)."""
    src = tmp_path / "in"
    (src).mkdir()
    (src / "a_bad.png").write_bytes(b"nope")
    for i in range(200):
        write_image(src / f"b{i:03d}.png", np.zeros((10, 10), np.uint8))
    cli("run", src, tmp_path / "out", "--on-error", "fail", "--workers", workers, code=1)
    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    assert recs[0]["input"] == "a_bad.png" and recs[0]["status"] == "error"
    assert not any(r["input"] < "b063.png" for r in recs[1:])  # none of a_bad.png's batch


def test_failure_lines_escape_control_characters_and_name_no_descriptors(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bro\nken.png").write_bytes(b"")
    (src / "red\x1b[31m.wav").write_bytes(b"not audio at all")
    result = cli("run", src, tmp_path / "out", "--workers", 1, "--copies", 2, code=1)
    lines = [line for line in result.stderr.splitlines() if line.startswith("noiseaug: failed:")]
    assert lines == ["noiseaug: failed: bro\\nken.png: empty file",
                     lines[1]] and lines[1].startswith("noiseaug: failed: red\\x1b[31m.wav: ")
    assert "<_io" not in result.stderr and "\x1b" not in result.stderr


def test_dry_run_with_work_to_do_is_not_up_to_date(cli, tmp_path):
    import json

    src = tmp_path / "in"
    write_image(src / "a.png", np.zeros((4, 4), np.uint8))
    summary = json.loads(cli("run", src, tmp_path / "out", "--dry-run", "--json").stdout)
    assert summary["up_to_date"] is False and summary["plan"]["image"]["process"] == 1


def test_an_image_too_big_for_memory_is_refused_from_its_header(cli, tmp_path):
    """A valid PNG header declaring 2^31 x 2^31 pixels: refused before any allocation."""
    import struct
    import zlib

    src = tmp_path / "in"
    src.mkdir()
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    (src / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                                   + chunk(b"IEND", b""))
    result = cli("run", src, tmp_path / "a", "--workers", 1, code=1)
    assert "more than --max-pixels" in result.stderr
    result = cli("run", src, tmp_path / "b", "--workers", 1, "--max-pixels", 2**63, code=1)
    assert "of memory is available" in result.stderr


def test_an_empty_audio_file_is_an_empty_file(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "silence.wav").write_bytes(b"")
    (src / "nothing.flac").write_bytes(b"")
    result = cli("run", src, tmp_path / "out", "--workers", 1, code=1)
    lines = sorted(line for line in result.stderr.splitlines() if line.startswith("noiseaug: failed:"))
    assert lines == ["noiseaug: failed: nothing.flac: empty file", "noiseaug: failed: silence.wav: empty file"]


def test_json_failures_name_each_output_and_the_summary_each_input_once(cli, tmp_path):
    import json

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = cli("run", src, out, "--workers", 1, "--copies", 3, "--json", code=1)
    failures = json.loads(result.stdout)["failures"]
    assert sorted(f["output"] for f in failures) == [f"bad_n{c}.png" for c in range(3)]
    assert {f["input"] for f in failures} == {"bad.png"}
    summary = [line for line in result.stderr.splitlines() if line.startswith("failed: bad.png")]
    assert len(summary) == 1


def test_a_summary_lists_a_bounded_number_of_failures_and_gone_inputs_and_counts_them_all(tmp_path, monkeypatch):
    """A million failing files must not grow the parent's memory: the summary keeps the first LISTED of each
    list, says how many it left out, and every one of them still has its record in the manifest."""
    import noiseaug
    from noiseaug import report

    monkeypatch.setattr(report, "LISTED", 3)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(7):
        (src / f"bad{i}.png").write_bytes(b"")
        write_image(src / f"good{i}.png", np.full((4, 4, 3), 100, np.uint8))
    summary = noiseaug.run(src, out, workers=1)
    assert summary.failed == 7 and len(summary.failures) == 3 and summary.to_dict()["not_listed"]["failures"] == 4
    assert "... and 4 more failures, each in the manifest with its reason" in summary.text()
    assert sum(r["status"] == "error" for r in records(out / "noiseaug-manifest.jsonl")[1]) == 7
    for i in range(7):
        (src / f"good{i}.png").unlink()
    summary = noiseaug.run(src, out, workers=1)
    assert summary.gone == ["good0.png", "good1.png", "good2.png"] and summary.gone.total == 7
    assert summary.to_dict()["not_listed"]["gone"] == 4 and "7 input(s) of the previous run are gone" in summary.text()


def test_an_undecodable_name_is_shown_the_same_way_live_and_in_the_summary(cli, tmp_path):
    import os

    src = tmp_path / "in"
    src.mkdir()
    with open(os.fsencode(src) + b"/\xfe.png", "wb") as fh:
        fh.write(b"garbage")
    result = cli("run", src, tmp_path / "out", "--workers", 1, code=1)
    live = [line for line in result.stderr.splitlines() if line.startswith("noiseaug: failed:")]
    summary = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert live == ["noiseaug: " + summary[0]] and summary[0].startswith("failed: \\xfe.png: ")


def test_a_plain_pnm_that_opencv_reads_leniently_is_refused_and_good_ones_are_kept(cli, tmp_path):
    """OpenCV split ``20x9`` into the samples 20 and 9 and took 300 where the maximum is 255: the file was
    recorded ok with samples it does not hold. Pillow's strict reader must read what OpenCV read."""
    src = tmp_path / "in"
    src.mkdir()
    bad = {"letter.pgm": b"P2\n4 1\n255\n10 20x9 30\n", "comma.pgm": b"P2\n3 1\n255\n250,0 5\n",
           "above.pgm": b"P2\n2 1\n255\n10 300\n", "rgb.ppm": b"P3\n2 1\n255\n1 2 3 4 5- 6\n",
           "deep_rgb.ppm": b"P3\n1 1\n65535\n1000 20x0 3000\n"}
    good = {"gray.pgm": (b"P2\n# made by hand\n4 1\n255\n10 20 9 30\n", [[10, 20, 9, 30]]),
            "deep.pgm": (b"P2\n4 1\n65535\n10 20000 9 65535\n", [[10, 20000, 9, 65535]]),
            "colour.ppm": (b"P3\n2 1\n255\n1 2 3\n4 5 6\n", [[[3, 2, 1], [6, 5, 4]]]),  # read back as BGR
            "deep_colour.ppm": (b"P3\n1 1\n65535\n1000 2000 65535\n", [[[65535, 2000, 1000]]]),
            "unended.pgm": (b"P2\n2 1\n255\n1 2", [[1, 2]])}  # no whitespace after the last sample
    for name, data in [*bad.items(), *((n, d) for n, (d, _) in good.items())]:
        (src / name).write_bytes(data)
    cli("run", src, tmp_path / "out", "--image-sigma", 0, "--workers", 1, code=1)
    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    status = {r["input"]: (r["status"], r.get("error", "")) for r in recs}
    for name in bad:
        assert status[name][0] == "error" and "malformed plain PNM samples" in status[name][1], status[name]
    for name, (_, samples) in good.items():
        assert status[name] == ("ok", ""), status[name]
        assert read_image(tmp_path / "out" / name).tolist() == samples


def test_the_summary_lists_failures_by_input_whatever_order_the_workers_finished_in(tmp_path):
    """Workers finish files out of order: the summary's failure lines (and --json's list) came in that order."""
    from noiseaug.report import Summary

    summary = Summary("in", "out", "out/noiseaug-manifest.jsonl")
    for name in ("z.png", "a.png", "m/b.png"):
        summary.add({"type": "file", "input": name, "output": name, "kind": "image", "copy": 0, "status": "error",
                     "error": "cannot decode"})
    assert [line for line in summary.text().splitlines() if line.startswith("failed:")] == [
        "failed: a.png: cannot decode", "failed: m/b.png: cannot decode", "failed: z.png: cannot decode"]
    assert [f["input"] for f in summary.to_dict()["failures"]] == ["a.png", "m/b.png", "z.png"]
