"""When an output is up to date: the one policy of ``run`` and ``--dry-run``.

rsync's quick check first: an input and output with the size and mtime they
had when their record was last confirmed (the stat cache beside the
manifest) are up to date without reading either. Anything else is confirmed
by content: the input's hash and the output's hash against the record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from .config import Config
from .discover import Selection, WalkStats, walk
from .manifest import rel_bytes
from .records import LABEL, LEFT, OK, Job, copies_of, output_of, path_fields
from .storage import LocalStorage, Storage

FOLDERS_VERSION = 1  # of the noted folder shortcut: what its digests and totals hold
NOT_DECIDING = ("workers", "executor", "scheduler", "dry_run", "file_timeout", "on_error")  # options the answer
# of the quick check does not depend on (a re-run with another --workers is still a re-run with nothing to do)


def confirmed(prior: dict[str, Any] | None, digest: str, target: Storage, out_rel: str, kind: str) -> bool:
    """Whether a previous record still describes this output, by hashes: same input, same output bytes."""
    if not prior or prior.get("status") != OK or prior.get("kind") != kind:
        return False
    if prior.get("input_sha256") != digest or prior.get("output") != path_fields("output", out_rel)["output"]:
        return False
    try:
        existing, _ = target.hash(out_rel)
    except OSError:
        return False
    return existing == prior.get("output_sha256")


def all_confirmed(job: Job, source: Storage, target: Storage, cfg: Config) -> bool:
    """--dry-run's content check, the one a run makes when size and mtime changed: every copy confirmed."""
    try:
        digest, _ = source.hash(job.rel)
    except OSError:
        return False
    label = bool(job.prior and job.prior[0] and job.prior[0].get("kind") == LABEL)
    kind = LABEL if label else job.kind
    copies = copies_of(kind, cfg)
    return len(job.prior) >= len(copies) and all(
        confirmed(job.prior[c], digest, target, output_of(job, c, cfg, kind), kind) for c in copies)


def nothing_to_do(source: Storage, target: Storage, manifest: Path, cfg: Config, cache: Any,
                  selection: Selection, own: Iterable[str] = ()) -> tuple[Counter, WalkStats] | None:
    """A whole re-run by the quick check alone: (skipped outputs per kind, the walk's counts), or None.

    Holds only when the manifest is as the last run left it (size, mtime and
    record count in the stat cache), every file the walk takes has all its
    copies in the cache with matching input and output stamps, and together
    they are every record of the manifest (no failed or unreached record that
    a run would retry or flag). Anything else: None, and the run goes the
    long way, which finds the same answer for every file it could decide here.

    On local folders, this check first looks for the shortcut a clean run left
    (:func:`note_folders`): when every folder lists as it did then, the answer
    is the one found then, without a step per file. ``own``: noiseaug's own
    files under OUTPUT (manifest, stat cache, lock, preview), which change
    without changing any output.
    """
    noted = noted_manifest(manifest, cache)
    if noted is None or noted[3:] != [source.root, target.root]:  # a moved INPUT or OUTPUT: the record says
        return None
    key = _folders_key(cfg, noted)
    found = _same_folders(source, target, cache.folder_digests(key), _names(own))
    return found if found is not None else _each_file(source, target, cfg, cache, selection, noted, manifest)


def note_folders(source: Storage, target: Storage, manifest: Path, cfg: Config, cache: Any,
                 selection: Selection, own: Iterable[str] = ()) -> bool:
    """After a clean run on local folders: run the quick check once, and if it holds, note every folder's
    listing digest (INPUT's, and OUTPUT's folders of outputs) with its answer, for the next run's shortcut."""
    noted = noted_manifest(manifest, cache)
    if noted is None or not isinstance(source, LocalStorage) or not isinstance(target, LocalStorage):
        return False
    source.digests, outputs = {}, {}
    try:
        found = _each_file(source, target, cfg, cache, selection, noted, manifest, (outputs, _names(own)))
        inputs = source.digests
    finally:
        source.digests = None
    if found is None:
        return False
    counts, stats = found
    totals = {"skipped": {kind: n for (kind, _), n in counts.items()},
              "walk": {**dataclasses.asdict(stats), "globs_hit": sorted(stats.globs_hit)}}
    cache.note_folders(_folders_key(cfg, noted), inputs, outputs, totals)
    return True


def noted_manifest(manifest: Path, cache: Any) -> list[Any] | None:
    """The manifest's [size, mtime, records, INPUT, OUTPUT] noted in the cache, if it still has that size and
    mtime."""
    noted = cache.manifest_stamp()
    try:
        st = os.stat(manifest)
    except OSError:
        return None
    if noted is None or noted[:2] != [st.st_size, st.st_mtime_ns]:
        return None
    return noted


def _folders_key(cfg: Config, noted: list[int]) -> str:
    """What the folder shortcut was noted under: the manifest as noted, and the options that decide the answer."""
    options = {k: v for k, v in cfg.to_dict().items() if k not in NOT_DECIDING}
    return json.dumps([FOLDERS_VERSION, noted, options], sort_keys=True)


