"""Object storage and other fsspec file systems (``s3://``, ``gs://``, ``az://``, ``file://``, ``memory://``).

What the pipeline needs from a bucket, with object storage's own guarantees:

- an output appears with one complete PUT (a large one as a multipart upload,
  which stays invisible until it completes); never a partial object under
  its final key. A run killed mid-upload leaves an incomplete multipart
  upload, which the next run's sweep aborts;
- sizes and change stamps (the ETag, or the backend's own version stamp)
  come from one listing of the tree, not a request per file;
- keys with empty, ``.`` or ``..`` segments are refused, like unsafe paths;
- the lock is an object created only if absent and renewed as a lease
  (:class:`ObjectLock`).

fsspec and the backend's package are imported only here, and only for URLs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..config import redact_url
from ..errors import LockedError, StorageError, UsageError, WriteError
from .local import Entry, hash_stream

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
          "adl": "azure"}
CANONICAL = ("s3", "gs", "az", "file", "memory")  # as the error names them
SCHEMES = (*EXTRAS, "file", "local", "memory")  # object storage, and local files or memory through fsspec
SPOOL_BYTES = 64 << 20  # an output larger than this is spooled to a local temporary file, not held in memory
STAMP_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "last_modified", "created")


def is_url(text: object) -> bool:
    """Whether INPUT, OUTPUT or --manifest names a URL (``scheme://``) rather than a local path."""
    return isinstance(text, str) and "://" in text and text.split("://", 1)[0].isidentifier()


def filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec file system of a URL and the path inside it; a one-line error naming a missing extra."""
    check_url(url)
    remember_secrets(options)
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{redact_url(url)}: URLs need fsspec: pip install 'noiseaug[s3]' "
                         "(or [gcs], [azure])") from None
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise UsageError(f"{redact_url(url)}: {scheme}:// is not a storage noiseaug reads and writes "
                         f"(it takes {', '.join(s + '://' for s in SCHEMES if s in CANONICAL)} and local paths)")
    url = scheme + url[len(scheme):]  # S3://… is s3://… (fsspec knows schemes in lower case only)
    if scheme in ("file", "local"):
        options = {"auto_mkdir": True, **options}  # folders appear as objects' keys do
    if scheme in ("s3", "s3a"):
        options = _pinned_endpoint(options)
    try:
        fs, path = _s3(url, options) if scheme in ("s3", "s3a") else fsspec.core.url_to_fs(url, **options)
    except ImportError:
        extra = EXTRAS.get(scheme, scheme)
        raise UsageError(f"{redact_url(url)}: {scheme}:// needs its file system: pip install "
                         f"'noiseaug[{extra}]'") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc) or "not known" in str(exc):
            raise UsageError(f"{redact_url(url)}: unknown URL scheme {scheme}://") from None
        raise UsageError(f"{redact_url(url)}: {_first_line(exc)}") from None
    except TypeError as exc:
        raise UsageError(f"--storage-option not taken by {scheme}://: {_first_line(exc)}") from None
    return fs, path.rstrip("/")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name's undecodable bytes, kept as surrogates
        return False
    return True


def _s3(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """An s3:// URL's file system (s3fs's, whose uploads cannot wait for ever: see storage/s3) and path."""
    from .s3 import S3FileSystem

    return S3FileSystem(**options), S3FileSystem._strip_protocol(url)


def _pinned_endpoint(options: dict[str, Any]) -> dict[str, Any]:
    """The options with this process's S3 endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``) written in.

    A Dask worker gets the file system with its options, and would otherwise
    take the endpoint from its own environment: another one than the driver
    checked, or AWS itself for a worker that has credentials and no endpoint.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint or "endpoint_url" in options or "endpoint_url" in (options.get("client_kwargs") or {}):
        return options
    return {**options, "endpoint_url": endpoint}


def check_url(url: str) -> None:
    """Refuse a root URL that would leak a secret or make keys a local path could not be.

    Credentials (``user@`` or ``user:password@``, a '/' in the password too),
    a query string or fragment (s3fs would take them into every key name),
    and empty, ``.`` or ``..`` segments, which INPUT refuses in keys too.
    """
    scheme, _, rest = url.partition("://")
    bucket_user = scheme.lower() in BUCKET_SCHEMES and "@" in rest.split("/", 1)[0]  # abfs://container@account is not
    if bucket_user or re.match(r"^[A-Za-z][\w+.-]*://[^@]*:[^@]*@", url):
        raise UsageError(f"{redact_url(url)}: credentials in a URL are not taken (they would travel to every "
                         "worker and into logs); give them in the environment or with --storage-option")
    if "?" in url or "#" in url:
        raise UsageError(f"{redact_url(url).split('#')[0]}: a query string or fragment ('?', '#') in a URL is not "
                         "taken (it would become part of every key); give options with --storage-option")
    rest = rest[:-1] if rest.endswith("/") else rest  # one trailing slash names the same folder; two do not
    if scheme.lower() in ("file", "local"):
        rest = rest.lstrip("/")
    if rest and unsafe_key(rest):
        raise UsageError(f"{redact_url(url)}: a URL with an empty, '.' or '..' segment is refused "
                         "(its keys could not be files anywhere else)")


BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs")  # whose URLs name a bucket right after '://', never a user

_SECRETS: set[str] = set()  # --storage-option values seen in this process: kept out of every message


def remember_secrets(options: Any) -> None:
    """Note the string values of storage options (of nested ones too), to scrub them from messages."""
    if isinstance(options, dict):
        for value in options.values():
            remember_secrets(value)
    elif isinstance(options, (list, tuple)):
        for value in options:
            remember_secrets(value)
    elif isinstance(options, str) and len(options) >= 4 and options.lower() not in ("true", "false", "none"):
        # the value, as a backend may quote it (re-encoded for a URL) or in part (a host it could not parse)
        _SECRETS.update((options, options.replace("%", "%25")))
        _SECRETS.update(part for part in re.split(r"[\s/:\[\]@?#%=&'\"]+", options) if len(part) >= 6)


def scrub(text: str) -> str:
    """A message without the values of storage options (an endpoint or a token echoed by a backend)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def split_object_url(url: str) -> tuple[str, str]:
    """A URL naming one object (a manifest) as its folder URL and its name, checked whole first."""
    check_url(url)
    folder, _, name = url.rstrip("/").rpartition("/")
    return folder, name


def unsafe_key(rel: str) -> bool:
    """A key that a local path could not be, or that climbs: empty, ``.`` or ``..`` segments."""
    return any(part in ("", ".", "..") for part in rel.split("/")) or "\0" in rel


def stamp_of(info: dict[str, Any]) -> int:
    """A change stamp for an object: its ETag (or the backend's version stamp) folded to an integer."""
    for key in STAMP_KEYS:
        value = info.get(key)
        if value is not None:
            return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=7).digest(), "big")
    return 0


