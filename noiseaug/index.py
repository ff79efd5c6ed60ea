"""The run's index: what the previous manifest said, what this run recorded, which outputs are taken.

A dataset of a million files would not fit in the parent's memory as Python
dicts (about 3.4 KB a record). The index keeps them in SQLite, from the
standard library, in a file beside the manifest that lives for one run; its
page cache is capped, so the parent's memory does not grow with the dataset.
The final manifest is written from one sorted query, streaming.

The stat cache (:class:`StateCache`) is a second SQLite file that persists
beside the manifest between runs: rsync's quick check, one row per output,
keyed so that its rows come out in the walk's order (``/`` stored as NUL, which
sorts before every other byte): a re-run with nothing to do reads them in one
pass beside the walk, without a query per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .discover import FS_ENCODING
from .errors import IndexFailedError, ManifestError
from .manifest import OWN_NAMES, read_lines, sort_key

CACHE_PAGES = -4096  # SQLite's page cache, in KiB when negative: 4 MiB whatever the dataset
PENDING_ROWS = 512  # rows written together (one executemany) rather than one statement per file
KEYS_VERSION = 2  # the stat cache's user_version: 2, rows name their record's hashes; 1, paths keyed in the
#                  walk's order (0: plain paths)
T = TypeVar("T")
Row = tuple[bytes, int, int, bytes, int, int, str]  # a stat cache row as beside() gives it


def record_sums(record: dict[str, Any]) -> bytes:
    """What ties a stat cache row to the record it confirmed: a digest of the record's input and output hashes.
    A row vouches for a record only with these, so a manifest put back from a backup, or merged again, is
    not taken at its word on stamps that confirmed other records."""
    both = f"{record.get('input_sha256', '')} {record.get('output_sha256', '')}".encode("ascii", "replace")
    return hashlib.blake2b(both, digest_size=8).digest()


def walk_key(rel: str) -> bytes:
    """A relative path as the stat cache keys it: in byte order, keys sort the way the walk visits paths."""
    return rel.encode(*FS_ENCODING).replace(b"/", b"\0")

_SCHEMA = """
CREATE TABLE prior (key BLOB, copy INTEGER, record TEXT, PRIMARY KEY (key, copy)) WITHOUT ROWID;
CREATE TABLE current (key BLOB, copy INTEGER, record TEXT, PRIMARY KEY (key, copy)) WITHOUT ROWID;
"""


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA cache_size = {CACHE_PAGES}")
    return db


class RunIndex:
    """Records of the previous run and of this one."""

    def __init__(self, manifest: Path) -> None:
        self.path = manifest.with_name(f".{manifest.name}.index")
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_dir() and not self.path.is_symlink():
                raise sqlite3.OperationalError(f"a folder stands where the run's index goes ({self.path.name})")
            self.path.unlink()  # a killed run's
        self.db = _connect(self.path)
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.executescript(_SCHEMA)
        self.db.execute("BEGIN")
        self.prior_count = 0
        self._pending: list[tuple[bytes, int, str | None]] = []  # rows of `current` not yet written

    def load_prior(self, records: Iterator[tuple[dict[str, Any], str]]) -> None:
        """The previous manifest's file records, with their lines; a later record of the same output wins."""
        insert = "INSERT OR REPLACE INTO prior VALUES (?, ?, ?)"
        self.db.executemany(insert, ((*sort_key(record), text) for record, text in records))
        self.prior_count = self.db.execute("SELECT count(*) FROM prior").fetchone()[0]

    def prior(self, key: bytes, copies: int) -> tuple[dict[str, Any] | None, ...]:
        """The previous records of one input's copies 0 .. copies-1 (None where there is none)."""
        rows = dict(self.db.execute("SELECT copy, record FROM prior WHERE key = ? AND copy < ?", (key, copies)))
        return tuple(json.loads(rows[c]) if c in rows else None for c in range(copies))

    def keep(self, key: bytes, copy: int) -> None:
        """The previous record of one output stands unchanged (nothing is serialised)."""
        self.add(key, copy, None)

    def add(self, key: bytes, copy: int, text: str | None) -> None:
        """This run's record of one output (its JSON text); written with others, read only by :meth:`final`."""
        self._pending.append((key, copy, text))
        if len(self._pending) >= PENDING_ROWS:
            self._write_pending()

    def _write_pending(self) -> None:
        self.db.executemany("INSERT OR REPLACE INTO current VALUES (?, ?, ?)", self._pending)
        self._pending.clear()

    def final(self) -> Iterator[tuple[str, str | None]]:
        """Every output's record, sorted by (input bytes, copy): (this run's text or None, the prior text or None)."""
        self._write_pending()
        rows = self.db.execute(
            "SELECT key, copy, coalesce(c.record, p.record), p.record "
            "FROM current c LEFT JOIN prior p USING (key, copy) "
            "UNION ALL SELECT key, copy, NULL, p.record FROM prior p WHERE NOT EXISTS "
            "(SELECT 1 FROM current c WHERE c.key = p.key AND c.copy = p.copy) "
            "ORDER BY 1, 2")
        for _, _, current, previous in rows:
            yield current, previous

    def close(self) -> None:
        self.db.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class RecordSpool:
    """The last file record of each (input, copy) in some manifests, gathered in a temporary SQLite file and
    read back sorted: ``verify`` and ``merge`` of a million-file manifest in bounded memory (as Python dicts
    its records would take gigabytes). Within one manifest a later record of an output wins, as in a run."""

    def __init__(self, folder: str) -> None:
        self.db = _connect(Path(folder) / ".noiseaug-records.sqlite")
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("CREATE TABLE last (key BLOB, copy INTEGER, source INTEGER, record TEXT, "
                        "PRIMARY KEY (key, copy, source)) WITHOUT ROWID")
        self.db.execute("BEGIN")
        self._pending: list[tuple[bytes, int, int, str]] = []

    def add(self, key: bytes, copy: int, source: int, text: str) -> None:
        """Manifest number ``source``'s record of one output (its line, as written)."""
        self._pending.append((key, copy, source, text))
        if len(self._pending) >= PENDING_ROWS:
            self._write_pending()

    def _write_pending(self) -> None:
        self.db.executemany("INSERT OR REPLACE INTO last VALUES (?, ?, ?, ?)", self._pending)
        self._pending.clear()

    def outputs(self) -> Iterator[list[str]]:
        """For each output in (input bytes, copy) order, its record in each manifest that has one."""
        self._write_pending()
        rows = self.db.execute("SELECT key, copy, record FROM last ORDER BY key, copy, source")
        for _, group in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
            yield [row[2] for row in group]

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def spooled(folder: str) -> Iterator[RecordSpool]:
    """A :class:`RecordSpool` in ``folder``, closed at the end; a SQLite failure (a full temporary disk) is one
    :class:`IndexFailedError`."""
    try:
        spool = RecordSpool(folder)
        try:
            yield spool
        finally:
            spool.close()
    except sqlite3.Error as exc:
        raise IndexFailedError(f"cannot gather the manifest's records in a temporary file in {folder} ({exc}): "
                               "free space there, or point TMPDIR elsewhere") from None


