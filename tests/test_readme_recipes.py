"""The README's Makefile and CI recipes, taken from the README itself and run as a user would."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image

README = Path(__file__).resolve().parent.parent / "README.md"


def block(language: str, after: str) -> str:
    """The first ```language block that follows the heading or text ``after``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


@pytest.fixture
def project(tmp_path) -> tuple[Path, dict[str, str]]:
    clean = tmp_path / "data" / "clean"
    rng = np.random.default_rng(3)
    for i in range(4):
        write_image(clean / f"img{i}.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return tmp_path, env


def make(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=root, env=env, capture_output=True, text=True)


def test_makefile_recipe_retries_a_failed_run_and_settles_after_touch(project):
    root, env = project
    (root / "Makefile").write_text(block("make", "### In a Makefile, in CI"), encoding="utf-8")
    assert make(root, env, "data/noisy.stamp").returncode == 0
    assert make(root, env, "-q", "data/noisy.stamp").returncode == 0  # up to date

    os.utime(root / "data" / "clean" / "img0.png")  # touched, not changed
    assert make(root, env, "-q", "data/noisy.stamp").returncode != 0
    assert make(root, env, "data/noisy.stamp").returncode == 0
    assert make(root, env, "-q", "data/noisy.stamp").returncode == 0  # settled

    (root / "data" / "clean" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert make(root, env, "data/noisy.stamp").returncode != 0
    assert make(root, env, "-q", "data/noisy.stamp").returncode != 0  # the next make tries again
    assert make(root, env, "data/noisy.stamp").returncode != 0


def test_ci_recipe_fails_the_job_when_a_file_fails(project):
    root, env = project
    script = block("sh", "A scheduled CI job")
    good = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    (root / "data" / "clean" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "broken.png" in bad.stderr


def test_verify_exits_1_on_a_manifest_that_records_failures(project):
    root, env = project
    (root / "data" / "clean" / "broken.png").write_bytes(b"not an image")
    subprocess.run(["noiseaug", "run", "data/clean", "data/noisy", "-q"], cwd=root, env=env)
    result = subprocess.run(["noiseaug", "verify", "data/noisy/noiseaug-manifest.jsonl"], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "failed in the run: broken.png" in result.stderr


def test_the_preview_recipe_draws_what_it_says(project):
    """The README's preview line, run as written over the repository's sample data: it prints what it says."""
    root, env = project
    lines = [line.strip() for line in block("console", "### `noiseaug preview").splitlines()]
    command, said = lines[0], lines[1]
    assert command.startswith("$ noiseaug preview ") and "--root sample_data" in command
    (root / "sample_data").symlink_to(README.parent / "sample_data")
    done = subprocess.run(shlex.split(command[2:]), cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.strip() == said, done.stderr
    assert (root / "preview.png").stat().st_size > 0
