"""Safe file system access: no-follow reads, atomic writes, OUTPUT's lock.

Outputs are written to a temporary file in their destination folder and
renamed into place, so a crash never leaves a partial file under a final name;
a rename replaces a symbolic link at the destination instead of writing
through it. Folders under OUTPUT are created one component at a time and
refused if any component is a symbolic link, so nothing is written outside
OUTPUT even if someone planted a link there.
"""

from __future__ import annotations

import array
import bisect
import errno
import hashlib
import itertools
import os
import secrets
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple, NoReturn, Sequence

from ..errors import LockedError, UsageError, WriteError

try:
    from .. import _listing
except ImportError:  # not built (no compiler at install time): list_folder does the same in Python
    _listing = None
if getattr(_listing, "VERSION", None) != 3:  # a build left over from older sources
    _listing = None

TMP_SUFFIX = ".noiseaug-tmp"
HASH_CHUNK = 1 << 20
READ_CHUNK = 1 << 30  # os.read's largest read is just under 2 GiB on Linux
_temp_tag = "run"  # names this process's temporary files; one tag per lock (shard)


def set_temp_tag(tag: str) -> None:
    """Tag the temporary files this process writes, so that a sweep after a
    crash removes only its own shard's leftovers, never another shard's live ones."""
    global _temp_tag
    _temp_tag = tag


