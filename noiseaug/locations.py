"""INPUT, OUTPUT and the manifest as the run will use them: checked, and opened on their storage.

Plain paths are local folders (:class:`~noiseaug.storage.LocalStorage`),
checked as before: INPUT must be a folder, OUTPUT not inside it nor around
it, the manifest not inside INPUT nor a link. A URL (``s3://bucket/prefix``)
is a prefix on an fsspec file system
(:class:`~noiseaug.storage.remote.FsspecStorage`), with the same rules by
prefix; a manifest given as a URL, or in an OUTPUT given as one, is spooled
locally (:class:`~noiseaug.home.RemoteHome`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import UsageError
from .home import LocalHome, RemoteHome
from .manifest import MANIFEST_NAME, default_path
from .storage import LocalStorage, Storage
from .storage.remote import is_url


@dataclass
class Locations:
    source: Storage
    target: Storage
    home: Any  # LocalHome | RemoteHome
    manifest_shown: str  # the manifest as the user would name it, for messages and the summary
    reserved: set[str]  # names under OUTPUT that are noiseaug's own (manifest, stat cache, index, lock, preview)

    @property
    def local(self) -> bool:
        return isinstance(self.target, LocalStorage)


def open_locations(input_dir: Any, output_dir: Any, cfg: Config) -> Locations:
    """Check and open INPUT, OUTPUT and the manifest; :class:`UsageError` for a refused combination."""
    for what, where in (("INPUT", input_dir), ("OUTPUT", output_dir), ("--manifest", cfg.manifest)):
        _not_a_broken_url(what, where)
    if not any(is_url(x) for x in (input_dir, output_dir, cfg.manifest)):
        return _local(Path(input_dir), Path(output_dir), cfg)
    return _remote(input_dir, output_dir, cfg)


PREVIEW_NAME = "noiseaug-preview.png"  # run --preview's picture, at OUTPUT's top: no input's output may take it
URL_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "file", "memory")


def _not_a_broken_url(what: str, where: Any) -> None:
    """``s3:/bucket/x`` (one slash) would quietly become a local folder named ``s3:``: refuse it."""
    text = os.fsdecode(where) if isinstance(where, (os.PathLike, bytes)) else where
    if not isinstance(text, str) or is_url(text):
        return
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() in URL_SCHEMES and not rest.startswith("//"):
        raise UsageError(f"{what} {text!r} looks like a URL with a slash missing ({scheme}://...); "
                         f"for a local folder named {scheme + ':'!r}, write ./{text}")


def _local(input_dir: Path, output_dir: Path, cfg: Config) -> Locations:
    in_root, out_root = check_roots(input_dir, output_dir)
    manifest_path = _resolved(Path(cfg.manifest)) if cfg.manifest else default_path(out_root, cfg.shard)
    _check_manifest(manifest_path, in_root, cfg)
    shown = cfg.manifest if cfg.manifest else default_path(output_dir, cfg.shard)
    target = LocalStorage(os.fsdecode(out_root))
    return Locations(LocalStorage(os.fsdecode(in_root)), target, LocalHome(manifest_path), os.fsdecode(shown),
                     _reserved_local(manifest_path, out_root) | {PREVIEW_NAME})


def _check_manifest(manifest_path: Path, in_root: Path, cfg: Config) -> None:
    if _inside(manifest_path, in_root):
        raise UsageError(f"--manifest {manifest_path} is inside INPUT; noiseaug never writes there")
    if cfg.manifest and not manifest_path.parent.is_dir():
        raise UsageError(f"--manifest {os.fsdecode(cfg.manifest)}: folder {os.fsdecode(manifest_path.parent)} "
                         "does not exist")
    if manifest_path.is_symlink():
        raise UsageError(f"{os.fsdecode(manifest_path)} is a symbolic link; refusing to read or write "
                         "a manifest through it")


def _reserved_local(manifest_path: Path, out_root: Path) -> set[str]:
    from .manifest import state_path

    names = (manifest_path, state_path(manifest_path), manifest_path.with_name(f".{manifest_path.name}.index"),
             manifest_path.with_name(f".{manifest_path.name}.lock"))  # see pipeline._manifest_lock
    return {os.path.relpath(p, out_root) for p in names}


def _remote(input_dir: Any, output_dir: Any, cfg: Config) -> Locations:
    from .storage.remote import FsspecStorage

    options = cfg.storage_kwargs()
    source = FsspecStorage(str(input_dir), options) if is_url(input_dir) else None
    target = FsspecStorage(str(output_dir), options) if is_url(output_dir) else None
    if source is None:
        in_root = Path(input_dir)
        if not in_root.is_dir():
            raise UsageError(f"INPUT {os.fsdecode(in_root)} is not a folder")
        source = LocalStorage(os.fsdecode(in_root.resolve()))
    elif not source.exists():
        raise UsageError(f"INPUT {source.root} does not exist (or is empty)")
    if target is None:
        out_root = Path(output_dir).resolve()
        if out_root.exists() and not out_root.is_dir():
            raise UsageError(f"OUTPUT {os.fsdecode(output_dir)} exists and is not a folder")
        target = LocalStorage(os.fsdecode(out_root))
    _check_url_roots(source, target)
    _check_memory(source, target, cfg)
    return _with_manifest(source, target, cfg, options)


def _check_memory(source: Any, target: Any, cfg: Config) -> None:
    """memory:// is this process's own memory: worker processes would each see (and fill) a copy of their own."""
    protocols = {_key(s).split("://")[0] for s in (source, target)}
    if "memory" in protocols and (cfg.workers > 1 or cfg.executor == "dask"):
        raise UsageError("memory:// lives in this process only: run it with --workers 1 (the local executor)")


