"""The ``noiseaug`` command: a thin typer layer over the library.

Each command turns its options into a library call and the library's
exceptions into a one-line message and an exit code (SPEC §1): 0 done, 1 some
files failed, 2 bad usage or a refused configuration, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .config import MAX_PIXELS
from .errors import FileError, Interrupted, NoiseaugError

_CLICK = {c.__name__: c for c in typer.BadParameter.__mro__}  # the exception classes of typer's own click


class _OneLineErrors(TyperGroup):
    """A mistake on the command line (an unknown option or command, a missing argument, a value of the wrong
    type) as one line, like noiseaug's own refusals, instead of click's usage block; the same exit code, 2."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK["UsageError"] as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `noiseaug` alone: the help, as asked
                exc.show()
            else:
                path = ["noiseaug", *exc.ctx.command_path.split()[1:]] if exc.ctx is not None else ["noiseaug"]
                where = f" (see '{' '.join(path)} --help')"
                typer.echo(f"noiseaug: error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except _CLICK["ClickException"] as exc:
            exc.show()
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Add exact, reproducible Gaussian noise to image and audio datasets.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"noiseaug {__version__}")
        raise typer.Exit()


VersionOption = typer.Option(None, "--version", callback=_version, is_eager=True,
                             help="Print the version and exit.")


@app.callback()
def _root(version: Optional[bool] = VersionOption) -> None:
    """Add exact, reproducible Gaussian noise to image and audio datasets."""


_CONFIG_KEYS = frozenset(("image_sigma", "audio_sigma", "audio_snr_db", "seed", "copies", "name", "workers", "kinds",
                          "include", "exclude", "channel_noise", "jpeg_quality", "png_compression", "copy_other",
                          "overwrite", "dry_run", "on_error", "shard", "max_pixels", "file_timeout", "manifest",
                          "palette_images", "float_range", "jpeg_subsampling", "executor", "scheduler",
                          "storage_options"))


def _flag(options: dict[str, Any], key: str) -> bool:
    from .errors import UsageError

    value = options.get(key, False)
    if not isinstance(value, bool):
        raise UsageError(f"--config: {key} takes true or false, not {value!r}")
    return value


def _fail(message: str, code: int) -> "typer.Exit":
    from .report import shown

    typer.echo(f"noiseaug: error: {shown(message)}", err=True)  # a name that is not UTF-8 as \\xNN, as elsewhere
    return typer.Exit(code)


