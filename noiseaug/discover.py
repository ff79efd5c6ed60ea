"""Find the work: a sorted, streaming walk of INPUT with filters and sharding.

The walk never follows symbolic links (to files or directories), so it cannot
leave INPUT or loop. Entries are visited in byte order of their names, so the
job list is the same on every machine whatever the directory listing order.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Iterator, NamedTuple

from .storage import Entry, Storage

IMAGE_EXTENSIONS = frozenset(
    ".png .jpg .jpeg .bmp .tif .tiff .webp .pgm .ppm .pnm".split())
AUDIO_EXTENSIONS = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .caf .w64 .rf64".split())


FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # os.fsdecode's, without its checks
_KINDS = {**dict.fromkeys(IMAGE_EXTENSIONS, "image"), **dict.fromkeys(AUDIO_EXTENSIONS, "audio")}


def kind_of(name: str) -> str:
    """'image', 'audio' or 'other', from a file name's extension (any case), as ``os.path.splitext`` sees it
    (a name that is only dots and a suffix, ``.png``, has none)."""
    dot = name.rfind(".")
    kind = _KINDS.get(name[dot:]) or _KINDS.get(name[dot:].lower())  # most names: one lookup
    if kind is None or dot == -1:
        return "other"
    start = name.rfind("/") + 1
    return kind if dot > start and name[start:dot].lstrip(".") else "other"


class Candidate(NamedTuple):
    """One input file chosen for the run (a tuple: a walk makes one per file)."""

    rel: str  # relative POSIX path; undecodable bytes kept as surrogates (os.fsdecode)
    kind: str
    size: int
    mtime_ns: int


_new_candidate = partial(tuple.__new__, Candidate)  # Candidate(...) without its Python-level __new__: per file


@dataclass
class WalkStats:
    """What the walk saw but did not hand out as work."""

    unsupported: int = 0  # neither image nor audio, and not copied
    filtered: int = 0  # excluded by --kinds, --include or --exclude
    other_shard: int = 0
    links: int = 0  # symbolic links, never followed
    special: int = 0  # sockets, FIFOs, devices
    labels: int = 0  # label maps (palette or 1-bit images), not noised and not copied
    globs_hit: set[str] = field(default_factory=set)  # --include/--exclude patterns that matched a path
    problems: list[str] = field(default_factory=list)  # unreadable directories


@dataclass(frozen=True)
class Selection:
    """Which files a run takes: kinds, globs, --copy-other and the shard."""

    kinds: tuple[str, ...] = ("image", "audio")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    copy_other: bool = False
    shard: tuple[int, int] = (0, 1)

    def wants_kind(self, kind: str) -> bool:
        return kind in self.kinds or (kind == "other" and self.copy_other)

    @cached_property
    def by_kind_alone(self) -> frozenset[str] | None:
        """The kinds taken, when nothing else decides (no globs, one shard): the walk's fast path."""
        if self.include or self.exclude or self.shard[1] != 1:
            return None
        return frozenset(k for k in ("image", "audio", "other") if self.wants_kind(k))

    def matches(self, rel: str, hits: set[str] | None = None) -> bool:
        """Whether the globs take ``rel``; the patterns that match it are added to ``hits``."""
        if not self.include and not self.exclude:
            return True
        included = [g for g in self.include if fnmatch.fnmatchcase(rel, g)]
        excluded = [g for g in self.exclude if fnmatch.fnmatchcase(rel, g)]
        if hits is not None:
            hits.update(included, excluded)
        return (not self.include or bool(included)) and not excluded

    def unmatched(self, hits: set[str]) -> list[str]:
        """The patterns that matched no path, each as the option that gave it."""
        return [f"--include '{g}'" for g in self.include if g not in hits] + \
               [f"--exclude '{g}'" for g in self.exclude if g not in hits]

    def in_shard(self, rel: str) -> bool:
        index, count = self.shard
        return count == 1 or shard_of(os.fsencode(rel), count) == index


def walk(storage: Storage, selection: Selection, stats: WalkStats) -> Iterator[Candidate]:
    """Yield the files under the storage's root that ``selection`` takes, in sorted order.

    Runs lazily, so the pool can start on the first files while the walk goes
    on; counts what it passes over into ``stats``.
    """
    kinds = selection.by_kind_alone
    for entry in storage.walk():
        if entry.kind == "file":
            rel = entry.rel.decode(*FS_ENCODING)
            kind = kind_of(rel)
            if kinds is not None and kind in kinds:  # nothing but the kind decides: most runs, most files
                yield _new_candidate((rel, kind, entry.size, entry.stamp))
            elif (candidate := _candidate(rel, kind, entry, selection, stats)) is not None:
                yield candidate
        elif entry.kind == "link":
            stats.links += 1
        elif entry.kind == "special":
            stats.special += 1
        else:
            stats.problems.append(entry.problem)


def _candidate(rel: str, kind: str, entry: Entry, selection: Selection, stats: WalkStats) -> Candidate | None:
    if selection.by_kind_alone is not None:  # and the kind is not taken
        if kind == "other":
            stats.unsupported += 1
        else:
            stats.filtered += 1
        return None
    matched = selection.matches(rel, stats.globs_hit)
    if kind == "other" and not selection.copy_other:
        stats.unsupported += 1
        return None
    if not selection.wants_kind(kind) or not matched:
        stats.filtered += 1
        return None
    if not selection.in_shard(rel):
        stats.other_shard += 1
        return None
    return _new_candidate((rel, kind, entry.size, entry.stamp))


def shard_of(relpath: bytes, count: int) -> int:
    """Which of ``count`` shards a relative path belongs to; stable everywhere."""
    digest = hashlib.sha256(b"noiseaug-shard\0" + relpath).digest()
    return int.from_bytes(digest[:8], "little") % count
