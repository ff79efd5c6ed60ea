"""Shared helpers: real files in tmp_path, the CLI through typer's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from noiseaug.cli import app


def write_image(path: Path, pixels: np.ndarray, ext: str | None = None, params: list[int] | None = None) -> Path:
    """Encode with OpenCV by the path's extension and write the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if params is None and (ext or path.suffix) in (".tif", ".tiff") and pixels.dtype.kind == "f":
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 1]  # plain floats: OpenCV 4 would write LogLuv (SGILOG)
    ok, data = cv2.imencode(ext or path.suffix, pixels, params or [])
    assert ok, f"cannot encode {path}"
    path.write_bytes(data.tobytes())
    return path


def random_images(root: Path, names: list[str], shape: tuple[int, ...] = (20, 24, 3), seed: int = 0,
                  blur: float = 0.0) -> Path:
    """Random (optionally blurred, as photos compress) 8-bit images at the given relative names."""
    rng = np.random.default_rng(seed)
    for name in names:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        write_image(root / name, cv2.GaussianBlur(pixels, (0, 0), blur) if blur else pixels)
    return root


def clean_run(src: Path, out: Path, *options: str) -> Path:
    """An uninterrupted run (two workers) to compare an interrupted one with."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "noiseaug", "run", src, out, "--workers", "2", "-q", *options], check=True)
    return out


def read_image(path: Path | str) -> np.ndarray:
    """Decode as stored: alpha and bit depth kept, no orientation applied."""
    data = np.frombuffer(Path(path).read_bytes(), np.uint8)
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert pixels is not None, f"cannot decode {path}"
    return pixels


def records(manifest: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run record and the file records of a manifest."""
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["type"] == "run"
    return lines[0], lines[1:]


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (relative path -> bytes)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            full = Path(folder) / name
            out[os.fsdecode(full.relative_to(root))] = full.read_bytes()
    return out


class Cli:
    """Runs ``noiseaug`` in-process, as a user would type it."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: Any, code: int | None = 0):
        result = self.runner.invoke(app, [os.fsdecode(a) if isinstance(a, Path) else str(a) for a in args])
        if code is not None:
            crash = result.exception if not isinstance(result.exception, SystemExit) else None
            assert result.exit_code == code, (
                f"exit {result.exit_code}, wanted {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
                + (f"\n{crash!r}" if crash else ""))
        return result


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An empty INPUT folder and a not-yet-existing OUTPUT folder."""
    src = tmp_path / "in"
    src.mkdir()
    return src, tmp_path / "out"