@app.command()
def run(
    input_dir: str = typer.Argument(..., metavar="INPUT", help="Folder (or s3://, gs://, az://, file:// URL) to read; never modified."),
    output_dir: str = typer.Argument(..., metavar="OUTPUT", help="Folder (or URL) to write the noisy copies and manifest to."),
    image_sigma: Optional[str] = typer.Option(None, metavar="S|A:B", help="Image noise std in 8-bit units (0-255), or a range drawn per file.  [default: 10]"),
    audio_sigma: Optional[str] = typer.Option(None, metavar="S|A:B", help="Audio noise std as a fraction of full scale.  [default: 0.01]"),
    audio_snr_db: Optional[str] = typer.Option(None, metavar="D|A:B", help="Audio noise by signal-to-noise ratio in dB, instead of --audio-sigma."),
    seed: Optional[int] = typer.Option(None, metavar="N", help="Master seed: same seed, same bytes.  [default: 0]"),
    copies: Optional[int] = typer.Option(None, metavar="K", help="Independent noisy copies per input.  [default: 1]"),
    name: Optional[str] = typer.Option(None, metavar="TEMPLATE", help="Output file name; fields {stem} {ext} {copy}.  [default: {stem}{ext}, or {stem}_n{copy}{ext} with --copies]"),
    workers: Optional[int] = typer.Option(None, metavar="N", help="Worker processes; 1 runs in-process.  [default: CPUs available]"),
    kinds: Optional[str] = typer.Option(None, metavar="image,audio", help="Which kinds of file to process.  [default: image,audio]"),
    include: Optional[List[str]] = typer.Option(None, metavar="GLOB", help="Only relative paths matching GLOB (repeatable; * matches across /)."),
    exclude: Optional[List[str]] = typer.Option(None, metavar="GLOB", help="Skip relative paths matching GLOB (repeatable)."),
    channel_noise: Optional[str] = typer.Option(None, metavar="per-channel|shared", help="Independent noise per colour channel, or one plane for all.  [default: per-channel]"),
    jpeg_quality: Optional[int] = typer.Option(None, metavar="Q", help="JPEG/WebP quality of written files (1-100).  [default: 95]"),
    png_compression: Optional[int] = typer.Option(None, metavar="L", help="PNG compression level (0-9).  [default: 3]"),
    copy_other: Optional[bool] = typer.Option(None, "--copy-other", help="Copy unsupported files unchanged."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Redo everything even if OUTPUT's manifest has other options."),
    dry_run: Optional[bool] = typer.Option(None, "--dry-run", help="Print the plan and write nothing."),
    on_error: Optional[str] = typer.Option(None, metavar="skip|fail", help="Record a failing file and go on, or stop at the first.  [default: skip]"),
    shard: Optional[str] = typer.Option(None, metavar="I/N", help="Process only shard I of N (stable path hash).  [default: 0/1]"),
    max_pixels: Optional[int] = typer.Option(None, metavar="P", help=f"Refuse images whose header declares more pixels.  [default: {MAX_PIXELS}]"),
    palette_images: Optional[str] = typer.Option(None, metavar="labels|noise", help="Palette and 1-bit images: label maps left alone (copied by --copy-other), or noised as true colour.  [default: labels]"),
    float_range: Optional[str] = typer.Option(None, metavar="LO:HI", help="Range of float image samples (noise is scaled to it and clipped to it).  [default: 0:1, others refused]"),
    jpeg_subsampling: Optional[str] = typer.Option(None, metavar="keep|444|422|420", help="Chroma subsampling of written JPEGs.  [default: keep the input's]"),
    file_timeout: Optional[float] = typer.Option(None, metavar="SECONDS", help="Abandon a file (recorded as failed) after this long; its worker is replaced.  [default: 600]"),
    manifest: Optional[str] = typer.Option(None, metavar="PATH|URL", help="Where the manifest goes.  [default: OUTPUT/noiseaug-manifest.jsonl]"),
    executor: Optional[str] = typer.Option(None, metavar="local|dask", help="Where files are processed: local worker processes, or a Dask cluster.  [default: local]"),
    scheduler: Optional[str] = typer.Option(None, metavar="ADDRESS", help="--executor dask: the scheduler, tcp://HOST:PORT.  [default: $DASK_SCHEDULER_ADDRESS, else a local cluster of --workers processes]"),
    storage_options: Optional[List[str]] = typer.Option(None, "--storage-option", metavar="KEY=VALUE", help="An option of the URL's file system (fsspec), e.g. endpoint_url=http://host:9000 (repeatable; values never recorded)."),
    config: Optional[Path] = typer.Option(None, metavar="FILE.toml", help="Options as TOML keys; command-line options win."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr.  [default: on a terminal]"),
    preview: int = typer.Option(0, "--preview", min=0, metavar="N", help="After the run, draw N evenly chosen outputs beside their inputs in OUTPUT/noiseaug-preview.png."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary object on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only failures on stderr."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="One line per file on stderr."),
    version: Optional[bool] = VersionOption,
) -> None:
    """Write noisy copies of every image and audio file under INPUT_DIR to OUTPUT_DIR."""
    from .progress import ConsoleReporter

    given = {k: v for k, v in locals().items() if k in _CONFIG_KEYS}  # the options of the Config
    given.update(include=include or None, exclude=exclude or None,  # typer gives [] for "not given"
                 storage_options=storage_options or None)
    try:
        cfg, shown = _configure(config, given)
    except NoiseaugError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    json_out, quiet, verbose = (flag or shown.get(key, False) for flag, key in
                                ((json_out, "json"), (quiet, "quiet"), (verbose, "verbose")))
    bar = next(b for b in (progress, shown.get("progress"), sys.stderr.isatty()) if b is not None)
    preview = preview or int(shown.get("preview", 0))
    summary = _run(input_dir, output_dir, cfg, ConsoleReporter(bar=bar and not cfg.dry_run, quiet=quiet,
                                                                verbose=verbose))
    _tell(summary, _sheet(output_dir, cfg, preview), preview, quiet, json_out)
    raise typer.Exit(summary.exit_code)


def _sheet(output_dir: str, cfg: Any, count: int) -> Path | None:
    """Where --preview draws: OUTPUT/noiseaug-preview.png, for a local OUTPUT and manifest only."""
    from .locations import PREVIEW_NAME
    from .storage.remote import is_url

    if count <= 0 or cfg.dry_run:
        return None
    if is_url(output_dir) or is_url(cfg.manifest):
        typer.echo("noiseaug: warning: no preview: --preview draws into a local OUTPUT only", err=True)
        return None
    return Path(output_dir) / PREVIEW_NAME


def _run(input_dir: str, output_dir: str, cfg: Any, reporter: Any) -> Any:
    """The library's run; its summary also when interrupted."""
    from .pipeline import run as run_pipeline

    try:
        return run_pipeline(input_dir, output_dir, cfg, reporter=reporter)
    except Interrupted as exc:
        return exc.summary
    except NoiseaugError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    finally:
        _ignore_signals()  # the run is over: a late Ctrl-C must not turn the summary into a traceback


def _tell(summary: Any, sheet: Path | None, count: int, quiet: bool, json_out: bool) -> None:
    """The summary on stderr, the contact sheet, the JSON summary on stdout."""
    if not quiet:
        typer.echo(summary.text(), err=True)
    else:  # quiet, but paths the walk could not take (no file to fail live) and why a run stopped are failures
        from .report import printable

        for problem in getattr(summary, "walk", None) and summary.walk.problems or ():
            typer.echo(f"noiseaug: failed: {printable(problem)}", err=True)
        if summary.stopped:
            typer.echo(f"noiseaug: stopped: {summary.stopped}", err=True)
        if summary.interrupted:  # one line, not the whole table
            typer.echo(f"noiseaug: interrupted by {summary.signal or 'SIGINT'}: the manifest holds what was done; "
                       "run again to continue", err=True)
    if sheet is not None and not summary.interrupted:
        _contact_sheet(summary, sheet, count, quiet)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), ensure_ascii=False))


