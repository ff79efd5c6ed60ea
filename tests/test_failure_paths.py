"""Paths off the happy one keep the README's promises: manifests, --overwrite, selection, library hygiene."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import noiseaug
from noiseaug import noise

from conftest import random_images, records, tree, write_image


@pytest.fixture
def src(tmp_path):
    return random_images(tmp_path / "in", ["a/one.png", "a/two.png", "b/three.png", "b/sub/four.png"], seed=9)


def test_append_after_a_torn_last_line_starts_a_new_record(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1, "--include", "a/*")
    manifest = out / "noiseaug-manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes() + b'{"type": "file", "input": "a/tw')  # a kill mid-write
    cli("run", src, out, "--workers", 1)
    lines = manifest.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 5
    assert cli("verify", manifest).exit_code == 0


def test_appended_records_survive_a_kill_before_the_sorted_rewrite(cli, src, tmp_path):
    """What a run killed after appending (before its rewrite) leaves must load, and resume."""
    from noiseaug.manifest import ManifestWriter, read_records

    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1, "--include", "a/*")
    manifest = out / "noiseaug-manifest.jsonl"
    run, recs = records(manifest)
    manifest.write_bytes(manifest.read_bytes() + b'{"type": "file", "input": "b/thr')  # killed mid-write
    writer = ManifestWriter(manifest, run, append=True)  # the next run appends, and is killed too
    writer.write({**recs[0], "input": "b/three.png", "output": "b/three.png"})
    writer.close()
    assert len({(r["input"], r["copy"]) for r in read_records(manifest)}) == 3  # the torn tail left out
    cli("run", src, out, "--workers", 1)
    assert len(records(manifest)[1]) == 4


def test_manifest_through_a_linked_folder_into_input_is_refused(cli, src, tmp_path):
    os.symlink(src / "a", tmp_path / "looks_harmless")
    result = cli("run", src, tmp_path / "out", "--manifest", tmp_path / "looks_harmless" / "m.jsonl", code=2)
    assert "inside INPUT" in result.stderr
    assert not (src / "a" / "m.jsonl").exists()


def test_overwrite_removes_the_outputs_the_new_run_does_not_produce(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1, "--copies", 2)
    (out / "mine.txt").write_text("not noiseaug's")
    result = cli("run", src, out, "--workers", 1, "--overwrite", "--include", "a/*", "--json")
    assert json.loads(result.stdout)["removed"] == 8 and "removed 8 output(s)" in result.stderr  # every _n0, _n1
    _, recs = records(out / "noiseaug-manifest.jsonl")
    written = {k for k in tree(out) if not k.startswith((".noiseaug", "noiseaug-manifest"))}
    assert written == {r["output"] for r in recs} | {"mine.txt"}  # nothing stale, nothing foreign lost
    assert cli("verify", out / "noiseaug-manifest.jsonl").exit_code == 0


def test_selection_options_may_change_without_overwrite(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1, "--include", "a/*")
    cli("run", src, out, "--workers", 1, "--include", "b/*")
    _, recs = records(out / "noiseaug-manifest.jsonl")
    assert sorted(r["input"] for r in recs) == ["a/one.png", "a/two.png", "b/sub/four.png", "b/three.png"]
    assert not any(r.get("input_missing") for r in recs)  # outside the selection is not gone
    shutil.rmtree(src / "a")
    cli("run", src, out, "--workers", 1)
    gone = {r["input"] for r in records(out / "noiseaug-manifest.jsonl")[1] if r.get("input_missing")}
    assert gone == {"a/one.png", "a/two.png"}


def test_a_glob_that_matches_nothing_warns(cli, src, tmp_path):
    result = cli("run", src, tmp_path / "out", "--workers", 1, "--include", "*.jpeg", "--include", "a/*",
                 "--exclude", "nothing/*")
    assert "warning: --include '*.jpeg' matched no file" in result.stderr
    assert "warning: --exclude 'nothing/*' matched no file" in result.stderr
    assert "'a/*'" not in result.stderr


def test_dry_run_verbose_lists_every_file(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1, "--include", "a/*")
    result = cli("run", src, out, "--dry-run", "-v")
    assert "up to date: a/one.png" in result.stderr and "would process: b/sub/four.png" in result.stderr
    assert not (out / "b").exists()


def test_verify_regenerate_on_a_manifest_with_copied_files_and_labels(cli, src, tmp_path):
    from PIL import Image

    (src / "labels.csv").write_text("a,b\n")
    Image.fromarray(np.eye(8, dtype=np.uint8), "P").save(src / "mask.png")
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1, "--copy-other")
    result = cli("verify", out / "noiseaug-manifest.jsonl", "--regenerate")
    assert "6 of 6 outputs" in result.stderr


def test_an_output_folder_that_cannot_be_written_is_one_line(cli, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".noiseaug.lock").mkdir()  # as unwritable as a read-only mount, and root cannot bypass it
    result = cli("run", src, out, "--workers", 1, code=2)
    assert result.stderr.startswith("noiseaug: error: cannot write to OUTPUT") and result.stderr.count("\n") == 1


def test_a_stat_cache_that_cannot_be_opened_is_one_line_and_the_next_run_goes_on(cli, src, tmp_path):
    """Something in the way of the stat cache (a folder where its file goes; a full disk fails the same
    calls) gave a SQLite traceback: one line and exit 1 now, and once it is out of the way the run goes on."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    state = out / ".noiseaug-manifest.jsonl.state"
    state.unlink()
    state.mkdir()
    (src / "a" / "new.png").write_bytes((src / "a" / "one.png").read_bytes())
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "Traceback" not in result.stderr and "the run's index beside the manifest failed" in result.stderr
    state.rmdir()
    cli("run", src, out, "--workers", 1)
    assert cli("verify", out / "noiseaug-manifest.jsonl").exit_code == 0
    assert (out / "a" / "new.png").exists()