TORN = "its last line is cut off (its run was killed while writing it)"  # what spool_manifest says of a manifest
UNORDERED = "its records are not in order (its run stopped before its final rewrite)"


def spool_manifest(spool: RecordSpool, path: Path, source: int,
                   check: Callable[[dict[str, Any]], None] | None = None) -> str | None:
    """Add the file records of manifest number ``source`` to ``spool`` (``check`` sees each first); returns
    why the manifest is not one a run finished, if it is not: a run that ends rewrites it sorted, one killed
    leaves its records in the order they came (and maybe its last line cut off)."""
    torn, last, in_order = [False], (b"", -1), True
    for number, (record, line) in enumerate(read_lines(path, torn), 2):
        try:
            key = sort_key(record)
        except (KeyError, ValueError, TypeError):
            raise ManifestError(f"{os.fsdecode(path)}:{number}: file record without input or copy") from None
        if check is not None:
            check(record)
        in_order, last = in_order and key > last, key
        spool.add(*key, source, line)
    if torn[0]:
        return TORN
    return None if in_order else UNORDERED


class Claims:
    """The output names taken so far, to refuse a second input (or noiseaug's own file) the same output.

    An output lives in its input's folder, and every walk (local or a sorted
    listing) visits a folder's whole subtree before it leaves it: only the
    folders on the walk's current path can still be claimed in, so only their
    names are kept. A folder that comes back once left is a broken walk order.
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._reserved: dict[str, set[str]] = {}
        for rel in reserved:
            folder, _, name = rel.rpartition("/")
            self._reserved.setdefault(folder, set()).add(name)
        self._open: dict[str, set[str]] = {}  # folder -> names taken, for the folders on the walk's path
        self._left: set[str] = set()

    def claim(self, rel: str) -> bool:
        """Take an output name; False when another input (or noiseaug itself) has it already."""
        folder, _, name = rel.rpartition("/")
        names = self._open.get(folder)
        if names is None:
            names = self._enter(folder)
        if name in names or (not folder and OWN_NAMES.fullmatch(name)):
            return False
        names.add(name)
        return True

    def taken(self, rel: str) -> bool:
        """Whether a name is taken, in a folder on the walk's path (claiming nothing)."""
        folder, _, name = rel.rpartition("/")
        return name in self._open.get(folder, ()) or (not folder and OWN_NAMES.fullmatch(name) is not None)

    def _enter(self, folder: str) -> set[str]:
        if folder in self._left:
            raise AssertionError(f"the walk came back to {folder!r} after leaving it")
        for other in [f for f in self._open if not _within(folder, f)]:
            del self._open[other]
            self._left.add(other)
        names = self._open[folder] = set(self._reserved.get(folder, ()))
        return names


