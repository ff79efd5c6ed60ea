"""Validated run options: one frozen dataclass, built once at the edge.

Everything the CLI, a TOML file or a library caller passes goes through
:func:`make_config`, which refuses bad values with :class:`UsageError`. The
inside of noiseaug trusts a :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

KINDS = ("image", "audio")
MAX_PIXELS = 178956970  # Pillow's own decompression-bomb limit, as --max-pixels' default
CHANNEL_NOISE = ("per-channel", "shared")
ON_ERROR = ("skip", "fail")
PALETTE_IMAGES = ("labels", "noise")
JPEG_SUBSAMPLING = ("keep", "4:4:4", "4:2:2", "4:2:0")
EXECUTORS = ("local", "dask")
REDACTED = "<redacted>"
NAME_FIELDS = {"stem", "ext", "copy"}

# Options that decide what is written; a manifest made with other values is
# a different job, and re-running over it needs --overwrite. The selection
# options (--kinds, --include, --exclude, --copy-other) only decide which
# files a run visits, like make's targets: they may change between runs.
JOB_OPTIONS = (
    "image_sigma", "audio_sigma", "audio_snr_db", "seed", "copies", "name",
    "channel_noise", "jpeg_quality", "png_compression", "max_pixels", "shard",
    "palette_images", "float_range", "jpeg_subsampling",
)
SELECTION_OPTIONS = ("kinds", "include", "exclude", "copy_other")


@dataclass(frozen=True)
class SigmaSpec:
    """A σ (or SNR) value, or a range A:B drawn per file from its own RNG."""

    low: float
    high: float

    @classmethod
    def parse(cls, text: str | float | int, what: str) -> "SigmaSpec":
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            low = high = float(text)
        else:
            parts = str(text).split(":")
            if len(parts) > 2:
                raise UsageError(f"{what} takes a value or a range A:B, not {text!r}")
            try:
                low, high = float(parts[0]), float(parts[-1])
            except ValueError:
                raise UsageError(f"{what} takes a number or a range A:B, not {text!r}") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise UsageError(f"{what} must be finite, not {text!r}")
        if low > high:
            raise UsageError(f"{what} range {text!r} is empty: A must not exceed B")
        return cls(low, high)

    @property
    def is_range(self) -> bool:
        return self.low != self.high

    def __str__(self) -> str:
        fmt = lambda v: format(v, "g")  # noqa: E731
        return fmt(self.low) if not self.is_range else f"{fmt(self.low)}:{fmt(self.high)}"


MAX_SNR_DB = 1000.0  # beyond it, σ over- or underflows a double: no real noise level, and arithmetic errors


@dataclass(frozen=True)
class Config:
    """Every option of ``noiseaug run`` that the engine needs (SPEC §2)."""

    image_sigma: SigmaSpec = SigmaSpec(10.0, 10.0)
    audio_sigma: SigmaSpec | None = SigmaSpec(0.01, 0.01)
    audio_snr_db: SigmaSpec | None = None
    seed: int = 0
    copies: int = 1
    name: str = "{stem}{ext}"
    workers: int = dataclasses.field(default_factory=lambda: default_workers())
    kinds: tuple[str, ...] = KINDS
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    channel_noise: str = "per-channel"
    jpeg_quality: int = 95
    png_compression: int = 3
    copy_other: bool = False
    overwrite: bool = False
    dry_run: bool = False
    on_error: str = "skip"
    shard: tuple[int, int] = (0, 1)
    max_pixels: int = MAX_PIXELS
    palette_images: str = "labels"
    float_range: tuple[float, float] | None = None
    jpeg_subsampling: str = "keep"
    file_timeout: float = 600.0
    manifest: Path | str | None = None  # a URL stays text
    executor: str = "local"
    scheduler: str | None = None
    storage_options: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), repr=False)  # secrets: never shown

    def storage_kwargs(self) -> dict[str, Any]:
        """The storage options as fsspec takes them (a dotted key is a nested one: client_kwargs.region_name)."""
        out: dict[str, Any] = {}
        for key, value in self.storage_options:
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """The effective options as JSON-ready values, for the manifest's run record."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, SigmaSpec):
                value = str(value)
            elif f.name == "float_range" and value is not None:
                value = f"{value[0]:g}:{value[1]:g}"
            elif isinstance(value, tuple):
                value = list(value) if f.name != "shard" else f"{value[0]}/{value[1]}"
            elif isinstance(value, Path):
                value = os.fsdecode(value)
            if f.name == "storage_options":  # credentials: the keys are kept, never the values
                value = {k: REDACTED for k, _ in self.storage_options}
            elif f.name in ("scheduler", "manifest") and isinstance(value, str):
                value = redact_url(value)
            out[f.name] = value
        return out

    def job_options(self) -> dict[str, Any]:
        """The options that decide the outputs, compared between runs."""
        full = self.to_dict()
        return {k: full[k] for k in JOB_OPTIONS}


