"""When an output is up to date: the one policy of ``run`` and ``--dry-run``.

rsync's quick check first: an input and output with the size and mtime they
had when their record was last confirmed (the stat cache beside the
manifest) are up to date without reading either. Anything else is confirmed
by content: the input's hash and the output's hash against the record.
"""

from __future__ import annotations

from typing import Any

from .config import Config
from .records import LABEL, OK, Job, copies_of, output_of, path_fields
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
