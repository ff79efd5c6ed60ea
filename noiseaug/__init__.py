"""noiseaug: add exact, reproducible Gaussian noise to image and audio datasets.

The library API mirrors the CLI::

    import noiseaug
    noisy = noiseaug.add_noise(pixels, sigma=10, rng=np.random.default_rng(0))
    summary = noiseaug.run("data/", "data-noisy/", image_sigma=5, workers=2)

Names are imported lazily so that ``noiseaug --help`` starts fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `python -m noiseaug` starts sooner

__version__ = "0.1.0"

_EXPORTS = {
    "add_noise": "noise", "image_sigma": "noise",
    "run": "pipeline", "Reporter": "report",
    "Config": "config", "make_config": "config",
    "Summary": "report",
    "verify": "verification",  # not a module named verify: importing it would hide this function
    "NoiseaugError": "errors", "UsageError": "errors", "FileError": "errors",
    "ManifestError": "errors", "Interrupted": "errors", "WorkerStartError": "errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .config import Config, make_config
    from .errors import FileError, Interrupted, ManifestError, NoiseaugError, UsageError, WorkerStartError
    from .noise import add_noise, image_sigma
    from .pipeline import run
    from .report import Reporter, Summary
    from .verification import verify


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'noiseaug' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
