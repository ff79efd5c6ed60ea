"""Orchestration: walk, dispatch to the worker pool, collect, keep the manifest.

The parent process walks INPUT lazily and hands jobs to the pool while the
walk goes on, with a bounded number in flight, so memory does not grow with
the dataset. Workers read and write the files; the parent alone writes the
manifest, appending each record as it comes back and rewriting the file sorted
at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib
import itertools
import json
import os
import platform
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import __version__
from .config import Config, make_config
from .discover import Candidate, Selection, WalkStats, walk
from .errors import (
    ClusterError,
    IndexFailedError,
    Interrupted,
    ManifestError,
    OptionsChangedError,
    StorageError,
    UsageError,
    WriteError,
)
from .executors import GUARD_HINT, check_executor, importing_the_callers_script, make_executor
from .freshness import all_confirmed, note_folders, noted_manifest, nothing_to_do
from .index import Claims, RunIndex, StateCache, record_sums
from .locations import Locations, open_locations
from .manifest import (
    MANIFEST_NAMES,
    ManifestWriter,
    dumps,
    read_lines,
    read_records,
    read_run,
    recorded_root,
    rel_bytes,
    rel_str,
    run_line,
    state_path,
)
from .records import (
    LABEL,
    LEFT,
    OK,
    SCHEME,
    Job,
    Outcome,
    base_record,
    carried,
    copies_of,
    failed,
    output_of,
    output_rel,
    path_fields,
)
from .report import Reporter, Summary
from .signals import Stopper
from .silence import quiet_loggers
from .storage import OutputLock, Storage
from .storage.local import LocalStorage, atomic_file, live_locks, set_temp_tag

if TYPE_CHECKING:  # the worker's side (numpy, the codecs) is imported once there is work: not for a no-op run
    from .worker import Context

# Small files travel to the pool in batches of about BATCH_BYTES, to spare a
# round trip per file; larger batches of mid-sized files (a few 1080p JPEGs)
# would leave one worker idle at the end of a run while another finishes.
BATCH_BYTES = 1 << 18
BATCH_FILES = 64
ROOTS = ("input_root", "output_root")  # where the run record says INPUT and OUTPUT are


def run(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
        config: Config | str | os.PathLike | None = None, *, reporter: Reporter | None = None,
        **options: Any) -> Summary:
    """Augment every supported file under ``input_dir`` into ``output_dir``.

    Options are those of ``noiseaug run`` with underscores (``image_sigma=5``,
    ``workers=2`` …), a ready :class:`Config`, or ``config="options.toml"``
    (what ``--config`` reads; the options given here win over it). Raises :class:`UsageError`
    (and its subclasses) before writing anything for a refused configuration,
    :class:`Interrupted` after a clean stop on SIGINT; per-file failures are in
    the returned :class:`Summary` and the manifest.
    """
    if importing_the_callers_script():  # one line from each worker, not a traceback (and not a second run)
        raise SystemExit(f"noiseaug: not running: {GUARD_HINT}")
    cfg = config if isinstance(config, Config) else make_config(config, **options)
    reporter = reporter or Reporter()
    if not cfg.dry_run:
        check_executor(cfg)  # a missing extra is a usage error before anything is written
    where = open_locations(_path(input_dir, "INPUT"), _path(output_dir, "OUTPUT"), cfg)
    try:
        with quiet_loggers("asyncio", "aiobotocore", "botocore", "s3fs", "fsspec"):
            return _run_at(where, cfg, reporter)
    except sqlite3.Error as exc:  # the index or stat cache beside the manifest: one line, not a traceback
        why = ("another process is using it: was OUTPUT's lock removed while a run held it?" if "locked" in str(exc)
               else "free the space (or remove what is in the way) and run again")
        raise IndexFailedError(f"the run's index beside the manifest failed ({exc}): the manifest keeps what was "
                               f"done; {why}") from None
    finally:
        where.home.close()


def _path(value: Any, what: str) -> str | os.PathLike:
    """INPUT or OUTPUT as given to :func:`run`: a string, a path object, or bytes (a name that is not UTF-8)."""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{what} must be a path (str, bytes or os.PathLike), not {type(value).__name__}")
    return value


def _run_at(where: Locations, cfg: Config, reporter: Reporter) -> Summary:
    source, target, home, shown = where.source, where.target, where.home, where.manifest_shown
    manifest_path = home.path
    prior = None if home.remote else _prior_manifest(manifest_path, cfg, shown)
    if prior is None:  # a run continuing its own manifest was let in by it (--overwrite decided, once)
        _check_other_manifests(target, manifest_path, cfg)
    summary = Summary(source.root, target.root, shown, dry_run=cfg.dry_run)
    started = time.perf_counter()
    stopper = Stopper()
    try:
        if cfg.dry_run:
            getattr(target, "check_writable", lambda: None)()  # a bucket the run would refuse: refused here too
            home.prepare()  # and the manifest's (it only asks)
            home.pull(write=False)
            prior = _prior_manifest(manifest_path, cfg, shown)
            _plan(source, target, manifest_path, cfg, prior, summary, reporter)
            if cfg.overwrite:
                for rel in _stale_outputs(manifest_path, source, target, cfg):
                    reporter.planned_removal(rel)
                    summary.would_remove += 1
            return summary
        home.prepare()  # the manifest's bucket first: a refusal leaves no OUTPUT folder behind
        target.prepare()
        name = lock_name(cfg.shard)
        with stopper, _take_lock(target, name, target.root, cfg, others=prior is None) as lock, \
                _manifest_lock(home, target, cfg):
            home.pull()
            prior = _prior_manifest(manifest_path, cfg, shown)
            if prior is None:  # again, under the lock: a run that ended since the first look left its manifest
                _check_other_manifests(target, manifest_path, cfg)
            set_temp_tag(temp_tag(cfg.shard))
            if lock.dirty:
                target.sweep(temp_tag(cfg.shard))
            if cfg.overwrite:
                summary.removed = _remove_stale(manifest_path, source, target, cfg)
            if prior is None or getattr(reporter, "verbose", False) or not _nothing_to_do(
                    source, target, manifest_path, cfg, summary, where.reserved | {name}):
                _Run(source, target, home, cfg, prior, summary, reporter, where.reserved, lock).execute(stopper)
            if stopper.abandoning:
                lock.release(clean=False)  # files were abandoned: the next run sweeps
    finally:
        summary.seconds = time.perf_counter() - started
        reporter.close()
    if stopper.stopping:
        summary.interrupted, summary.signal = True, stopper.name
        raise Interrupted(f"interrupted by {stopper.name}; the manifest holds what was done", summary,
                          stopper.exit_code)
    return summary


def _left_alone(job: Job, source: Storage, cfg: Config) -> bool:
    """--dry-run: an image the run would find to be a label map and leave alone (its header says so)."""
    if job.kind != "image" or cfg.copy_other or cfg.palette_images != "labels":
        return False
    from .errors import FileError
    from .render import probe_image

    try:
        return probe_image(job.rel, source.read(job.rel), cfg).label is not None
    except (FileError, OSError):
        return False  # the run will record why


def _nothing_to_do(source: Storage, target: Storage, manifest_path: Path, cfg: Config, summary: Summary,
                   own: set[str]) -> bool:
    """rsync's quick check for the whole run: when every file matches the stat cache, the summary says so and
    the run ends here, having read neither the manifest nor any file (see :func:`freshness.nothing_to_do`)."""
    cache = StateCache(state_path(manifest_path), readonly=True)
    try:
        found = nothing_to_do(source, target, manifest_path, cfg, cache, _selection(cfg), own)
    finally:
        cache.save()
    if found is None:
        return False
    counts, stats = found
    summary.counts.update(counts)
    summary.walk = stats
    summary.unmatched = _selection(cfg).unmatched(stats.globs_hit)
    return True


@contextlib.contextmanager
def _take_lock(target: Storage, name: str, shown: str | os.PathLike, cfg: Config,
               others: bool) -> Iterator[OutputLock]:
    """OUTPUT's lock; an OUTPUT where it cannot be created is a usage error, and so is, for a run starting a
    manifest of its own (``others``: the runs that look at OUTPUT's other manifests, listing its top folder
    anyway), another run holding another lock of OUTPUT (another shard's, the unsharded one) for a job with
    other options. A run continuing its manifest is bound by that manifest, and lists nothing (a no-op)."""
    lock = target.lock(name)
    lock.note = _job_note(cfg)
    try:
        lock.__enter__()
    except OSError as exc:
        raise UsageError(f"cannot write to OUTPUT {os.fsdecode(shown)}: {exc.strerror}") from None
    except WriteError as exc:  # a link planted where the lock goes
        raise UsageError(f"cannot write to OUTPUT {os.fsdecode(shown)}: {exc.reason}") from None
    try:
        if others:
            _check_live_runs(target, name, lock.note)
    except UsageError:
        lock.release(clean=not lock.dirty)  # as it was: this run wrote nothing
        raise
    try:
        yield lock
    except BaseException:
        lock.release(clean=False)
        raise
    lock.release(clean=True)


@contextlib.contextmanager
def _manifest_lock(home: Any, target: Storage, cfg: Config) -> Iterator[None]:
    """A manifest given with --manifest is locked beside itself too: two runs into different OUTPUTs must
    not write one manifest (nor its stat cache). The lock is named after the manifest alone, whichever run
    writes it: one named as a run's or a shard's manifest takes that run's lock in its folder (the default
    manifest in OUTPUT is under OUTPUT's lock already), any other ``.NAME.lock``."""
    path = home.path
    own = MANIFEST_NAMES.fullmatch(path.name)
    shard = (int(own[1]), int(own[2])) if own and own[1] else (0, 1)
    lock_path = path.parent / (lock_name(shard) if own else f".{path.name}.lock")
    if home.remote or (isinstance(target, LocalStorage) and lock_path == Path(target.root) / lock_name(cfg.shard)):
        yield
        return
    lock = OutputLock(lock_path, f"the manifest {os.fsdecode(path)}; wait for it or pick another --manifest")
    try:
        lock.__enter__()
    except OSError as exc:
        raise UsageError(f"cannot lock the manifest {os.fsdecode(path)}: {exc.strerror}") from None
    try:
        yield
    finally:
        lock.release(clean=True)


def _remove_stale(manifest_path: Path, source: Storage, target: Storage, cfg: Config) -> int:
    """--overwrite: remove the outputs the old manifest records that this run will not produce.

    Only files the old manifest names, and only while they still hold the
    recorded bytes; done before any work, so an interrupted run loses nothing
    it would have made again.
    """
    removed = 0
    for rel in _stale_outputs(manifest_path, source, target, cfg):
        try:
            target.remove(rel)
            removed += 1
        except OSError:
            continue
    return removed


def _stale_outputs(manifest_path: Path, source: Storage, target: Storage, cfg: Config) -> Iterator[str]:
    """The outputs --overwrite removes (see :func:`_remove_stale`), one at a time."""
    try:
        if not manifest_path.exists() or _stillborn(manifest_path):
            return
        previous = read_records(manifest_path)
    except ManifestError:
        return
    produced: set[str] = set()
    labels: set[str] = set()  # image inputs whose old record was a label map, copied again by this run
    for cand in walk(source, _selection(cfg), WalkStats()):
        if cand.kind == "other":
            produced.add(cand.rel)
        else:
            produced.update(output_rel(cand.rel, cfg.name, c) for c in range(cfg.copies))
            if cand.kind == "image" and cfg.copy_other and cfg.palette_images == "labels":
                labels.add(cand.rel)
    for record in _safely(previous):
        rel = rel_str(record, "output")
        if record.get("status") != "ok" or _produced_again(record, rel, produced, labels, cfg):
            continue
        try:
            if target.hash(rel)[0] == record.get("output_sha256"):
                yield rel
        except OSError:
            continue


def _produced_again(record: dict[str, Any], rel: str, produced: set[str], labels: set[str], cfg: Config) -> bool:
    """Whether this run writes the output of an old record again. A copied label map is written again only
    if this run copies label maps too (or noises them, --palette-images noise), whatever its name."""
    if record.get("kind") == LABEL:
        return rel in labels or (cfg.palette_images == "noise" and rel in produced)
    return rel in produced


def _safely(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Records until one cannot be read (--overwrite redoes everything anyway)."""
    try:
        yield from records
    except ManifestError:
        return


LOCK_NAMES = re.compile(r"\.noiseaug(?:\.shard-\d+-of-\d+)?\.lock")  # every run's and shard's lock in OUTPUT


def lock_name(shard: tuple[int, int]) -> str:
    """OUTPUT's lock file: one per shard, so shards may share an OUTPUT."""
    return ".noiseaug.lock" if shard[1] == 1 else f".noiseaug.shard-{shard[0]}-of-{shard[1]}.lock"


def temp_tag(shard: tuple[int, int]) -> str:
    return "run" if shard[1] == 1 else f"shard-{shard[0]}-of-{shard[1]}"


def _prior_manifest(path: Path, cfg: Config, shown: Path) -> dict[str, Any] | None:
    """The previous run's record (the manifest's first line), if its options allow continuing from it.

    ``shown`` is the manifest's path as the user gave it, for messages.
    """
    if not path.exists() or _stillborn(path):
        return None
    run = read_run(path)
    if cfg.overwrite:
        return None
    if run.get("seeding") != SCHEME:
        raise OptionsChangedError(
            f"{os.fsdecode(shown)} was made by noiseaug {run.get('version')} with another noise "
            f"scheme ({run.get('seeding')}); use --overwrite to redo everything, or another OUTPUT")
    changed = _changed_option(run, cfg)
    if changed:
        raise OptionsChangedError(f"{os.fsdecode(shown)} was made with {changed}; use --overwrite to redo "
                                  "everything, or another OUTPUT")
    return run


def _changed_option(run: dict[str, Any], cfg: Config, skip: tuple[str, ...] = ()) -> str | None:
    """The first option (but ``skip``) that decides outputs and differs from a run record's, as "--key old, not
    new"; None when they all agree."""
    old = run.get("options", {})
    defaults = Config().job_options()  # options newer than the manifest had their default then
    differ = {key: (old.get(key, defaults[key]), value) for key, value in _utf8(cfg.job_options()).items()
              if key not in skip and old.get(key, defaults[key]) != value}  # as the run record keeps them
    if not differ:
        return None
    if all(key in differ for key in AUDIO_NOISE):  # one of the two for the other: each named as it was given
        was = next(key for key in AUDIO_NOISE if differ[key][0] is not None)
        now = next(key for key in AUDIO_NOISE if differ[key][1] is not None)
        return f"--{was.replace('_', '-')} {_show(differ[was][0])}, not --{now.replace('_', '-')} " \
               f"{_show(differ[now][1])}"
    key, (before, after) = next(iter(differ.items()))
    return f"--{key.replace('_', '-')} {_show(before)}, not {_show(after)}"


AUDIO_NOISE = ("audio_sigma", "audio_snr_db")  # options that exclude each other: a run has one of them


def _job_note(cfg: Config) -> str:
    """What a run's lock says of its job while it runs: a digest of the options that decide outputs, the shard
    aside (shards of one job, whatever their count, write the same bytes)."""
    job = {k: v for k, v in _utf8(cfg.job_options()).items() if k != "shard"}
    return "job " + hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_live_runs(target: Storage, name: str, note: str) -> None:
    """Another run writing OUTPUT now, under another of its locks, for a job with other options: refused (SPEC
    §2), as its manifest will be once it holds a record. Two runs started together found no such manifest
    (or one with no record yet, which binds nothing) and both wrote: each now sees the other's lock."""
    if not isinstance(target, LocalStorage):
        return
    try:
        names = [n for n in os.listdir(target.root) if LOCK_NAMES.fullmatch(n) and n != name]
    except OSError:
        return
    for other, text in live_locks(target.root, names):
        if ", job " in text and not text.endswith(note):
            raise OptionsChangedError(f"another noiseaug run ({text.split(', job ')[0]}, {other}) is writing to "
                                      "OUTPUT with other options; its outputs would be written over: wait for "
                                      "it, or use another OUTPUT")


def _check_other_manifests(target: Storage, manifest_path: Path, cfg: Config) -> None:
    """A run starting a manifest of its own, beside one at OUTPUT's top (--manifest elsewhere, another
    shard's, the unsharded one) made with other options: refused as the run's own would be (SPEC §2), its
    outputs would be written over. A shard of the same job agrees but for --shard; another shard of as many
    shards has other files; a manifest that cannot be read binds nothing. Once a run has a manifest of its
    own (say after --overwrite), that manifest decides, as for any run."""
    if cfg.overwrite or not isinstance(target, LocalStorage):
        return
    mine = os.path.realpath(manifest_path)
    try:
        found = sorted((entry.name, m.groups()) for entry in os.scandir(target.root)
                       if (m := MANIFEST_NAMES.fullmatch(entry.name)))
    except OSError:
        return
    for name, (index, count) in found:
        path = Path(target.root) / name
        if count is not None and int(count) == cfg.shard[1] != 1 and int(index) != cfg.shard[0]:
            continue  # another shard of as many: its files are never this run's
        if os.path.realpath(path) == mine or _stillborn(path):
            continue
        try:
            run = read_run(path)
        except ManifestError:
            continue
        changed = "another noise scheme" if run.get("seeding") != SCHEME else _changed_option(run, cfg, ("shard",))
        if changed:
            raise OptionsChangedError(f"{os.fsdecode(path)} in OUTPUT was made with {changed}; its outputs would "
                                      "be written over: use --overwrite, or another OUTPUT")


def _stillborn(path: Path) -> bool:
    """A manifest that binds no later run: empty, a torn run line (killed at once), or a run line and no file
    record (a run that stopped before any file, say at an unreachable scheduler, or an empty INPUT)."""
    try:
        with open(path, "rb") as fh:
            data = fh.readline()
            second = fh.readline()
    except OSError:
        return False
    return not data.strip() or (b"\n" not in data and data.startswith(b'{"type": "run"')) or not second.strip()


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return "(unset)" if value is None else str(value)


def library_versions(kinds: tuple[str, ...] = ("image", "audio")) -> dict[str, str]:
    """Versions of everything that decides the bytes of these kinds of output.

    A codec the run does not use is not loaded (each costs a good fraction of
    a second of start-up) and is recorded as such: it decides no byte.
    """
    import numpy

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    if "image" in kinds:
        from . import image_io

        versions.update(image_io.versions())
    else:
        versions.update(dict.fromkeys(("opencv", "pillow", "tifffile", "imagecodecs"),
                                      "not loaded (no images in this run)"))
    if "audio" in kinds:
        from . import audio_io

        versions.update(audio_io.versions())
    else:
        versions["libsndfile"] = "not loaded (no audio in this run)"
    return versions


def _utf8(options: dict[str, Any]) -> dict[str, Any]:
    """Options as UTF-8 text: a path that is not (--manifest) shown with its odd bytes as \\xNN."""
    return {k: os.fsencode(v).decode("utf-8", "backslashreplace") if isinstance(v, str) else v
            for k, v in options.items()}


def run_record(cfg: Config, in_root: str, out_root: str, manifest_in_output: bool = False) -> dict[str, Any]:
    """The manifest's first line: what ran, with what, on what. A --manifest that is OUTPUT's top folder's
    anyway is recorded as none, so that a copied or moved OUTPUT verifies itself (see verification)."""
    options = _utf8(cfg.to_dict())
    if manifest_in_output:
        options["manifest"] = None
    return {
        "type": "run",
        "tool": "noiseaug",
        "version": __version__,
        "options": options,
        "seed": cfg.seed,
        **path_fields("input_root", in_root),  # a path that is not UTF-8 kept whole in a _raw twin, as a file's
        **path_fields("output_root", out_root),
        "seeding": SCHEME,
        "versions": library_versions(cfg.kinds),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _jobs(source: Storage, cfg: Config, stats: WalkStats,
          reserved: set[str]) -> Iterator[tuple[Job, Candidate | list[Outcome]]]:
    """Jobs in walk order (without their previous records), each with its candidate; an output clash comes
    with its error records instead."""
    selection = _selection(cfg)
    claims = Claims(reserved)
    copies = range(cfg.copies)
    for cand in walk(source, selection, stats):
        outs = [cand.rel] if cand.kind == "other" else [output_rel(cand.rel, cfg.name, c) for c in copies]
        job = Job(cand.rel, cand.kind, cand.size, (), (cand.size, cand.mtime_ns),  # previous records: _with_prior
                  own_name_taken=cfg.copy_other and cand.kind == "image" and claims.taken(cand.rel))
        clash = next((o for o in outs if not claims.claim(o)), None)
        if clash is not None:
            which = f" (copy {outs.index(clash)}: no copy of it is written)" if len(outs) > 1 else ""
            yield job, failed(job, cfg, f"output {clash} is already taken by another input "
                                        f"or by noiseaug's own files{which}")
            continue
        yield job, cand


def _with_prior(job: Job, index: RunIndex, cfg: Config) -> Job:
    """The job with the previous records of its copies, from the index (None where there is none)."""
    if not index.prior_count:
        return job
    count = 1 if job.kind == "other" else cfg.copies
    return dataclasses.replace(job, prior=index.prior(os.fsencode(job.rel), count))


def _selection(cfg: Config) -> Selection:
    return Selection(cfg.kinds, cfg.include, cfg.exclude, cfg.copy_other, cfg.shard)


class _Run:
    """One run's bookkeeping: the manifest, the stat cache, the summary, the records seen so far.

    Records of outputs that are still good are carried over unchanged, so a
    repeated or resumed run ends with the same file records as a clean one,
    and a run with nothing to do writes nothing at all.
    """

    def __init__(self, source: Storage, target: Storage, home: Any, cfg: Config, prior: dict[str, Any] | None,
                 summary: Summary, reporter: Reporter, reserved: set[str], lock: Any = None) -> None:
        self.source, self.target, self.cfg, self.prior, self.home = source, target, cfg, prior, home
        self.summary, self.reporter = summary, reporter
        manifest_path = home.path
        in_output = isinstance(target, LocalStorage) and not home.remote and \
            os.path.realpath(manifest_path.parent) == os.path.realpath(target.root)
        self.writer = ManifestWriter(manifest_path, run_record(cfg, source.root, target.root, in_output),
                                     append=prior is not None)
        if prior is None:
            home.fresh()
        self.index = RunIndex(manifest_path)  # first: if it cannot be made, the cache is not yet written to
        self.cache = StateCache(state_path(manifest_path))
        if prior is None:  # a manifest of its own: no row may stand for a record of the one it replaces
            self.cache.clear()
        self.torn = [False]
        if prior is not None:
            try:
                self.index.load_prior(read_lines(manifest_path, self.torn))
            except BaseException:  # a record refused (ManifestError): the run index goes, nothing is written
                self.index.close()
                raise
        self.reserved = reserved | {lock_name(cfg.shard)}
        self.lock = lock
        self.walk_done = self.stop = False
        noted = noted_manifest(manifest_path, self.cache) if prior is not None else None
        self.trusted = noted is not None and noted[3:] == [source.root, target.root]  # see _alike

    def execute(self, stopper: Stopper) -> None:
        """Process every job through the executor the options pick; then rewrite the manifest."""
        from .noise import kernel_problem
        from .worker import Context

        ctx = Context(self.source, self.target, self.cfg, temp_tag(self.cfg.shard), os.getpid())
        problem = kernel_problem()  # checked here, before workers are forked, so they inherit the verdict
        if problem:
            self.reporter.note(f"compiled noise loops switched off, numpy draws the same noise slower: {problem}")
        try:
            batches = _batches(itertools.takewhile(lambda _: not stopper.stopping, self.jobs()))
            first = next(batches, None)
            if first is not None:  # nothing to dispatch (an up-to-date run): no executor to start
                self._dispatch(ctx, itertools.chain([first], batches), stopper)
        finally:
            self._finish(stopper)

    def _dispatch(self, ctx: Context, batches: Iterator[list[Job]], stopper: Stopper) -> None:
        for kind in self.cfg.kinds:  # loaded once here, inherited by forked workers
            importlib.import_module(f".{kind}_io", __package__)
        executor = make_executor(ctx, self._on_lost, self.reporter.note)
        try:
            for job, outcomes in executor.run(batches, stopper):
                if self.collect(job, outcomes):
                    executor.stop()
        except ClusterError as exc:  # the scheduler is gone: what came back is kept, the summary says why
            self.summary.stopped = self.summary.stopped or str(exc)
        finally:
            executor.close()
            if getattr(executor, "lost_workers", False):  # a Dask worker died mid-file somewhere: sweep it all
                self.target.sweep(temp_tag(self.cfg.shard))

    def _on_lost(self, job: Job, pid: int) -> None:
        """A worker died with this file in flight: sweep its temporary file."""
        folder = os.path.dirname(output_of(job, 0, self.cfg))
        self.target.sweep(temp_tag(self.cfg.shard), folder, pid)

    def jobs(self) -> Iterator[Job]:
        """The jobs still to do, in walk order; what is up to date by size and mtime is collected at once."""
        items = _jobs(self.source, self.cfg, self.summary.walk, self.reserved)
        paired = self.cache.beside((i[0].rel if not isinstance(i[1], list) else "", i) for i in items) \
            if self.trusted else ((i, None) for i in items)  # an output clash ("") wants no row: it is a failure
        for (job, cand), rows in paired:
            if isinstance(cand, list):  # an output clash: its error records, said as they happen
                if self.collect(None, cand):
                    return
                self.reporter.finished(job, cand)
                continue
            self.reporter.discovered(cand)
            kept = self._alike(job, rows) if rows else None
            if kept is not None:
                job = dataclasses.replace(job, prior=tuple({"status": OK} for _ in kept))  # kept as they are
            else:
                job = _with_prior(job, self.index, self.cfg)
                kept = unchanged(job, cand, self.cache, self.target, self.cfg)
            if kept is not None:
                if self.collect(job, kept, stat_confirmed=True):
                    return
                continue
            yield job
        self.walk_done = True
        self.summary.unmatched = _selection(self.cfg).unmatched(self.summary.walk.globs_hit)

    def _alike(self, job: Job, rows: list[Any]) -> list[Outcome] | None:
        """Outcomes that keep the previous records, when the stat cache's rows for this input (read beside the
        walk) still match its stamp and its outputs': rsync's quick check with no record read. Only while the
        cache is the one this manifest was noted with (``trusted``), where a row stands for an ``ok`` record."""
        kind = rows[0][6]
        if kind == LEFT or len(rows) != len(copies_of(kind, self.cfg)):
            return None
        for copy, (_, in_size, in_mtime, output, out_size, out_mtime, _) in enumerate(rows):
            rel = output_of(job, copy, self.cfg, kind)
            if (in_size, in_mtime) != job.stamp or os.fsencode(rel) != output or \
                    self.target.stat(rel) != (out_size, out_mtime):
                return None
        return [Outcome(base_record(job, copy, self.cfg, kind), skipped=True) for copy in range(len(rows))]

    def collect(self, job: Job | None, outcomes: list[Outcome], stat_confirmed: bool = False) -> bool:
        """Take a job's outcomes; True when the run must stop.

        ``stat_confirmed``: up to date by the stat cache's quick check, which needs no update.
        """
        for outcome in outcomes:
            if outcome.record is None:  # a label map, left alone without --copy-other
                self.summary.walk.labels += 1
                if job is not None:
                    self._left_alone(job)
            else:
                self._take(job, outcome, stat_confirmed)
        if job is not None:
            self.reporter.finished(job, outcomes)
        if getattr(self.lock, "lost", False) and not self.stop:  # a leased lock another run took over
            self.summary.stopped = self.summary.stopped or ("lost OUTPUT's lock (its lease could not be renewed "
                                                            "and another run took it over); stopped")
            self.stop = True
        if self.cfg.on_error == "fail" and any(o.status == "error" for o in outcomes) and not self.stop:
            self.summary.stopped = self.summary.stopped or ("at the first failure (--on-error fail); "
                                                            "files not started were not attempted")
            self.stop = True
        return self.stop

    def _left_alone(self, job: Job) -> None:
        """A label map left alone has no record: one that was an image last time loses its old ones (their
        output, of the picture it was, is left in place, as a failed file's is). One copied last time
        (--copy-other then, not now) keeps its record, as any file outside a run's selection does."""
        for copy, previous in enumerate(job.prior):
            if previous is not None and previous.get("kind") != LABEL:
                self.index.add(os.fsencode(job.rel), copy, "")
                if job.rel != self.summary.now_labels.last:  # once for all its copies
                    self.summary.now_labels.append(job.rel)
            if copy and job.stamp is not None:
                self.cache.set(job.rel, copy, job.stamp, None)
        if job.stamp is not None:  # so that a quick check knows it for one
            self.cache.set(job.rel, 0, job.stamp, (0, 0), "", LEFT)

    def _take(self, job: Job | None, outcome: Outcome, stat_confirmed: bool) -> None:
        rec = outcome.record
        assert rec is not None
        if outcome.fatal and not self.summary.stopped:
            reading = rec["error"].startswith("cannot read")
            self.summary.stopped = (
                f"{rec['error']} (reading {rec['input']}); run again once INPUT can be read" if reading
                else f"{rec['error']} (writing {rec['output']}); fix OUTPUT and run again")
            self.stop = True
        self.summary.add(rec, skipped=outcome.skipped)
        prior = job.prior[rec["copy"]] if job is not None and rec["copy"] < len(job.prior) else None
        if outcome.skipped and prior is not None and "input_missing" not in prior:
            self.index.keep(rel_bytes(rec), rec["copy"])  # the previous record stands, as it is
        else:
            self._record(rec, outcome.skipped)
        if not stat_confirmed and job is not None and job.stamp is not None:
            good = rec["status"] == "ok"
            out_stat = (outcome.out_stat or self.target.stat(rel_str(rec, "output"))) if good else None
            self.cache.set(job.rel, rec["copy"], job.stamp, out_stat, rel_str(rec, "output"), rec["kind"],
                           record_sums(rec))

    def _record(self, rec: dict[str, Any], skipped: bool) -> None:
        text = dumps(rec)  # serialised once: for the appended manifest and for the index
        if not skipped:
            try:
                self.writer.write_text(text)
                self.home.tick()
            except OSError as exc:
                self.summary.stopped = self.summary.stopped or f"cannot write the manifest: {exc.strerror or exc}"
                self.stop = True
            except StorageError as exc:
                self.summary.stopped = self.summary.stopped or str(exc)
                self.stop = True
        self.index.add(rel_bytes(rec), rec["copy"], text)

    def _clean(self) -> bool:
        """Whether the run ended with every file done and recorded: the state a re-run finds nothing to do in."""
        summary = self.summary
        return (self.walk_done and not self.stop and not summary.stopped and not summary.failed and not summary.dry_run
                and not getattr(self.lock, "lost", False))

    def _note_folders(self) -> None:
        """The quick check, once, as the next run would make it; when it holds, its folder shortcut is noted."""
        with contextlib.suppress(sqlite3.Error, OSError):  # a shortcut, not a record: without it, a step per file
            cache = StateCache(state_path(self.writer.path))
            try:
                note_folders(self.source, self.target, self.writer.path, self.cfg, cache, _selection(self.cfg),
                             self.reserved)
            finally:
                cache.save()

    def _finish(self, stopper: Stopper) -> None:
        try:
            self.writer.close()
        except OSError as exc:
            self.summary.stopped = self.summary.stopped or f"cannot write the manifest: {exc.strerror or exc}"
        try:
            seen_all = self.walk_done and not self.summary.walk.problems  # an unlistable folder's files are not gone
            finished = self.walk_done and not (self.stop or stopper.stopping or self.summary.stopped
                                               or getattr(self.lock, "lost", False))
            records = _finish(self.writer, self.prior, self.index, self.torn[0], seen_all, self.summary,
                              self.source, self.target, lambda rel, copy: self.cache.set(rel, copy, (0, 0), None),
                              finished)
            if not getattr(self.lock, "lost", False):  # OUTPUT is another run's now: leave its manifest alone
                self.home.published()
            self.cache.note_manifest(self.writer.path, records, (self.source.root, self.target.root))
            self.cache.save()
            if self._clean():
                self._note_folders()
            if not getattr(self.lock, "lost", False):
                self.home.saved()
        except (WriteError, StorageError, OSError) as exc:
            reason = exc.reason if isinstance(exc, WriteError) else exc.strerror if isinstance(exc, OSError) \
                and exc.strerror else str(exc)
            self.summary.manifest_failed = f"{reason}; {self.home.kept}"
            self.summary.stopped = self.summary.stopped or (
                f"the manifest could not be rewritten ({reason}); {self.home.kept}")
        finally:
            self.index.close()


def unchanged(job: Job, cand: Candidate, cache: StateCache, target: Storage, cfg: Config) -> list[Outcome] | None:
    """The previous records, if size and mtime say nothing changed (rsync's quick check)."""
    label = bool(job.prior and job.prior[0] and job.prior[0].get("kind") == LABEL)
    copies = copies_of(LABEL if label else job.kind, cfg)
    if len(job.prior) != len(copies) or not all(r and r.get("status") == "ok" for r in job.prior):
        return None
    for record in job.prior:
        out_stat = target.stat(rel_str(record, "output"))
        if not cache.matches(job.rel, record["copy"], (cand.size, cand.mtime_ns), out_stat, record):
            return None
    return [carried(r) for r in job.prior]


def _finish(writer: ManifestWriter, prior: dict[str, Any] | None, index: RunIndex, torn: bool, walk_done: bool,
            summary: Summary, source: Storage, target: Storage, forget: Callable[[str, int], None],
            finished: bool) -> int:
    """Rewrite the manifest sorted, streaming from the index, keeping what this run did not reach.

    Previous records of inputs this run never saw are kept (they may lie
    outside this run's selection); when the walk went through to the end and
    such an input is gone, its records are flagged ``"input_missing": true``
    (their outputs are left alone), and dropped once their outputs are gone
    too; ``forget`` drops their stat-cache rows, so that an input that comes
    back is looked at again (its record loses the flag). A run that changed no
    record and found INPUT and OUTPUT where the run record says leaves the
    manifest as it is (a torn last line aside). The run record says whether
    this run ``finished``: tried every file of its selection (see run_line).
    Returns how many file records the manifest holds.
    """
    moved = prior is not None and [recorded_root(prior, k) for k in ROOTS] != [recorded_root(writer.run, k)
                                                                                for k in ROOTS]
    was = prior.get("finished") if prior is not None else None  # None: a manifest from before the field
    changed = prior is None or writer.written > 0 or moved or (was is not None and was != finished) or any(
        differs for _, differs in _final_lines(index, walk_done, [], source, target))  # a first pass reads only
    if not (changed or torn):
        return index.prior_count
    head = run_line(writer.run, finished) if changed else run_line(prior, was) if was is not None else dumps(prior)
    count = 0
    with atomic_file(os.fsdecode(writer.path), durable=True) as fh:
        fh.write((head + "\n").encode("utf-8"))
        for text, _ in _final_lines(index, walk_done, summary.gone, source, target, forget):
            if text:
                fh.write(text.encode("utf-8") + b"\n")
                count += 1
    return count


def _final_lines(index: RunIndex, walk_done: bool, gone: list[str], source: Storage, target: Storage,
                 forget: Callable[[str, int], None] | None = None) -> Iterator[tuple[str, bool]]:
    """Each final record's line, sorted, and whether it differs from the previous manifest's."""
    for current, previous in index.final():
        if current is not None:
            yield current, current != previous
            continue
        record = json.loads(previous)
        missing = walk_done and source.stat(rel_str(record)) is None
        if missing and forget is not None:
            forget(rel_str(record), record.get("copy", 0))
        if missing and (record.get("status") == "error" or target.stat(rel_str(record, "output")) is None):
            yield "", True  # nothing to keep, nothing to verify: a failure, or an output gone with its input
            continue
        if missing and "input_missing" not in record:
            record["input_missing"] = True
            if record.get("copy", 0) == 0:
                gone.append(rel_str(record))
            yield dumps(record), True
        else:
            yield previous, False


def _batches(jobs: Iterable[Job]) -> Iterator[list[Job]]:
    batch: list[Job] = []
    size = 0
    for job in jobs:
        batch.append(job)
        size += job.size
        if size >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _plan(source: Storage, target: Storage, manifest_path: Path, cfg: Config, prior: dict[str, Any] | None,
          summary: Summary, reporter: Reporter) -> None:
    """--dry-run: what a run would process and what it would find up to date, by the run's own policy.

    Writes nothing: the stat cache is read only, the index lives in a temporary folder.
    """
    cache = StateCache(state_path(manifest_path), readonly=True)
    with tempfile.TemporaryDirectory(prefix="noiseaug-plan-") as tmp:
        index = RunIndex(Path(tmp) / manifest_path.name)
        if prior is not None:
            index.load_prior(read_lines(manifest_path))
        for job, cand in _jobs(source, cfg, summary.walk, set()):
            if isinstance(cand, list):
                for outcome in cand:
                    summary.add(outcome.record)
                continue
            job = _with_prior(job, index, cfg)
            fresh = unchanged(job, cand, cache, target, cfg) is not None or all_confirmed(job, source, target, cfg)
            action = "skip" if fresh else "label" if _left_alone(job, source, cfg) else "process"
            reporter.planned(job, action)
            if action == "label":
                summary.walk.labels += 1
                continue
            summary.planned[job.kind, action] += 1
            if action == "process":
                summary.planned_bytes[job.kind] += job.size
        index.close()
    cache.save()
    summary.unmatched = _selection(cfg).unmatched(summary.walk.globs_hit)