def _first_line(exc: BaseException) -> str:
    """An exception's reason on one line, secret-free: botocore's "Parameter validation failed:" says why on the
    next line, so lines are joined."""
    text = " ".join(line.strip() for line in scrub(str(exc)).strip().splitlines() if line.strip())
    return redact_url(text)[:300] if text else type(exc).__name__


USAGE_FAILURES = ("ParamValidationError", "PartialCredentialsError", "NoCredentialsError", "InvalidBucketName")


def _failure(exc: BaseException, what: str, *, start: bool = False) -> Exception:
    """A backend's exception as noiseaug's: a usage error (an option the file system does not take, an invalid
    bucket name, incomplete credentials; at the ``start`` of a run, before any output, credentials that are
    refused too), or a storage error (unreachable, refused), with ``what`` first."""
    name = type(exc).__name__
    if isinstance(exc, TypeError) and "unexpected keyword" in str(exc):
        return UsageError(f"--storage-option not taken by the file system: {_first_line(exc)}")
    if name in USAGE_FAILURES or "Parameter validation failed" in str(exc) or "Invalid bucket name" in str(exc) \
            or (start and denied(exc)):
        return UsageError(f"{what}: {_first_line(exc)}")
    if start and _misconfigured(exc):  # a client its options cannot make
        return UsageError(f"{what}: {_first_line(exc)} (check --storage-option and the backend's environment)")
    if unreachable(exc):
        return StorageError(f"{what}: cannot reach the storage: {_first_line(exc)}")
    return StorageError(f"{what}: {_first_line(exc)}")