def test_a_folder_where_the_index_goes_is_one_line_and_names_stay_escaped_in_errors(cli, src, tmp_path):
    """A folder at the run's index path raised IsADirectoryError (a traceback); an error line about a name
    that is not UTF-8 showed it as \\udcNN where everything else shows \\xNN."""
    import os

    out = tmp_path / "out"
    out.mkdir()
    (out / ".noiseaug-manifest.jsonl.index").mkdir()
    result = cli("run", src, out, "--workers", 1, code=1)
    assert "Traceback" not in result.stderr and "a folder stands where the run's index goes" in result.stderr
    (out / ".noiseaug-manifest.jsonl.index").rmdir()
    cli("run", src, out, "--workers", 1)
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/nothere\xff.jsonl")
    said = cli("verify", missing, code=2).stderr
    assert "nothere\\xff.jsonl" in said and "\\udc" not in said
    manifest = out / "noiseaug-manifest.jsonl"
    manifest.write_text(manifest.read_text(encoding="utf-8") + "\n", encoding="utf-8")  # an editor's blank line
    cli("verify", manifest)
    os.unlink(out / ".noiseaug.lock")
    os.symlink(tmp_path / "elsewhere", out / ".noiseaug.lock")  # a link where the lock goes: OUTPUT refused
    assert "cannot write to OUTPUT" in cli("run", src, out, "--workers", 1, code=2).stderr


def test_a_second_run_in_the_same_process_after_output_was_deleted(src, tmp_path):
    out = tmp_path / "out"
    noiseaug.run(src, out, workers=1)
    shutil.rmtree(out)
    summary = noiseaug.run(src, out, workers=1)
    assert summary.total("ok") == 4 and summary.failed == 0


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_the_library_leaves_process_state_as_it_found_it(src, tmp_path, monkeypatch, start):
    """... the default start method too: a pool through a fork server fixed it (a later set_start_method
    failed with "context has already been set")."""
    import multiprocessing

    from noiseaug.executors import pool

    monkeypatch.setattr(pool, "_start_method", lambda: start)
    saved = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(None, force=True)  # "not chosen yet", as in a fresh process
    try:
        _runs_leave_process_state_alone(src, tmp_path)
    finally:
        multiprocessing.set_start_method(saved, force=True)


