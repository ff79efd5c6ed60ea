"""Where bytes live: the seam between the pipeline and a file system.

What the pipeline does with bytes, and nothing more: list a tree with sizes
and change stamps, open and read without following links, hash, write an
output so that it appears whole or not at all, remove a file it recorded,
take and release OUTPUT's lock, and sweep what a killed run left behind.
The local file system (:class:`~noiseaug.storage.local.LocalStorage`: no-follow
opens, temporary file + ``os.replace``, ``flock``) is one implementation;
:class:`~noiseaug.storage.remote.FsspecStorage` (object storage and other
fsspec file systems: one PUT per output, a leased lock) is the other,
imported only for URLs.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Callable, ContextManager, Iterator, Protocol

from .local import Entry, LocalStorage, OutputLock


class Storage(Protocol):
    root: str

    def prepare(self) -> None: ...  # before OUTPUT's lock: create the folder, or check the bucket

    def walk(self) -> Iterator[Entry]: ...

    def read(self, rel: str) -> bytes: ...

    def open(self, rel: str) -> BinaryIO: ...

    def hash(self, rel: str) -> tuple[str, int]: ...

    def stat(self, rel: str) -> tuple[int, int] | None: ...

    def folder_stats(self, folder: bytes) -> Any: ...  # (size, stamp) by file name: anything with a dict's get

    def write(self, rel: str) -> ContextManager[BinaryIO]: ...

    def put(self, rel: str, data: Any, before_rename: Callable[[], None]) -> tuple[int, int] | None: ...

    def remove(self, rel: str) -> None: ...

    def lock(self, name: str) -> OutputLock: ...  # or an ObjectLock: __enter__, dirty, release(clean)

    def sweep(self, tag: str, folder: str | None = None, pid: int | None = None) -> int: ...

    def forget(self) -> None: ...


__all__ = ["Entry", "LocalStorage", "OutputLock", "Storage"]