def _within(folder: str, ancestor: str) -> bool:
    return not ancestor or folder == ancestor or folder.startswith(ancestor + "/")


class StateCache:
    """Sizes and mtimes of inputs and outputs when their records were last confirmed (SQLite, beside the manifest).

    A re-run trusts an output whose input and output still have the recorded
    size and mtime, without hashing either (rsync's quick check); anything
    else is checked by content hash. Kept out of the manifest so that records
    stay identical between runs and machines. It also notes the manifest's
    own stamp and record count as the run left them, so that a re-run whose
    every file matches can tell it has nothing to do without reading the
    manifest (see :func:`~noiseaug.freshness.nothing_to_do`).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            self.db = self._open(readonly)
        except sqlite3.DatabaseError:  # an old JSON cache, or a damaged one: start afresh (everything is hashed)
            if not readonly:
                with contextlib.suppress(OSError):
                    path.unlink()
            self.db = self._open(readonly, fresh=True)
        self.db.execute("BEGIN")
        self._pending: list[tuple[Any, ...]] = []  # upserts not yet written (see set)

    def _open(self, readonly: bool, fresh: bool = False) -> sqlite3.Connection:
        """The cache's database; read-only (--dry-run writes nothing) from the file if there is one, else empty."""
        if readonly and not fresh and self.path.exists():
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            db.execute("SELECT count(*) FROM stamps").fetchone()  # an older cache fails here
            if db.execute("PRAGMA user_version").fetchone()[0] != KEYS_VERSION:
                db.close()  # keyed the old way, and read-only: as if empty (content decides)
                raise sqlite3.DatabaseError("an older stat cache")
            return db
        db = _connect(Path(":memory:") if readonly else self.path)
        db.execute("CREATE TABLE IF NOT EXISTS stamps (rel BLOB, copy INTEGER, input_size INTEGER, "
                   "input_mtime INTEGER, output BLOB, output_size INTEGER, output_mtime INTEGER, kind TEXT, "
                   "sums BLOB, PRIMARY KEY (rel, copy)) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS folders (side INTEGER, folder BLOB, digest BLOB, "
                   "PRIMARY KEY (side, folder)) WITHOUT ROWID")
        if db.execute("PRAGMA user_version").fetchone()[0] != KEYS_VERSION:
            _rekey(db)
        return db

    def matches(self, rel: str, copy: int, input_stat: tuple[int, int], output_stat: tuple[int, int] | None,
                record: dict[str, Any]) -> bool:
        """Whether the row of this output confirmed ``record`` when input and output had these stamps."""
        if output_stat is None:
            return False
        row = self.db.execute("SELECT input_size, input_mtime, output_size, output_mtime, sums FROM stamps "
                              "WHERE rel = ? AND copy = ?", (walk_key(rel), copy)).fetchone()
        return row == (*input_stat, *output_stat, record_sums(record))

    def beside(self, walk: Iterator[tuple[str, T]]) -> Iterator[tuple[T, list[Row]]]:
        """Each (path, item) of a walk, as the item and the rows of every copy of that path, in copy order:
        (key, input size, input mtime, output, output size, output mtime, kind).

        One pass over the cache's rows, in key order, beside the walk: no query per file.
        """
        cursor = self.db.execute("SELECT rel, input_size, input_mtime, output, output_size, output_mtime, kind "
                                 "FROM stamps ORDER BY rel, copy")
        rows = itertools.chain.from_iterable(iter(lambda: cursor.fetchmany(1024), []))  # cheaper than row by row
        row = next(rows, None)
        for rel, item in walk:
            key = walk_key(rel)
            while row is not None and row[0] < key:  # an input this walk does not take
                row = next(rows, None)
            mine = []
            while row is not None and row[0] == key:
                mine.append(row)
                row = next(rows, None)
            yield item, mine

    def set(self, rel: str, copy: int, input_stat: tuple[int, int], output_stat: tuple[int, int] | None,
            output: str = "", kind: str = "", sums: bytes | None = None) -> None:
        """Remember (or forget) one output's stamps, with its record's :func:`record_sums`; what is already
        there is not written again.

        Written in groups: a path set here is not looked up again in the same run (the walk gives each once).
        """
        key = (walk_key(rel), copy)
        if output_stat is None:
            self._write_pending()
            self.db.execute("DELETE FROM stamps WHERE rel = ? AND copy = ?", key)
            return
        self._pending.append((*key, *input_stat, os.fsencode(output), *output_stat, kind, sums))
        if len(self._pending) >= PENDING_ROWS:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        self.db.executemany("INSERT INTO stamps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rel, copy) DO UPDATE "
                            "SET input_size = excluded.input_size, input_mtime = excluded.input_mtime, "
                            "output = excluded.output, output_size = excluded.output_size, "
                            "output_mtime = excluded.output_mtime, kind = excluded.kind, sums = excluded.sums "
                            "WHERE (input_size, input_mtime, output, output_size, output_mtime, kind, sums) IS NOT "
                            "(excluded.input_size, excluded.input_mtime, excluded.output, excluded.output_size, "
                            "excluded.output_mtime, excluded.kind, excluded.sums)", self._pending)
        self._pending.clear()

    def clear(self) -> None:
        """Forget everything: for a run that starts a manifest of its own (the first, or --overwrite), whose
        rows would otherwise stand for the records of the manifest it replaces (once noted with the new one,
        an interrupted --overwrite's cache kept every output it had not reached as up to date)."""
        self._pending.clear()
        for table in ("stamps", "meta", "folders"):
            self.db.execute(f"DELETE FROM {table}")

    def manifest_stamp(self) -> list[Any] | None:
        """[size, mtime_ns, records, INPUT, OUTPUT] of the manifest as the last run left it (a cache from before
        the roots were noted has the first three)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
        return json.loads(row[0]) if row else None

    def note_manifest(self, path: Path, records: int, roots: tuple[str, str]) -> None:
        """Remember the manifest's stamp, record count and roots (written only when they changed)."""
        try:
            st = os.stat(path)
        except OSError:
            return
        value = [st.st_size, st.st_mtime_ns, records, *roots]
        if self.manifest_stamp() != value:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)", (json.dumps(value),))

    def folder_digests(self, key: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes], Any] | None:
        """The folder digests a clean run noted under ``key`` (:func:`~noiseaug.freshness.note_folders`):
        (INPUT's folders, OUTPUT's folders, the quick check's answer then), or None."""
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'folders'").fetchone()
            noted = json.loads(row[0]) if row else None
            if noted is None or noted.get("key") != key:
                return None
            sides: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})
            for side, folder, digest in self.db.execute("SELECT side, folder, digest FROM folders"):
                sides[side][bytes(folder)] = bytes(digest)
        except (sqlite3.DatabaseError, ValueError, KeyError, IndexError, TypeError):  # an older or damaged cache
            return None
        return sides[0], sides[1], noted.get("totals")

    def note_folders(self, key: str, inputs: dict[bytes, bytes], outputs: dict[bytes, bytes], totals: Any) -> None:
        """Replace the folder digests (see :meth:`folder_digests`)."""
        self._write_pending()
        self.db.execute("DELETE FROM folders")
        self.db.executemany("INSERT INTO folders VALUES (?, ?, ?)",
                            [(0, f, d) for f, d in inputs.items()] + [(1, f, d) for f, d in outputs.items()])
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('folders', ?)",
                        (json.dumps({"key": key, "totals": totals}),))

    def save(self) -> None:
        """Commit what this run confirmed (a run with nothing to do changes nothing)."""
        self._write_pending()
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.close()


def _rekey(db: sqlite3.Connection) -> None:
    """A stat cache from before KEYS_VERSION (or a new one): its rows keyed the walk's way; rows from before
    their records' sums were kept have none, and vouch for no record (content decides, once)."""
    db.execute("BEGIN")
    if "sums" not in [column[1] for column in db.execute("PRAGMA table_info(stamps)")]:
        db.execute("ALTER TABLE stamps ADD COLUMN sums BLOB")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    rows = db.execute("SELECT * FROM stamps").fetchall() if version == 0 else []
    if rows:
        db.execute("DELETE FROM stamps")
    db.executemany("INSERT INTO stamps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   ((bytes(r[0]).replace(b"/", b"\0"), *r[1:]) for r in rows))
    db.execute(f"PRAGMA user_version = {KEYS_VERSION}")
    db.execute("COMMIT")
