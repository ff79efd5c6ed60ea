"""Every refusal of SPEC §2 exits 2 with a one-line reason and writes nothing."""

from __future__ import annotations

import fcntl
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import tree, write_image


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "a.png", np.zeros((8, 8), np.uint8))
    return folder


def refused(cli, *args, says: str):
    result = cli(*args, code=2)
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # click's usage block included
    return result


@pytest.mark.parametrize("args,says", [
    (["--image-sigma", "-1"], "negative"),
    (["--audio-sigma", "-0.5"], "negative"),
    (["--image-sigma", "9:3"], "empty"),
    (["--image-sigma", "abc"], "number"),
    (["--shard", "3/3"], "below the count"),
    (["--shard", "1"], "--shard"),
    (["--audio-sigma", "0.1", "--audio-snr-db", "20"], "exclude each other"),
    (["--copies", "0"], "--copies"),
    (["--copies", "2", "--name", "{stem}{ext}"], "{copy}"),
    (["--name", "{stem}.png"], "{ext}"),
    (["--name", "../{stem}{ext}"], "file"),
    (["--name", "{bogus}{ext}"], "unknown field"),
    (["--kinds", "video"], "--kinds"),
    (["--channel-noise", "mixed"], "--channel-noise"),
    (["--jpeg-quality", "101"], "--jpeg-quality"),
    (["--on-error", "maybe"], "--on-error"),
    (["--no-such-option"], "No such option: --no-such-option"),
    (["--workers", "two"], "'two' is not a valid int"),
])
def test_bad_options_are_refused_before_writing(cli, src, tmp_path, args, says):
    refused(cli, "run", src, tmp_path / "out", *args, says=says)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,says,see", [
    (["run"], "Missing argument 'INPUT'", "noiseaug run --help"),
    (["frobnicate"], "No such command 'frobnicate'", "noiseaug --help"),
    (["verify"], "Missing argument 'MANIFEST'", "noiseaug verify --help"),
    (["merge", "x.jsonl"], "Missing option '-o'", "noiseaug merge --help"),
])
def test_command_line_mistakes_are_one_line_too(cli, args, says, see):
    """click's usage block (usage, hint, blank line, error) is one line, as noiseaug's own refusals are."""
    result = refused(cli, *args, says=says)
    assert result.stdout == "" and result.stderr.rstrip().endswith(f"(see '{see}')")


def test_output_equal_to_inside_or_around_input_is_refused(cli, src, tmp_path):
    before = tree(tmp_path)
    refused(cli, "run", src, src, says="same folder")
    refused(cli, "run", src, src / "out", says="inside INPUT")
    refused(cli, "run", src, tmp_path, says="INPUT is inside OUTPUT")
    assert tree(tmp_path) == before


def test_unknown_toml_key_is_refused_with_its_name(cli, src, tmp_path):
    config = tmp_path / "opts.toml"
    config.write_text('image-sigma = 4\nimage_sigmaa = 5\n', encoding="utf-8")
    refused(cli, "run", src, tmp_path / "out", "--config", config, says="image_sigmaa")
    assert not (tmp_path / "out").exists()


def test_toml_options_apply_and_the_command_line_wins(cli, src, tmp_path):
    config = tmp_path / "opts.toml"
    config.write_text('image-sigma = 4\nseed = 9\ncopies = 2\n', encoding="utf-8")
    result = cli("run", src, tmp_path / "out", "--config", config, "--seed", 3, "--json", "--workers", 1)
    import json
    summary = json.loads(result.stdout)
    assert summary["ok"] == 2
    run = json.loads((tmp_path / "out" / "noiseaug-manifest.jsonl").read_text().splitlines()[0])
    assert run["options"]["image_sigma"] == "4" and run["options"]["seed"] == 3


