"""The command line itself: help, version, summaries, dry runs, progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tree, write_image

COMMANDS = ["run", "verify", "merge", "preview"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_help_and_version_work_on_every_command(cli, command):
    assert "Usage:" in cli(*command, "--help").stdout
    assert cli(*command, "--version").stdout.startswith("noiseaug ")


def test_every_run_option_of_the_spec_is_offered(cli):
    text = cli("run", "--help").stdout
    for option in ("--image-sigma", "--audio-sigma", "--audio-snr-db", "--seed", "--copies", "--name",
                   "--workers", "--kinds", "--include", "--exclude", "--channel-noise", "--jpeg-quality",
                   "--png-compression", "--copy-other", "--overwrite", "--dry-run", "--on-error",
                   "--shard", "--max-pixels", "--manifest", "--config", "--progress", "--no-progress",
                   "--json", "--quiet", "--verbose"):
        assert option in text, option


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "noiseaug", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("noiseaug ")


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "in"
    for name in ("cats/a.png", "cats/b.png", "dogs/c.png", "dogs/d.jpg"):
        write_image(folder / name, np.full((16, 16, 3), 99, np.uint8))
    return folder


def test_json_summary_on_stdout_human_summary_on_stderr(cli, src, tmp_path):
    result = cli("run", src, tmp_path / "out", "--json", "--workers", 2)
    summary = json.loads(result.stdout)
    assert summary["files"]["image"] == {"ok": 4, "skipped": 0, "error": 0}
    assert summary["exit_code"] == 0 and summary["bytes_out"] > 0
    assert "files/s" in result.stderr and "ok" in result.stderr


def test_quiet_prints_nothing(cli, src, tmp_path):
    result = cli("run", src, tmp_path / "out", "-q", "--workers", 1)
    assert result.stdout == "" and result.stderr == ""


def test_no_progress_bar_when_piped(cli, src, tmp_path):
    result = cli("run", src, tmp_path / "out", "--workers", 1)
    assert "files/s" in result.stderr  # the summary is there
    assert "\r" not in result.stderr and "file/s]" not in result.stderr and "%|" not in result.stderr
    forced = cli("run", src, tmp_path / "out2", "--workers", 1, "--progress")
    assert "%|" in forced.stderr  # what the check above looks for, when there is a bar


def _outputs(out) -> list[str]:
    return sorted(p for p in tree(out) if not p.startswith(("noiseaug-", ".")))


def test_include_exclude_and_kinds_filter_relative_paths(cli, src, tmp_path):
    cli("run", src, tmp_path / "o1", "--include", "cats/*", "--workers", 1)
    assert _outputs(tmp_path / "o1") == ["cats/a.png", "cats/b.png"]
    cli("run", src, tmp_path / "o2", "--exclude", "*.jpg", "--exclude", "cats/b*", "--workers", 1)
    assert _outputs(tmp_path / "o2") == ["cats/a.png", "dogs/c.png"]
    cli("run", src, tmp_path / "o3", "--kinds", "audio", "--workers", 1)
    assert [p for p in tree(tmp_path / "o3") if p.endswith(".png")] == []


def test_dry_run_plans_and_writes_nothing(cli, src, tmp_path):
    result = cli("run", src, tmp_path / "out", "--dry-run", "--json")
    plan = json.loads(result.stdout)["plan"]
    assert plan["image"] == {"process": 4, "skip": 0}
    assert not (tmp_path / "out").exists()
    cli("run", src, tmp_path / "out", "--workers", 1)
    write_image(src / "dogs" / "new.png", np.zeros((4, 4), np.uint8))
    plan = json.loads(cli("run", src, tmp_path / "out", "--dry-run", "--json").stdout)["plan"]
    assert plan["image"] == {"process": 1, "skip": 4}
    assert "new.png" not in str(tree(tmp_path / "out").keys())


def test_a_dry_run_with_overwrite_says_what_the_run_would_remove(cli, src, tmp_path):
    """The plan left out the one step that destroys: the previous run's outputs that --overwrite removes."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    before = tree(out)
    result = cli("run", src, out, "--copies", 2, "--overwrite", "--dry-run", "--json", "-v")
    summary = json.loads(result.stdout)
    assert summary["plan_remove"] == 4 and summary["removed"] == 0 and tree(out) == before
    named = sorted(line.split(": ", 1)[1] for line in result.stderr.splitlines() if line.startswith("would remove: "))
    assert named == sorted(k for k in before if k.endswith((".png", ".jpg")))
    assert "would remove 4 output(s) of the previous run that this run does not produce (--overwrite)" in \
        cli("run", src, out, "--copies", 2, "--overwrite", "--dry-run").stderr
    assert json.loads(cli("run", src, out, "--copies", 2, "--overwrite", "--json").stdout)["removed"] == 4


