"""SIGINT and SIGTERM as flags, the way black and rsync handle them.

A handler that raises ``KeyboardInterrupt`` anywhere can land in a
``finally``, a ``__del__`` or between sending a batch and noting it, where it
is lost or leaves the bookkeeping wrong. Here the handler only counts the
signal, says what happens next, and writes a byte to a wake-up pipe so a
dispatch loop blocked in ``wait`` notices at once. The loop checks the flags:
the first signal stops dispatch and lets the files in flight finish; the
second abandons them. While one file is processed in-process (``--workers
1``), where nothing else can stop it, its work calls :func:`checkpoint`
between blocks and pages, which raises :class:`Abandon` once a second signal
came: raising from the handler itself could land in a ``__del__`` and be lost.

Handlers and the wake-up fd are installed for the length of a run, in the
main thread only, and the previous ones are restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABANDONED = "abandoned: a second interrupt stopped the run while this file was in flight"


class Abandon(BaseException):
    """Raised inside an in-process file's work by a second signal (not an ``Exception``: nothing may swallow it)."""


class Stopper:
    """Counts SIGINT/SIGTERM during a run; ``stopping`` after one, ``abandoning`` after two."""

    def __init__(self) -> None:
        self.count = 0
        self.signum: int | None = None
        self.in_flight = 0  # files being processed, for the first signal's message
        self._in_job = False
        self._saved: dict[int, Any] = {}
        self._wakeup: int | None = None
        self.wakeup_fd: int | None = None  # readable once a signal arrived (None outside the main thread)
        self._pipe: tuple[int, int] | None = None
        self._stderr: int | None = None

    @property
    def stopping(self) -> bool:
        return self.count >= 1

    @property
    def abandoning(self) -> bool:
        return self.count >= 2

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    def __enter__(self) -> "Stopper":
        if threading.current_thread() is not threading.main_thread():
            return self  # a library caller's thread: signals stay the host's business
        self._stderr = os.dup(2)  # codecs' chatter is sent to /dev/null meanwhile; this message is not
        read, write = os.pipe()
        for fd in (read, write):
            os.set_blocking(fd, False)
        self._pipe = (read, write)
        self.wakeup_fd = read
        for signum in SIGNALS:
            self._saved[signum] = signal.signal(signum, self._handle)
        self._wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._wakeup if self._wakeup is not None else -1)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        for fd in (*self._pipe, self._stderr):
            os.close(fd)
        self._pipe = self.wakeup_fd = self._stderr = None

    def _handle(self, signum: int, frame: object) -> None:
        before = self.count
        self.count += max(1, self._arrived())
        self.signum = self.signum or signum
        key = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if before == 0:
            self._say(f"noiseaug: stopping; finishing {self.in_flight} file(s) in flight "
                      f"({key} again to abandon them)")
        if before <= 1 < self.count:
            self._say("noiseaug: abandoning the files in flight; the next run cleans up after them")

    def _arrived(self) -> int:
        """How many of our signals came since the wake-up pipe was last read.

        CPython calls a handler once for a signal that came several times
        while the main thread was inside one C call (a long codec call, with
        ``--workers 1``), but writes a byte to the wake-up pipe for each. The
        pipe is left readable (with a byte that is no signal), so that a loop
        waiting on it still wakes up.
        """
        if self._pipe is None:
            return 0
        count = 0
        with contextlib.suppress(BlockingIOError, OSError):
            while data := os.read(self._pipe[0], 512):
                count += sum(1 for byte in data if byte in SIGNALS)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._pipe[1], b"\0")
        return count

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, TypeError):
            os.write(self._stderr, (text + "\n").encode("utf-8", "replace"))

    def drain(self) -> None:
        """Empty the wake-up pipe (its bytes only say that a signal came)."""
        if self.wakeup_fd is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.wakeup_fd, 512):
                pass

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Mark in-process work on one file: a second signal abandons it at its next checkpoint."""
        global _current
        if self.abandoning:
            raise Abandon
        self._in_job, _current = True, self
        try:
            yield
        finally:
            self._in_job, _current = False, None


_current: Stopper | None = None  # the stopper of the file being processed in this process, if any
_deadline = threading.local()  # per thread: when the file in flight overruns --file-timeout (a Dask task)


class TimedOut(Abandon):
    """Raised at a checkpoint once the file in flight has overrun its time limit (see :func:`deadline`)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Give the work inside at most ``seconds``: past it, its next :func:`checkpoint` raises :class:`TimedOut`.

    For executors whose workers cannot be killed per file (a Dask worker runs
    tasks in a thread); a codec call that never returns is not interrupted.
    """
    import time

    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = None


def checkpoint() -> None:
    """Raise :class:`Abandon` if a second signal asked to abandon the file in flight (in-process runs),
    :class:`TimedOut` if it overran its :func:`deadline`."""
    if _current is not None and _current.abandoning:
        raise Abandon
    at = getattr(_deadline, "at", None)
    if at is not None:
        import time

        if time.monotonic() > at:
            raise TimedOut