def test_manifest_from_other_options_is_refused_without_overwrite(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    before = tree(out)
    result = refused(cli, "run", src, out, "--image-sigma", 3, "--workers", 1, says="--image-sigma 10")
    assert "--overwrite" in result.stderr
    assert tree(out) == before
    cli("run", src, out, "--image-sigma", 3, "--overwrite", "--workers", 1)
    assert tree(out)["a.png"] != before["a.png"]


def test_a_change_between_audio_sigma_and_snr_names_each_option_as_given(cli, tmp_path):
    """The two audio noise options exclude each other: the message named the one the user did not give."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sf.write(src / "a.wav", 0.3 * np.sin(np.arange(8000) / 5), 8000, subtype="PCM_16")
    cli("run", src, out, "--workers", 1)
    refused(cli, "run", src, out, "--audio-snr-db", 20, "--workers", 1,
            says="made with --audio-sigma 0.01, not --audio-snr-db 20;")
    cli("run", src, out, "--audio-snr-db", 20, "--workers", 1, "--overwrite")
    refused(cli, "run", src, out, "--audio-sigma", 0.02, "--workers", 1,
            says="made with --audio-snr-db 20, not --audio-sigma 0.02;")
    refused(cli, "run", src, out, "--audio-snr-db", 30, "--workers", 1, says="made with --audio-snr-db 20, not 30;")


def test_a_held_lock_is_refused(cli, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".noiseaug.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        refused(cli, "run", src, out, "--workers", 1, says="another noiseaug run")
        assert not (out / "a.png").exists()
    cli("run", src, out, "--workers", 1)  # a lock whose holder is gone is taken over
    assert (out / "a.png").exists()


@pytest.mark.parametrize("elsewhere", [["--manifest", "{ms}/m.jsonl"], ["--shard", "0/2"], ["--shard", "1/2"]])
def test_a_manifest_in_output_from_other_options_is_refused_whichever_manifest_the_run_writes(cli, src, tmp_path,
                                                                                            elsewhere):
    """SPEC §2 refuses a manifest in OUTPUT made with other options: the run's own (see above), and as much
    another at OUTPUT's top (the unsharded one, another shard's) when the run writes its manifest elsewhere
    or is a shard: its outputs would be written over."""
    out, ms = tmp_path / "out", tmp_path / "ms"
    ms.mkdir()
    write_image(src / "b.png", np.full((8, 8), 99, np.uint8))
    cli("run", src, out, "--workers", 1)
    before = tree(out)
    args = [a.format(ms=ms) for a in elsewhere]
    result = refused(cli, "run", src, out, *args, "--seed", 3, "--workers", 1, says="--seed 0, not 3")
    assert "noiseaug-manifest.jsonl in OUTPUT" in result.stderr and "--overwrite" in result.stderr
    assert tree(out) == before and not (ms / "m.jsonl").exists()
    cli("run", src, out, *args, "--workers", 1)  # the same job: a shard of it, or its manifest elsewhere
    cli("verify", out / "noiseaug-manifest.jsonl")
    cli("run", src, out, *args, "--seed", 3, "--overwrite", "--workers", 1)  # said: written over
    assert tree(out)["a.png"] != before["a.png"] or tree(out)["b.png"] != before["b.png"]


def test_shards_of_one_job_and_their_merge_bind_no_option_but_shard(cli, src, tmp_path):
    out = tmp_path / "out"
    write_image(src / "b.png", np.full((8, 8), 99, np.uint8))
    for shard in ("0/2", "1/2"):
        cli("run", src, out, "--shard", shard, "--image-sigma", 5, "--workers", 1)
    refused(cli, "run", src, out, "--shard", "0/3", "--workers", 1, says="--image-sigma 5, not 10")
    cli("run", src, out, "--shard", "0/3", "--image-sigma", 5, "--workers", 1)
    cli("merge", *sorted(out.glob("noiseaug-manifest.shard-*-of-2.jsonl")), "-o", out / "noiseaug-manifest.jsonl")
    cli("run", src, out, "--image-sigma", 5, "--workers", 1)


def test_after_overwrite_the_runs_own_manifest_decides_not_a_stale_one_beside_it(cli, src, tmp_path):
    """A shard's manifest made with other options blocks a new unsharded run until --overwrite; after that,
    the unsharded run has a manifest of its own, which decides: plain re-runs go on (a stale sibling does
    not block them for good)."""
    out = tmp_path / "out"
    write_image(src / "b.png", np.full((8, 8), 99, np.uint8))
    cli("run", src, out, "--shard", "0/2", "--image-sigma", 5, "--workers", 1)
    refused(cli, "run", src, out, "--workers", 1, says="--image-sigma 5, not 10")
    cli("run", src, out, "--overwrite", "--workers", 1)
    assert "up to date" in cli("run", src, out, "--workers", 1).stderr
    cli("run", src, out, "--workers", 1, "--dry-run")


@pytest.mark.parametrize("how", ["named", "default-named", "default-named, from a shard"])
def test_a_manifest_another_run_is_writing_is_refused(cli, src, tmp_path, how):
    """Two runs into different OUTPUTs with one --manifest would write one manifest (and its stat cache): the
    second is refused, as a second run into one OUTPUT is. A manifest named as an OUTPUT's own takes that
    OUTPUT's lock."""
    other = tmp_path / "other"
    other.mkdir()
    manifest, lock = ((other / "m.jsonl", other / ".m.jsonl.lock") if how == "named" else
                      (other / "noiseaug-manifest.jsonl", other / ".noiseaug.lock"))
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        shard = ["--shard", "0/2"] if "shard" in how else []  # the lock is the manifest's, whoever writes it
        result = refused(cli, "run", src, tmp_path / "out", "--manifest", manifest, *shard, "--workers", 1,
                         says="another noiseaug run")
        assert f"the manifest {manifest}" in result.stderr
        assert not (tmp_path / "out" / "a.png").exists() and not manifest.exists()
    cli("run", src, tmp_path / "out", "--manifest", manifest, "--workers", 1)
    cli("verify", manifest)


