"""The manifest's file records: their schema, and what became of each output (:class:`Outcome`).

One place says which fields a record has, how a path is recorded, what an
error record keeps, and how a previous record is carried over unchanged.
Workers build records; the parent writes them; nothing rides along in them
but the manifest's own fields.
"""

from __future__ import annotations

import base64
import functools
import os
from dataclasses import dataclass
from typing import Any

from .config import Config

# how seeds become noise (the manifest run record's "seeding"): a manifest made otherwise is not continued
SCHEME = ("seedsequence(master, sha256(relpath), copy) -> sfc64; 8-bit images and PCM_16: round(sigma*Z) by "
          "16-bit table + exact escapes (spawned stream); others: float normal; "
          "page p > 0 of a multi-page image: seedsequence(file seed, p); v2")

OK, ERROR = "ok", "error"
LABEL = "label"  # the kind of a label map (palette or 1-bit image) copied with --copy-other
LEFT = "not taken"  # the stat cache's kind for a label map left alone (no record, no output)
ERROR_FIELDS = ("type", "input", "input_raw", "output", "output_raw", "kind", "copy", "seed", "input_sha256",
                "input_bytes")  # what an error record keeps of the record it replaces


@dataclass(frozen=True)
class Job:
    """One input file and what the previous manifest said about its copies."""

    rel: str
    kind: str
    size: int
    prior: tuple[dict[str, Any] | None, ...] = ()
    stamp: tuple[int, int] | None = None  # the input's (size, mtime) when the walk saw it
    own_name_taken: bool = False  # an earlier input's output has this name: no label map may be copied to it


@dataclass
class Outcome:
    """What became of one output: its record, and how the run should count it.

    ``skipped``: up to date, the record is the previous one unchanged.
    ``fatal``: the next file would fail the same way (a full disk): stop.
    ``not_taken``: no record at all (a label map without --copy-other); says why.
    ``out_stat``: taken by the worker, where the output is (a bucket's driver would need a request per file).
    """

    record: dict[str, Any] | None
    skipped: bool = False
    fatal: bool = False
    not_taken: str | None = None
    out_stat: tuple[int, int] | None = None  # the output's (size, stamp) as the worker left it, for the stat cache

    @property
    def status(self) -> str:
        return self.record["status"] if self.record is not None else "not taken"


def path_fields(key: str, rel: str) -> dict[str, str]:
    """A relative path for a record; undecodable names also kept as base64 bytes."""
    try:
        rel.encode("utf-8")
        return {key: rel}
    except UnicodeEncodeError:
        raw = os.fsencode(rel)
        return {key: raw.decode("utf-8", "backslashreplace"),
                f"{key}_raw": base64.b64encode(raw).decode("ascii")}


@functools.lru_cache(maxsize=1024)  # asked several times per file, by the worker and by the parent
def output_rel(rel: str, template: str, copy: int) -> str:
    """The output's relative path: the input's folder and the --name template."""
    if template == "{stem}{ext}":  # the default name of a single copy: the input's own path
        return rel
    folder, base = os.path.split(rel)
    stem, ext = os.path.splitext(base)
    name = template.format(stem=stem, ext=ext, copy=copy)
    return f"{folder}/{name}" if folder else name


def copies_of(kind: str, cfg: Config) -> range:
    """The copy indices an input of this kind gets (copied files and label maps get one)."""
    return range(cfg.copies) if kind in ("image", "audio") else range(1)


def output_of(job: Job, copy: int, cfg: Config, kind: str | None = None) -> str:
    """Where one copy goes: named by the template, or, for a copied file or label map, the input's own path."""
    return output_rel(job.rel, cfg.name, copy) if (kind or job.kind) in ("image", "audio") else job.rel


def base_record(job: Job, copy: int, cfg: Config, kind: str | None = None) -> dict[str, Any]:
    """The fields every record of this (input, copy) starts with."""
    record: dict[str, Any] = {"type": "file"}
    record.update(path_fields("input", job.rel))
    record.update(path_fields("output", output_of(job, copy, cfg, kind)))
    record.update(kind=kind or job.kind, copy=copy, status=OK)
    return record


def base_records(job: Job, cfg: Config, label: bool = False) -> list[dict[str, Any]]:
    """One base record per copy; a label map is copied once, under its own name."""
    if label:
        return [base_record(job, 0, cfg, LABEL)]
    return [base_record(job, c, cfg) for c in copies_of(job.kind, cfg)]


def error_record(record: dict[str, Any], reason: str) -> dict[str, Any]:
    """The record of an output that failed: what is known of it, and the reason on one line."""
    keep = {k: v for k, v in record.items() if k in ERROR_FIELDS}
    return {**keep, "status": ERROR, "error": " ".join(reason.split())}


def carried(prior: dict[str, Any]) -> Outcome:
    """A previous record kept as it is (an up-to-date output)."""
    return Outcome({k: v for k, v in prior.items() if k != "input_missing"}, skipped=True)


def failed(job: Job, cfg: Config, reason: str) -> list[Outcome]:
    """Error outcomes for every copy of a job that could not run at all."""
    return [Outcome(error_record(r, reason)) for r in base_records(job, cfg)]