def _runs_leave_process_state_alone(src: Path, tmp_path: Path) -> None:
    import multiprocessing

    import cv2
    from PIL import Image

    before = (Image.MAX_IMAGE_PIXELS, dict(os.environ), signal.getsignal(signal.SIGINT),
              signal.getsignal(signal.SIGTERM), sorted(os.listdir("/proc/self/fd")), cv2.getNumThreads(),
              multiprocessing.get_start_method(allow_none=True), signal.set_wakeup_fd(-1))
    signal.set_wakeup_fd(before[-1])
    noiseaug.run(src, tmp_path / "out", workers=1)
    noiseaug.run(src, tmp_path / "out2", workers=2)
    after = (Image.MAX_IMAGE_PIXELS, dict(os.environ), signal.getsignal(signal.SIGINT),
             signal.getsignal(signal.SIGTERM), sorted(os.listdir("/proc/self/fd")), cv2.getNumThreads(),
             multiprocessing.get_start_method(allow_none=True), signal.set_wakeup_fd(-1))
    signal.set_wakeup_fd(before[-1])
    assert after == before
    assert "noiseaug.cli" not in sys.modules or os.environ.get("OPENBLAS_NUM_THREADS") == before[1].get(
        "OPENBLAS_NUM_THREADS")


def test_the_callers_numpy_error_settings_decide_nothing(tmp_path):
    """np.seterr(under="raise") in the caller made every PCM file of a --workers 1 run fail (its noise law
    underflows, as numpy's defaults ignore); a pool's workers ran under their own settings: other records."""
    import soundfile as sf

    from noiseaug.preview import preview

    src = tmp_path / "in"
    write_image(src / "a.png", np.full((8, 8, 3), 100, np.uint8))
    sf.write(src / "t.wav", 0.3 * np.sin(np.arange(4000) / 5), 8000, subtype="PCM_16")
    sigmas = {"audio_sigma": 0.0137, "image_sigma": 7.3}  # laws no other test made (they are cached)
    with np.errstate(all="raise"):
        summary = noiseaug.run(src, tmp_path / "strict", workers=1, **sigmas)
        assert noiseaug.verify(tmp_path / "strict" / "noiseaug-manifest.jsonl", regenerate=True).exit_code == 0
        preview(src / "t.wav", tmp_path / "p.png", audio_sigma=0.0171)  # a law not made before either
        subprocess.run([sys.executable, "-m", "noiseaug", "run", src, tmp_path / "other", "-q",
                        "--audio-sigma", "0.0193"], check=True)  # made elsewhere: verify makes its law here
        assert noiseaug.verify(tmp_path / "other" / "noiseaug-manifest.jsonl", regenerate=True).exit_code == 0
        assert np.geterr() == dict.fromkeys(("divide", "over", "under", "invalid"), "raise")
    noiseaug.run(src, tmp_path / "plain", workers=1, **sigmas)
    assert summary.exit_code == 0 and summary.failed == 0
    assert records(tmp_path / "strict" / "noiseaug-manifest.jsonl")[1] == \
        records(tmp_path / "plain" / "noiseaug-manifest.jsonl")[1]


def test_the_compiled_kernel_steps_aside_when_it_disagrees_with_numpy(monkeypatch):
    if noise._kernel is None:
        pytest.skip(f"no compiled kernel beside {noise.__file__} (no compiler at install time, or built elsewhere)")
    real = noise._kernel

    class Broken:  # what a numpy with another SFC64 would look like to the loops: other draws
        VERSION = real.VERSION

        @staticmethod
        def add_table_noise(pixels, *args):
            clipped = real.add_table_noise(pixels, *args)
            pixels[:1] ^= 1
            return clipped

        add_table_noise_i16 = staticmethod(real.add_table_noise_i16)

    monkeypatch.setattr(noise, "_kernel", Broken)
    monkeypatch.setattr(noise, "_kernel_check", [])
    assert "disagree" in noise.kernel_problem()
    x = np.full((64, 64), 128, np.uint8)
    a = noiseaug.add_noise(x, 10, np.random.Generator(np.random.SFC64(3)))
    monkeypatch.setattr(noise, "_kernel", None)
    b = noiseaug.add_noise(x, 10, np.random.Generator(np.random.SFC64(3)))
    assert np.array_equal(a, b)  # the numpy twin's bytes