def test_a_run_under_another_lock_of_output_with_other_options_is_refused_while_it_runs(cli, src, tmp_path):
    """A shard and an unsharded run (or two shard counts) of different options started together found no
    manifest of the other yet, and both wrote: each lock now says which job holds it, and a run seeing another
    lock of OUTPUT held for another job is refused. The same job, another shard, goes on."""
    from noiseaug.config import make_config
    from noiseaug.pipeline import _job_note

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".noiseaug.lock", "w") as fh:  # an unsharded run with --image-sigma 5, running now
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f"running, pid 12345, {_job_note(make_config(image_sigma=5))}\n")
        fh.flush()
        result = refused(cli, "run", src, out, "--shard", "0/2", "--workers", 1, says="another noiseaug run")
        assert "running, pid 12345, .noiseaug.lock" in result.stderr and not (out / "a.png").exists()
        cli("run", src, out, "--shard", "0/2", "--image-sigma", 5, "--workers", 1)  # its own job: goes on
    cli("run", src, out, "--shard", "1/2", "--image-sigma", 5, "--workers", 1)


def test_two_runs_of_other_options_started_together_are_not_both_let_in(tmp_path):
    """Real processes, started at once, many times: at least one of the two is refused every time."""
    import subprocess
    import sys

    src = tmp_path / "in"
    for i in range(40):
        write_image(src / f"d{i % 4}" / f"f{i:03d}.png", np.full((8, 8, 3), i, np.uint8))
    for attempt in range(6):
        out = tmp_path / f"out{attempt}"
        runs = [subprocess.Popen([sys.executable, "-m", "noiseaug", "run", src, out, "-q", "--workers", "1", *extra],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for extra in ([], ["--seed", "1", "--shard", "0/2"])]
        said = [run.communicate(timeout=120)[1] for run in runs]
        assert 2 in [run.returncode for run in runs], (attempt, said)
    for attempt in range(4):  # the shards of one job, started together, all go on (a job array)
        out = tmp_path / f"shards{attempt}"
        runs = [subprocess.Popen([sys.executable, "-m", "noiseaug", "run", src, out, "-q", "--workers", "1",
                                  "--shard", f"{i}/3"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for i in range(3)]
        said = [run.communicate(timeout=120)[1] for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0], (attempt, said)


def test_missing_input_is_refused(cli, tmp_path):
    refused(cli, "run", tmp_path / "nope", tmp_path / "out", says="not a folder")


@pytest.mark.parametrize("toml,says", [
    ('copy-other = "no"', "true or false"), ("workers = 0", "--workers"), ('name = "{stem!r}{ext}"', "conversions"),
    ("include = 5", "--include takes"), ("kinds = 5", "--kinds takes"), ("manifest = 5", "--manifest takes"),
    ('preview = "abc"', "preview takes"), ("preview = -1", "preview takes"), ('progress = "x"', "progress takes"),
])
def test_toml_values_of_the_wrong_type_are_refused(cli, src, tmp_path, toml, says):
    config = tmp_path / "opts.toml"
    config.write_text(toml + "\n", encoding="utf-8")
    refused(cli, "run", src, tmp_path / "out", "--config", config, says=says)


def test_workers_zero_and_format_specs_in_names_are_refused(cli, src, tmp_path):
    refused(cli, "run", src, tmp_path / "out", "--workers", 0, says="--workers")
    refused(cli, "run", src, tmp_path / "out", "--name", "{stem:>300}{ext}", says="format")
    assert not (tmp_path / "out").exists()


def test_equivalent_selections_are_the_same_options(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--kinds", "image,audio", "--exclude", "x*", "--exclude", "y*", "--workers", 1)
    cli("run", src, out, "--kinds", "audio,image,audio", "--exclude", "y*", "--exclude", "x*", "--workers", 1)


def test_output_under_a_file_and_missing_manifest_folder_are_refused(cli, src, tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(cli, "run", src, tmp_path / "afile" / "sub", says="cannot create OUTPUT")
    refused(cli, "run", src, tmp_path / "out", "--manifest", tmp_path / "nope" / "m.jsonl", says="does not exist")
    assert not (tmp_path / "out").exists()


def test_presentation_options_may_come_from_toml_too(cli, src, tmp_path):
    import json

    config = tmp_path / "opts.toml"
    config.write_text("json = true\nquiet = true\nprogress = false\n", encoding="utf-8")
    result = cli("run", src, tmp_path / "out", "--config", config, "--workers", 1)
    assert json.loads(result.stdout)["ok"] == 1 and result.stderr == ""


def test_links_planted_at_the_lock_or_manifest_are_refused(cli, src, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (".noiseaug.lock", "noiseaug-manifest.jsonl"):
        out = tmp_path / f"out{len(name)}"
        out.mkdir()
        os.symlink(victim, out / name)
        result = cli("run", src, out, "--workers", 1, code=None)
        assert result.exit_code != 0 and "symbolic link" in result.stderr
        assert victim.read_text() == "keep me"


def test_preview_pictures_must_be_png(cli, src, tmp_path):
    cli("preview", src / "a.png", "-o", tmp_path / "p.jpg", code=2)
    assert not (tmp_path / "p.jpg").exists()


def test_a_manifest_from_another_noise_scheme_is_refused(cli, src, tmp_path):
    import json

    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    manifest = out / "noiseaug-manifest.jsonl"
    lines = manifest.read_text().splitlines()
    run = json.loads(lines[0])
    run["seeding"] = "an older scheme"
    manifest.write_text("\n".join([json.dumps(run)] + lines[1:]) + "\n")
    refused(cli, "run", src, out, "--workers", 1, says="another noise scheme")
    assert "another noise scheme" in cli("verify", manifest, "--regenerate", code=2).stderr
    cli("verify", manifest)  # the hashes still check


def test_the_library_takes_the_commands_config_file(src, tmp_path):
    """One TOML file for `noiseaug run --config` and `noiseaug.run(config=...)`: the library refused the keys
    that shape the command's output (json, quiet, preview, ...); it leaves them to the command."""
    import json

    import noiseaug

    config = tmp_path / "opts.toml"
    config.write_text('json = true\nquiet = true\nprogress = false\npreview = 2\nimage-sigma = 4\n', encoding="utf-8")
    summary = noiseaug.run(src, tmp_path / "out", config=config, workers=1)
    run = json.loads((tmp_path / "out" / "noiseaug-manifest.jsonl").read_text().splitlines()[0])
    assert summary.exit_code == 0 and run["options"]["image_sigma"] == "4"
    with pytest.raises(noiseaug.UsageError, match="unknown option 'preview'"):
        noiseaug.run(src, tmp_path / "out2", preview=2)  # as a keyword it is no option of the library's
