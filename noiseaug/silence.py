"""Keep C codec libraries' (and network libraries') own chatter off stderr while they run."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

_held: list[int] = []  # a /dev/null descriptor kept open while a run processes files (see held_devnull)
_silent: list[bool] = []  # [True] while stderr itself is /dev/null (a pool worker's whole life)
_owner: list[bool] = []  # [True] in the noiseaug program: its process, its file descriptor 2


def own_stderr() -> None:
    """Say that file descriptor 2 is noiseaug's to point elsewhere for a while (the program, not a library
    call: a host's other threads write there too, and would lose their lines meanwhile)."""
    _owner.append(True)


@contextmanager
def held_devnull(*, stderr: bool = False) -> Iterator[None]:
    """Keep one /dev/null descriptor for the length of a run, instead of opening one per codec call.

    ``stderr``: point file descriptor 2 at it meanwhile, so that codec calls need no switching at all
    (four system calls each); for a pool worker, whose failures the parent reports.
    """
    fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    _held.append(fd)
    saved = os.dup(2) if stderr else None
    if saved is not None:
        os.dup2(fd, 2)
        _silent.append(True)
    try:
        yield
    finally:
        if saved is not None:
            _silent.pop()
            os.dup2(saved, 2)
            os.close(saved)
        _held.remove(fd)
        os.close(fd)


@contextmanager
def codec_stderr_silenced() -> Iterator[None]:
    """Keep C codec libraries (libpng, libtiff, libjpeg, mpg123) off stderr meanwhile.

    They print straight to file descriptor 2, in the middle of noiseaug's own
    lines; the reason for a failure is noiseaug's to report, once. Only in the
    noiseaug program (:func:`own_stderr`): a library call leaves its host's
    descriptor 2 alone, codec warnings and all.
    """
    if _silent or not _owner:
        yield
        return
    devnull = _held[-1] if _held else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if not _held:
            os.close(devnull)


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Keep these loggers' chatter off stderr for a while (their levels are restored afterwards).

    Network libraries log what noiseaug reports itself, better: a lost
    connection as a traceback, asyncio's "Task exception was never retrieved".
    """
    import logging

    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    try:
        for logger, _ in saved:
            logger.setLevel(logging.CRITICAL + 1)
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