def open_no_follow(path: str | os.PathLike, flags: int, mode: str) -> IO[Any]:
    """Open a file (text unless ``mode`` says binary) that must not be a symbolic link.

    A planted link would lead outside OUTPUT.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WriteError(os.fsdecode(path), "is a symbolic link; refusing to write through it", exc.errno) from None
        raise
    return os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8")


def sweep_temporaries(root: str, tag: str) -> int:
    """Remove the temporary files a killed run with this tag left anywhere under ``root``."""
    removed = 0
    for folder, _, _ in os.walk(root):
        removed += sweep_folder(folder, tag)
    return removed


def sweep_folder(folder: str, tag: str, pid: int | None = None) -> int:
    """Remove this tag's temporary files in one folder (only ``pid``'s, if given)."""
    middle = f".{tag}." if pid is None else f".{tag}.{pid}{TMP_SUFFIX}"
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if name.startswith(".") and name.endswith(TMP_SUFFIX) and middle in name:
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed




def read_input(path: str | bytes) -> bytes:
    """The bytes of a regular file, refusing symbolic links and special files (plain reads: no file object)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        parts, want = [], st.st_size + 1  # one more byte than its size: a file that grew is read whole too
        while chunk := os.read(fd, asked := min(want, READ_CHUNK)):
            parts.append(chunk)
            if len(chunk) == st.st_size < asked:  # all of it, and nothing after it: no read to find the end
                break
            want = max(want - len(chunk), 1 << 16)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def ensure_dir(root: str, rel_dir: str, known: set[str]) -> str:
    """Create ``root/rel_dir`` component by component; refuse symbolic links.

    ``known`` caches folders already checked by this process.
    """
    path, parts = root, [p for p in rel_dir.split("/") if p]
    for depth, part in enumerate(parts, 1):
        path = os.path.join(path, part)
        if path in known:
            continue
        try:
            os.mkdir(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise WriteError(path, f"{'/'.join(parts[:depth])} in OUTPUT is a file or a link, not a folder: "
                                       "refusing to write through it") from None
        except OSError as exc:
            raise WriteError(path, f"cannot create folder: {exc.strerror}", exc.errno) from exc
        known.add(path)
    return path


def open_input(path: str | bytes) -> BinaryIO:
    """A regular file opened for reading, refusing symbolic links and special files."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def hash_stream(fh: BinaryIO) -> tuple[str, int]:
    """SHA-256 and size of an open file from its start, in bounded memory."""
    fh.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def hash_file(path: str | bytes) -> tuple[str, int]:
    """SHA-256 and size of a regular file (no links followed), in bounded memory."""
    with open_input(path) as fh:
        return hash_stream(fh)


@contextmanager
def atomic_file(path: str, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A new file that appears at ``path`` only if the ``with`` body succeeds.

    It is a temporary file in the same folder, renamed into place at the end
    (replacing a file or link there, never following it) and removed on any
    failure. OS errors become :class:`WriteError`.
    """
    tmp, fd = _temporary(path)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            if durable:  # the data, then the rename, on disk before this returns (a manifest's rewrite)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_folder(os.path.dirname(path) or ".")
    except BaseException as exc:
        _discard(tmp, path, exc)


def _temporary(path: str) -> tuple[str, int]:
    """A new temporary file beside ``path``, named for the sweep (tag, pid): its name and descriptor.

    Names differ by a counter within a process (the pid tells processes apart) after a random part drawn once
    per process; a name left by a killed process of the same pid is stepped over."""
    folder = os.path.dirname(path) or "."
    pid = os.getpid()
    if _names[0] != pid:
        _names[:] = [pid, secrets.token_hex(4), itertools.count()]
    for _ in range(100):
        tmp = os.path.join(folder, f".{_names[1]}{next(_names[2]):x}.{_temp_tag}.{pid}{TMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise WriteError(path, f"cannot write: {exc.strerror}", exc.errno) from exc
    raise WriteError(path, "cannot write: no free name for a temporary file", errno.EEXIST)


_names: list[Any] = [0, "", None]  # this process's (pid, random part, counter) of temporary names


def _discard(tmp: str, path: str, exc: BaseException) -> NoReturn:
    """Remove the temporary file of a write that failed; raise again, an OS error as :class:`WriteError`."""
    try:
        os.unlink(tmp)
    except OSError:
        pass
    if isinstance(exc, OSError):
        raise WriteError(path, f"cannot write: {exc.strerror or exc}", exc.errno) from exc
    raise exc


def put_file(path: str, data: Any, before_rename: Callable[[], None]) -> tuple[int, int]:
    """``atomic_file`` for bytes already in memory, with plain system calls (a small file's write costs
    more in file objects and context managers than in the kernel); returns the file's (size, mtime)."""
    tmp, fd = _temporary(path)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            st = os.fstat(fd)  # the rename keeps the mtime: no stat of the output afterwards
        finally:
            os.close(fd)
        before_rename()
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp, path, exc)
    return st.st_size, st.st_mtime_ns


def atomic_write(path: str, data: bytes | memoryview, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, durable=durable) as fh:
        fh.write(data)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputLock:
    """An exclusive advisory lock on a file in OUTPUT, held for a whole run.

    ``flock`` locks vanish with the process that held them, so a lock left by
    a killed run is simply taken over by the next one. The file says
    ``running`` while a run holds it and ``clean`` once it ended normally, so
    the next run knows whether temporary files may have been left behind
    (``dirty``).
    """

    def __init__(self, path: Path, what: str | None = None) -> None:
        self.path = path
        self.what = what  # what the lock keeps for its run, in the refusal: OUTPUT (its folder) by default
        self.note = ""  # said in the file beside the pid while the run holds it (which job: see live_locks)
        self.dirty = False
        self._fh: IO[str] | None = None

    def __enter__(self) -> "OutputLock":

        fh = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, "r+")
        try:
            _flock_soon(fh)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip().split(", job ")[0] or "another process"
            fh.close()
            what = self.what or f"{os.fsdecode(self.path.parent)}; wait for it or pick another OUTPUT"
            raise LockedError(f"another noiseaug run ({holder}) is writing to {what}") from None
        fh.seek(0)
        self.dirty = fh.read().strip() not in ("", "clean")
        self._rewrite(fh, f"running, pid {os.getpid()}" + (f", {self.note}" if self.note else ""))
        self._fh = fh
        return self

    @staticmethod
    def _rewrite(fh: IO[str], text: str) -> None:
        fh.seek(0)
        fh.truncate()
        fh.write(text + "\n")
        fh.flush()

    def release(self, clean: bool) -> None:
        if self._fh is not None:
            if clean:
                self._rewrite(self._fh, "clean")
            self._fh.close()
            self._fh = None

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.release(clean=exc_type is None)


def _flock_soon(fh: IO[str], tries: int = 6) -> None:
    """An exclusive lock on ``fh``, or BlockingIOError. Another run looking whether this lock is held (see
    :func:`live_locks`) holds it shared for an instant: a few tries 20 ms apart see past that."""
    import fcntl

    for attempt in range(tries):
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.02)