def default_workers() -> int:
    """CPUs this process may run on (affinity and cgroup-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _int(value: Any, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{what} takes a whole number, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} takes a whole number, not {value!r}") from None
    if number != value and not isinstance(value, str):
        raise UsageError(f"{what} takes a whole number, not {value!r}")
    if number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UsageError(f"{what} takes a number {bound}, not {value!r}")
    return number


def _seconds(value: Any, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} takes a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not (0 < seconds < math.inf):
        raise UsageError(f"{what} takes a positive number of seconds, not {value!r}")
    return seconds


def _choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(f"{what} takes one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} takes true or false, not {value!r}")
    return value


def _kinds(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (str, list, tuple)):
        raise UsageError(f"--kinds takes a comma-separated list of {', '.join(KINDS)}, not {value!r}")
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = {str(k).strip() for k in items if str(k).strip()}
    if not kinds or kinds - set(KINDS):
        raise UsageError(f"--kinds takes a comma-separated list of {', '.join(KINDS)}, not {value!r}")
    return tuple(k for k in KINDS if k in kinds)  # canonical order: equal sets are equal options


def _globs(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(g, str) and g for g in items):
        raise UsageError(f"{what} takes non-empty glob patterns, not {value!r}")
    return tuple(sorted(set(items)))  # order and repeats do not change the selection


def _shard(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        index, count = value
    else:
        index, _, count = str(value).partition("/")
    index_n = _int(index, "--shard index", 0)
    count_n = _int(count, "--shard count", 1)
    if index_n >= count_n:
        raise UsageError(f"--shard {index_n}/{count_n}: the index must be below the count")
    return index_n, count_n


def _executor(given: dict[str, Any]) -> str:
    """--executor; --scheduler alone means Dask (and is refused with --executor local)."""
    if "executor" not in given:
        return "dask" if given.get("scheduler") else _default("executor")
    executor = _choice(given["executor"], "--executor", EXECUTORS)
    if executor == "local" and given.get("scheduler"):
        raise UsageError("--scheduler is for --executor dask, not --executor local")
    return executor


def _manifest(value: Any) -> Path | str | None:
    """--manifest: a path, or a URL kept as text (a Path would fold its '//')."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise UsageError(f"--manifest takes a path or a URL, not {value!r}")
    text = os.fsdecode(value) if isinstance(value, (os.PathLike, bytes)) else str(value)
    scheme = text.split("://", 1)[0]
    return text if "://" in text and scheme.isidentifier() else Path(value)


def _storage_options(value: Any) -> tuple[tuple[str, Any], ...]:
    """--storage-option KEY=VALUE (repeatable) or a TOML table (see :func:`_option_value`)."""
    if isinstance(value, dict):
        items = list(_flatten(value))
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                items.append((str(item[0]), item[1]))
                continue
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--storage-option takes KEY=VALUE, not {_hide(str(item))!r}")
            items.append((key.strip(), _option_value(key, text)))
    else:
        raise UsageError("--storage-option takes KEY=VALUE (in TOML: a table, storage_options = {key = value})")
    for key, item in items:
        if key.rpartition(".")[2] in BOOLEAN_OPTIONS and not isinstance(item, bool):
            raise UsageError(f"--storage-option {key} takes true or false, not {item!r}")
    return tuple(items)


SECRET_WORDS = ("key", "secret", "token", "password", "credential", "sas", "signature")
# options the backends (s3fs, gcsfs, adlfs) take as yes/no: any other text would count as yes (anon=no: unsigned)
BOOLEAN_OPTIONS = frozenset({"anon", "use_ssl", "requester_pays", "version_aware", "skip_instance_cache",
                             "use_listings_cache", "cache_regions", "fixed_upload_size", "auto_mkdir"})


