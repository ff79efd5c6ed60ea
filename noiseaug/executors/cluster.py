"""``--executor dask``: batches of files as tasks on a Dask cluster.

The cluster is the one at ``--scheduler`` (or ``DASK_SCHEDULER_ADDRESS``),
or else a ``LocalCluster`` of ``--workers`` single-threaded worker processes
started for the run. Each batch of files (the pool's batching) is one task;
a bounded number are in flight, and their outcomes come back as they
complete. Workers read and write the files themselves; the driver alone
keeps the manifest, as with the local pool.

Worker set-up (one OpenCV thread, Ctrl-C left to the driver) is a worker
plugin, so a worker that joins or is restarted later gets it too. There is no
parent watch: a remote worker outlives any one driver by design.

When a worker dies, the scheduler runs its tasks again elsewhere; a batch
that has killed ``allowed-failures`` workers is split into one task per file,
and a file that still kills its worker is recorded as failed, with why.
``--file-timeout`` is enforced in the worker, at the checkpoints between
blocks and pages of a file (a worker thread cannot be killed per file).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from typing import Any, Iterator

from ..config import redact_url as redact
from ..errors import ClusterError, UsageError
from ..records import Job, Outcome, failed
from ..signals import Stopper, TimedOut, deadline
from ..silence import held_devnull, quiet_loggers
from ..storage.local import set_temp_tag
from ..worker import Context, ends_batch, limit_threads, process_job
from .pool import idle_helpers, stop_helpers

PLUGIN_NAME = "noiseaug-worker-setup"
# what the storage's libraries log about a connection noiseaug reports itself: asyncio's "Task exception was
# never retrieved" with aiohttp's traceback when an endpoint goes away mid-upload
STORAGE_LOGGERS = ("asyncio", "aiobotocore", "botocore", "s3fs", "fsspec")
IN_FLIGHT_PER_WORKER = 2  # batches queued per worker: one running, one ready
WORKERS_EVERY = 1.0  # seconds between questions to the scheduler about its workers
TASK_BYTES, TASK_FILES = 4 << 20, 64  # a task's inputs: a few 1080p images, or many small files
STOP_EVERY = 0.25  # seconds between a task's looks at the run's stop event (a round trip to the scheduler)

# The LocalCluster noiseaug starts shares the machine with its driver (scheduler and nannies live there): the
# bookkeeping meant for long-lived clusters, which takes CPU from the codecs, is turned down. A scheduler of
# yours keeps its own settings.
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": 2,  # a batch that killed two workers is split sooner
    "distributed.worker.profile.enabled": False,  # a stack sampler every 10 ms in each worker
    "distributed.scheduler.work-stealing": False,  # batches are small and even; no rebalancing every 100 ms
    "distributed.admin.tick.interval": "1s",  # the event loops' blocked-loop watch, 50 times a second
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",  # each nanny reads its worker's memory 10 times a second
    "distributed.scheduler.active-memory-manager.start": False,  # no results are kept on workers to manage
    # Dask's workers set it to hand memory back to the system sooner; it also pins glibc's mmap threshold, so each
    # decoded frame is fresh pages to fault in and zero (about a second of system time per 128 1080p images here)
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


def _local_cluster_config() -> dict[str, Any]:
    """LOCAL_CLUSTER_CONFIG, with workers started by a fork server where there is one.

    Dask's default, spawn, starts each worker as a fresh interpreter that
    imports Dask, numpy and OpenCV again: about a second of CPU per worker,
    and half a second more to stop them. A fork server imports them once and
    forks every worker from that single-threaded process, which is safe where
    forking the driver (it runs Dask's event loop in a thread) would not be.
    """
    import multiprocessing

    config: dict[str, Any] = dict(LOCAL_CLUSTER_CONFIG)
    if "forkserver" in multiprocessing.get_all_start_methods():
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    return config


def import_distributed() -> Any:
    """The ``distributed`` package, or a one-line error naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise UsageError("--executor dask needs Dask: pip install 'noiseaug[dask]'") from None
    return distributed


def _worker_plugin(kinds: tuple[str, ...], own: bool) -> Any:
    from distributed import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        name = PLUGIN_NAME

        def setup(self, worker: Any) -> None:
            setup_worker(kinds)
            if own:  # a LocalCluster's workers print to the run's stderr: network chatter has no place there
                for name in STORAGE_LOGGERS:
                    logging.getLogger(name).setLevel(logging.CRITICAL + 1)

    return WorkerSetup()


def setup_worker(kinds: tuple[str, ...]) -> None:
    """One codec thread per worker; Ctrl-C at a terminal is the driver's to handle, not the workers'."""
    limit_threads(kinds)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIGTERM stays: it is how a nanny stops its worker


_one_batch_at_a_time = threading.Lock()  # codec chatter is silenced per process (fd 2): one thread works at once


def run_batch(jobs: list[Job], ctx: Context, stop: str | None = None) -> list[list[Outcome]]:
    """A Dask task: the files of a batch in turn, each within ``--file-timeout``; the outcomes of those done.

    It ends early when the driver sets the Dask event ``stop`` (a signal, or a
    reason to stop the run), looked at between files every STOP_EVERY seconds
    (a task of one large file asks nothing), and after a file whose failure
    the next file would share (an unreachable storage, a full disk), as the
    pool's workers do.
    A worker with several threads runs one batch at a time: noiseaug's
    per-process settings (the silenced stderr, the temporary-file tag) are
    not for sharing, and its codecs are CPU-bound anyway.
    """
    results: list[list[Outcome]] = []
    asked = time.monotonic()
    with _one_batch_at_a_time, held_devnull():
        set_temp_tag(ctx.temp_tag)
        for job in jobs:
            if stop is not None and time.monotonic() - asked >= STOP_EVERY:
                asked = time.monotonic()
                if _is_set(stop):
                    break
            try:
                with deadline(ctx.config.file_timeout):
                    results.append(process_job(job, ctx))
            except TimedOut:
                results.append(failed(job, ctx.config, f"took longer than --file-timeout "
                                                        f"{ctx.config.file_timeout:g} s; abandoned"))
            if ends_batch(results[-1], ctx.config):
                break
    return results


def _is_set(name: str) -> bool:
    """Whether the driver has set this Dask event (False if the scheduler cannot say: the driver decides)."""
    from distributed import Event

    try:
        return bool(Event(name).is_set())
    except Exception:
        return False


def _quiet_logs() -> contextlib.ExitStack:
    """Dask's INFO chatter stays out of noiseaug's stderr while the cluster starts and stops."""
    stack = contextlib.ExitStack()
    stack.enter_context(quiet_loggers("distributed", "distributed.scheduler", "distributed.nanny",
                                      "distributed.worker", "distributed.core", "distributed.http.proxy",
                                      "distributed.client", "distributed.comm"))
    return stack


class DaskExecutor:
    """Batches of jobs as tasks on a Dask cluster (see the module's text)."""

    def __init__(self, ctx: Context, workers: int, scheduler: str | None, note: Any = None) -> None:
        import_distributed()
        self._ctx, self._workers, self._note = ctx, workers, note
        self._address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        self._stopping = False
        self._client: Any = None
        self._cluster: Any = None
        self._seen: set[str] = set()
        self._asked = float("-inf")
        self.lost_workers = False  # a worker went away during the run: its temporary files may be left
        self._logs = _quiet_logs()
        import dask

        self._config = dask.config.set(_local_cluster_config() if self._address is None else {})
        self._box: dict[str, Any] = {}  # what the connecting thread made, to close even if the run stopped first
        self._config.__enter__()
        self._stop_event = f"noiseaug-stop-{uuid.uuid4().hex}"  # set: the run's tasks end after their current file
        self._told = False
        self._helpers = idle_helpers() if self._address is None else []  # a LocalCluster's fork server

    def _start(self, stopper: Stopper) -> bool:
        """Connect (or start a LocalCluster) in a thread, watching the signal flags and a deadline: a port
        that is not a scheduler would otherwise hang the run. False when a signal stopped it."""
        box = self._box
        thread = threading.Thread(target=self._connect, args=(box,), name="noiseaug-dask-connect", daemon=True)
        thread.start()
        self._thread = thread
        deadline = time.monotonic() + _connect_seconds() + (60.0 if self._address is None else 0.0)
        while thread.is_alive():
            thread.join(0.1)
            if stopper.stopping:
                return False
            if time.monotonic() > deadline:
                raise ClusterError(f"no answer from the Dask scheduler at {redact(self._address or 'a LocalCluster')} "
                                   f"in {_connect_seconds():g} s (is it a Dask scheduler?)")
        if "error" in box:
            raise box["error"]
        self._client, self._cluster = box["client"], box.get("cluster")
        self._client.register_plugin(_worker_plugin(self._ctx.config.kinds, own=self._address is None),
                                     name=PLUGIN_NAME)
        link = getattr(self._client, "dashboard_link", None) if self._serves_dashboard() else None
        if self._note is not None and link:
            self._note(f"Dask dashboard: {redact(link)}", always=True)
        return True

    def _serves_dashboard(self) -> bool:
        """Whether the scheduler serves a dashboard: ours when bokeh is here; another's when bokeh is there
        (its HTTP server runs without, and a link to its /status would answer 404)."""
        if not self._address:
            return _has_dashboard()

        def bokeh_here() -> bool:  # runs on the scheduler, sent by value: noiseaug need not be installed there
            import importlib.util

            return importlib.util.find_spec("bokeh") is not None

        try:
            return bool(self._client.run_on_scheduler(bokeh_here))
        except Exception:  # a link is a courtesy: no answer, no link
            return False

    def _connect(self, box: dict[str, Any]) -> None:
        import distributed

        try:
            if self._address:
                box["client"] = distributed.Client(self._address, timeout=f"{_connect_seconds():g}s")
            else:
                box["cluster"] = distributed.LocalCluster(
                    n_workers=self._workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=":0", silence_logs=logging.CRITICAL)
                box["client"] = distributed.Client(box["cluster"])
        except (ValueError, TypeError) as exc:
            box["error"] = UsageError(f"--scheduler {redact(self._address or '')}: not a Dask scheduler address "
                                      f"({redact(_first_line(exc))})")
        except Exception as exc:
            box["error"] = ClusterError(f"cannot reach the Dask scheduler at {redact(self._address or '')}: "
                                        f"{redact(_first_line(exc))}")

    def stop(self) -> None:
        self._stopping = True
        self._tell_tasks()

    def _tell_tasks(self) -> None:
        """Tasks in flight stop after the file they are on (the pool's workers do so between files)."""
        if self._told or self._client is None:
            return
        self._told = True
        from distributed import Event

        with contextlib.suppress(Exception):
            Event(self._stop_event, client=self._client).set()

    def _slots(self, now: bool = False) -> int:
        """Batches to keep in flight: a few per worker. Notes workers that went away (see ``lost_workers``).

        The scheduler is asked at most once a second (or ``now``): each question is a round trip that costs
        the scheduler and the driver CPU the codecs could use.
        """
        if now or time.monotonic() - self._asked >= WORKERS_EVERY:
            self._asked = time.monotonic()
            try:
                workers = set(self._client.nthreads())
            except Exception:
                workers = set()
            self.lost_workers = self.lost_workers or bool(self._seen - workers)
            self._seen = workers
        return max(2, IN_FLIGHT_PER_WORKER * max(len(self._seen), 1))

    def run(self, batches: Iterator[list[Job]], stopper: Stopper) -> Iterator[tuple[Job, list[Outcome]]]:
        """Submit batches as slots free; yield each file's outcomes as its batch completes."""
        from distributed import as_completed

        if not self._start(stopper):
            return  # stopped by a signal while connecting: nothing was in flight
        batches = _larger(batches)
        pending: dict[Any, list[Job]] = {}
        singles: collections.deque[Job] = collections.deque()
        done = as_completed([], with_results=False)
        self._top_up(batches, singles, pending, done, stopper)
        while pending:
            future = self._next(done, stopper)
            if future is None:  # a second signal: give up on what is in flight
                yield from self._abandon(pending)
                return
            jobs = pending.pop(future)
            yield from self._collect(future, jobs, singles)
            future.release()  # its result is taken: the worker need not keep it (or recompute it when lost)
            self._top_up(batches, singles, pending, done, stopper)

    def _next(self, done: Any, stopper: Stopper) -> Any:
        """The next completed future; None once a second signal came. Wakes often to look at the flags."""
        while not done.has_ready():
            if stopper.abandoning:
                return None
            if stopper.stopping and not self._told:
                self._tell_tasks()
            if self._client.status in ("closing", "closed", "failed"):
                raise self._lost(ConnectionError("closed"))
            time.sleep(0.01)
        return next(done)

    def _top_up(self, batches: Iterator[list[Job]], singles: collections.deque[Job], pending: dict[Any, list[Job]],
                done: Any, stopper: Stopper) -> None:
        if self._stopping or stopper.stopping:
            return
        slots = self._slots()
        while len(pending) < slots:
            batch = [singles.popleft()] if singles else next(batches, None)
            if batch is None:
                break
            future = self._submit(batch)
            pending[future] = batch
            done.add(future)
        stopper.in_flight = min(sum(map(len, pending.values())), max(1, len(self._seen)))  # a file per worker

    def _submit(self, batch: list[Job]) -> Any:
        try:
            return self._client.submit(run_batch, batch, self._ctx, self._stop_event, pure=False)
        except Exception as exc:
            raise self._lost(exc) from None

    def _collect(self, future: Any, jobs: list[Job],
                 singles: collections.deque[Job]) -> Iterator[tuple[Job, list[Outcome]]]:
        from distributed import KilledWorker

        try:
            results = future.result()
        except KilledWorker:
            if len(jobs) > 1:
                singles.extend(jobs)  # split: find the file that kills its workers
                return
            yield jobs[0], failed(jobs[0], self._ctx.config,
                                  "the Dask worker processing this file died each time it was tried")
            return
        except Exception as exc:
            if future.status != "error":
                raise self._lost(exc) from None
            reason = f"the Dask task failed: {redact(_first_line(exc))}"  # no record says why: say it for each file
            for job in jobs:
                yield job, failed(job, self._ctx.config, reason)
            return
        yield from zip(jobs, results)

    def _lost(self, exc: BaseException) -> ClusterError:
        """The run cannot go on: the scheduler is gone, or will not take work."""
        status = getattr(self._client, "status", "")
        if status not in ("running", "connecting", "newly-created") or not str(exc).strip() or \
                "connection" in str(exc).lower() or "closed" in str(exc).lower() or "cancelled" in str(exc).lower():
            return ClusterError("lost the connection to the Dask scheduler; the manifest holds what was done "
                                "and a re-run continues from it")
        return ClusterError(f"the Dask scheduler refused the work: {redact(_first_line(exc))}")

    def _abandon(self, pending: dict[Any, list[Job]]) -> Iterator[tuple[Job, list[Outcome]]]:
        """A second signal: give up on the tasks in flight. Which of their files a worker is on, has done or
        has not started, the driver does not know; none is recorded (the next run does them), rather than
        every one as abandoned. Their workers stop after their current file (the stop event is set)."""
        for future in pending:
            future.cancel()
        pending.clear()
        return iter(())

    def close(self) -> None:
        if self._client is not None and self._client.status == "running":
            self._slots(now=True)  # a last look: did a worker go away since the last batch went out?
            if self._told:  # a scheduler of yours keeps no event of this run
                from distributed import Event

                with contextlib.suppress(Exception):
                    Event(self._stop_event, client=self._client).clear()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive():
            thread.join(1)  # still connecting (a signal came first): close what it makes, if it is done soon
        for thing in (self._client or self._box.get("client"), self._cluster or self._box.get("cluster")):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._client = self._cluster = None
        stop_helpers(self._helpers)
        with contextlib.suppress(Exception):
            self._config.__exit__(None, None, None)
        self._logs.close()


def _larger(batches: Iterator[list[Job]]) -> Iterator[list[Job]]:
    """The pool's batches joined into tasks of at least TASK_BYTES or TASK_FILES: a Dask task costs a few
    milliseconds of the scheduler's, the driver's and the worker's time, a pool batch far less."""
    task: list[Job] = []
    for batch in batches:
        task.extend(batch)
        if sum(job.size for job in task) >= TASK_BYTES or len(task) >= TASK_FILES:
            yield task
            task = []
    if task:
        yield task


def _connect_seconds() -> float:
    """Dask's own connect timeout (``distributed.comm.timeouts.connect``, 30 s unless configured)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s")))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _has_dashboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None

