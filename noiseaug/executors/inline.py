"""``--workers 1``: every file in this process, one after the other.

No pool, no pickling, no start-up; a stop is checked between files, and a
second signal abandons the file in flight at its next checkpoint.
"""

from __future__ import annotations

from typing import Iterator

from ..records import Job, Outcome, failed
from ..signals import ABANDONED, Abandon, Stopper
from ..silence import held_devnull
from ..worker import Context, limit_threads, process_job


class InlineExecutor:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._stopping = False
        self._threads = limit_threads(ctx.config.kinds)
        ctx.target.forget()

    def stop(self) -> None:
        self._stopping = True

    def run(self, batches: Iterator[list[Job]], stopper: Stopper) -> Iterator[tuple[Job, list[Outcome]]]:
        with held_devnull():
            yield from self._run(batches, stopper)

    def _run(self, batches: Iterator[list[Job]], stopper: Stopper) -> Iterator[tuple[Job, list[Outcome]]]:
        for batch in batches:
            for job in batch:
                if self._stopping or stopper.stopping:
                    return
                stopper.in_flight = 1
                try:
                    with stopper.job():
                        outcomes = process_job(job, self._ctx)
                except Abandon:
                    yield job, failed(job, self._ctx.config, ABANDONED)
                    return
                finally:
                    stopper.in_flight = 0
                yield job, outcomes

    def close(self) -> None:
        """Give OpenCV its thread count back (an in-process run set it to one)."""
        if self._threads is not None:
            from .. import image_io

            image_io.set_threads(self._threads)
            self._threads = None
