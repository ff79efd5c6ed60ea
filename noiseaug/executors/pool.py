"""A process pool that knows which file each worker holds.

``concurrent.futures`` loses track of the culprit when a worker dies: the
whole pool breaks and every file in flight fails with it. Here each worker
has its own pipe and a small shared slot where it notes the file it is on
(its index in the batch, when it began, how many it has finished), so when a
worker dies (a codec's segfault, the OOM killer) or overruns
``--file-timeout``, the parent knows the one file it was on: that file is
recorded as failed, the worker is replaced, and the rest of its batch goes to
another worker (files it finished but had not reported yet are done again;
their outputs are the same bytes).

Protocol on each worker's pipe: the parent sends a batch (a list of jobs),
``"stop"`` (finish the current file, skip the rest of the batch) or ``None``
(exit); the worker answers ``("idle",)`` once it has started (so start-up
does not count against a file's time limit), ``("files", [(index, records),
...])`` for the files it finished, at most every ``REPORT_EVERY`` seconds
(a message per small file would cost more than the file), and ``("idle",
[(index, records), ...])`` with the last ones when its batch is over.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import mmap
import multiprocessing
import multiprocessing.heap
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator

from ..errors import WorkerStartError
from ..records import Job, Outcome, failed
from ..signals import ABANDONED, Stopper
from ..silence import held_devnull
from ..storage.local import set_temp_tag
from ..worker import Context, ends_batch, groups, limit_threads, process_group
from . import GUARD_HINT

Outcomes = list[Outcome]
REPORT_EVERY = 0.1  # seconds: how long a worker holds finished files' records before sending them
START_SECONDS = 120.0  # a worker that has not said it started by then is killed and started again
CURRENT, STARTED, FINISHED = range(3)  # a worker's slot: file index it is on, when it began, files finished


def init_worker(context: Context) -> None:
    """Set up a worker process: exit with the parent (first: whatever hangs later, it is not left behind),
    SIGINT left to the parent, one thread."""
    if context.parent_pid:
        _exit_with(context.parent_pid)
    context.target.forget()
    set_temp_tag(context.temp_tag)
    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent decides: finish, or kill this worker
        signal.signal(signum, signal.SIG_IGN)
    limit_threads(context.config.kinds)


def _exit_with(pid: int) -> None:
    """End this worker when process ``pid`` ends, even by SIGKILL.

    Pool workers do not notice on their own that the main process has died:
    they would wait forever, holding its pipes. A pidfd (Linux) becomes
    readable when the process exits; elsewhere the pid is polled.
    """
    import select
    import threading
    import time

    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None

    def watch() -> None:
        if fd is not None:  # poll, not select: a worker of many has descriptors past select's 1024
            watcher = select.poll()
            watcher.register(fd, select.POLLIN)
            watcher.poll()
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
        os._exit(1)

    threading.Thread(target=watch, name="noiseaug-parent-watch", daemon=True).start()




def _slot(arena: Any) -> memoryview:
    """A worker's slot (CURRENT, STARTED, FINISHED) in memory shared with the parent, as three doubles."""
    return memoryview(arena.buffer).cast("d")[:3]


def _serve(conn: Connection, arena: Any, context: Context) -> None:
    """A worker's life: take a batch, send back the files' records as they are done."""
    init_worker(context)
    slot = _slot(arena)
    with held_devnull(stderr=True):  # the worker's own process: its stderr is /dev/null for all its codec calls
        _serve_batches(conn, slot, context)