def _names(own: Iterable[str]) -> set[tuple[bytes, bytes]]:
    return {tuple(os.fsencode(rel).rpartition(b"/")[::2]) for rel in own}  # type: ignore[misc]


def _outputs_digest(target: LocalStorage, folder: bytes, own: set[tuple[bytes, bytes]]) -> bytes | None:
    """An output folder's listing digest, noiseaug's own files left out (they change without an output)."""
    return target.folder_digest(folder, _own_in(own, folder))


def _own_in(own: set[tuple[bytes, bytes]], folder: bytes) -> Iterator[bytes]:
    """noiseaug's own names in one output folder (left out of its digest)."""
    return (name for where, name in own if where == folder)


def _output_stamps(target: Storage, folder: bytes,
                   noting: tuple[dict[bytes, bytes], set[tuple[bytes, bytes]]] | None) -> Any:
    """An output folder's stamps by name; when noting, from the one listing whose digest is noted."""
    if noting is None or folder in noting[0]:
        return target.folder_stats(folder)
    assert isinstance(target, LocalStorage)  # note_folders is for local folders
    noting[0][folder], stamps = target.listed_folder(folder, _own_in(noting[1], folder))
    return stamps


def _same_folders(source: Storage, target: Storage, noted: Any,
                  own: set[tuple[bytes, bytes]]) -> tuple[Counter, WalkStats] | None:
    """The answer noted with the folder digests, when every folder of INPUT and every noted folder of OUTPUT
    lists as it did (names, kinds, sizes, stamps): one listing a folder, no step per file in Python."""
    if noted is None or not isinstance(source, LocalStorage) or not isinstance(target, LocalStorage):
        return None
    inputs, outputs, totals = noted
    for folder, digest in source.folder_digests():  # a folder added or gone changes its parent's listing
        if digest is None or inputs.get(folder) != digest:
            return None
    for folder, digest in outputs.items():
        if _outputs_digest(target, folder, own) != digest:
            return None
    walk = totals["walk"]
    stats = WalkStats(**{**walk, "globs_hit": set(walk["globs_hit"])})
    return Counter({(kind, "skipped"): n for kind, n in totals["skipped"].items()}), stats


def _each_file(source: Storage, target: Storage, cfg: Config, cache: Any, selection: Selection, noted: list[int],
               manifest: Path, noting: tuple[dict[bytes, bytes], set[tuple[bytes, bytes]]] | None = None,
               ) -> tuple[Counter, WalkStats] | None:
    """The quick check file by file (see :func:`nothing_to_do`); ``noting``: where to put the digest of each
    output folder it lists, and noiseaug's own names to leave out of them."""
    skipped: Counter = Counter()  # outputs by kind
    stats = WalkStats()
    seen = 0
    folder, outputs = b"\0", {}  # the current output folder's stamps: name -> (size, mtime), by get()
    copies = len(copies_of("image", cfg))
    leaves = not cfg.copy_other and cfg.palette_images == "labels"  # label maps left alone, as last time
    for cand, rows in cache.beside((c.rel, c) for c in walk(source, selection, stats)):
        if len(rows) == 1 and rows[0][6] == LEFT:
            if not leaves or rows[0][1:3] != cand[2:]:
                return None
            stats.labels += 1
            continue
        if len(rows) != (copies if cand.kind != "other" else 1) and not (len(rows) == 1 and rows[0][6] == LABEL):
            return None
        for _, in_size, in_mtime, output, out_size, out_mtime, kind in rows:
            where, _, name = output.rpartition(b"/")
            if where != folder:
                folder, outputs = where, _output_stamps(target, where, noting)
            if in_size != cand.size or in_mtime != cand.mtime_ns or outputs.get(name) != (out_size, out_mtime):
                return None
            skipped[kind] += 1
        seen += len(rows)
    if stats.problems or seen != noted[2] and seen + (_kept_gone(manifest, target, noting) or 0) != noted[2]:
        return None
    return Counter({(kind, "skipped"): n for kind, n in skipped.items()}), stats


def _kept_gone(manifest: Path, target: Storage,
               noting: tuple[dict[bytes, bytes], set[tuple[bytes, bytes]]] | None) -> int | None:
    """How many records of inputs that are gone (flagged ``input_missing``) the manifest holds, when every
    one's output is still there: a run keeps them as they are (it drops one whose output went too). None when
    one's output is gone. Its folder is noted with the others, so the shortcut sees such an output go."""
    count, folder, outputs = 0, b"\0", {}
    try:
        with open(manifest, "rb") as fh:
            fh.readline()
            for line in fh:
                if b'"input_missing": true' not in line:  # a key: inside a string the quotes are escaped
                    continue
                where, _, name = rel_bytes(json.loads(line), "output").rpartition(b"/")
                if where != folder:
                    folder, outputs = where, _output_stamps(target, where, noting)
                if outputs.get(name) is None:
                    return None
                count += 1
    except (OSError, ValueError, KeyError):
        return None
    return count
