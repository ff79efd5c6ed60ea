"""Where the manifest lives: a local file, or an object spooled locally while the run goes on.

The pipeline always works on a local file (appending, the SQLite index and
stat cache, the sorted rewrite). For a local manifest that file is the
manifest itself. For one on object storage (:class:`RemoteHome`) it is a
spool copy: at the start the manifest, the segments a killed run left and the
stat cache are fetched and put together; as the run goes, the records
appended since the last upload go up as a numbered segment every
``NOISEAUG_SEGMENT_SECONDS`` (5 by default, so a killed driver loses at most
that much); at the end the sorted manifest is uploaded whole with one PUT,
then the segments are deleted and the stat cache uploaded. Everything goes
through files, so the driver's memory does not grow with the manifest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .manifest import state_path

if TYPE_CHECKING:
    from .storage.remote import FsspecStorage


class LocalHome:
    """A manifest on the local file system: nothing to fetch or upload."""

    remote = False
    kept = "its appended records are kept and a re-run continues from them"

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        pass

    def pull(self, *, write: bool = True) -> None:
        pass

    def fresh(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def published(self) -> None:
        pass

    def saved(self) -> None:
        pass

    def close(self) -> None:
        pass


def segment_seconds() -> float:
    """How often appended records go up (``NOISEAUG_SEGMENT_SECONDS``, default 5)."""
    try:
        return max(0.0, float(os.environ.get("NOISEAUG_SEGMENT_SECONDS", "5")))
    except ValueError:
        return 5.0


class RemoteHome:
    """A manifest on object storage, spooled in a local temporary folder (see the module's text)."""

    remote = True
    kept = "the segments uploaded so far are kept and a re-run continues from them"

    def __init__(self, storage: FsspecStorage, name: str) -> None:
        self.storage, self.name = storage, name
        sweep_spools()
        self.spool = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))
        self.path = self.spool / name
        self.segments = f".{name}.segments"
        self.every = segment_seconds()
        self._uploaded = 0  # bytes of the local file already safe on the storage
        self._next_segment = 0
        self._fresh = False  # the run starts a new manifest: its first upload replaces the old one whole
        self._last = time.monotonic()
        self._pulled: tuple[int, int] | None = None
        self._state: tuple[int, int] | None = None

    def prepare(self) -> None:
        """Before any work: the manifest's bucket must exist (a run must not find out at its end)."""
        try:
            self.storage.check_writable()
        except UsageError as exc:
            raise UsageError(f"--manifest {exc}") from None

    def pull(self, *, write: bool = True) -> None:
        """Fetch the manifest, add the segments a killed run left, fetch the stat cache.

        With ``write`` (under OUTPUT's lock), manifest and segments put
        together are uploaded as the manifest, and the segments deleted.
        """
        self.storage.fetch(self.name, self.path)
        found = self.storage.list_prefix(self.segments)
        if found:
            with open(self.path, "ab") as fh:
                for rel in found:
                    self.storage.fetch_into(rel, fh)
            if write:
                self.storage.upload(self.path, self.name)
                for rel in found:
                    self.storage.remove(rel)
        self._stamp_like_remote()
        self._uploaded = self.path.stat().st_size if self.path.exists() else 0
        state = state_path(self.path)
        if self.storage.fetch(state.name, state):
            self._state = _stamp(state)

    def _stamp_like_remote(self) -> None:
        """Give the spool copy the remote object's stamp as its mtime, so the stat cache can vouch for it."""
        if not self.path.exists():
            self._pulled = None
            return
        try:
            stamp = self.storage.fresh_stat(self.name)
        except OSError:  # the stamp is only an optimisation: without it the next run checks the manifest itself
            stamp = None
        if stamp is not None:
            os.utime(self.path, ns=(stamp[1], stamp[1]))
        self._pulled = _stamp(self.path)

    def fresh(self) -> None:
        """The run writes a new manifest (the first, or --overwrite): the old one is not continued."""
        self._fresh = True
        self._uploaded = 0

    def tick(self) -> None:
        """Upload what was appended since the last segment, once the segment interval has passed."""
        if time.monotonic() - self._last >= self.every:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self.path.exists():
            return
        if self._fresh:  # replaces the old manifest (and its segments) with this run's start
            self.storage.upload(self.path, self.name)
            for rel in self.storage.list_prefix(self.segments):
                self.storage.remove(rel)
            self._fresh = False
            self._uploaded = self.path.stat().st_size
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._uploaded)
            chunk = fh.read()
        chunk = chunk[:chunk.rfind(b"\n") + 1]
        if not chunk:
            return
        self.storage.put_bytes(f"{self.segments}/{self._next_segment:08d}.jsonl", chunk)
        self._next_segment += 1
        self._uploaded += len(chunk)

    def published(self) -> None:
        """The run's final manifest (rewritten locally) goes up whole; then its segments go."""
        if not self.path.exists():
            return
        if _stamp(self.path) != self._pulled:
            self.storage.upload(self.path, self.name)
            for rel in self.storage.list_prefix(self.segments):
                self.storage.remove(rel)
            self._stamp_like_remote()

    def saved(self) -> None:
        """The stat cache goes up when it changed."""
        local = state_path(self.path)
        if local.exists() and _stamp(local) != self._state:
            self.storage.upload(local, local.name)
            self._state = _stamp(local)

    def close(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)


SPOOL_PREFIX = "noiseaug-manifest-"


def sweep_spools() -> None:
    """Remove the spool folders of runs that were killed (their process, named in the folder, is gone)."""
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{SPOOL_PREFIX}*-*"):
        pid = folder.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
