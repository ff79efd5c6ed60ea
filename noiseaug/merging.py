"""``noiseaug merge``: join the manifests of shards into the manifest of the whole run.

The shards' records are gathered in a temporary SQLite file
(:class:`~noiseaug.index.RecordSpool`) and written back sorted, streaming, so
that merging the shards of a million-file run takes bounded memory.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ManifestError, MissingShardsError
from .index import RecordSpool, spool_manifest, spooled
from .manifest import dumps, read_run, recorded_root, run_line, safe_rel, write_lines


def merge(paths: list[Path], output: Path, *, allow_missing: bool = False,
          shown: tuple[list[str], str] | None = None) -> tuple[int, list[str]]:
    """Join shard manifests into one; returns the record count and notes.

    Refuses manifests made with different options (the shard aside), records
    that disagree about the same output, and unsafe paths. The result's file
    records equal those of the same run done unsharded. ``shown``: the names
    the user gave (URLs fetched to ``paths``, to be uploaded from ``output``).
    """
    if not Path(os.path.abspath(output)).parent.is_dir():
        raise ManifestError(f"-o {os.fsdecode(output)}: its folder does not exist")
    if output.exists() and any(p.exists() and os.path.samefile(output, p) for p in paths):
        raise ManifestError(f"-o {os.fsdecode(output)} is one of the manifests to merge; write the result elsewhere")
    if output.exists() and output.stat().st_size and not _a_manifest(output):  # an empty file (mktemp's) may go
        raise ManifestError(f"-o {os.fsdecode(output)} exists and is no noiseaug manifest: it is not written over")
    with tempfile.TemporaryDirectory(prefix="noiseaug-merge-") as folder, spooled(folder) as spool:
        first, shards, torn = _gather(paths, spool)
        notes = _missing_shards(shards, allow_missing) + _torn(torn, allow_missing)
        run = _merged_run(first, paths, output, shown)
        finished = not notes  # every shard there, each one finished
        count = write_lines(output, itertools.chain([run_line(run, finished)], _agreed(spool.outputs())))
    return count - 1, notes


def _gather(paths: list[Path], spool: RecordSpool) -> tuple[dict[str, Any], set[str], list[str]]:
    """Every manifest's records into ``spool``, after checking that they are shards of one run; the first's
    run record, the shards named, and the manifests whose last line is cut off."""
    from .config import JOB_OPTIONS

    first = read_run(paths[0])
    job = {k: v for k, v in first.get("options", {}).items() if k in JOB_OPTIONS and k != "shard"}
    shards: set[str] = set()
    torn = []
    for number, path in enumerate(paths):
        where, run = os.fsdecode(path), read_run(path)
        options = run.get("options", {})
        for key, value in job.items():
            if options.get(key) != value:
                raise ManifestError(f"{where} was made with {key.replace('_', '-')}={options.get(key)!r}, "
                                    f"{os.fsdecode(paths[0])} with {value!r}: not shards of one run")
        if recorded_root(run, "output_root") != recorded_root(first, "output_root"):  # INPUT may be mounted
            raise ManifestError(f"{where} has output_root {run.get('output_root')!r}, {os.fsdecode(paths[0])} has "
                                f"{first.get('output_root')!r}: not shards of one run")  # anywhere (SPEC §2)
        shards.add(str(options.get("shard", "0/1")))
        if run.get("finished") is False:
            torn.append(f"{where}: its run did not finish (interrupted, stopped or killed)")
        why = spool_manifest(spool, path, number, lambda r, where=where: (safe_rel(r, "input", where),
                                                                         safe_rel(r, "output", where)))
        if why is not None and run.get("finished") is not False:  # said once
            torn.append(f"{where}: {why}")
    return first, shards, torn


def _torn(unfinished: list[str], allow_missing: bool) -> list[str]:
    """A shard manifest its run did not finish (killed: its last line cut off, or its records not rewritten in
    order) is a shard not all there."""
    notes = [f"{said}: that shard is not complete" for said in unfinished]
    if notes and not allow_missing:
        raise MissingShardsError(f"{notes[0]}; run it again to complete it, or pass --allow-missing to join what "
                                 "is there")
    return notes


def _agreed(outputs: Iterator[list[str]]) -> Iterator[str]:
    """Each output's record, once, as noiseaug writes it; records of one output that disagree between
    manifests are refused (the same record with its fields in another order agrees)."""
    for texts in outputs:
        record = json.loads(texts[0])
        if len(set(texts)) > 1 and any(json.loads(t) != record for t in texts[1:]):
            raise ManifestError(f"two manifests disagree about {record.get('output')!r}")
        yield dumps(record)


def _missing_shards(shards: set[str], allow_missing: bool) -> list[str]:
    """The shards that are not there: by index when all have one count; else, shards of several counts
    (0/2 with 1/3) must still cover every file (a path goes to shard hash mod N, so coverage is decided on
    the residues modulo the counts' least common multiple)."""
    given = {(int(i), int(n)) for i, _, n in (s.partition("/") for s in shards) if n}
    counts = {n for _, n in given}
    if len(counts) == 1:
        count = counts.pop()
        missing = sorted(set(range(count)) - {i for i, _ in given})
        said = f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing" if missing else ""
    else:
        period = math.lcm(*counts) if counts else 1
        uncovered = period > 10**6 or any(all(r % n != i for i, n in given) for r in range(period))
        said = (f"shards {', '.join(sorted(shards))} of different counts do not cover every file" if uncovered
                else "")
    if not said:
        return []
    if not allow_missing:
        raise MissingShardsError(f"{said}: merge the missing ones too, or pass --allow-missing to join what is "
                                 "there")
    return [f"{said} from the merge"]


def _merged_run(first: dict[str, Any], paths: list[Path], output: Path,
                shown: tuple[list[str], str] | None) -> dict[str, Any]:
    """The merged manifest's run record: the first shard's, for the whole run, saying where it came from."""
    options = {**first.get("options", {}), "shard": "0/1"}
    recorded = recorded_root(first, "output_root")
    names, target = shown or ([os.fsdecode(p) for p in paths], os.path.abspath(output))
    folder = target.rpartition("/")[0] if "://" in target else os.path.realpath(Path(target).parent)
    if not (isinstance(recorded, str) and folder in (recorded, os.path.realpath(recorded))):
        options["manifest"] = target  # not in OUTPUT: verify must look at OUTPUT itself
    return {**first, "options": options, "merged_from": names}


def _a_manifest(path: Path) -> bool:
    """Whether a file holds a noiseaug manifest (its run record first), which a merge may write over."""
    try:
        read_run(path)
    except ManifestError:
        return False
    return True


def merge_anywhere(manifests: list[str], output: str, *, allow_missing: bool,
                   options: dict[str, Any]) -> tuple[int, list[str], int]:
    """:func:`merge` where manifests and the result may be URLs: fetched, merged locally, uploaded.

    Returns the records written, the notes, and how many manifests were named (a URL pattern counts as
    the manifests it matches)."""
    from .config import redact_url
    from .storage.remote import FsspecStorage, is_url, split_object_url

    if not any(is_url(m) for m in [*manifests, output]):
        return (*merge([Path(m) for m in manifests], Path(output), allow_missing=allow_missing), len(manifests))
    manifests = [found for name in manifests for found in _expand_url_glob(name, options)]
    with tempfile.TemporaryDirectory(prefix="noiseaug-merge-") as spool:
        local = []
        for number, name in enumerate(manifests):
            local.append(Path(name) if not is_url(name) else Path(spool) / f"{number}.jsonl")
            if is_url(name):
                folder, base = split_object_url(name)
                if not FsspecStorage(folder, options).fetch(base, local[-1]):
                    raise ManifestError(f"{redact_url(name)}: no such manifest")
        result = Path(spool) / "merged.jsonl" if is_url(output) else Path(output)
        shown = ([redact_url(m) for m in manifests], redact_url(output) if is_url(output) else os.path.abspath(output))
        count, notes = merge(local, result, allow_missing=allow_missing, shown=shown)
        if is_url(output):
            folder, base = split_object_url(output)
            FsspecStorage(folder, options).upload(result, base)
    return count, notes, len(manifests)


def _expand_url_glob(name: str, options: dict[str, Any]) -> list[str]:
    """A URL whose last segment has ``*`` or ``[...]`` (no shell expands those), as the sorted URLs it matches."""
    from .config import redact_url
    from .storage.remote import FsspecStorage, _first_line, is_url, split_object_url

    if not is_url(name):
        return [name]
    folder, base = split_object_url(name)
    if not any(c in base for c in "*["):
        return [name]
    storage = FsspecStorage(folder, options)
    try:
        found = sorted(storage.rel_of(p) for p in storage.fs.glob(storage.full(base)))
    except FileNotFoundError:  # no such bucket: nothing matches
        found = []
    except Exception as exc:
        raise ManifestError(f"{redact_url(name)}: cannot list: {_first_line(exc)}") from None
    if not found:
        raise ManifestError(f"{redact_url(name)}: no manifest matches")
    return [f"{folder}/{rel}" for rel in found]