def _misconfigured(exc: BaseException) -> bool:
    """An error of the options, not of the storage: a value of the wrong type (also when the HTTP client
    met it), an endpoint that is not a URL."""
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, (TypeError, ValueError, AttributeError)) or type(exc).__name__ == "EndpointResolutionError" \
        or (type(exc).__name__ == "HTTPClientError" and isinstance(cause, (TypeError, ValueError, AttributeError)))


DENIALS = ("AccessDenied", "Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
           "ExpiredToken", "AuthorizationHeaderMalformed")


def denied(exc: BaseException) -> bool:
    """Whether the storage refused the credentials or their rights (the user's to fix, not a passing failure)."""
    return isinstance(exc, PermissionError) or any(word in str(exc) or word in type(exc).__name__
                                                   for word in DENIALS)


def unreachable(exc: BaseException) -> bool:
    """Whether an error says the endpoint cannot be reached at all (the next request would fail the same way)."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if name in ("EndpointConnectionError", "ClientConnectorError", "ConnectTimeoutError", "ConnectionRefusedError",
                    "ServerDisconnectedError", "ConnectionClosedError", "ConnectTimeout", "ReadTimeoutError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


NO_CREDENTIALS = "no credentials for the storage in this process (a Dask worker needs them in its own environment, " \
                 "or give them with --storage-option)"


def no_credentials(exc: BaseException) -> bool:
    """Whether the backend found no credentials at all (every further request would fail the same way)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "NoCredentialsError" or "Unable to locate credentials" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Unreachable(OSError):
    """The storage's endpoint cannot be reached: every further request would fail the same way."""

    def __init__(self, text: str) -> None:
        super().__init__(errno.ECONNREFUSED, text)


class _FolderOf:
    """One folder of a listing: (size, stamp) by name, looked up one name at a time (``get``, as a dict's)."""

    def __init__(self, listing: dict[str, tuple[int, int]], prefix: str) -> None:
        self.listing, self.prefix = listing, prefix

    def get(self, name: bytes) -> tuple[int, int] | None:
        return self.listing.get(self.prefix + os.fsdecode(name))