def live_locks(folder: str, names: list[str], wait: float = 0.5) -> list[tuple[str, str]]:
    """The locks among ``names`` in ``folder`` that another process holds now, with what their files say. A
    lock just taken may not say its note yet: read again for up to ``wait`` seconds."""
    import fcntl

    held = []
    for name in names:
        try:
            fh = open_no_follow(Path(folder) / name, os.O_RDONLY, "r")
        except OSError:
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # nobody holds it (the shared lock goes with the file's closing)
            except BlockingIOError:
                pass
            deadline = time.monotonic() + wait
            while ", job " not in (text := _read_from_start(fh)) and time.monotonic() < deadline:
                time.sleep(0.02)
            held.append((name, text))
    return held


def _read_from_start(fh: IO[str]) -> str:
    fh.seek(0)
    return fh.read().strip()


class Entry(NamedTuple):
    """One name found by :meth:`LocalStorage.walk` (a tuple: a walk makes one per file)."""

    rel: bytes  # relative POSIX path, as bytes (any file name)
    kind: str  # "file", "link", "special" or "problem"
    size: int = 0
    stamp: int = 0  # change stamp: mtime in ns
    problem: str = ""


_new_entry = partial(tuple.__new__, Entry)  # Entry(...) without its Python-level __new__: per file


