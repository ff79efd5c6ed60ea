"""The manifest: JSON Lines, a run record then one record per (input, copy).

Records are appended as files finish, one line per write, so a crash leaves a
valid prefix (a torn last line is ignored on reading); at the end of a run the
file is rewritten, atomically, sorted by (input bytes, copy), so two runs with
the same options give identical file records.

File names that are not valid UTF-8 are recorded losslessly: ``input`` (and
``output``) show the name with undecodable bytes as ``\\xNN``, and
``input_raw`` (``output_raw``) hold the exact bytes in base64.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import ManifestError, MissingShardsError
from .storage.local import atomic_write, open_no_follow

MANIFEST_NAME = "noiseaug-manifest.jsonl"
MANIFEST_NAMES = re.compile(r"noiseaug-manifest(?:\.shard-(\d+)-of-(\d+))?\.jsonl")  # a run's or a shard's, in OUTPUT
# Every name noiseaug writes at OUTPUT's top, for any run or shard: manifests, their stat caches (and SQLite's
# journal beside them) and run indexes, locks, the preview. No input's output may take one, whichever shard
# the run is (a shard run copying an input named like another shard's manifest would write over it).
OWN_NAMES = re.compile(r"\.?noiseaug-manifest(\.shard-\d+-of-\d+)?\.jsonl(\.state|\.index)?(-journal|-wal|-shm)?"
                       r"|\.noiseaug(\.shard-\d+-of-\d+)?\.lock|noiseaug-preview\.png")


def default_path(output_root: Path, shard: tuple[int, int]) -> Path:
    """OUTPUT/noiseaug-manifest.jsonl, or the shard's own manifest."""
    index, count = shard
    if count == 1:
        return output_root / MANIFEST_NAME
    return output_root / f"noiseaug-manifest.shard-{index}-of-{count}.jsonl"


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


def rel_bytes(record: dict[str, Any], key: str = "input") -> bytes:
    """A record's relative path as the exact bytes of the file name."""
    raw = record.get(f"{key}_raw")
    if raw is not None:
        return base64.b64decode(raw)
    return str(record[key]).encode("utf-8")


def rel_str(record: dict[str, Any], key: str = "input") -> str:
    """A record's relative path as a file system string (surrogate-escaped)."""
    return os.fsdecode(rel_bytes(record, key))


def recorded_root(run: dict[str, Any], key: str) -> str | None:
    """INPUT or OUTPUT (``input_root``, ``output_root``) as a run record names it, a path that is not UTF-8
    from its ``_raw`` twin; None when the record has none."""
    return rel_str(run, key) if isinstance(run.get(key), str) else None


def sort_key(record: dict[str, Any]) -> tuple[bytes, int]:
    return rel_bytes(record), int(record.get("copy", 0))


def safe_rel(record: dict[str, Any], key: str, where: str) -> str:
    """A record's relative path, refused if absolute or climbing out with '..'."""
    try:
        rel = rel_str(record, key)
    except (KeyError, ValueError, TypeError):
        raise ManifestError(f"{where}: a file record has no valid {key!r} path") from None
    if not rel or rel.startswith("/") or ".." in rel.split("/") or "\0" in rel:
        raise ManifestError(f"{where}: refusing {key} path {rel!r}: it is absolute or climbs out of its root")
    return rel


@dataclass
class Manifest:
    """A manifest read back: its run record and the last record of each output."""

    path: Path
    run: dict[str, Any]
    files: dict[tuple[bytes, int], dict[str, Any]] = field(default_factory=dict)
    torn: bool = False  # the last line was cut off (a run killed while writing it)


def load(path: Path) -> Manifest:
    """Read a whole manifest; later records of the same (input, copy) win."""
    run = read_run(path)
    torn = [False]
    files: dict[tuple[bytes, int], dict[str, Any]] = {}
    for number, record in enumerate(read_records(path, torn), 2):
        try:
            files[sort_key(record)] = record
        except (KeyError, ValueError, TypeError):
            raise ManifestError(f"{os.fsdecode(path)}:{number}: file record without input or copy") from None
    return Manifest(Path(path), run, files, torn[0])


def read_run(path: Path) -> dict[str, Any]:
    """A manifest's run record: its first line, and nothing more is read."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {os.fsdecode(path)}: {exc.strerror}") from None
    try:
        run = json.loads(first)
    except ValueError:
        raise ManifestError(f"{os.fsdecode(path)}:1: not a JSON object") from None
    if not isinstance(run, dict) or run.get("type") != "run":
        raise ManifestError(f"{os.fsdecode(path)} has no run record: not a noiseaug manifest")
    return run


def read_records(path: Path, torn: list[bool] | None = None) -> Iterator[dict[str, Any]]:
    """A manifest's file records, one at a time (streaming); ``torn[0]`` is set when the last line was cut off."""
    for record, _ in read_lines(path, torn):
        yield record