class FsspecStorage:
    """A prefix of an fsspec file system, as the pipeline uses INPUT and OUTPUT (:class:`~noiseaug.storage.Storage`)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = url.rstrip("/")
        self.root = redact_url(self.url)  # what records and messages show
        self.fs, self.base = filesystem(url, options)
        if not self.base.strip("/"):
            raise UsageError(f"{redact_url(url)}: names no bucket (or folder)")
        self._listing: dict[str, tuple[int, int]] | None = None
        self._written: dict[str, tuple[int, int]] = {}
        self._lister = True  # the driver lists the tree once; a worker asks per object instead

    def __getstate__(self) -> dict[str, Any]:  # a worker gets the file system, not this process's caches
        state = dict(self.__dict__)
        state["_listing"], state["_written"], state["_lister"] = None, {}, False
        state["_secrets"] = sorted(_SECRETS)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:  # a worker's messages are scrubbed as the driver's
        _SECRETS.update(state.pop("_secrets", ()))
        self.__dict__.update(state)

    def prepare(self) -> None:
        """Before OUTPUT's lock: the bucket must exist (noiseaug creates no buckets); prefixes need no creating."""
        self.check_writable()

    def check_writable(self) -> None:
        """OUTPUT's bucket must exist (noiseaug creates no buckets); asked directly, so that an unreachable
        endpoint, a refused option or missing credentials are said as such."""
        top = self.base.split("/", 1)[0]
        if not hasattr(self.fs, "call_s3"):
            return
        try:
            self.fs.call_s3("head_bucket", Bucket=top)
        except FileNotFoundError:
            raise UsageError(f"{self.root}: its bucket does not exist (noiseaug creates no buckets)") from None
        except PermissionError as exc:
            raise UsageError(f"{self.root}: access to its bucket is denied: {_first_line(exc)}") from None
        except Exception as exc:
            raise _failure(exc, self.root, start=True) from None

    def fresh_stat(self, rel: str) -> tuple[int, int] | None:
        """(size, stamp) asked of the storage now, past every cache; None when there is no such object."""
        self.fs.invalidate_cache(self.full(rel))
        try:
            return self._call(self._info_stat, self.full(rel))
        except FileNotFoundError:
            return None

    def full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def rel_of(self, path: str) -> str:
        return path[len(self.base) + 1:] if path.startswith(self.base + "/") else path

    def exists(self) -> bool:
        """Whether the prefix holds anything (asked directly: s3fs's own ``exists`` says False for any error).
        Asked as a run starts: refused credentials are the user's to fix (exit 2)."""
        try:
            return bool(self.fs.ls(self.base, detail=False))
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise _failure(exc, self.root, start=True) from None

    def walk(self) -> Iterator[Entry]:
        """Every object under the prefix, in the order a local walk gives (by path components), from one listing."""
        listing = self._list()
        for rel in sorted(listing, key=lambda r: [os.fsencode(p) for p in r.split("/")]):
            if unsafe_key(rel):
                yield Entry(os.fsencode(rel), "problem",
                            problem=f"{self.root}/{rel}: refusing a key with an empty, '.' or '..' segment")
                continue
            size, stamp = listing[rel]
            yield Entry(os.fsencode(rel), "file", size, stamp)

    def _list(self) -> dict[str, tuple[int, int]]:
        if self._listing is None:
            try:
                found = self.fs.find(self.base, detail=True, withdirs=False)
            except FileNotFoundError:
                found = {}
            except Exception as exc:
                raise _failure(exc, f"cannot list {self.root}", start=True) from None
            self._listing = {}
            for path, info in found.items():
                if info.get("type") == "directory" or path.endswith("/"):
                    continue
                self._listing[self.rel_of(path.rstrip("/"))] = (int(info.get("size") or 0), stamp_of(info))
        return self._listing

    def read(self, rel: str) -> bytes:
        return self._call(self.fs.cat_file, self.full(rel))

    def open(self, rel: str) -> BinaryIO:
        """A local temporary copy, seekable at file speed (libsndfile seeks back and forth)."""
        copy = tempfile.TemporaryFile(prefix="noiseaug-")
        try:
            self._call(self._copy_to, rel, copy)
        except BaseException:
            copy.close()
            raise
        copy.seek(0)
        return copy  # type: ignore[return-value]

    def _copy_to(self, rel: str, copy: BinaryIO) -> None:
        with self.fs.open(self.full(rel), "rb") as fh:
            copied = 0
            while chunk := fh.read(1 << 22):
                copied += copy.write(chunk)
            size = getattr(fh, "size", None)  # what the store said the object holds, when it opened it
            if isinstance(size, int) and copied != size:
                raise OSError(errno.EIO, f"read {copied} bytes of an object of {size}")

    def hash(self, rel: str) -> tuple[str, int]:
        return self._call(self._hash, rel)

    def _hash(self, rel: str) -> tuple[str, int]:
        with self.fs.open(self.full(rel), "rb") as fh:
            return hash_stream(fh)

    def stat(self, rel: str) -> tuple[int, int] | None:
        """(size, change stamp) of an object: what this process wrote, else the run's one listing."""
        if rel in self._written:
            return self._written[rel]
        if not self._lister:
            return self.fresh_stat(rel)
        return self._list().get(rel)

    def folder_stats(self, folder: bytes) -> _FolderOf:
        """(size, stamp) of the objects in one folder, by name, from the run's one listing (no pass over the
        whole listing per folder: a run's quick check asks for every folder of outputs)."""
        return _FolderOf(self._list(), f"{os.fsdecode(folder)}/" if folder else "")

    @contextmanager
    def write(self, rel: str) -> Iterator[BinaryIO]:
        """An object that appears at ``rel`` with one complete upload when the ``with`` body succeeds."""
        if unsafe_key(rel):
            raise WriteError(rel, "refusing a key with an empty, '.' or '..' segment")
        if not rel.isascii() and not _utf8(rel):
            raise WriteError(rel, "cannot upload: its name is not UTF-8, which an object's key must be")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, prefix="noiseaug-") as fh:
            yield fh  # type: ignore[misc]
            size = fh.seek(0, io.SEEK_END)
            fh.seek(0)
            self._upload(rel, fh, size)

    def put(self, rel: str, data: Any, before_rename: Callable[[], None]) -> tuple[int, int] | None:
        """Bytes in memory as the object ``rel`` (see :meth:`write`); its (size, stamp), or None if unknown."""
        with self.write(rel) as fh:
            fh.write(data)
            before_rename()
        try:
            return self.stat(rel)
        except OSError:
            return None

    def _upload(self, rel: str, fh: Any, size: int) -> None:
        path = self.full(rel)
        try:
            if size <= SPOOL_BYTES:
                reply = self.fs.pipe_file(path, fh.read())
            else:
                reply = self._upload_large(path, fh)
        except Exception as exc:
            if unreachable(exc):  # fatal: the run stops, not file after file
                raise WriteError(f"{self.root}/{rel}", f"cannot reach the storage: {_first_line(exc)}",
                                 errno.ECONNREFUSED) from None
            if no_credentials(exc):
                raise WriteError(f"{self.root}/{rel}", f"cannot upload: {NO_CREDENTIALS}", errno.ECONNREFUSED) from None
            raise WriteError(f"{self.root}/{rel}", f"cannot upload: {_first_line(exc)}") from None
        etag = reply.get("ETag") if isinstance(reply, dict) else None
        self._written[rel] = (size, stamp_of({"ETag": etag})) if etag else self._info_stat(path)

    def _upload_large(self, path: str, fh: Any) -> Any:
        """A multipart upload: invisible until it completes, aborted (``discard``) on any failure."""
        out = self.fs.open(path, "wb")
        try:
            while chunk := fh.read(1 << 24):
                out.write(chunk)
            out.close()
        except BaseException:
            _abandon(out)
            raise
        return None

    def _info_stat(self, path: str) -> tuple[int, int]:
        info = self.fs.info(path)
        return int(info.get("size") or 0), stamp_of(info)

    def remove(self, rel: str) -> None:
        self._call(self.fs.rm_file, self.full(rel))
        self._written.pop(rel, None)
        if self._listing is not None:
            self._listing.pop(rel, None)

    def lock(self, name: str) -> "ObjectLock":
        return ObjectLock(self, name)

    def sweep(self, tag: str, folder: str | None = None, pid: int | None = None) -> int:
        """Abort the incomplete multipart uploads a killed run left under the prefix (S3; others have none).

        A whole-OUTPUT run (tag ``run``) aborts every upload under the prefix, unless a shard's lock says that
        shard is running (shards take locks of their own). A shard's sweep, or one beside a running shard,
        spares uploads younger than a day, which may be another run's, still live.
        """
        if folder is not None or not hasattr(self.fs, "call_s3"):
            return 0
        bucket, _, prefix = self.base.partition("/")
        prefix = prefix + "/" if prefix else ""
        removed = 0
        try:
            oldest = time.time() - (0 if tag == "run" and not self._shards_running(bucket, prefix) else 86400)
            for upload in self._uploads(bucket, prefix):
                if upload["Initiated"].timestamp() <= oldest:
                    self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"],
                                    UploadId=upload["UploadId"])
                    removed += 1
        except Exception as exc:
            raise _failure(exc, f"cannot clean up {self.root}'s unfinished uploads") from None
        return removed

    def _shards_running(self, bucket: str, prefix: str) -> bool:
        """Whether a shard's lock under the prefix says its run is live (shards take locks of their own, so one
        may run beside a whole-OUTPUT run): its uploads in flight are not a killed run's."""
        page = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix + ".noiseaug.shard-")
        for item in page.get("Contents", []):
            try:
                body = json.loads(self.fs.cat_file(f"{bucket}/{item['Key']}"))
            except (ValueError, OSError):
                return True  # cannot tell: spare
            if isinstance(body, dict) and body.get("state") == "running" and _live(body):
                return True
        return False

    def _uploads(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        marker: dict[str, str] = {}
        while True:
            page = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def forget(self) -> None:
        self._listing = None
        self._written.clear()

    def _call(self, fn: Any, *args: Any) -> Any:
        """A backend call; its errors as OSError with a one-line, secret-free reason (a per-file failure)."""
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except Exception as exc:
            if unreachable(exc):
                raise Unreachable(f"{self.root}: cannot reach the storage: {_first_line(exc)}") from None
            if no_credentials(exc):
                raise Unreachable(f"{self.root}: {NO_CREDENTIALS}") from None
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
            raise OSError(getattr(exc, "errno", None) or 5, text) from None

    # whole objects of noiseaug's own (the manifest, its segments and stat cache), through local files
    def fetch(self, rel: str, path: Path) -> bool:
        """Download an object to a local file; False when there is none."""
        try:
            self.fs.get_file(self.full(rel), os.fspath(path))
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise _failure(exc, f"cannot download {self.root}/{rel}") from None
        return True

    def fetch_into(self, rel: str, out: BinaryIO) -> None:
        """Append an object's bytes to an open file, in chunks."""
        try:
            with self.fs.open(self.full(rel), "rb") as fh:
                while chunk := fh.read(1 << 22):
                    out.write(chunk)
        except Exception as exc:
            raise _failure(exc, f"cannot download {self.root}/{rel}") from None

    def upload(self, path: Path, rel: str) -> None:
        """A local file as one object (one PUT, or a multipart upload invisible until complete)."""
        try:
            self.fs.put_file(os.fspath(path), self.full(rel))
        except Exception as exc:
            raise _failure(exc, f"cannot upload {self.root}/{rel}") from None

    def get_bytes(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.full(rel))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _failure(exc, f"cannot download {self.root}/{rel}") from None

    def put_bytes(self, rel: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self.full(rel), data)
        except Exception as exc:
            raise _failure(exc, f"cannot upload {self.root}/{rel}") from None

    def list_prefix(self, rel: str) -> list[str]:
        try:
            return sorted(self.rel_of(p) for p in self.fs.find(self.full(rel), withdirs=False))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise _failure(exc, f"cannot list {self.root}/{rel}") from None


def _abandon(out: Any) -> None:
    """Abort a failed multipart upload as far as the storage lets (a storage that is down leaves it to the next
    run's sweep), and close the file without a last upload: fsspec's ``__del__`` would try one, at the
    interpreter's exit, and wait for as long as the endpoint stays down."""
    try:
        if hasattr(out, "discard"):
            out.discard()
    except Exception:
        pass
    finally:
        out.closed = True


class ObjectLock:
    """OUTPUT's lock on object storage: an object created only if absent, held as a lease.

    Taken with a create-if-absent PUT (``If-None-Match: *`` on S3); renewed
    every ``LEASE / 3`` seconds with a compare-and-swap on its ETag
    (``If-Match``); a lock whose lease has expired (its run was killed) or
    that says ``clean`` is taken over the same way, as is one whose holder ran
    on this machine and is gone (as ``flock`` would). On file systems without
    conditional writes (memory://, file://) the check and the write are two
    steps, which is as good as their own semantics allow.
    """

    LEASE = float(os.environ.get("NOISEAUG_LOCK_LEASE", "60") or 60)  # seconds (see the README)

    def __init__(self, storage: FsspecStorage, name: str) -> None:
        self.storage, self.name = storage, name
        self.path = storage.full(name)
        self.dirty = False
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _body(self, state: str) -> bytes:
        return json.dumps({"state": state, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.LEASE}).encode()

    def __enter__(self) -> "ObjectLock":
        fs = self.storage.fs
        if self._create(fs):
            self.dirty = False
        else:
            current, etag = self._read(fs)
            if current.get("state") == "running" and _live(current):
                raise LockedError(f"another noiseaug run ({current.get('host')}, pid {current.get('pid')}) is "
                                  f"writing to {self.storage.root}; wait for it or pick another OUTPUT")
            self.dirty = current.get("state") != "clean"
            if not self._swap(fs, etag, self._body("running")):
                raise LockedError(f"another noiseaug run took {self.storage.root}'s lock first; "
                                  "wait for it or pick another OUTPUT")
        self._thread = threading.Thread(target=self._renew, name="noiseaug-lease", daemon=True)
        self._thread.start()
        return self

    def _create(self, fs: Any) -> bool:
        try:
            reply = fs.pipe_file(self.path, self._body("running"), mode="create")
        except FileExistsError:  # s3fs's word for 412 Precondition Failed on a create
            return False
        except Exception as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                return False
            raise _failure(exc, f"cannot take {self.storage.root}'s lock", start=True) from None
        self._etag = self._etag_of(fs, reply)
        return True

    def _read(self, fs: Any) -> tuple[dict[str, Any], str | None]:
        """The lock's body and the ETag of that very body (read between two looks at the ETag)."""
        for _ in range(5):
            try:
                fs.invalidate_cache(self.path)
                before = _etag(fs.info(self.path))
                data = fs.cat_file(self.path)
                fs.invalidate_cache(self.path)
                after = _etag(fs.info(self.path))
            except FileNotFoundError:
                return {}, None
            except Exception as exc:
                raise _failure(exc, f"cannot read {self.storage.root}'s lock", start=True) from None
            if before == after:
                break
        try:
            current = json.loads(data)
        except ValueError:
            current = {}
        return (current if isinstance(current, dict) else {}), after

    def _swap(self, fs: Any, etag: str | None, body: bytes) -> bool:
        """Replace the lock's body if it still has ``etag``: atomically on S3 (If-Match), else check-then-write.
        False when it has another ETag now (another run wrote it); a StorageError when the storage failed."""
        try:
            if hasattr(fs, "call_s3") and etag:
                reply = fs.pipe_file(self.path, body, IfMatch=etag)
            else:
                if _etag(fs.info(self.path)) != etag:
                    return False
                reply = fs.pipe_file(self.path, body)
        except Exception as exc:
            if not self._still(fs, etag):  # refused because another run wrote it (S3 says 412)
                return False
            raise _failure(exc, f"cannot renew {self.storage.root}'s lock") from None
        self._etag = self._etag_of(fs, reply)
        return True

    def _still(self, fs: Any, etag: str | None) -> bool:
        """Whether the lock object still has ``etag`` (True when that cannot be told: the storage is away)."""
        try:
            fs.invalidate_cache(self.path)
            return _etag(fs.info(self.path)) == etag
        except FileNotFoundError:
            return False
        except Exception:
            return True

    def _etag_of(self, fs: Any, reply: Any) -> str | None:
        if isinstance(reply, dict) and reply.get("ETag"):
            return reply["ETag"]
        try:
            return _etag(fs.info(self.path))
        except Exception:
            return None

    def _renew(self) -> None:
        """Renew every third of the lease; after a failed attempt, again within seconds. A lock that another
        run took over meanwhile is ``lost``: the run stops (see the pipeline)."""
        wait = self.LEASE / 3
        while not self._stop.wait(wait):
            try:
                if not self._swap(self.storage.fs, self._etag, self._body("running")):
                    self.lost = True
                    return
                wait = self.LEASE / 3
            except Exception:
                wait = 2.0  # the endpoint is away for a moment: try again well before the lease ends

    def release(self, clean: bool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            if clean and not self.lost:
                try:
                    self._swap(self.storage.fs, self._etag, self._body("clean"))
                except StorageError:
                    pass

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.release(clean=exc_type is None)


def _live(holder: dict[str, Any]) -> bool:
    """Whether a lock's holder may still run: its lease (by its own clock, plus one lease of grace for clocks
    that disagree) has not run out, and it did not run on this machine with its process now gone."""
    expires = holder.get("expires")
    if not isinstance(expires, (int, float)) or expires + ObjectLock.LEASE < time.time():
        return False
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _etag(info: dict[str, Any]) -> str | None:
    for key in STAMP_KEYS:
        if info.get(key) is not None:
            return str(info[key])
    return None