def test_the_sdist_carries_what_its_tests_need(tmp_path):
    import tarfile
    from pathlib import Path

    from setuptools import build_meta

    root = Path(__file__).resolve().parent.parent
    cwd = os.getcwd()
    os.chdir(root)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # setuptools' notes on its own configuration
            name = build_meta.build_sdist(str(tmp_path))
    finally:
        os.chdir(cwd)
    with tarfile.open(tmp_path / name) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"tests/conftest.py", "tests/fidelity_cases.py", "tests/fuzz_corpus.py", "Makefile"} <= members
    assert any(m.startswith("sample_data/") for m in members)
    assert not any(m.endswith(".so") or "__pycache__" in m for m in members)


def test_overwrite_removes_outputs_whose_names_change(cli, src, tmp_path):
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    result = cli("run", src, out, "--workers", 1, "--overwrite", "--copies", 3, "--json")
    assert json.loads(result.stdout)["removed"] == 4
    names = {k for k in tree(out) if not k.startswith((".noiseaug", "noiseaug-manifest"))}
    assert names == {r["output"] for r in records(out / "noiseaug-manifest.jsonl")[1]}


def test_a_failure_of_a_file_that_is_gone_is_forgotten(cli, src, tmp_path):
    out = tmp_path / "out"
    (src / "broken.png").write_bytes(b"not an image")
    cli("run", src, out, "--workers", 1, code=1)
    assert cli("verify", out / "noiseaug-manifest.jsonl", code=1)
    (src / "broken.png").unlink()
    cli("run", src, out, "--workers", 1)
    assert "broken.png" not in (out / "noiseaug-manifest.jsonl").read_text()
    cli("verify", out / "noiseaug-manifest.jsonl")


def test_importing_the_codecs_leaves_the_environment_alone():
    import subprocess

    code = ("import os; before = dict(os.environ); import noiseaug.image_io, noiseaug.audio_io; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_verify_regenerate_checks_outputs_of_gone_inputs_by_hash(cli, src, tmp_path):
    """A run flags the records of deleted inputs and leaves their outputs alone: verify --regenerate passes,
    saying which it could only check by hash; a changed output of a gone input is still found."""
    out = tmp_path / "out"
    cli("run", src, out, "--workers", 1)
    (src / "a" / "one.png").unlink()
    cli("run", src, out, "--workers", 1)
    result = cli("verify", out / "noiseaug-manifest.jsonl", "--regenerate", "--json")
    report = json.loads(result.stdout)
    assert report["exit_code"] == 0 and report["inputs_gone"] == 1 and report["matching"] == 4
    [gone] = [p for p in out.rglob("one*") if p.is_file()]
    gone.write_bytes(gone.read_bytes() + b"x")
    result = cli("verify", out / "noiseaug-manifest.jsonl", "--regenerate", code=1)
    assert "content differs" in result.stderr


def test_a_manifest_whose_final_rewrite_fails_says_why_on_its_line(src, tmp_path, monkeypatch):
    from noiseaug import pipeline
    from noiseaug.errors import WriteError

    def full(path, **kwargs):
        raise WriteError(path, "cannot write: No space left on device", 28)

    monkeypatch.setattr(pipeline, "atomic_file", full)
    summary = noiseaug.run(src, tmp_path / "out", workers=1)
    line = [x for x in summary.text().splitlines() if x.startswith("manifest:")][0]
    assert line.endswith("(its final rewrite failed: cannot write: No space left on device; its appended records "
                         "are kept and a re-run continues from them)")
    assert summary.exit_code == 1


def test_a_label_map_named_like_another_images_output_is_not_copied_over_it(cli, tmp_path):
    from PIL import Image

    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "d/x.png", np.full((8, 8, 3), 90, np.uint8))
    Image.fromarray(np.eye(8, dtype=np.uint8), "P").save(src / "d/x_n0.png")  # x.png's first output's name
    Image.fromarray(np.eye(8, dtype=np.uint8), "P").save(src / "d/y.png")  # a label map of a name of its own
    cli("run", src, out, "--workers", 1, "--copy-other", "--copies", 2, code=1)
    _, recs = records(out / "noiseaug-manifest.jsonl")
    by_input = {(r["input"], r["copy"]): r for r in recs}
    assert by_input["d/x_n0.png", 0]["status"] == "error" and "already taken" in by_input["d/x_n0.png", 0]["error"]
    assert by_input["d/x.png", 0]["status"] == by_input["d/x.png", 1]["status"] == by_input["d/y.png", 0]["status"]
    assert by_input["d/y.png", 0]["kind"] == "label" and by_input["d/x.png", 0]["status"] == "ok"
    checked = cli("verify", out / "noiseaug-manifest.jsonl", code=1)  # 1: a file failed in the run
    assert "3 of 3 outputs" in checked.stderr  # d/x_n0.png holds x.png's noisy copy, as its record says