def _option_value(key: str, text: str) -> Any:
    """true/false and plain numbers as such (anon=true, max_concurrency=8); a credential's value always as text,
    even when it looks like a number."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if not any(word in key.lower() for word in SECRET_WORDS):
        for kind in (int, float):
            try:
                value = kind(text)
            except ValueError:
                continue
            if str(value) == text.strip():
                return value
    return text


def _flatten(table: dict[str, Any], prefix: str = "") -> Any:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _hide(text: str) -> str:
    """An option's text for an error message: never its value, which may be a secret."""
    return text.partition("=")[0] + ("=" + REDACTED if "=" in text else "")


def redact_url(url: str) -> str:
    """A URL without the ``user:password@`` or secrets in its query (shown in records and messages)."""
    import re

    url = re.sub(r"(?<=://)[^@\s]*@", REDACTED + "@", url)  # user:password@, a '/' in the password too
    return re.sub(r"\?.*$", "?" + REDACTED, url)  # a query may carry a signature or a token: none is needed


def _float_range(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    spec = SigmaSpec.parse(value, "--float-range")
    if not spec.low < spec.high:
        raise UsageError(f"--float-range takes LO:HI with LO below HI, not {value!r}")
    return spec.low, spec.high


def _subsampling(value: Any) -> str:
    text = str(value)
    text = {"444": "4:4:4", "422": "4:2:2", "420": "4:2:0"}.get(text, text)
    return _choice(text, "--jpeg-subsampling", JPEG_SUBSAMPLING)


def _name(template: Any, copies: int) -> str:
    if not isinstance(template, str) or not template:
        raise UsageError(f"--name takes a template such as '{{stem}}_n{{copy}}{{ext}}', not {template!r}")
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"--name {template!r} is not a valid template: {exc}") from None
    if any(spec or conv for _, spec, conv in parsed):
        raise UsageError(f"--name {template!r}: fields take no conversions or format specs, just {{stem}}, "
                         "{ext} and {copy}")
    fields = {f for f, _, _ in parsed}
    unknown = fields - NAME_FIELDS
    if unknown:
        raise UsageError(f"--name {template!r} uses unknown field {{{sorted(unknown)[0]}}}; "
                         "the fields are {stem}, {ext} and {copy}")
    try:
        template.format(stem="x", ext=".png", copy=0)
    except (ValueError, IndexError, KeyError) as exc:
        raise UsageError(f"--name {template!r} is not a valid template: {exc}") from None
    if "stem" not in fields:
        raise UsageError(f"--name {template!r} has no {{stem}} field, so the outputs of one folder would collide")
    if "/" in template or "\\" in template or "\0" in template:
        raise UsageError(f"--name {template!r} must name a file, not a path")
    if not template.endswith("{ext}"):
        raise UsageError(f"--name {template!r} must end with {{ext}}: outputs keep their input's format")
    if copies > 1 and "copy" not in fields:
        raise UsageError(f"--name {template!r} has no {{copy}} field, so --copies {copies} would overwrite itself")
    return template


def _default(name: str) -> Any:
    """An option's default, written once: the :class:`Config` field's."""
    for f in dataclasses.fields(Config):
        if f.name == name:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    raise KeyError(name)


