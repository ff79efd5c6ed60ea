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
import math
import os
import re
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import ManifestError
from .storage.local import atomic_file, open_no_follow

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
    return _ENCODER.encode(record)


# json.dumps(record, ensure_ascii=False, allow_nan=False), with one encoder for every record (json.dumps builds
# one a call) and no check for cycles (a record is plain data): the same text
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, check_circular=False)


FINISHED = (', "finished": false}', ', "finished": true }')  # as long as each other: flipped in place


def run_line(run: dict[str, Any], finished: bool) -> str:
    """The run record's line, ending in whether the run that left the manifest finished (every file of its
    selection tried: not interrupted, stopped or killed). The two endings have one length, so that a run
    continuing a manifest says "not finished" in place before its first appended record."""
    text = dumps({k: v for k, v in run.items() if k != "finished"})
    return text[:-1] + FINISHED[finished] if text != "{}" else text


def mark_unfinished(path: Path) -> None:
    """Say in place, in the run record of an existing manifest, that its run has not finished."""
    with open_no_follow(path, os.O_RDWR, "rb+") as fh:
        first = fh.readline()
        done = FINISHED[True].encode()
        if first.rstrip(b"\n").endswith(done):
            fh.seek(len(first.rstrip(b"\n")) - len(done))
            fh.write(FINISHED[False].encode())


def rel_bytes(record: dict[str, Any], key: str = "input") -> bytes:
    """A record's relative path as the exact bytes of the file name."""
    raw = record.get(f"{key}_raw")
    if raw is not None:
        if not isinstance(raw, str):
            raise TypeError(f"{key}_raw is not a string")
        return base64.b64decode(raw, validate=True)  # binascii.Error (a ValueError) for what is not base64
    value = record[key]
    if not isinstance(value, str):  # a hand-edited record: null or a number is no path
        raise TypeError(f"{key} is not a string")
    return value.encode("utf-8")


def rel_str(record: dict[str, Any], key: str = "input") -> str:
    """A record's relative path as a file system string (surrogate-escaped)."""
    return os.fsdecode(rel_bytes(record, key))


def recorded_root(run: dict[str, Any], key: str) -> str | None:
    """INPUT or OUTPUT (``input_root``, ``output_root``) as a run record names it, a path that is not UTF-8
    from its ``_raw`` twin; None when the record has none."""
    if not isinstance(run.get(key), str):
        return None
    try:
        root = rel_str(run, key)
    except (TypeError, ValueError):
        raise ManifestError(f"the run record's {key}_raw is not the base64 of a path") from None
    if not root:
        raise ManifestError(f"the run record's {key} is empty")
    return root


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
            if not line.strip():  # a blank line (an editor's last newline): no record
                continue
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
            if record.get("type") != "file":  # the run record is the first line, and only there
                raise ManifestError(f"{os.fsdecode(path)}:{number}: a record of type {record.get('type')!r}, "
                                    "not a file record")
            check_record(record, f"{os.fsdecode(path)}:{number}")
            yield record, line.rstrip(b"\n").decode("utf-8")


_SHA256 = re.compile(r"[0-9a-f]{64}")
STATUSES = ("ok", "skipped", "error")


def check_record(record: dict[str, Any], where: str) -> None:
    """Refuse (:class:`ManifestError`) a file record that run, verify and merge cannot take at its word: a
    manifest is input too, and may have been edited by hand. Its paths must stay inside their roots, in the
    form noiseaug writes them, its output be none of noiseaug's own files, its copy a whole number, its kind
    the one its name says, and its hashes, sizes, status and numbers what noiseaug writes for its status."""
    for key in ("input", "output"):
        rel = safe_rel(record, key, where)
        if any(part in ("", ".") for part in rel.split("/")):
            raise ManifestError(f"{where}: refusing {key} path {rel!r}: an empty or '.' segment")
    if record.get("status") == "ok" and OWN_NAMES.fullmatch(rel_str(record, "output")):  # (a failed one may)
        raise ManifestError(f"{where}: a file record's output is noiseaug's own file {record.get('output')!r}")
    copy = record.get("copy")
    if type(copy) is not int or not 0 <= copy < MAX_COPY:
        raise ManifestError(f"{where}: a file record's copy is {copy!r}, not a whole number from 0")
    _check_kind(record, where)
    status = record.get("status")
    if status not in STATUSES:
        raise ManifestError(f"{where}: a file record's status is {status!r}, not one of {', '.join(STATUSES)}")
    needed = ("input_sha256", "output_sha256", "input_bytes", "output_bytes") if status == "ok" else ()
    for key in ("input_sha256", "output_sha256"):
        value = record.get(key)
        if (value is not None or key in needed) and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            raise ManifestError(f"{where}: a file record's {key} is {value!r}, not a SHA-256 (64 hex digits)")
    for key in ("input_bytes", "output_bytes"):
        value = record.get(key)
        if (value is not None or key in needed) and (type(value) is not int or not 0 <= value < 1 << 63):
            raise ManifestError(f"{where}: a file record's {key} is {value!r}, not a size in bytes")
    error = record.get("error")
    if status == "error" and not (isinstance(error, str) and error and "\n" not in error):
        raise ManifestError(f"{where}: an error record's error is {error!r}, not a reason on one line")
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ManifestError(f"{where}: a file record's {key} is {value!r}, not a finite number")


MAX_COPY = 1 << 31  # beyond any --copies


def _check_kind(record: dict[str, Any], where: str) -> None:
    """A record's kind must be one noiseaug writes, and an image's or a recording's the one its name says."""
    from .discover import kind_of

    kind = record.get("kind")
    if kind not in KINDS:
        raise ManifestError(f"{where}: a file record's kind is {kind!r}, not one of {', '.join(KINDS)}")
    named = kind_of(rel_str(record, "input"))
    if kind in ("image", "audio", "label") and named != ("image" if kind == "label" else kind):
        raise ManifestError(f"{where}: a file record's kind is {kind!r}, but {record.get('input')!r} is "
                            f"named as {'an' if named == 'image' else 'a'} {named} file")


KINDS = ("image", "audio", "other", "label")


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
                mark_unfinished(self.path)  # until the rewrite at the end says otherwise
            self._fh = open_no_follow(self.path, flags, "a" if self.append else "w")
            if not self.append:
                self._fh.write(run_line(self.run, finished=False) + "\n")
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


class _Unchanged(Exception):
    """The file already holds exactly what was to be written: nothing is replaced."""


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Atomically write a manifest's lines, streaming, unless the file already holds exactly those (its
    mtime then stays); returns how many lines there are."""
    try:
        old = None if path.is_symlink() else open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError:
        old = None
    count = 0
    try:
        with atomic_file(os.fsdecode(path), durable=True) as fh:
            same = old is not None
            for line in lines:
                data = line.encode("utf-8") + b"\n"
                fh.write(data)
                count += 1
                same = same and old is not None and old.read(len(data)) == data
            if same and old is not None and not old.read(1):
                raise _Unchanged
    except _Unchanged:
        pass
    finally:
        if old is not None:
            old.close()
    return count


def state_path(manifest: Path) -> Path:
    """The stat cache kept beside a manifest (see :class:`StatCache`)."""
    return manifest.with_name(f".{manifest.name}.state")