_owns_process = False  # True when started as the noiseaug program (main), not called by a host


def _configure(config: Path | None, given: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The run's Config (the --config file under the options given) and the file's presentation keys."""
    from .config import PRESENTATION, load_toml, make_config, merged

    options = load_toml(config, PRESENTATION) if config is not None else {}
    shown = {k: options.pop(k) for k in PRESENTATION if k in options}
    for key in ("json", "quiet", "verbose", *(("progress",) if "progress" in shown else ())):
        _flag(shown, key)
    count = shown.get("preview", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        from .errors import UsageError

        raise UsageError(f"--config: preview takes a number of outputs (0 or more), not {count!r}")
    return make_config(**merged(options, given)), shown


def _ignore_signals() -> None:
    import signal
    import threading

    if _owns_process and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _contact_sheet(summary: Any, target: Path, count: int, quiet: bool) -> None:
    from .manifest import read_records
    from .preview import contact_sheet

    try:
        contact_sheet(lambda: read_records(Path(summary.manifest)), summary.input_root, summary.output_root, count,
                      target)
    except NoiseaugError as exc:
        typer.echo(f"noiseaug: warning: no preview: {exc}", err=True)
        return
    if not quiet:
        typer.echo(f"preview: {target}", err=True)


@app.command()
def verify(
    manifest: str = typer.Argument(..., metavar="MANIFEST", help="A manifest written by noiseaug run (a path or URL)."),
    regenerate: bool = typer.Option(False, "--regenerate", help="Recompute every output from its input and seed, and compare."),
    output_root: Optional[str] = typer.Option(None, metavar="DIR|URL", help="Where the outputs are.  [default: the manifest's folder when it lives in OUTPUT (the default place), else the recorded OUTPUT]"),
    input_root: Optional[str] = typer.Option(None, metavar="DIR|URL", help="Where the inputs are, for --regenerate.  [default: the recorded INPUT]"),
    storage_options: Optional[List[str]] = typer.Option(None, "--storage-option", metavar="KEY=VALUE", help="An option of the URLs' file system (fsspec), as for run (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON report object on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only problems on stderr."),
    version: Optional[bool] = VersionOption,
) -> None:
    """Check every output in MANIFEST against its recorded hash (exit 1 on any mismatch)."""
    from .config import make_config
    from .verification import verify as verify_manifest

    try:
        options = make_config(storage_options=storage_options or None).storage_kwargs()
        report = verify_manifest(manifest, regenerate=regenerate, output_root=output_root,
                                 input_root=input_root, storage_options=options,
                                 said=lambda line: typer.echo(line, err=True))  # as found
    except NoiseaugError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    if not quiet:
        typer.echo(report.text(), err=True)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    raise typer.Exit(report.exit_code)


@app.command()
def merge(
    manifests: List[str] = typer.Argument(..., metavar="MANIFEST...", help="Shard manifests of one run (paths or URLs)."),
    output: str = typer.Option(..., "-o", "--output", metavar="MANIFEST", help="Where to write the joined manifest (a path or URL)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Join the shards given even when others of the run are missing (exit 0)."),
    storage_options: Optional[List[str]] = typer.Option(None, "--storage-option", metavar="KEY=VALUE", help="An option of the URLs' file system (fsspec), as for run (repeatable)."),
    version: Optional[bool] = VersionOption,
) -> None:
    """Join the manifests of shards (--shard I/N) into one manifest; exit 1 when a shard is missing."""
    from .config import make_config, redact_url
    from .merging import merge_anywhere

    try:
        options = make_config(storage_options=storage_options or None).storage_kwargs()
        count, notes, named = merge_anywhere(manifests, output, allow_missing=allow_missing, options=options)
    except NoiseaugError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    for note in notes:
        typer.echo(f"noiseaug: warning: {note}", err=True)
    from .report import printable

    typer.echo(f"{count} records from {named} manifest{'s' if named != 1 else ''} written to "
               f"{printable(redact_url(output))}", err=True)


@app.command(name="preview")
def preview_command(
    file: Path = typer.Argument(..., metavar="FILE", help="An image or a recording."),
    output: Path = typer.Option(..., "-o", "--output", metavar="PICTURE.png", help="Where to draw the preview (PNG)."),
    image_sigma: str = typer.Option("10", metavar="S[,S...]", help="Image noise std(s) in 8-bit units; one row each."),
    audio_sigma: Optional[str] = typer.Option(None, metavar="S[,S...]", help="Audio noise std(s) as fractions of full scale.  [default: 0.01]"),
    audio_snr_db: Optional[str] = typer.Option(None, metavar="D[,D...]", help="Audio noise by SNR in dB, instead of --audio-sigma."),
    seed: int = typer.Option(0, help="Master seed, as for run."),
    channel_noise: str = typer.Option("per-channel", metavar="per-channel|shared", help="As for run."),
    max_pixels: int = typer.Option(MAX_PIXELS, metavar="P", help="Refuse larger images."),
    root: Optional[Path] = typer.Option(None, metavar="INPUT", help="The INPUT folder run is given: FILE is seeded by its path relative to it, as run seeds it.  [default: FILE's folder]"),
    palette_images: str = typer.Option("labels", metavar="labels|noise", help="As for run: a label map is shown left alone, or noised."),
    version: Optional[bool] = VersionOption,
) -> None:
    """Draw what a noise setting does to FILE: original, noisy and residual (images), or
    waveforms and spectrograms (audio)."""
    from .preview import preview

    if output.suffix.lower() != ".png":
        raise _fail(f"-o {output}: previews are PNG pictures; name the file *.png", 2) from None
    if not output.absolute().parent.is_dir():
        raise _fail(f"-o {output}: folder {output.absolute().parent} does not exist", 2) from None
    if channel_noise not in ("per-channel", "shared"):
        raise _fail(f"--channel-noise takes per-channel or shared, not {channel_noise!r}", 2) from None
    try:
        layout = preview(file, output, image_sigma=image_sigma, audio_sigma=audio_sigma,
                         audio_snr_db=audio_snr_db, seed=seed, channel_noise=channel_noise,
                         max_pixels=max_pixels, root=root, palette_images=palette_images)
    except NoiseaugError as exc:
        raise _fail(str(exc), exc.exit_code if not isinstance(exc, FileError) else 1) from None
    except OSError as exc:  # FILE unreadable, or -o unwritable
        raise _fail(f"{exc.filename or file}: {exc.strerror or exc}", 1) from None
    from .report import printable

    typer.echo(f"{printable(str(output))}: {layout.width}x{layout.height}", err=True)


def main() -> None:
    """The ``noiseaug`` program (the console script): the process is the CLI's own."""
    # noiseaug does no linear algebra, but numpy's OpenBLAS starts a thread per core
    # on import, and each spins for about 0.1 s of CPU before it sleeps: on 2 cores
    # that is CPU taken from the workers. Set here, before any command imports numpy;
    # importing noiseaug (or this module) leaves the environment alone.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    global _owns_process
    _owns_process = True
    from .silence import own_stderr

    own_stderr()
    app(prog_name="noiseaug")