@dataclass
class LocalStorage:
    """A folder on the local file system, as the pipeline uses INPUT and OUTPUT (:class:`~noiseaug.storage.Storage`)."""

    root: str
    _known: set[str] = field(default_factory=set, repr=False, compare=False)  # folders known to exist
    _linked: dict[bytes, bool] = field(default_factory=dict, repr=False, compare=False)  # see _behind_link
    digests: dict[bytes, bytes] | None = field(default=None, repr=False, compare=False)  # see walk()

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def prepare(self) -> None:
        """Before OUTPUT's lock: the folder exists (with its parents)."""
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create OUTPUT {self.root}: {exc.strerror}") from None

    def walk(self) -> Iterator[Entry]:
        """Every name under the root, sorted, without following links; files with size and change stamp.

        With ``digests`` a dict, each folder's :func:`listing_digest` goes there as the walk lists it.
        """
        yield from _walk(os.fsencode(self.root), b"", self.digests)

    def folder_digests(self) -> Iterator[tuple[bytes, bytes | None]]:
        """(folder, :func:`listing_digest`) of every folder under the root, the root first, as a walk lists
        them (None for one that cannot be listed): the quick check by folders, without a tuple per file."""
        root = os.fsencode(self.root)
        folders = [b""]
        while folders:
            prefix = folders.pop()
            try:
                listing = list_folder(os.path.join(root, prefix) if prefix else root)
            except OSError:
                yield prefix, None
                continue
            yield prefix, listing_digest(listing)
            subfolders = [name for name, kind in zip(listing.names, listing.kinds) if kind == DIR]
            folders.extend(reversed([prefix + b"/" + name for name in subfolders] if prefix else subfolders))

    def read(self, rel: str) -> bytes:
        return read_input(self._unlinked(rel))

    def open(self, rel: str) -> BinaryIO:
        return open_input(self._unlinked(rel))

    def hash(self, rel: str) -> tuple[str, int]:
        return hash_file(self._unlinked(rel))

    def _unlinked(self, rel: str) -> str:
        """The path of a file under the root, refused (as a link is) when a folder on the way is a link."""
        if self._behind_link(os.fsencode(os.path.dirname(rel))):
            raise OSError(errno.ELOOP, "reached through a symbolic link to a folder (not followed)")
        return self.path(rel)

    def stat(self, rel: str) -> tuple[int, int] | None:
        """(size, change stamp) of a regular file, None for anything else or nothing (or a file reached through
        a linked folder: see :meth:`_behind_link`)."""
        if self._behind_link(os.fsencode(os.path.dirname(rel))):
            return None
        return stamp(os.fsencode(self.path(rel)))

    def folder_stats(self, folder: bytes) -> FolderStamps | dict[bytes, tuple[int, int]]:
        """(size, change stamp) of the regular files in one folder (a relative path), by name: each looked up
        when asked for, so that no listing of a large folder is held (none behind a linked folder)."""
        if self._behind_link(folder):
            return {}
        root = os.fsencode(self.root)
        return FolderStamps(os.path.join(root, folder, b"") if folder else os.path.join(root, b""))

    def _behind_link(self, folder: bytes) -> bool:
        """Whether a folder under the root (a relative path) is reached through a symbolic link: what is there
        is not under the root (a walk does not follow links, a write refuses them), so it is no file of it.
        One ``realpath`` per folder and run."""
        linked = self._linked.get(folder)
        if linked is None:
            root = os.fsencode(self.root)
            real = os.path.realpath(os.path.join(root, folder))
            linked = self._linked[folder] = bool(folder) and real != os.path.join(os.path.realpath(root), folder)
        return linked

    def folder_digest(self, folder: bytes, leave_out: Iterable[bytes] = ()) -> bytes | None:
        """The :func:`listing_digest` of one folder (a relative path) without the names ``leave_out``; None if it
        cannot be listed."""
        return self.listed_folder(folder, leave_out)[0]

    def listed_folder(self, folder: bytes, leave_out: Iterable[bytes] = ()) -> tuple[bytes | None, ListedStamps]:
        """One listing of a folder, for both its digest (see :meth:`folder_digest`) and its files' stamps (as
        :meth:`folder_stats` gives them, without a system call per name); (None, no files) if it cannot be
        listed."""
        root = os.fsencode(self.root)
        try:
            if self._behind_link(folder):
                raise OSError(errno.ELOOP, "a linked folder")
            listing = list_folder(os.path.join(root, folder) if folder else root)
        except OSError:
            return None, ListedStamps(Listing([], b"", (), ()))
        return listing_digest(listing, leave_out), ListedStamps(listing)

    @contextmanager
    def write(self, rel: str) -> Iterator[BinaryIO]:
        """A new file that appears at ``rel`` whole, or not at all (temporary file + rename)."""
        folder = ensure_dir(self.root, os.path.dirname(rel), self._known)
        with atomic_file(os.path.join(folder, os.path.basename(rel))) as fh:
            yield fh

    def put(self, rel: str, data: Any, before_rename: Callable[[], None]) -> tuple[int, int] | None:
        """Bytes in memory as the file ``rel`` (see :meth:`write`); its (size, stamp) as written."""
        folder = ensure_dir(self.root, os.path.dirname(rel), self._known)
        return put_file(os.path.join(folder, os.path.basename(rel)), data, before_rename)

    def remove(self, rel: str) -> None:
        """Remove an output; the folders it leaves empty go too (up to the root): they came with it."""
        os.unlink(self.path(rel))
        folder = os.path.dirname(rel)
        while folder:
            try:
                os.rmdir(self.path(folder))
            except OSError:  # not empty (or not ours to remove): the folders above are not empty either
                break
            self._known.clear()
            folder = os.path.dirname(folder)

    def lock(self, name: str) -> OutputLock:
        return OutputLock(Path(self.root) / name)

    def sweep(self, tag: str, folder: str | None = None, pid: int | None = None) -> int:
        """Remove temporary files a killed run (``tag``) left: everywhere, or in one folder (only ``pid``'s)."""
        if folder is None:
            return sweep_temporaries(self.root, tag)
        return sweep_folder(self.path(folder), tag, pid)

    def forget(self) -> None:
        """Forget the folders known to exist (a new run may find them deleted), and which were links."""
        self._known.clear()
        self._linked.clear()


def _walk(root: bytes, prefix: bytes, digests: dict[bytes, bytes] | None = None) -> Iterator[Entry]:
    path = os.path.join(root, prefix) if prefix else root
    try:
        listing = list_folder(path)  # a folder of a million files is listed whole: 75 bytes an entry
    except OSError as exc:
        yield Entry(prefix, "problem", problem=f"{os.fsdecode(path)}: cannot list directory: {exc.strerror}")
        return
    if digests is not None:
        digests[prefix] = listing_digest(listing)
    names, kinds, sizes, stamps = listing
    for i, name in enumerate(names):
        rel = prefix + b"/" + name if prefix else name
        kind = kinds[i]
        if kind == FILE:
            yield _new_entry((rel, "file", sizes[i], stamps[i], ""))
        elif kind == DIR:
            yield from _walk(root, rel, digests)
        elif kind == PROBLEM:
            yield Entry(rel, "problem", problem=f"{os.fsdecode(os.path.join(path, name))}: {os.strerror(sizes[i])}")
        else:
            yield Entry(rel, KIND_NAMES[kind])