def test_library_api_runs_without_the_cli(src, tmp_path):
    import noiseaug

    summary = noiseaug.run(src, tmp_path / "lib", image_sigma=3, workers=1)
    assert summary.exit_code == 0 and summary.total("ok") == 4
    with pytest.raises(noiseaug.UsageError):
        noiseaug.run(src, src)
    with pytest.raises(noiseaug.UsageError, match="INPUT must be a path"):
        noiseaug.run(5, tmp_path / "five")


def test_library_run_takes_bytes_paths_for_names_that_are_not_utf8(src, tmp_path):
    """run(b'in', b'out') was a TypeError, though names that are not UTF-8 work from the command line."""
    import shutil

    import noiseaug

    odd = os.path.join(os.fsencode(tmp_path), b"in-\xff")
    shutil.copytree(src, os.fsdecode(odd))
    out = os.path.join(os.fsencode(tmp_path), b"out-\xfe")
    summary = noiseaug.run(odd, out, workers=1)
    assert summary.exit_code == 0 and summary.total("ok") == 4
    assert tree(Path(os.fsdecode(out)))["cats/a.png"]


def test_cli_offers_every_option_of_the_config():
    """The CLI builds its Config from its own parameters by name: none may be missing or misspelt."""
    import dataclasses

    from noiseaug import cli
    from noiseaug.config import Config

    assert cli._CONFIG_KEYS == {f.name for f in dataclasses.fields(Config)}


def test_the_library_reads_a_config_file_and_its_options_win(src, tmp_path):
    import noiseaug

    toml = tmp_path / "opts.toml"
    toml.write_text('image-sigma = 3\ncopies = 2\nseed = 5\n', encoding="utf-8")
    summary = noiseaug.run(src, tmp_path / "out", config=toml, workers=1, seed=7)
    run = json.loads((tmp_path / "out" / "noiseaug-manifest.jsonl").read_text().splitlines()[0])
    assert run["options"]["image_sigma"] == "3" and run["options"]["copies"] == 2 and run["options"]["seed"] == 7
    assert summary.total("ok") == 2 * 4


def test_defaults_are_written_once():
    from noiseaug.config import Config, default_workers, make_config

    assert Config() == make_config()
    assert Config().workers == default_workers()


def test_summary_clipping_is_the_records_mean_and_max(cli, tmp_path):
    src = tmp_path / "clip"
    write_image(src / "dark.png", np.full((40, 40, 3), 2, np.uint8))  # much of its noise clips at 0
    write_image(src / "mid.png", np.full((40, 40, 3), 128, np.uint8))  # none does
    result = cli("run", src, tmp_path / "out", "--workers", 1, "--json")
    summary = json.loads(result.stdout)
    recs = [json.loads(line) for line in (tmp_path / "out" / "noiseaug-manifest.jsonl").read_text().splitlines()[1:]]
    fractions = [r["clipped_fraction"] for r in recs]
    assert max(fractions) > 0.3 and min(fractions) == 0
    assert summary["clipped_fraction_mean"] == pytest.approx(sum(fractions) / 2)
    assert summary["clipped_fraction_max"] == max(fractions)
    assert f"{100 * sum(fractions) / 2:.3f}%" in result.stderr


def test_quiet_says_an_interruption_in_one_line_not_the_summary_table(capsys):
    """-q prints only failures, and why a run stopped: an interruption is one line, not the whole summary."""
    from noiseaug.cli import _tell
    from noiseaug.report import Summary

    summary = Summary("in", "out", "out/noiseaug-manifest.jsonl", interrupted=True, signal="SIGTERM")
    _tell(summary, None, 0, quiet=True, json_out=False)
    assert capsys.readouterr().err.splitlines() == [
        "noiseaug: interrupted by SIGTERM: the manifest holds what was done; run again to continue"]
    _tell(summary, None, 0, quiet=False, json_out=False)
    assert "manifest: out/noiseaug-manifest.jsonl" in capsys.readouterr().err
