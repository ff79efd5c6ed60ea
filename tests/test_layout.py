"""The code stays as the README's module map describes it: small functions, codecs behind their modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "noiseaug"


def test_every_function_fits_on_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length >= 60:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_codecs_are_imported_only_behind_image_io_and_audio_io():
    allowed = {"image_io.py", "image_tiff.py", "audio_io.py", "preview.py"}  # preview draws with OpenCV
    codecs = {"cv2", "PIL", "soundfile", "tifffile", "imagecodecs"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n.split(".")[0] in codecs for n in names) and path.name not in allowed:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, found


def test_the_library_names_stay_what_they_are_once_every_module_is_imported():
    """A submodule named like an export (noiseaug/verify.py and noiseaug.verify) would replace the export on the
    package as soon as anything imported it: noiseaug.verify(...) would call a module."""
    import importlib
    import inspect
    import pkgutil

    import noiseaug

    for module in pkgutil.walk_packages(noiseaug.__path__, "noiseaug."):
        if module.name.rpartition(".")[2] not in ("__main__", "cluster", "remote", "s3"):  # optional extras aside
            importlib.import_module(module.name)
    for name in noiseaug.__all__:
        assert not inspect.ismodule(getattr(noiseaug, name)), name
