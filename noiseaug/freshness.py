"""When an output is up to date: the one policy of ``run`` and ``--dry-run``.

rsync's quick check first: an input and output with the size and mtime they
had when their record was last confirmed (the stat cache beside the
manifest) are up to date without reading either. Anything else is confirmed
by content: the input's hash and the output's hash against the record.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from .config import Config
from .discover import Selection, WalkStats, walk
from .records import LABEL, LEFT, OK, Job, copies_of, output_of, path_fields
from .storage import Storage


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
                  selection: Selection) -> tuple[Counter, WalkStats] | None:
    """A whole re-run by the quick check alone: (skipped outputs per kind, the walk's counts), or None.

    Holds only when the manifest is as the last run left it (size, mtime and
    record count in the stat cache), every file the walk takes has all its
    copies in the cache with matching input and output stamps, and together
    they are every record of the manifest (no failed or unreached record that
    a run would retry or flag). Anything else: None, and the run goes the
    long way, which finds the same answer for every file it could decide here.
    """
    noted = cache.manifest_stamp()
    try:
        st = os.stat(manifest)
    except OSError:
        return None
    if noted is None or noted[:2] != [st.st_size, st.st_mtime_ns]:
        return None
    skipped: Counter = Counter()  # outputs by kind
    stats = WalkStats()
    seen = 0
    folder, outputs = b"\0", {}  # one output folder's stamps at a time: name -> (size, mtime)
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
                folder, outputs = where, target.folder_stats(where)
            if in_size != cand.size or in_mtime != cand.mtime_ns or outputs.get(name) != (out_size, out_mtime):
                return None
            skipped[kind] += 1
        seen += len(rows)
    if seen != noted[2] or stats.problems:
        return None
    return Counter({(kind, "skipped"): n for kind, n in skipped.items()}), stats