def make_config(config: str | os.PathLike | None = None, **options: Any) -> Config:
    """Build a :class:`Config` from option values, refusing anything invalid.

    Keys are the option names with underscores; ``None`` means "the default".
    ``config`` names a TOML file of options (``--config``); the options given
    here win over it, and an ``audio_sigma`` given here replaces the file's
    ``audio_snr_db`` and the other way round.
    """
    if config is not None:  # one file for the command and the library: the command's own keys are its own
        read = load_toml(Path(config), PRESENTATION)
        options = merged({k: v for k, v in read.items() if k not in PRESENTATION}, options)
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}")
    given = {k: v for k, v in options.items() if v is not None}
    image_sigma, audio_sigma, audio_snr_db = _sigmas(given)
    copies = _int(given.get("copies", _default("copies")), "--copies", 1)
    default_name = _default("name") if copies == 1 else "{stem}_n{copy}{ext}"
    manifest = given.get("manifest")
    return Config(
        image_sigma=image_sigma,
        audio_sigma=audio_sigma,
        audio_snr_db=audio_snr_db,
        seed=_int(given.get("seed", _default("seed")), "--seed", 0, 2**128 - 1),
        copies=copies,
        name=_name(given.get("name", default_name), copies),
        workers=_int(given["workers"], "--workers", 1, 1024) if "workers" in given else default_workers(),
        kinds=_kinds(given.get("kinds", _default("kinds"))),
        include=_globs(given.get("include", ()), "--include"),
        exclude=_globs(given.get("exclude", ()), "--exclude"),
        channel_noise=_choice(given.get("channel_noise", _default("channel_noise")), "--channel-noise",
                              CHANNEL_NOISE),
        jpeg_quality=_int(given.get("jpeg_quality", _default("jpeg_quality")), "--jpeg-quality", 1, 100),
        png_compression=_int(given.get("png_compression", _default("png_compression")), "--png-compression", 0, 9),
        copy_other=_bool(given.get("copy_other", False), "--copy-other"),
        overwrite=_bool(given.get("overwrite", False), "--overwrite"),
        dry_run=_bool(given.get("dry_run", False), "--dry-run"),
        on_error=_choice(given.get("on_error", _default("on_error")), "--on-error", ON_ERROR),
        shard=_shard(given.get("shard", _default("shard"))),
        max_pixels=_int(given.get("max_pixels", MAX_PIXELS), "--max-pixels", 1),
        palette_images=_choice(given.get("palette_images", _default("palette_images")), "--palette-images",
                               PALETTE_IMAGES),
        float_range=_float_range(given.get("float_range")),
        jpeg_subsampling=_subsampling(given.get("jpeg_subsampling", _default("jpeg_subsampling"))),
        file_timeout=_seconds(given.get("file_timeout", _default("file_timeout")), "--file-timeout"),
        manifest=_manifest(manifest),
        executor=_executor(given),
        scheduler=str(given["scheduler"]) if given.get("scheduler") else None,
        storage_options=_storage_options(given.get("storage_options", ())),
    )


def _sigmas(given: dict[str, Any]) -> tuple[SigmaSpec, SigmaSpec | None, SigmaSpec | None]:
    """--image-sigma, and --audio-sigma or --audio-snr-db (never both)."""
    if "audio_sigma" in given and "audio_snr_db" in given:
        raise UsageError("--audio-sigma and --audio-snr-db exclude each other: give one")
    image_sigma = SigmaSpec.parse(given["image_sigma"], "--image-sigma") if "image_sigma" in given \
        else _default("image_sigma")
    if image_sigma.low < 0:
        raise UsageError(f"--image-sigma must not be negative, not {given['image_sigma']!r}")
    if "audio_snr_db" in given:
        snr = SigmaSpec.parse(given["audio_snr_db"], "--audio-snr-db")
        if max(abs(snr.low), abs(snr.high)) > MAX_SNR_DB:
            raise UsageError(f"--audio-snr-db must lie within ±{MAX_SNR_DB:g} dB (a factor of 10^{MAX_SNR_DB / 20:g} "
                             f"in level), not {given['audio_snr_db']!r}")
        return image_sigma, None, snr
    if "audio_sigma" not in given:
        return image_sigma, _default("audio_sigma"), None
    audio_sigma = SigmaSpec.parse(given["audio_sigma"], "--audio-sigma")
    if audio_sigma.low < 0:
        raise UsageError(f"--audio-sigma must not be negative, not {given['audio_sigma']!r}")
    return image_sigma, audio_sigma, None


def merged(from_file: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A --config file's options under the ones given directly (``None``: not given)."""
    explicit = {k: v for k, v in given.items() if v is not None}
    options = dict(from_file)
    if "audio_sigma" in explicit:
        options.pop("audio_snr_db", None)
    if "audio_snr_db" in explicit:
        options.pop("audio_sigma", None)
    options.update(explicit)
    return options


PRESENTATION = ("json", "progress", "quiet", "verbose", "preview")  # TOML keys that shape the command's output only


def load_toml(path: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a --config file: option names as keys, with '-' or '_'.

    ``extra`` names further keys the caller handles itself (the CLI's
    presentation options, such as ``json`` or ``quiet``).
    """
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read --config {os.fsdecode(path)}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {os.fsdecode(path)} is not valid TOML: {exc}") from None
    known = {f.name for f in dataclasses.fields(Config)} | set(extra)
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UsageError(f"--config {os.fsdecode(path)}: unknown key {key!r}")
        options[name] = value
    return options
