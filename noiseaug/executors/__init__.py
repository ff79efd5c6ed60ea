"""Where a batch of files runs: the seam between the pipeline and its workers.

An executor takes batches of jobs and yields ``(job, outcomes)`` as each file
finishes; :meth:`~Executor.stop` (or a signal, through the run's
:class:`~noiseaug.signals.Stopper`) stops dispatch while the files in flight
finish; a file whose process dies is yielded as failed, with the reason, and
``on_lost`` is told so its temporary output can be swept. The pipeline does
not know which executor runs: :func:`make_executor` picks it from the options.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from ..config import Config
from ..records import Job, Outcome
from ..signals import Stopper

if TYPE_CHECKING:
    from ..worker import Context


GUARD_HINT = ("a script that calls noiseaug.run with workers above 1 needs `if __name__ == \"__main__\":` around "
              "the call when it runs other threads (numpy's BLAS threads count, unless OPENBLAS_NUM_THREADS=1): "
              "its worker processes then start from a fork server, which imports the script again")


def importing_the_callers_script() -> bool:
    """Whether this process is a new worker (or fork server) running its parent's script again: multiprocessing's
    own test before it refuses to start a process (``spawn._check_not_importing_main``). Without multiprocessing
    imported, no: a run with nothing to do does not import it."""
    mp = sys.modules.get("multiprocessing")
    return mp is not None and bool(getattr(mp.current_process(), "_inheriting", False))


class Executor(Protocol):
    def run(self, batches: Iterator[list[Job]], stopper: Stopper) -> Iterator[tuple[Job, list[Outcome]]]:
        """Process the batches; yield each file's outcomes as it finishes."""

    def stop(self) -> None:
        """Start no new file (the pipeline decided to stop: --on-error fail, a full disk)."""

    def close(self) -> None:
        """Release the workers."""


def check_executor(config: Config) -> None:
    """Refuse, before anything is written, an executor whose extra is not installed."""
    if config.executor == "dask":
        from .cluster import import_distributed

        import_distributed()


def make_executor(ctx: Context, on_lost: Callable[[Job, int], None],
                  note: Callable[[str], None] | None = None) -> Executor:
    """A Dask cluster for ``--executor dask``; else in-process for ``--workers 1``, else the local process pool."""
    if ctx.config.executor == "dask":
        from .cluster import DaskExecutor

        return DaskExecutor(ctx, ctx.config.workers, ctx.config.scheduler, note)
    if ctx.config.workers == 1:
        from .inline import InlineExecutor

        return InlineExecutor(ctx)
    from .pool import ProcessPool

    return ProcessPool(ctx, ctx.config.workers, ctx.config.file_timeout, on_lost)
