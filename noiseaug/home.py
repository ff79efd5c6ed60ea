"""Where the manifest lives: a local file, or an object spooled locally while the run goes on.

The pipeline always works on a local file (appending, the SQLite index and
stat cache, the sorted rewrite). For a local manifest that file is the
manifest itself. For one on object storage (:class:`RemoteHome`) it is a
spool copy: at the start the manifest, the segments a killed run left and the
stat cache are fetched and put together; as the run goes, the records
appended since the last upload go up as a numbered segment every
``SEGMENT_SECONDS`` (so a killed driver loses at most that much); at the end
the sorted manifest is uploaded whole with one PUT, then the segments are
deleted and the stat cache uploaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .manifest import state_path


class LocalHome:
    """A manifest on the local file system: nothing to fetch or upload."""

    remote = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def pull(self, *, write: bool = True) -> None:
        pass

    def tick(self) -> None:
        pass

    def published(self) -> None:
        pass

    def saved(self) -> None:
        pass

    def close(self) -> None:
        pass


class RemoteHome:
    """A manifest on object storage, spooled in a local temporary folder (see the module's text)."""

    remote = True
    SEGMENT_SECONDS = float(os.environ.get("NOISEAUG_SEGMENT_SECONDS", "5"))  # at most this long of records at risk

    def __init__(self, storage: object, name: str) -> None:
        from .storage.remote import FsspecStorage

        assert isinstance(storage, FsspecStorage)
        self.storage, self.name = storage, name
        self.spool = Path(tempfile.mkdtemp(prefix="noiseaug-manifest-"))
        self.path = self.spool / name
        self.segments = f".{name}.segments"
        self._uploaded = 0  # bytes of the local file already safe on the storage
        self._next_segment = 0
        self._last = time.monotonic()
        self._pulled: tuple[int, int] | None = None
        self._state: bytes | None = None

    def pull(self, *, write: bool = True) -> None:
        """Fetch the manifest, add the segments a killed run left, fetch the stat cache.

        With ``write`` (under OUTPUT's lock), manifest and segments put
        together are uploaded as the manifest, and the segments deleted.
        """
        body = self.storage.get_bytes(self.name) or b""
        found = self.storage.list_prefix(self.segments)
        for rel in found:
            body += self.storage.get_bytes(rel) or b""
        if body:
            self.path.write_bytes(body)
        if found and write:
            self.storage.put_bytes(self.name, body)
            for rel in found:
                self.storage.remove(rel)
        self._stamp_like_remote()
        self._uploaded = len(body)
        self._state = self.storage.get_bytes(state_path(Path(self.name)).name)
        if self._state is not None:
            state_path(self.path).write_bytes(self._state)

    def _stamp_like_remote(self) -> None:
        """Give the spool copy the remote object's stamp as its mtime, so the stat cache can vouch for it."""
        if not self.path.exists():
            self._pulled = None
            return
        stamp = self.storage.fresh_stat(self.name)
        if stamp is not None:
            os.utime(self.path, ns=(stamp[1], stamp[1]))
        st = self.path.stat()
        self._pulled = (st.st_size, st.st_mtime_ns)

    def tick(self) -> None:
        """Upload what was appended since the last segment, once ``SEGMENT_SECONDS`` have passed."""
        if time.monotonic() - self._last >= self.SEGMENT_SECONDS:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._uploaded)
                chunk = fh.read()
        except FileNotFoundError:
            return
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
        st = self.path.stat()
        if (st.st_size, st.st_mtime_ns) != self._pulled:
            self.storage.put_bytes(self.name, self.path.read_bytes())
            for rel in self.storage.list_prefix(self.segments):
                self.storage.remove(rel)
            self._stamp_like_remote()

    def saved(self) -> None:
        """The stat cache goes up when it changed."""
        local = state_path(self.path)
        if local.exists():
            data = local.read_bytes()
            if data != self._state:
                self.storage.put_bytes(local.name, data)
                self._state = data

    def close(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)


def merge_anywhere(manifests: list[str], output: str, *, allow_missing: bool,
                   options: dict[str, Any]) -> tuple[int, list[str]]:
    """``noiseaug merge`` where manifests and the result may be URLs: fetched, merged locally, uploaded."""
    from .config import redact_url
    from .errors import ManifestError
    from .manifest import merge
    from .storage.remote import FsspecStorage, is_url

    if not any(is_url(m) for m in [*manifests, output]):
        return merge([Path(m) for m in manifests], Path(output), allow_missing=allow_missing)
    with tempfile.TemporaryDirectory(prefix="noiseaug-merge-") as spool:
        local = []
        for number, name in enumerate(manifests):
            if not is_url(name):
                local.append(Path(name))
                continue
            folder, _, base = name.rstrip("/").rpartition("/")
            data = FsspecStorage(folder, options).get_bytes(base)
            if data is None:
                raise ManifestError(f"{redact_url(name)}: no such manifest")
            local.append(Path(spool) / f"{number}-{base}")
            local[-1].write_bytes(data)
        result = Path(spool) / "merged.jsonl" if is_url(output) else Path(output)
        shown = ([redact_url(m) for m in manifests], redact_url(output) if is_url(output) else os.path.abspath(output))
        count, notes = merge(local, result, allow_missing=allow_missing, shown=shown)
        if is_url(output):
            folder, _, base = output.rstrip("/").rpartition("/")
            FsspecStorage(folder, options).put_bytes(base, result.read_bytes())
    return count, notes
