"""Keep C codec libraries' own chatter off stderr while they run."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def codec_stderr_silenced() -> Iterator[None]:
    """Keep C codec libraries (libpng, libtiff, libjpeg, mpg123) off stderr meanwhile.

    They print straight to file descriptor 2, in the middle of noiseaug's own
    lines; the reason for a failure is noiseaug's to report, once.
    """
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