def read_lines(path: Path, torn: list[bool] | None = None) -> Iterator[tuple[dict[str, Any], str]]:
    """Each file record with its line as written (streaming)."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {os.fsdecode(path)}: {exc.strerror}") from None
    with fh:
        fh.readline()
        for number, line in enumerate(fh, 2):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                if not line.endswith(b"\n"):
                    if torn is not None:
                        torn[0] = True  # the last line of a run that was killed mid-write
                    return
                raise ManifestError(f"{os.fsdecode(path)}:{number}: not a JSON object") from None
            if record.get("type") == "file":
                yield record, line.rstrip(b"\n").decode("utf-8")


FLUSH_SECONDS = 0.1  # appended records reach the file at least this often (a killed run's last ones redone)


class ManifestWriter:
    """Appends records to the manifest while a run goes on.

    The file is only opened on the first record, so a run with nothing to do
    writes nothing. When continuing a previous manifest, records are appended
    to it; otherwise it is started afresh with the run record.
    """

    def __init__(self, path: Path, run: dict[str, Any], *, append: bool) -> None:
        self.path = path
        self.run = run
        self.append = append
        self.written = 0
        self._fh: IO[str] | None = None
        self._flushed = 0.0

    def write(self, record: dict[str, Any]) -> None:
        self.write_text(dumps(record))

    def write_text(self, text: str) -> None:
        """Append one record given as its JSON text (serialised once by the caller)."""
        if self._fh is None:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
            if self.append:
                cut_torn_tail(self.path)
            self._fh = open_no_follow(self.path, flags, "a" if self.append else "w")
            if not self.append:
                self._fh.write(dumps(self.run) + "\n")
        self._fh.write(text + "\n")
        self.written += 1
        now = time.monotonic()
        if now - self._flushed >= FLUSH_SECONDS:  # a system call per record was a parent's largest cost
            self._fh.flush()
            self._flushed = now

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def cut_torn_tail(path: Path) -> None:
    """Cut a last line that a killed run left without its newline, so appending starts a new record."""
    with open_no_follow(path, os.O_RDWR, "rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            if pos == end and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                fh.truncate(start + newline + 1)
                return
            pos = start
        fh.truncate(0)


def render(run: dict[str, Any], records: Iterable[dict[str, Any]]) -> bytes:
    """A whole manifest's bytes: the run record, then file records sorted by (input, copy)."""
    lines = [dumps(run)] + [dumps(r) for r in sorted(records, key=sort_key)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_sorted(path: Path, run: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
    """Atomically write a whole manifest, unless the file already holds exactly that."""
    data = render(run, records)
    try:
        if not path.is_symlink() and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(os.fsdecode(path), data, durable=True)


def state_path(manifest: Path) -> Path:
    """The stat cache kept beside a manifest (see :class:`StatCache`)."""
    return manifest.with_name(f".{manifest.name}.state")


def merge(paths: list[Path], output: Path, *, allow_missing: bool = False,
          shown: tuple[list[str], str] | None = None) -> tuple[int, list[str]]:
    """Join shard manifests into one; returns the record count and notes.

    Refuses manifests made with different options (the shard aside), records
    that disagree about the same output, and unsafe paths. The result's file
    records equal those of the same run done unsharded. ``shown``: the names
    the user gave (URLs fetched to ``paths``, to be uploaded from ``output``).
    """
    from .config import JOB_OPTIONS

    if not Path(os.path.abspath(output)).parent.is_dir():
        raise ManifestError(f"-o {os.fsdecode(output)}: its folder does not exist")
    if output.exists() and any(p.exists() and os.path.samefile(output, p) for p in paths):
        raise ManifestError(f"-o {os.fsdecode(output)} is one of the manifests to merge; write the result elsewhere")
    manifests = [load(p) for p in paths]
    first = manifests[0]
    job = {k: v for k, v in first.run.get("options", {}).items() if k in JOB_OPTIONS and k != "shard"}
    files: dict[tuple[bytes, int], dict[str, Any]] = {}
    shards: set[str] = set()
    for m in manifests:
        where = os.fsdecode(m.path)
        options = m.run.get("options", {})
        for key, value in job.items():
            if options.get(key) != value:
                raise ManifestError(f"{where} was made with {key.replace('_', '-')}={options.get(key)!r}, "
                                    f"{os.fsdecode(first.path)} with {value!r}: not shards of one run")
        for root in ("input_root", "output_root"):
            if recorded_root(m.run, root) != recorded_root(first.run, root):
                raise ManifestError(f"{where} has {root} {m.run.get(root)!r}, {os.fsdecode(first.path)} has "
                                    f"{first.run.get(root)!r}: not shards of one run")
        shards.add(str(options.get("shard", "0/1")))
        for key, record in m.files.items():
            safe_rel(record, "input", where)
            safe_rel(record, "output", where)
            if key in files and files[key] != record:
                raise ManifestError(f"{where} and another manifest disagree about {record['output']!r}")
            files[key] = record
    notes = []
    counts = {s.split("/")[1] for s in shards if "/" in s}
    if len(counts) == 1:
        count = int(counts.pop())
        missing = sorted(set(range(count)) - {int(s.split("/")[0]) for s in shards})
        if missing:
            named = ", ".join(f"{i}/{count}" for i in missing)
            if not allow_missing:
                raise MissingShardsError(f"shards {named} are missing: merge their manifests too, or pass "
                                         "--allow-missing to join what is there")
            notes.append(f"shards {named} are missing from the merge")
    options = {**first.run.get("options", {}), "shard": "0/1"}
    recorded = recorded_root(first.run, "output_root")
    names, target = shown or ([os.fsdecode(p) for p in paths], os.path.abspath(output))
    folder = target.rpartition("/")[0] if "://" in target else os.path.realpath(Path(target).parent)
    if not (isinstance(recorded, str) and folder in (recorded, os.path.realpath(recorded))):
        options["manifest"] = target  # not in OUTPUT: verify must look at OUTPUT itself
    run = {**first.run, "options": options, "merged_from": names}
    write_sorted(output, run, files.values())
    return len(files), notes


def merge_anywhere(manifests: list[str], output: str, *, allow_missing: bool,
                   options: dict[str, Any]) -> tuple[int, list[str], int]:
    """:func:`merge` where manifests and the result may be URLs: fetched, merged locally, uploaded.

    Returns the records written, the notes, and how many manifests were named (a URL pattern counts as
    the manifests it matches)."""
    import tempfile

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