def _with_manifest(source: Any, target: Any, cfg: Config, options: dict[str, Any]) -> Locations:
    from .storage.remote import FsspecStorage, split_object_url

    name = default_path(Path("."), cfg.shard).name
    manifest = str(cfg.manifest) if cfg.manifest else None
    if manifest is None and isinstance(target, FsspecStorage):
        manifest = f"{target.url}/{name}"
    if manifest is not None and is_url(manifest):
        folder, name = split_object_url(manifest)
        where = FsspecStorage(folder, options)
        inside = _key(where) + "/"
        if (inside + name).startswith(_key(source) + "/"):
            raise UsageError(f"--manifest {where.root}/{name} is inside INPUT; noiseaug never writes there")
        home: Any = RemoteHome(where, name)
        shown = f"{where.root}/{name}"
        reserved = _reserved_remote(folder, name, target)
    else:
        path = _resolved(Path(manifest)) if manifest else default_path(Path(target.root), cfg.shard)
        if isinstance(source, LocalStorage):
            _check_manifest(path, Path(source.root), cfg)
        home, shown = LocalHome(path), os.fsdecode(manifest or path)
        reserved = _reserved_local(path, Path(target.root)) if isinstance(target, LocalStorage) else set()
    return Locations(source, target, home, shown, reserved | {PREVIEW_NAME})


def _reserved_remote(folder: str, name: str, target: Any) -> set[str]:
    url = getattr(target, "url", None)
    if url is None or not (folder == url or folder.startswith(url + "/")):
        return set()
    prefix = folder[len(url) + 1:] + "/" if folder != url else ""
    return {prefix + n for n in (name, f".{name}.state")}


def _check_url_roots(source: Any, target: Any) -> None:
    """The same rules as for folders, by URL prefix: OUTPUT is neither INPUT nor inside or around it."""
    a, b = _key(source), _key(target)
    if a == b:
        raise UsageError("OUTPUT is the same as INPUT; noiseaug never writes over its inputs")
    if b.startswith(a + "/"):
        raise UsageError("OUTPUT is inside INPUT; pick a prefix outside it")
    if a.startswith(b + "/"):
        raise UsageError("INPUT is inside OUTPUT; pick a prefix that does not contain INPUT")


def _key(storage: Any) -> str:
    """A storage's place as one comparable string: protocol and path."""
    fs = getattr(storage, "fs", None)
    if fs is None:
        return "file://" + storage.root
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return "file://" + os.path.realpath(storage.base)
    return f"{protocol}://{storage.base}"


def check_roots(input_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    """Refuse INPUT/OUTPUT pairs that could overwrite inputs or loop."""
    if not input_dir.is_dir():
        raise UsageError(f"INPUT {os.fsdecode(input_dir)} is not a folder")
    in_root = input_dir.resolve()
    out_root = output_dir.resolve()
    if out_root.exists() and not out_root.is_dir():
        raise UsageError(f"OUTPUT {os.fsdecode(output_dir)} exists and is not a folder")
    if out_root == in_root:
        raise UsageError("OUTPUT is the same folder as INPUT; noiseaug never writes over its inputs")
    if _inside(out_root, in_root):
        raise UsageError("OUTPUT is inside INPUT; pick a folder outside it")
    if _inside(in_root, out_root):
        raise UsageError("INPUT is inside OUTPUT; pick a folder that does not contain INPUT")
    return in_root, out_root


def _inside(path: Path, root: Path) -> bool:
    return path != root and root in path.parents


def _resolved(path: Path) -> Path:
    """A path with its folder's links resolved (so a linked folder cannot hide INPUT), its own name kept."""
    return path.absolute().parent.resolve() / path.name


__all__ = ["Locations", "MANIFEST_NAME", "check_roots", "open_locations"]