def _serve_batches(conn: Connection, slot: Any, context: Context) -> None:
    conn.send(("idle",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if message == "stop":
            continue  # arrived after the batch was already over
        conn.send(("idle", _serve_batch(conn, slot, context, message)))


def _serve_batch(conn: Connection, slot: Any, context: Context, batch: list[Job]) -> list[tuple[int, Outcomes]]:
    """Process one batch; finished files' records go back together, at most every REPORT_EVERY seconds.

    Returns the records not sent yet, for the message that says the batch is over.
    """
    done: list[tuple[int, Outcomes]] = []
    sent = time.monotonic()
    stopping = _Asked(conn)
    for start, group in groups(batch):  # small files a group at a time, stage by stage (see process_group)
        if start and stopping():
            break
        files = process_group(group, context, functools.partial(_on_file, slot, start), stopping)
        for index, outcomes in enumerate(files, start):
            slot[FINISHED] = index + 1
            done.append((index, outcomes))
            last = ends_batch(outcomes, context.config)
            if last or time.monotonic() - sent >= REPORT_EVERY:
                conn.send(("files", done))
                done, sent = [], time.monotonic()
            if last:  # a full disk fails the next file too, --on-error fail stops: the rest is the parent's to decide
                files.close()
                return done
    return done


class _Asked:
    """Whether the parent has asked this worker to stop (or to end) since its batch began: looked at between
    files, at most every ASK_EVERY seconds (a system call each), remembered once seen."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._seen, self._asked = conn, False, time.monotonic()

    def __call__(self) -> bool:
        if not self._seen and time.monotonic() - self._asked >= ASK_EVERY:
            self._asked = time.monotonic()
            if self._conn.poll():
                self._seen = self._conn.recv() in ("stop", None)
        return self._seen


ASK_EVERY = 0.005  # seconds: how often a worker between small files looks for the parent's stop


def _on_file(slot: Any, start: int, index: int) -> None:
    """A worker starts (a stage of) file ``start + index`` of its batch: said in its slot, the time first (the
    parent reads them in turn)."""
    slot[STARTED], slot[CURRENT] = time.monotonic(), start + index


@dataclass
class _Worker:
    process: Any
    conn: Connection
    arena: Any  # memory shared with the process, freed with this object
    slot: memoryview  # in the arena: CURRENT, STARTED, FINISHED (see _serve_batch)
    batch: list[Job] = field(default_factory=list)
    done: int = 0  # files of the batch already reported
    idle: bool = False  # until the worker says it has started
    stopping: bool = False
    born: float = field(default_factory=time.monotonic)

    def culprit(self) -> int | None:
        """The index of the file the worker is on, None between files (or after its last)."""
        current, finished = int(self.slot[CURRENT]), int(self.slot[FINISHED])
        return current if finished <= current < len(self.batch) else None

    def busy_since(self) -> float | None:
        """When the file the worker is on began, if it is on one."""
        return self.slot[STARTED] if self.batch and self.culprit() is not None else None


def _death(exitcode: int | None, doing: str = " working on this file") -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {"SIGKILL": " (out of memory?)", "SIGSEGV": " (a crash in a codec)",
                "SIGBUS": " (a crash in a codec)", "SIGABRT": " (a codec aborted)"}.get(name, "")
        return f"the worker process{doing} was killed by {name}{hint}"
    return f"the worker process{doing} exited unexpectedly (code {exitcode})"


def _start_method() -> str:
    """``fork`` when it is safe, so workers start with the codecs already imported.

    Forking copies only the calling thread, so it is safe only while the
    parent runs one thread, native ones included: a process that has used
    OpenCV holds its thread pool, and a forked child hangs in the first
    OpenCV call that touches it (``setNumThreads``). Otherwise a fork server,
    or spawn where there is none. Starting workers from scratch costs about
    half a second each here.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _one_thread():
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _one_thread() -> bool:
    """Whether this process runs a single thread, counting threads Python did not start (Linux: /proc)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


class ProcessPool:
    """N worker processes fed with batches of jobs, one batch each at a time.

    ``on_lost(job, pid)`` is called for a file whose worker died or was
    killed, so its temporary output can be removed.
    """

    def __init__(self, context: Context, workers: int, file_timeout: float,
                 on_lost: Callable[[Job, int], None]) -> None:
        self._mp = multiprocessing.get_context(_start_method())
        self._helpers = idle_helpers()  # the fork server and resource tracker this pool starts, it stops
        # starting a fork server's or spawned child fixes the process-wide default start method (CPython's
        # spawn.get_preparation_data asks for it): put back "not chosen yet" on close, if so it was
        self._default_unset = multiprocessing.get_start_method(allow_none=True) is None
        self._context = context
        self._timeout = file_timeout
        self._on_lost = on_lost
        self._failed_starts = 0
        self._stopping = False
        self._workers = [self._start() for _ in range(workers)]

    def _start(self) -> _Worker:
        parent, child = self._mp.Pipe()
        # its own small mapping, not multiprocessing's shared heap, which would keep a file open for good
        arena = multiprocessing.heap.Arena(mmap.PAGESIZE)
        process = self._mp.Process(target=_serve, args=(child, arena, self._context), daemon=True,
                                   name="noiseaug-worker")
        process.start()
        child.close()
        return _Worker(process, parent, arena, _slot(arena))

    def stop(self) -> None:
        """Start no new file; the files in flight finish and are still yielded."""
        self._stopping = True

    def run(self, batches: Iterator[list[Job]], stopper: Stopper) -> Iterator[tuple[Job, Outcomes]]:
        """Feed every batch to the workers; yield each file's outcomes as it finishes.

        Once ``stopper`` says stop (a signal), or :meth:`stop` was called, no
        new file is started and the files in flight are finished and yielded;
        once it says abandon, they are killed and yielded as abandoned.
        """
        requeue: collections.deque[Job] = collections.deque()
        while True:
            if stopper.abandoning:
                yield from self._abandon()
                return
            if self._stopping or stopper.stopping:
                requeue.clear()
                self._stop_all()
            else:
                self._feed(batches, requeue)
            busy = [w for w in self._workers if not w.idle]
            stopper.in_flight = sum(1 for w in busy if w.batch)
            if not busy:
                break
            yield from self._gather(busy, requeue, stopper.wakeup_fd)
            stopper.drain()

    def _abandon(self) -> Iterator[tuple[Job, Outcomes]]:
        """Kill the busy workers; their files in flight are recorded as abandoned."""
        for worker in self._workers:
            if worker.idle or not worker.batch:
                continue
            worker.process.kill()
            worker.process.join()
            index = worker.culprit()
            if index is not None:  # finished but unreported files keep their outputs; unrecorded, they are redone
                job = worker.batch[index]
                self._on_lost(job, worker.process.pid)
                yield job, failed(job, self._context.config, ABANDONED)
            worker.idle, worker.batch = True, []

    def _stop_all(self) -> None:
        for worker in self._workers:
            if not worker.idle and not worker.stopping:
                worker.stopping = True
                try:
                    worker.conn.send("stop")
                except OSError:
                    pass

    def _feed(self, batches: Iterator[list[Job]], requeue: collections.deque[Job]) -> None:
        for worker in self._workers:
            if not worker.idle:
                continue
            batch = [requeue.popleft()] if requeue else next(batches, None)
            if batch is None:
                return
            worker.slot[STARTED], worker.slot[CURRENT], worker.slot[FINISHED] = time.monotonic(), 0, 0
            try:
                worker.conn.send(batch)
            except OSError:  # it died while idle: its replacement gets the batch next time round
                requeue.extendleft(reversed(batch))
                self._swap(worker)
                continue
            worker.batch, worker.done, worker.idle = batch, 0, False  # only once the batch is sent

    def _gather(self, busy: list[_Worker], requeue: collections.deque[Job],
                wakeup: int | None = None) -> Iterator[tuple[Job, Outcomes]]:
        working = [t for t in (w.busy_since() for w in busy) if t is not None]
        timeout = max(0.0, min(working) + self._timeout - time.monotonic()) if working else 1.0
        timeout = min(timeout, 1.0)  # between files the slot says nothing: look again
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy] + ([wakeup] if wakeup is not None else []),
             timeout=timeout)
        for worker in busy:
            while not worker.idle and worker.conn.poll():
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    break
                for index, outcomes in message[1] if len(message) > 1 else ():  # ("idle",): it has started
                    if 0 <= index < len(worker.batch):
                        worker.done = index + 1
                        yield worker.batch[index], outcomes
                if message[0] == "idle":
                    worker.idle, worker.stopping, worker.batch = True, False, []
                    self._failed_starts = 0
            if worker.idle:
                continue
            if not worker.batch:  # still starting
                if not worker.process.is_alive():
                    self._restart_unstarted(worker, _death(worker.process.exitcode, " starting"))
                elif time.monotonic() - worker.born > START_SECONDS:
                    worker.process.kill()
                    self._restart_unstarted(worker, f"one hung for {START_SECONDS:g} s while starting")
                continue
            if not worker.process.is_alive():
                worker.process.join()
                yield from self._replace(worker, requeue, _death(worker.process.exitcode))
            elif (since := worker.busy_since()) is not None and time.monotonic() - since > self._timeout:
                worker.process.kill()
                worker.process.join()
                yield from self._replace(worker, requeue,
                                         f"took longer than --file-timeout {self._timeout:g} s; abandoned")

    def _replace(self, worker: _Worker, requeue: collections.deque[Job],
                 reason: str) -> Iterator[tuple[Job, Outcomes]]:
        """A dead worker's batch: its file in flight fails, files finished but unreported and those not
        begun go to another worker (unless the run is stopping)."""
        index = worker.culprit()
        self._swap(worker)
        rest = [j for i, j in enumerate(worker.batch[worker.done:], worker.done) if i != index]
        if not worker.stopping:
            requeue.extend(rest)
        if index is None:
            return  # it died between files: nothing was lost
        job = worker.batch[index]
        self._on_lost(job, worker.process.pid)
        yield job, failed(job, self._context.config, reason)

    def _swap(self, worker: _Worker) -> None:
        """Put a fresh process in a dead (or killed) worker's place."""
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._start()

    def _restart_unstarted(self, worker: _Worker, why: str) -> None:
        worker.process.join()
        self._failed_starts += 1
        if self._failed_starts > 3 * len(self._workers):
            hint = f"; {GUARD_HINT}" if self._mp.get_start_method() != "fork" else ""
            raise WorkerStartError(f"worker processes do not start ({why}){hint}")
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._start()

    def close(self) -> None:
        """Stop the workers: politely when idle, by force when still busy."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(timeout=5 if worker.idle else 0.1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        stop_helpers(self._helpers)
        if self._default_unset:
            multiprocessing.set_start_method(None, force=True)  # the documented way to unset it


def idle_helpers() -> list[Any]:
    """multiprocessing's fork server and resource tracker, those not running yet (a pool started from a
    fork server starts them, and they would outlive the run: two processes and their descriptors)."""
    from multiprocessing import forkserver, resource_tracker

    helpers = [getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)]
    return [h for h in helpers if h is not None and hasattr(h, "_stop") and
            getattr(h, "_forkserver_pid", getattr(h, "_pid", None)) is None]


def stop_helpers(helpers: list[Any]) -> None:
    """Stop the helpers this pool started (private but long-standing ``_stop``; a failure leaves them be)."""
    for helper in helpers:
        with contextlib.suppress(Exception):
            helper._stop()