class FolderStamps:
    """A folder's files' (size, mtime_ns), looked up one name at a time (``get``, as a dict's)."""

    def __init__(self, base: bytes) -> None:
        self.base = base  # the folder's path, ending with a separator

    def get(self, name: bytes) -> tuple[int, int] | None:
        return stamp(self.base + name)


class ListedStamps:
    """A folder's files' (size, mtime_ns) from its listing, looked up by name (``get``, as a dict's): names are
    found by bisection in the listing's sorted names, so nothing more than the listing is held."""

    def __init__(self, listing: Listing) -> None:
        self.listing = listing

    def get(self, name: bytes) -> tuple[int, int] | None:
        names, kinds, sizes, stamps = self.listing
        i = bisect.bisect_left(names, name)
        if i == len(names) or names[i] != name or kinds[i] != FILE:
            return None
        return sizes[i], stamps[i]


def stamp(path: bytes) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular file, without following a link; None for anything else or nothing."""
    if _listing is not None:
        return _listing.stamp(path)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


class Listing(NamedTuple):
    """One folder's entries sorted by name, packed (a folder of a million files is held whole while walked)."""

    names: list[bytes]
    kinds: bytes  # a byte each: FILE, DIR, LINK, SPECIAL, or PROBLEM (could not be examined)
    sizes: Sequence[int]  # of regular files, else 0 (a PROBLEM's errno)
    stamps: Sequence[int]  # mtime_ns of regular files, else 0


FILE, DIR, LINK, SPECIAL, PROBLEM = b"fdls!"
KIND_NAMES = {FILE: "file", DIR: "dir", LINK: "link", SPECIAL: "special"}


def listing_digest(listing: Listing, leave_out: Iterable[bytes] = ()) -> bytes:
    """What identifies a folder's listing (names, kinds, sizes and stamps), without the names ``leave_out``."""
    names, kinds, sizes, stamps = listing
    skip = set(leave_out)
    if skip:
        kept = [i for i, name in enumerate(names) if name not in skip]
        names, kinds = [names[i] for i in kept], bytes(kinds[i] for i in kept)
        sizes, stamps = array.array("q", (sizes[i] for i in kept)), array.array("q", (stamps[i] for i in kept))
    digest = hashlib.blake2b(len(names).to_bytes(8, "little"), digest_size=16)
    for part in (b"\0".join(names), kinds, bytes(sizes), bytes(stamps)):
        digest.update(part)
    return digest.digest()


def list_folder(path: bytes) -> Listing:
    """One folder's entries sorted by name, without following links (see :class:`Listing`).

    Compiled (``_listing.c``) where it was built; the same in Python otherwise.
    """
    if _listing is not None:
        names, kinds, sizes, stamps = _listing.folder(path)
        return Listing(names, kinds, memoryview(sizes).cast("q"), memoryview(stamps).cast("q"))
    with os.scandir(path) as it:
        found = sorted((entry.name, *_kind(entry)) for entry in it)
    base = path if path.endswith(b"/") else path + b"/"
    rows = [_stamped(base, name) if kind == FILE else (name, kind, error, 0) for name, kind, error in found]
    return Listing([r[0] for r in rows], bytes(r[1] for r in rows), array.array("q", (r[2] for r in rows)),
                   array.array("q", (r[3] for r in rows)))


def _stamped(base: bytes, name: bytes) -> tuple[bytes, int, int, int]:
    try:
        st = os.lstat(base + name)
    except OSError as exc:
        return name, PROBLEM, exc.errno or 0, 0
    if stat.S_ISREG(st.st_mode):
        return name, FILE, st.st_size, st.st_mtime_ns
    return name, DIR if stat.S_ISDIR(st.st_mode) else LINK if stat.S_ISLNK(st.st_mode) else SPECIAL, 0, 0


def _kind(entry: os.DirEntry) -> tuple[int, int]:
    """(kind, errno): from the listing where it says (else one lstat); PROBLEM and the errno on an error."""
    try:
        if entry.is_symlink():
            return LINK, 0
        if entry.is_dir(follow_symlinks=False):
            return DIR, 0
        return (FILE if entry.is_file(follow_symlinks=False) else SPECIAL), 0
    except OSError as exc:
        return PROBLEM, exc.errno or 0
