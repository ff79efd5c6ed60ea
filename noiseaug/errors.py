"""The exceptions noiseaug raises, one type per kind of failure.

The CLI turns each into a one-line message and an exit code: usage and
configuration errors exit 2 before anything is written, per-file errors become
manifest records, and an interruption exits 130.
"""

from __future__ import annotations


class NoiseaugError(Exception):
    """Base class of every error noiseaug raises on purpose."""

    exit_code = 1


class UsageError(NoiseaugError, ValueError):
    """A refused invocation or configuration; nothing has been written."""

    exit_code = 2


class OptionsChangedError(UsageError):
    """OUTPUT holds a manifest made with other options and --overwrite is off."""


class LockedError(UsageError):
    """Another noiseaug run holds OUTPUT's lock."""


class ManifestError(NoiseaugError):
    """A manifest cannot be read, or names a path outside its roots."""

    exit_code = 2


class MissingShardsError(ManifestError):
    """``merge`` was given the manifests of some shards only (and no ``--allow-missing``)."""

    exit_code = 1


class FileError(NoiseaugError):
    """One input file could not be processed; the run goes on without it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DecodeError(FileError):
    """An input is not a readable file of the format its extension names."""


class UnsupportedError(FileError):
    """An input's layout cannot be kept in its output (SPEC §3's fidelity rule); its reason says what."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(path, f"not supported: {what}")


class TooLargeError(FileError):
    """An input declares more pixels than --max-pixels allows."""


class WriteError(FileError):
    """An output could not be written (disk full, permissions, a bad path).

    ``fatal`` when the next file would fail the same way (a full disk, a
    read-only or forbidden OUTPUT): the run then stops instead of failing
    file after file.
    """

    FATAL_ERRNOS = frozenset({28, 122, 30, 13, 1, 111})  # ENOSPC, EDQUOT, EROFS, EACCES, EPERM, ECONNREFUSED

    def __init__(self, path: str, reason: str, errno: int | None = None) -> None:
        super().__init__(path, reason)
        self.errno = errno

    @property
    def fatal(self) -> bool:
        return self.errno in self.FATAL_ERRNOS


class ClusterError(NoiseaugError):
    """The Dask cluster cannot be reached, or was lost during the run (the manifest keeps what was done)."""


class WorkerStartError(NoiseaugError):
    """Worker processes die before they can take any work (a script without the main guard, a broken install)."""


class StorageError(NoiseaugError):
    """INPUT or OUTPUT's storage cannot be reached or refuses the run's requests (object storage)."""


class IndexFailedError(NoiseaugError):
    """The run's own SQLite files beside the manifest (its index, the stat cache) cannot be written or read: a
    full disk, or something else in their place. The manifest keeps what was done; the next run goes on."""


class Interrupted(NoiseaugError):
    """The run was stopped by SIGINT or SIGTERM after a clean shutdown.

    ``summary`` is what the run had done by then (a ``noiseaug.Summary``);
    ``exit_code`` is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
    """

    exit_code = 130

    def __init__(self, message: str, summary: object = None, exit_code: int = 130) -> None:
        super().__init__(message)
        self.summary = summary
        self.exit_code = exit_code