def test_a_pool_started_from_a_fork_server_stops_the_helpers_it_started(src, tmp_path):
    """With a second thread running, the pool's workers come from a fork server (forking could hang them);
    the fork server and resource tracker the run started are gone with it: no process, no descriptor."""
    import threading
    from multiprocessing import forkserver, resource_tracker

    forkserver._forkserver._stop()  # as in a fresh process: none running yet
    resource_tracker._resource_tracker._stop()
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        fds = sorted(os.listdir("/proc/self/fd"))
        noiseaug.run(src, tmp_path / "out", workers=2)
        assert forkserver._forkserver._forkserver_pid is None and resource_tracker._resource_tracker._pid is None
        assert sorted(os.listdir("/proc/self/fd")) == fds
    finally:
        release.set()
        thread.join()
    assert records(tmp_path / "out" / "noiseaug-manifest.jsonl")[1][0]["status"] == "ok"


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_calling_run_without_the_main_guard_gets_one_clear_error(src, tmp_path, guarded):
    """Workers from a fork server import the calling script again: without `if __name__ == "__main__":` the
    script's own run must not start again in each of them (a lock refused, tracebacks); the error says why."""
    import subprocess

    call = f"summary = noiseaug.run({str(src)!r}, {str(tmp_path / 'out')!r}, workers=2)\nprint(summary.exit_code)\n"
    script = tmp_path / "augment.py"
    script.write_text("import threading\nimport noiseaug\n"
                      "threading.Thread(target=threading.Event().wait, daemon=True).start()  # not one thread\n"
                      + ("if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in call.splitlines())
                         if guarded else call))
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    if guarded:
        assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr
        return
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].endswith(
        'needs `if __name__ == "__main__":` around the call when it runs other threads (numpy\'s BLAS threads '
        "count, unless OPENBLAS_NUM_THREADS=1): its worker processes then start from a fork server, which "
        "imports the script again")
    assert "LockedError" not in done.stderr and done.stderr.count("Traceback") <= 1, done.stderr


def test_an_output_name_clash_names_the_copy_that_clashes(cli, tmp_path):
    """Each copy's record of an input whose outputs clash gave the same reason, naming an output that was not
    its own: the reason says which copy clashed, and that none of the input's copies is written."""
    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.png", "a1.png"):  # a.png's copy 10 is a10.png: a1.png's copy 0
        write_image(src / name, np.full((4, 4, 3), 90, np.uint8))
    cli("run", src, out, "--workers", 1, "--copies", 12, "--name", "{stem}{copy}{ext}", code=1)
    _, recs = records(out / "noiseaug-manifest.jsonl")
    reasons = {r["error"] for r in recs if r["input"] == "a1.png"}
    assert reasons == {"output a10.png is already taken by another input or by noiseaug's own files (copy 0: no "
                       "copy of it is written)"}
    assert sum(r["status"] == "ok" for r in recs) == 12 and len(recs) == 24


def test_a_library_run_leaves_its_hosts_stderr_descriptor_alone(src, tmp_path, capfd):
    """Codec chatter was kept off stderr by pointing descriptor 2 at /dev/null around each codec call, in the
    caller's process too: another thread of the host lost about one line in ten meanwhile."""
    import threading
    import time

    done = threading.Event()
    written = []

    def log() -> None:
        while not done.is_set():
            os.write(2, b"host-line\n")
            written.append(1)
            time.sleep(0.0002)

    writer = threading.Thread(target=log)
    writer.start()
    try:
        for i in range(3):
            noiseaug.run(src, tmp_path / f"out{i}", workers=1)
    finally:
        done.set()
        writer.join()
    assert capfd.readouterr().err.count("host-line\n") == len(written) > 0
