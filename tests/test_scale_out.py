"""Dask and object storage, with real components: a moto S3 server on 127.0.0.1 and Dask clusters.

Every run is the real program in a subprocess (``python -m noiseaug``), with
the endpoint and credentials in its environment as a user would set them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from noiseaug.storage.local import LocalStorage

from conftest import random_images, records, tree

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
OWN_FILES = {".noiseaug.lock", "noiseaug-manifest.jsonl", ".noiseaug-manifest.jsonl.state"}


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port), and an environment that points boto3 and s3fs at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield server, f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, request):
    """A boto3 client and two fresh buckets; the environment of every run points at the server."""
    _, url = moto_endpoint
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url, "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1",
           "NOISEAUG_SEGMENT_SECONDS": "0.2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    client = boto3.client("s3", endpoint_url=url)
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]  # parametrized variants: buckets of their own
    name = request.node.name.lower().replace("_", "-")[:33].strip("-") + "-" + digest
    buckets = (f"in-{name}", f"out-{name}")
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    return client, buckets


def upload(client: Any, bucket: str, prefix: str, root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under a prefix (relative key -> bytes)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            key = item["Key"]
            out[key[len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return out


def noiseaug(*args: Any, check: int | None = 0, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "noiseaug", *map(str, args)], capture_output=True, text=True,
                            timeout=300, **kwargs)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def file_records(manifest: bytes) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in manifest.decode().splitlines()]
    assert lines[0]["type"] == "run"
    return lines[1:]


def outputs(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k not in OWN_FILES and not k.startswith(".noiseaug")}


def test_the_same_bytes_locally_on_dask_and_on_s3(s3, tmp_path):
    """(a) local, 1 worker; (b) Dask LocalCluster of 2; (c) S3 -> S3 on Dask; (d) local -> S3: identical bytes."""
    client, (src_bucket, out_bucket) = s3
    upload(client, src_bucket, "data", SAMPLE)
    local, on_dask = tmp_path / "a", tmp_path / "b"
    noiseaug("run", SAMPLE, local, "--workers", "1", "-q")
    noiseaug("run", SAMPLE, on_dask, "--executor", "dask", "--workers", "2", "-q")
    noiseaug("run", f"s3://{src_bucket}/data", f"s3://{out_bucket}/c", "--executor", "dask", "--workers", "2", "-q")
    noiseaug("run", SAMPLE, f"s3://{out_bucket}/d", "--workers", "2", "-q")
    want = tree(local)
    expected = outputs(want)
    assert len(expected) == 12
    assert outputs(tree(on_dask)) == expected
    _, want_records = records(local / "noiseaug-manifest.jsonl")
    _, got = records(on_dask / "noiseaug-manifest.jsonl")
    assert got == want_records
    for prefix in ("c", "d"):
        found = objects(client, out_bucket, prefix)
        assert outputs(found) == expected, prefix
        assert file_records(found["noiseaug-manifest.jsonl"]) == want_records, prefix
        assert set(found) - set(expected) == OWN_FILES, prefix  # no segment or other stray object left
        noiseaug("verify", f"s3://{out_bucket}/{prefix}/noiseaug-manifest.jsonl", "--regenerate", "-q")
    noiseaug("verify", on_dask / "noiseaug-manifest.jsonl", "--regenerate", "-q")


def test_a_rerun_on_s3_lists_once_and_does_nothing(s3):
    client, (src_bucket, out_bucket) = s3
    upload(client, src_bucket, "data", SAMPLE)
    args = ("run", f"s3://{src_bucket}/data", f"s3://{out_bucket}/o", "--workers", "1", "--json")
    first = json.loads(noiseaug(*args).stdout)
    assert first["ok"] == 12
    before = objects(client, out_bucket, "o")
    again = json.loads(noiseaug(*args).stdout)
    assert (again["ok"], again["skipped"], again["up_to_date"]) == (0, 12, True)
    after = objects(client, out_bucket, "o")
    assert {k: v for k, v in after.items() if k != ".noiseaug.lock"} == \
        {k: v for k, v in before.items() if k != ".noiseaug.lock"}


def test_an_s3_output_with_a_local_manifest_reruns_by_the_quick_check(s3, tmp_path, monkeypatch):
    """OUTPUT in a bucket, the manifest local: a re-run ends at the quick check, the outputs' stamps taken from
    the run's one listing of OUTPUT; an output deleted from the bucket is seen there and made again."""
    import noiseaug
    from noiseaug import pipeline

    client, (_, out_bucket) = s3
    out, manifest = f"s3://{out_bucket}/o", tmp_path / "m.jsonl"
    noiseaug.run(SAMPLE, out, workers=1, manifest=manifest)

    def no_index(*args, **kwargs):
        raise AssertionError("the long way was taken")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "RunIndex", no_index)
        assert noiseaug.run(SAMPLE, out, workers=1, manifest=manifest).up_to_date
    gone = sorted(k for k in objects(client, out_bucket, "o") if k.endswith(".png"))[0]
    client.delete_object(Bucket=out_bucket, Key=f"o/{gone}")
    assert noiseaug.run(SAMPLE, out, workers=1, manifest=manifest).total("ok") == 1
    assert gone in objects(client, out_bucket, "o")


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory) -> Path:
    """Images big enough (random 640x640 PNGs) that a run is still going a second or two after it starts."""
    root = tmp_path_factory.mktemp("slow") / "in"
    names = [f"part{i % 3}/img_{i:02d}.png" for i in range(30)]
    return random_images(root, names, shape=(640, 640, 3), seed=7)


@pytest.fixture(scope="module")
def slow_reference(slow_tree, tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("slow") / "ref"
    noiseaug("run", slow_tree, out, "--workers", "2", "-q")
    return {"files": outputs(tree(out)), "records": records(out / "noiseaug-manifest.jsonl")[1]}


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def keys(client: Any, bucket: str, prefix: str) -> set[str]:
    found = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        found.update(item["Key"][len(prefix) + 1:] for item in page.get("Contents", []))
    return found


def test_a_driver_killed_on_s3_is_continued_by_the_next_run(s3, slow_tree, slow_reference):
    client, (_, out_bucket) = s3
    target = f"s3://{out_bucket}/o"
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, target, "--workers", "1", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(k.startswith(".noiseaug-manifest.jsonl.segments/") for k in keys(client, out_bucket, "o")),
             what="a manifest segment")
    proc.kill()
    proc.wait()
    left = keys(client, out_bucket, "o")
    assert any(k.startswith(".noiseaug-manifest.jsonl.segments/") for k in left)  # killed before the end
    assert 0 < len(outputs(dict.fromkeys(left, b""))) < 30
    unfinished = noiseaug("verify", f"{target}/noiseaug-manifest.jsonl", "--json", check=1)
    report = json.loads(unfinished.stdout)
    assert report["pending_segments"] > 0 and report["mismatches"] == [] and report["checked"] > 0
    result = json.loads(noiseaug("run", slow_tree, target, "--workers", "2", "--json").stdout)
    assert result["skipped"] > 0  # what the killed run finished was continued, not redone
    found = objects(client, out_bucket, "o")
    assert outputs(found) == slow_reference["files"]
    assert file_records(found["noiseaug-manifest.jsonl"]) == slow_reference["records"]
    assert set(found) - set(slow_reference["files"]) == OWN_FILES
    assert not client.list_multipart_uploads(Bucket=out_bucket).get("Uploads")


def test_a_second_run_on_the_same_s3_output_is_refused_by_the_lock(s3, slow_tree):
    client, (_, out_bucket) = s3
    target = f"s3://{out_bucket}/o"
    first = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, target, "--workers", "1", "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(keys(client, out_bucket, "o")) > 2, what="the first run's outputs")
    second = noiseaug("run", slow_tree, target, "--workers", "1", check=2)
    assert second.stderr.startswith("noiseaug: error: another noiseaug run (")
    assert len(second.stderr.strip().splitlines()) == 1
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    noiseaug("run", slow_tree, target, "--workers", "1", "-q")  # the lease was released: the next run goes ahead


def test_keys_with_dot_segments_are_refused(s3, tmp_path):
    client, (src_bucket, out_bucket) = s3
    upload(client, src_bucket, "data", random_images(tmp_path / "in", ["a/ok.png"]))
    png = (tmp_path / "in" / "a" / "ok.png").read_bytes()
    for key in ("data/a/../escape.png", "data/a/./dot.png", "data//empty.png"):
        client.put_object(Bucket=src_bucket, Key=key, Body=png)
    result = noiseaug("run", f"s3://{src_bucket}/data", f"s3://{out_bucket}/o", "--workers", "1", "--json",
                      check=None)
    summary = json.loads(result.stdout)
    assert summary["ok"] == 1
    assert len(summary["problems"]) == 3 and all("'..' segment" in p for p in summary["problems"])
    written = keys(client, out_bucket, "o")
    assert outputs(dict.fromkeys(written, b"")).keys() == {"a/ok.png"}
    assert not any(k.startswith("escape") for k in keys(client, out_bucket, ""))
    quiet = noiseaug("run", f"s3://{src_bucket}/data", f"s3://{out_bucket}/q", "--workers", "1", "-q", check=1)
    assert [line.split(": ")[:2] for line in quiet.stderr.splitlines()] == [["noiseaug", "failed"]] * 3
    loud = noiseaug("run", f"s3://{src_bucket}/data", f"s3://{out_bucket}/q", "--workers", "1", check=1)
    # the table counts files with records (none failed); these three are said apart, so the counts agree
    assert "3 path(s) of INPUT could not be taken (no record, not counted in the table: they fail the run):" \
        in loud.stderr


@pytest.mark.parametrize("executor", [["--workers", "1"], ["--executor", "dask", "--workers", "2"]],
                         ids=["pool", "dask"])
def test_an_endpoint_that_goes_away_ends_the_run_with_one_message_and_a_manifest_to_continue(s3, slow_tree,
                                                                                             slow_reference, executor):
    """Stop the S3 server mid-run: exit 1, one clear line, a failed file at most per batch in flight (the rest are
    not tried: each would wait out the backend's retries); start it again (same port, same buckets): a re-run
    ends as a clean run would."""
    from moto.server import ThreadedMotoServer

    client, (_, out_bucket) = s3
    own = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # this test's own endpoint to stop
    own.start()
    host, port = own.get_host_and_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_MAX_ATTEMPTS": "1"}
    target = f"s3://{out_bucket}/o"  # moto keeps its buckets in this process: both servers see them
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, target, *executor],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: any(k.startswith(".noiseaug-manifest.jsonl.segments/") for k in keys(client, out_bucket, "o")),
                 what="a manifest segment")
    except BaseException:
        proc.kill()
        raise
    finally:
        own.stop()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    stops = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stops) == 1 and "cannot reach the storage" in stops[0], err
    tried = {line.split(": ")[2] for line in err.splitlines() if line.startswith("noiseaug: failed: ")}
    assert 0 < len(tried) <= 2 * int(executor[-1]), err  # batches in flight: one per pool worker, two per Dask worker
    result = json.loads(noiseaug("run", slow_tree, target, "--workers", "1", "--json").stdout)
    assert result["skipped"] > 0
    found = objects(client, out_bucket, "o")
    assert outputs(found) == slow_reference["files"]
    assert file_records(found["noiseaug-manifest.jsonl"]) == slow_reference["records"]


FAILED_UPLOAD = """
import os
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_MAX_ATTEMPTS="1", AWS_EC2_METADATA_DISABLED="true")
import boto3
boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bkt")
from noiseaug.storage.remote import FsspecStorage
storage = FsspecStorage("s3://bkt/o", {"default_block_size": 5 << 20})  # parts go up as the output is written

class Source:
    reads = 0
    def read(self, n):
        self.reads += 1
        if self.reads == 1:
            return bytes(n)
        server.stop()  # the endpoint goes away mid-upload: the abort fails too
        raise OSError("the output could not be read")

try:
    storage._upload_large(storage.full("big.bin"), Source())
except OSError as exc:
    print("failed:", exc, flush=True)
"""


def test_a_multipart_upload_that_fails_with_the_endpoint_gone_does_not_hang_the_exit(tmp_path):
    """A large output's upload fails and its abort fails too (the endpoint is down): the process still ends
    (fsspec's file used to retry its last part at the interpreter's exit, for as long as the endpoint stayed
    down: a run printed its summary and never exited)."""
    script = tmp_path / "failed_upload.py"
    script.write_text(FAILED_UPLOAD)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0 and "failed: the output could not be read" in done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_whole_output_sweep_spares_young_uploads_while_a_shard_of_it_runs(s3):
    """Shards take locks of their own, so a shard may run beside a whole-OUTPUT run: that run's sweep of a
    killed run's multipart uploads must then spare young ones (moto dates every upload 2010, so the lock
    reading is checked here against real lock objects; the age rule is the shards' own)."""
    from noiseaug.storage.remote import FsspecStorage

    client, (_, out_bucket) = s3
    storage = FsspecStorage(f"s3://{out_bucket}/o", {})

    def lock(name: str, state: str, expires: float) -> None:
        body = {"state": state, "host": "another-machine", "pid": 4242, "expires": expires}
        client.put_object(Bucket=out_bucket, Key=f"o/{name}", Body=json.dumps(body).encode())

    assert not storage._shards_running(out_bucket, "o/")
    lock(".noiseaug.shard-0-of-2.lock", "clean", time.time() + 600)
    lock(".noiseaug.shard-1-of-2.lock", "running", time.time() - 3600)  # a killed shard's: its lease ran out
    lock(".noiseaug.lock", "running", time.time() + 600)  # the whole-OUTPUT run's own is not a shard's
    assert not storage._shards_running(out_bucket, "o/")
    lock(".noiseaug.shard-1-of-2.lock", "running", time.time() + 600)
    assert storage._shards_running(out_bucket, "o/")
    assert not storage._shards_running(out_bucket, "elsewhere/")


SECRET = "S3cr3t-noiseaug-7f1d2c"


def test_secrets_reach_no_file_no_record_and_no_output(s3, tmp_path):
    """A secret in --storage-option and in the environment, a file that fails and a run that fails: never shown."""
    client, (src_bucket, out_bucket) = s3
    src = random_images(tmp_path / "in", ["a.png", "b/c.png"])
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    upload(client, src_bucket, "data", src)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET + "-token"}
    args = ["--storage-option", f"secret={SECRET}", "--storage-option", f"key=AKIA{SECRET}", "--json", "-v"]
    seen = []
    for run_args in ([f"s3://{src_bucket}/data", f"s3://{out_bucket}/o"],  # one file fails
                     [f"s3://{src_bucket}/data", f"s3://{out_bucket}/d", "--executor", "dask"],  # on Dask too
                     [f"s3://{src_bucket}/data", "s3://no-such-bucket/o"],  # the run fails
                     [f"s3://AKIA:{SECRET}@{src_bucket}/data", tmp_path / "local-out"]):  # a secret in the URL
        result = noiseaug("run", *run_args, "--workers", "1", *args, check=None, env=env)
        assert result.returncode in (1, 2), result.stderr
        seen += [result.stdout, result.stderr]
    verify = noiseaug("verify", f"s3://{out_bucket}/o/noiseaug-manifest.jsonl", "--storage-option",
                      f"secret={SECRET}", "--storage-option", "key=AKIA", check=1, env=env)
    seen += [verify.stdout, verify.stderr]
    stored = objects(client, out_bucket, "o") | {f"d/{k}": v for k, v in objects(client, out_bucket, "d").items()}
    assert "noiseaug-manifest.jsonl" in stored and ".noiseaug.lock" in stored and "d/noiseaug-manifest.jsonl" in stored
    run_record = json.loads(stored["noiseaug-manifest.jsonl"].decode().splitlines()[0])
    assert run_record["options"]["storage_options"] == {"secret": "<redacted>", "key": "<redacted>"}
    for text in seen + [v.decode("latin-1") for v in stored.values()] + \
            [p.read_bytes().decode("latin-1") for p in (tmp_path / "local-out").rglob("*") if p.is_file()]:
        assert SECRET not in text and SECRET.lower() not in text
    assert "s3://no-such-bucket/o: its bucket does not exist" in seen[5]
    assert "s3://<redacted>@" in seen[7] and "credentials in a URL are not taken" in seen[7]
    assert json.loads(seen[2])["failed"] == 1  # the Dask run ran, and failed the broken file


@pytest.mark.parametrize("endpoint", [SECRET, f"http://127.0.0.1:1/{SECRET}", f"http://[{SECRET}]/",
                                      f"http://127.0.0.1:1/{SECRET}%41x"])
def test_a_storage_option_echoed_by_the_backend_is_redacted(s3, tmp_path, endpoint):
    """botocore repeats a bad endpoint in its errors ("Invalid endpoint: ...", "Could not connect to ..."): the
    manifest redacts every option's value, and so does every message."""
    src = random_images(tmp_path / "in", ["a.png"])
    result = noiseaug("run", src, "s3://bucket/o", "--storage-option", f"endpoint_url={endpoint}", check=None)
    assert result.returncode in (1, 2) and result.stderr.startswith("noiseaug: "), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr and "<redacted>" in result.stderr, result.stderr


def test_a_missing_extra_is_named_in_one_line(tmp_path):
    """Without fsspec or Dask installed, a URL or --executor dask says which extra to install (the packages are
    hidden from the process)."""
    code = ("import sys; sys.modules['fsspec'] = None; sys.modules['distributed'] = None; "
            "sys.argv = ['noiseaug'] + sys.argv[1:]; from noiseaug.__main__ import main; main()")
    src = random_images(tmp_path / "in", ["a.png"])
    url = subprocess.run([sys.executable, "-c", code, "run", "s3://bucket/in", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert (url.returncode, url.stderr) == (2, "noiseaug: error: s3://bucket/in: URLs need fsspec: "
                                                "pip install 'noiseaug[s3]' (or [gcs], [azure])\n")
    dask = subprocess.run([sys.executable, "-c", code, "run", str(src), str(tmp_path / "o"), "--executor", "dask"],
                          capture_output=True, text=True)
    assert (dask.returncode, dask.stderr) == (2, "noiseaug: error: --executor dask needs Dask: "
                                                  "pip install 'noiseaug[dask]'\n")
    assert not (tmp_path / "o").exists()  # refused before anything was written


CLUSTER_SCRIPT = """
import sys, time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=":0", memory_limit=sys.argv[1] if len(sys.argv) > 1 else "auto")
print(cluster.scheduler_address, flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def dask_cluster(tmp_path, request):
    """A Dask LocalCluster of two worker processes in a process of its own (so a test can kill all of it);
    a test marked ``worker_memory("250MB")`` gets workers whose nanny restarts them above that, one marked
    ``worker_env(NAME=value)`` workers with that environment and no AWS_* variable of the test's."""
    import selectors

    marker = request.node.get_closest_marker("worker_memory")
    env_marker = request.node.get_closest_marker("worker_env")
    env = None
    if env_marker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env_marker.kwargs
    log = tmp_path / "cluster.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", CLUSTER_SCRIPT, *(marker.args if marker else ())],
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True, env=env)
    with selectors.DefaultSelector() as sel:  # a cluster that cannot start must not hang the suite
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=120)
    address = proc.stdout.readline().strip() if ready else ""
    assert address.startswith("tcp://127.0.0.1:"), f"no cluster: {address!r}\n{log.read_text()[-2000:]}"
    yield proc, address
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def worker_pids(address: str) -> list[int]:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        return list(client.run(os.getpid).values())


class _Unreachable(LocalStorage):
    def read(self, rel: str) -> bytes:
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_dask_task_stops_at_the_runs_stop_event_and_after_a_failure_the_next_file_would_share(dask_cluster,
                                                                                                 tmp_path,
                                                                                                 monkeypatch):
    """run_batch, as a worker runs it: every file; none once the driver set the run's event; one when the
    storage cannot be reached (the next file would wait out the same retries)."""
    from distributed import Client, Event

    from noiseaug.config import make_config
    from noiseaug.executors import cluster
    from noiseaug.executors.cluster import run_batch
    from noiseaug.records import Job

    monkeypatch.setattr(cluster, "STOP_EVERY", 0.0)  # the event is asked before every file
    from noiseaug.worker import Context

    names = [f"x{i}.png" for i in range(6)]
    src = random_images(tmp_path / "in", names, shape=(8, 8, 3))
    jobs = [Job(n, "image", (src / n).stat().st_size) for n in names]
    ctx = Context(LocalStorage(str(src)), LocalStorage(str(tmp_path / "out")), make_config(None))
    _, address = dask_cluster
    with Client(address, timeout="30s") as client:
        assert len(run_batch(jobs, ctx, "noiseaug-stop-test-unset")) == 6
        Event("noiseaug-stop-test-set", client=client).set()
        assert run_batch(jobs, ctx, "noiseaug-stop-test-set") == []
    down = Context(_Unreachable(str(src)), LocalStorage(str(tmp_path / "out2")), make_config(None))
    [outcomes] = run_batch(jobs, down)
    assert outcomes[0].fatal and "cannot read" in outcomes[0].record["error"]


def test_a_dask_worker_killed_mid_run_costs_nothing(dask_cluster, slow_tree, slow_reference, tmp_path):
    _, address = dask_cluster
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, out, "--executor", "dask",
                             "--scheduler", address, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: len(list(out.rglob("*.png"))) >= 2, what="the first outputs")
    os.kill(worker_pids(address)[0], signal.SIGKILL)
    assert proc.poll() is None, "the run ended before the worker was killed"
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert outputs(tree(out)) == slow_reference["files"]
    _, got = records(out / "noiseaug-manifest.jsonl")
    assert got == slow_reference["records"]  # every file recorded once, as a clean run records it
    assert not [p for p in out.rglob("*") if p.name.endswith(".noiseaug-tmp")]


@pytest.mark.worker_env(AWS_ENDPOINT_URL="http://127.0.0.1:1", AWS_EC2_METADATA_DISABLED="true")
def test_workers_without_credentials_stop_the_run_once_and_use_the_drivers_endpoint(dask_cluster, s3, tmp_path):
    """Workers of a scheduler of yours with no credentials: one line that says so, not a failure per file.
    With credentials given as options they write to the endpoint the driver checked, not their own."""
    client, (_, out_bucket) = s3
    _, address = dask_cluster
    src = random_images(tmp_path / "in", [f"d{i % 2}/x{i}.png" for i in range(40)], shape=(16, 16, 3))
    bare = noiseaug("run", src, f"s3://{out_bucket}/bare", "--scheduler", address, check=1)
    stops = [line for line in bare.stderr.splitlines() if line.startswith("stopped:")]
    assert len(stops) == 1 and "no credentials for the storage" in stops[0], bare.stderr
    assert len([line for line in bare.stderr.splitlines() if line.startswith("noiseaug: failed: ")]) <= 4
    keyed = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    noiseaug("run", src, f"s3://{out_bucket}/keyed", "--scheduler", address, *keyed)
    assert len(outputs(objects(client, out_bucket, "keyed"))) == 40


def test_a_lost_scheduler_ends_the_run_with_exit_1_and_a_manifest_to_continue(dask_cluster, slow_tree,
                                                                               slow_reference, tmp_path):
    cluster, address = dask_cluster
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, out, "--executor", "dask",
                             "--scheduler", address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(out.rglob("*.png"))) >= 2, what="the first outputs")
    os.killpg(cluster.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "stopped: lost the connection to the Dask scheduler" in err
    noiseaug("run", slow_tree, out, "--workers", "2", "-q")
    assert outputs(tree(out)) == slow_reference["files"]
    assert records(out / "noiseaug-manifest.jsonl")[1] == slow_reference["records"]


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_on_dask_records_only_files_it_can_vouch_for(dask_cluster, slow_tree, slow_reference, tmp_path,
                                                            signals):
    """Once: the tasks in flight end after the file each is on, and those are recorded. Twice: the driver gives
    up on the tasks in flight and records none of their files (it cannot tell which a worker finished, rather
    than all as abandoned). Either way the next run ends as a clean one."""
    _, address = dask_cluster
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, out, "--executor", "dask",
                             "--scheduler", address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(out.rglob("*.png"))) >= 1, what="the first output")
    for i in range(signals):
        time.sleep(0.2 * i)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert ("abandoning" if signals == 2 else "stopping") in err and "Traceback" not in err
    _, got = records(out / "noiseaug-manifest.jsonl")
    assert (got or signals == 2) and len(got) < 30 and all(r["status"] == "ok" for r in got), err
    noiseaug("run", slow_tree, out, "--executor", "dask", "--scheduler", address, "-q")
    assert outputs(tree(out)) == slow_reference["files"]
    assert records(out / "noiseaug-manifest.jsonl")[1] == slow_reference["records"]


def test_shards_and_merge_work_on_urls(s3, slow_tree, slow_reference):
    client, (_, out_bucket) = s3
    target = f"s3://{out_bucket}/o"
    for shard in ("0/2", "1/2"):
        noiseaug("run", slow_tree, target, "--shard", shard, "--workers", "2", "-q")
    manifests = [f"{target}/noiseaug-manifest.shard-{i}-of-2.jsonl" for i in (0, 1)]
    noiseaug("merge", *manifests, "-o", f"{target}/noiseaug-manifest.jsonl")
    found = objects(client, out_bucket, "o")
    assert file_records(found["noiseaug-manifest.jsonl"]) == slow_reference["records"]
    assert {k: v for k, v in outputs(found).items() if ".shard-" not in k} == slow_reference["files"]
    noiseaug("verify", f"{target}/noiseaug-manifest.jsonl", "-q")
    # the README's pattern, which no shell expands for a URL: noiseaug does
    globbed = noiseaug("merge", f"{target}/noiseaug-manifest.shard-*-of-2.jsonl", "-o", f"{target}/globbed.jsonl")
    assert objects(client, out_bucket, "o")["globbed.jsonl"] == found["noiseaug-manifest.jsonl"]
    assert "from 2 manifests" in globbed.stderr
    for pattern in (f"{target}/nothing-*.jsonl", "s3://no-such-bucket-here/x-*.jsonl"):
        missing = noiseaug("merge", pattern, "-o", f"{target}/x.jsonl", check=2)
        assert missing.stderr == f"noiseaug: error: {pattern}: no manifest matches\n"


def test_ctrl_c_at_a_terminal_stops_a_run_on_its_own_local_cluster_cleanly(slow_tree, tmp_path):
    """Ctrl-C at a terminal signals the whole process group, Dask's worker processes included: they leave it to
    the driver, which finishes the files in flight."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, out, "--executor", "dask",
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: len(list(out.rglob("*.png"))) >= 2, what="the first outputs")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Warning" not in err
    in_flight = int(err.split("finishing ")[1].split()[0])
    assert in_flight > 0
    _, got = records(out / "noiseaug-manifest.jsonl")
    assert 2 <= len(got) < 30 and all(r["status"] == "ok" for r in got)


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(language: str, after: str, nth: int = 0) -> str:
    import re

    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    return re.compile(rf"```{language}\n(.*?)```", re.S).findall(text, start)[nth]


def recipe_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_readme_recipe_an_existing_scheduler(dask_cluster, tmp_path):
    _, address = dask_cluster
    random_images(tmp_path / "data" / "clean", ["a.png", "b/c.png"])
    script = readme_block("sh", "## On a cluster")
    assert "--scheduler tcp://10.0.0.5:8786" in script
    done = subprocess.run(["bash", "-ec", script.replace("tcp://10.0.0.5:8786", address)], cwd=tmp_path, check=True,
                          env=recipe_env(), capture_output=True, text=True)
    _, got = records(tmp_path / "data" / "noisy" / "noiseaug-manifest.jsonl")
    assert [r["status"] for r in got] == ["ok", "ok"]
    import importlib.util
    if importlib.util.find_spec("bokeh") is None:  # a scheduler without a dashboard: no made-up link to one
        assert "Dask dashboard" not in done.stderr, done.stderr


SLURM_STAND_IN = '''
from distributed import LocalCluster


class SLURMCluster(LocalCluster):
    """Stands in for dask_jobqueue's (no Slurm here): same calls, a worker per "job", in threads (Slurm's
    workers start in jobs of their own; spawned processes would run this script again)."""

    def __init__(self, cores, processes, memory, walltime):
        super().__init__(n_workers=0, threads_per_worker=cores, processes=False, dashboard_address=":0")

    def scale(self, jobs):
        super().scale(min(jobs, 2))
'''


def test_readme_recipe_dask_jobqueue_on_slurm(tmp_path):
    random_images(tmp_path / "data" / "clean", ["a.png", "b/c.png", "d.png"])
    script = readme_block("python", "## On a cluster")
    assert "from dask_jobqueue import SLURMCluster\n" in script
    (tmp_path / "recipe.py").write_text(script.replace("from dask_jobqueue import SLURMCluster\n", SLURM_STAND_IN))
    result = subprocess.run([sys.executable, "recipe.py"], cwd=tmp_path, env=recipe_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "image   3        0       0" in result.stdout
    run_record, got = records(tmp_path / "data" / "noisy" / "noiseaug-manifest.jsonl")
    assert run_record["options"]["executor"] == "dask" and run_record["seed"] == 7
    assert [r["status"] for r in got] == ["ok"] * 3


def test_readme_recipe_s3_with_credentials_from_the_environment(s3, tmp_path):
    client, (bucket, _) = s3
    upload(client, bucket, "clean", random_images(tmp_path / "clean", ["a.png", "b/c.png"]))
    script = readme_block("sh", "## On a cluster", 1)
    assert "s3://my-bucket/clean s3://my-bucket/noisy" in script
    result = subprocess.run(["bash", "-ec", script.replace("my-bucket", bucket)], cwd=tmp_path, env=recipe_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 outputs" in result.stderr
    assert {"a.png", "b/c.png"} <= set(keys(client, bucket, "noisy"))


def test_file_timeout_is_enforced_inside_dask_workers(dask_cluster, slow_tree, tmp_path):
    _, address = dask_cluster
    out = tmp_path / "out"
    result = noiseaug("run", slow_tree, out, "--executor", "dask", "--scheduler", address, "--file-timeout", "0.001",
                      "--json", check=1)
    summary = json.loads(result.stdout)
    assert summary["failed"] == 30 and summary["ok"] == 0
    _, got = records(out / "noiseaug-manifest.jsonl")
    assert {r["error"] for r in got} == {"took longer than --file-timeout 0.001 s; abandoned"}
    assert not list(out.rglob("*.png"))  # nothing partial, nothing at all
    noiseaug("run", slow_tree, out, "--executor", "dask", "--scheduler", address, "-q")  # the failures are retried


@pytest.mark.worker_memory("250MB")
def test_a_file_that_kills_its_dask_worker_every_time_is_recorded_as_failed(dask_cluster, tmp_path):
    """A 12000x12000 PNG (0.4 MB of zeros) decodes to 432 MB: the nanny kills the worker every time. The batch is
    split, the culprit recorded as failed with why, the other files written."""
    import cv2

    _, address = dask_cluster
    src = random_images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    ok, data = cv2.imencode(".png", np.zeros((12000, 12000, 3), np.uint8))
    (src / "huge.png").write_bytes(data.tobytes())
    out = tmp_path / "out"
    result = noiseaug("run", src, out, "--executor", "dask", "--scheduler", address, "--max-pixels", "200000000",
                      "--json", check=1)
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["failed"]) == (3, 1)
    _, got = records(out / "noiseaug-manifest.jsonl")
    assert {r["input"]: r.get("error") for r in got}["huge.png"] == \
        "the Dask worker processing this file died each time it was tried"
    assert result.stderr.count("huge.png") == 2  # its line as it failed, and in the summary; no Dask log


def test_an_overwrite_killed_on_s3_leaves_a_manifest_of_the_new_options(s3, slow_tree, tmp_path):
    """--overwrite starts a new manifest: killed midway, the next run continues it (not the old one)."""
    client, (_, out_bucket) = s3
    target = f"s3://{out_bucket}/o"
    noiseaug("run", slow_tree, target, "--workers", "2", "-q")
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, target, "--workers", "1",
                             "--overwrite", "--image-sigma", "5", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(k.startswith(".noiseaug-manifest.jsonl.segments/") for k in keys(client, out_bucket, "o")),
             what="a manifest segment of the --overwrite run")
    proc.kill()
    proc.wait()
    result = json.loads(noiseaug("run", slow_tree, target, "--workers", "2", "--image-sigma", "5", "--json").stdout)
    assert result["skipped"] > 0  # continued from what the killed --overwrite run did
    reference = tmp_path / "ref"
    noiseaug("run", slow_tree, reference, "--workers", "2", "--image-sigma", "5", "-q")
    found = objects(client, out_bucket, "o")
    assert outputs(found) == outputs(tree(reference))
    assert file_records(found["noiseaug-manifest.jsonl"]) == records(reference / "noiseaug-manifest.jsonl")[1]


def test_a_run_whose_lease_is_taken_over_stops(s3, slow_tree):
    """Another run takes the lock over (its lease ran out, say): this run stops, exit 1, and leaves the manifest
    to the new holder."""
    client, (_, out_bucket) = s3
    target = f"s3://{out_bucket}/o"
    env = {**os.environ, "NOISEAUG_LOCK_LEASE": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, target, "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: len(keys(client, out_bucket, "o")) > 2, what="the first outputs")
    body = json.dumps({"state": "running", "host": "elsewhere", "pid": 1, "expires": time.time() + 3600})
    client.put_object(Bucket=out_bucket, Key="o/.noiseaug.lock", Body=body.encode())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "stopped: lost OUTPUT's lock" in err
    assert json.loads(client.get_object(Bucket=out_bucket, Key="o/.noiseaug.lock")["Body"].read())["host"] == \
        "elsewhere"  # the new holder's lock, untouched


def test_a_rerun_on_s3_makes_no_request_per_file(s3, tmp_path, caplog):
    """Nothing to do: a listing of INPUT, one of OUTPUT and a few requests for noiseaug's own objects, however
    many files there are."""
    import logging

    client, (src_bucket, out_bucket) = s3
    upload(client, src_bucket, "data", random_images(tmp_path / "in", [f"f{i:02d}/x.png" for i in range(40)],
                                                     shape=(8, 8, 3)))
    args = ("run", f"s3://{src_bucket}/data", f"s3://{out_bucket}/o", "--workers", "1", "-q")
    noiseaug(*args)
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        caplog.clear()
        noiseaug(*args)
    requests = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert 0 < len(requests) <= 24, "\n".join(requests)  # 18 here, for 40 files as for 4
    assert not [r for r in requests if "/x.png" in r]


@pytest.fixture
def not_a_scheduler():
    """A TCP port on 127.0.0.1 that accepts connections and never speaks Dask (an HTTP server)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_port_that_is_not_a_scheduler_ends_the_run_after_dasks_connect_timeout(not_a_scheduler, slow_tree,
                                                                                 tmp_path):
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    result = noiseaug("run", slow_tree, tmp_path / "out", "--scheduler", not_a_scheduler, "-q", check=1, env=env)
    assert result.stderr == (f"noiseaug: stopped: no answer from the Dask scheduler at {not_a_scheduler} in 2 s "
                             "(is it a Dask scheduler?)\n")


def test_a_run_that_did_no_file_binds_no_options(tmp_path):
    """A run stopped before its first file (here: no scheduler) leaves a manifest without file records; the
    corrected run may use other options."""
    src = random_images(tmp_path / "in", ["a.png"])
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    noiseaug("run", src, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:1", "-q", check=1, env=env)
    assert (tmp_path / "out" / "noiseaug-manifest.jsonl").exists()
    noiseaug("run", src, tmp_path / "out", "--image-sigma", "5", "-q", check=0)
    lines = (tmp_path / "out" / "noiseaug-manifest.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["options"]["image_sigma"] == "5" and len(lines) == 2


def test_ctrl_c_while_connecting_to_a_silent_scheduler_stops_at_once(not_a_scheduler, slow_tree, tmp_path):
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3600s"}  # only the signal can end it
    proc = subprocess.Popen([sys.executable, "-m", "noiseaug", "run", slow_tree, tmp_path / "out", "--scheduler",
                             not_a_scheduler], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a run that ignored the signal would wait for the hour-long timeout
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--scheduler", "http://127.0.0.1:1"], "--scheduler http://127.0.0.1:1: not a Dask scheduler address"),
    (["--scheduler", "tcp://127.0.0.1:x", "--executor", "local"], "--scheduler is for --executor dask"),
    (["s3:/bucket/out"], "OUTPUT 's3:/bucket/out' looks like a URL with a slash missing"),
    (["s3://"], "s3://: names no bucket"),
    (["s3://bad!name/o"], "Invalid bucket name"),
    (["--manifest", "s3://no-such-bucket/m.jsonl"], "--manifest s3://no-such-bucket: its bucket does not exist"),
    (["s3://{out}/o", "--storage-option", "bogus=1"], "--storage-option not taken by the file system"),
    (["s3://{out}/x/../y"], "s3://{out}/x/../y: a URL with an empty, '.' or '..' segment is refused"),
    (["s3://{out}//y"], "a URL with an empty, '.' or '..' segment is refused"),
    (["--manifest", "s3://{out}/q/../m.jsonl"], "a URL with an empty, '.' or '..' segment is refused"),
    (["--manifest", "s3://{out}/mm//m.jsonl"], "a URL with an empty, '.' or '..' segment is refused"),
    (["s3://{out}/o10//"], "a URL with an empty, '.' or '..' segment is refused"),
    (["s3://{out}/s3?x=SECRETXYZ123"], "a query string or fragment ('?', '#') in a URL is not taken"),
    (["s3://SECRETXYZ123@{out}/o"], "s3://<redacted>@{out}/o: credentials in a URL are not taken"),
    (["http://127.0.0.1:1/{out}/o"], "http:// is not a storage noiseaug reads and writes (it takes s3://, gs://"),
    (["ftp://127.0.0.1:1/o"], "ftp://127.0.0.1:1/o: ftp:// is not a storage noiseaug reads and writes"),
    (["--manifest", "hdfs://h/m.jsonl"], "hdfs:// is not a storage noiseaug reads and writes"),
    (["s3://{out}/o", "--storage-option", "endpoint_url=SECRETXYZ123"], "(check --storage-option"),
    (["s3://{out}/o", "--storage-option", "config_kwargs.retries=SECRETXYZ123"], "(check --storage-option"),
    (["s3://{out}/o", "--storage-option", "anon=no"], "--storage-option anon takes true or false, not 'no'"),
    (["s3://{out}/o", "--storage-option", "endpoint_url=http://127.0.0.1:notaport"], "(check --storage-option"),
    (["s3://{out}/o", "--storage-option", "config_kwargs.connect_timeout=abc"], "(check --storage-option"),
])
def test_scale_out_usage_errors_are_one_line_and_exit_2(s3, tmp_path, args, message):
    _, (_, out_bucket) = s3
    src = random_images(tmp_path / "in", ["a.png"])
    local_out = [] if any(a.startswith("s3:") or "://" in a for a in args[:1]) else [tmp_path / "out"]
    argv = [src, *local_out, *[a.replace("{out}", out_bucket) for a in args]]
    result = noiseaug("run", *argv, check=2)
    message = message.replace("{out}", out_bucket)
    assert result.stderr.startswith("noiseaug: error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "SECRETXYZ123" not in result.stderr
    assert s3[0].list_objects_v2(Bucket=out_bucket).get("KeyCount") == 0, "nothing is written"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))


def test_verify_and_merge_refuse_an_unknown_storage_option_with_exit_2(s3):
    _, (_, out_bucket) = s3
    manifest = f"s3://{out_bucket}/o/noiseaug-manifest.jsonl"
    for args in (["verify", manifest], ["merge", manifest, "-o", f"s3://{out_bucket}/m.jsonl"]):
        result = noiseaug(*args, "--storage-option", "bogus=1", check=2)
        assert result.stderr.startswith("noiseaug: error: --storage-option not taken by the file system")


def test_overwrite_removes_copied_label_maps_a_run_without_copy_other_leaves_alone(tmp_path, cli):
    """--copy-other copied a palette mask; an --overwrite run without it does not produce it: removed."""
    from PIL import Image

    src = random_images(tmp_path / "in", ["a.png"])
    mask = Image.new("P", (16, 16))
    mask.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    (src / "labels").mkdir()
    mask.save(src / "labels" / "mask.png")
    out = tmp_path / "out"
    cli("run", src, out, "--copy-other", "--workers", "1", "-q")
    assert (out / "labels" / "mask.png").exists()
    result = cli("run", src, out, "--image-sigma", "5", "--overwrite", "--workers", "1")
    assert not (out / "labels" / "mask.png").exists()
    assert "removed 1 output" in result.stderr
    _, got = records(out / "noiseaug-manifest.jsonl")
    assert [r["input"] for r in got] == ["a.png"]


def test_a_killed_runs_manifest_spool_is_swept_by_the_next_remote_run(tmp_path, monkeypatch):
    """Spools are named by their run's pid: one whose process is gone is removed, a live one is kept."""
    import tempfile

    from noiseaug.home import SPOOL_PREFIX, RemoteHome
    from noiseaug.storage.remote import FsspecStorage

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"{SPOOL_PREFIX}{dead.stdout.strip()}-abc"
    live = tmp_path / f"{SPOOL_PREFIX}{os.getpid()}-def"
    for folder in (gone, live):
        folder.mkdir()
        (folder / "noiseaug-manifest.jsonl").write_text("{}\n")
    home = RemoteHome(FsspecStorage("memory://spool-test/o", {}), "noiseaug-manifest.jsonl")
    try:
        assert not gone.exists() and live.exists()
        assert home.spool.parent == tmp_path and home.spool.name.startswith(f"{SPOOL_PREFIX}{os.getpid()}-")
    finally:
        home.close()
    assert not home.spool.exists()


def test_memory_urls_run_in_process_only(tmp_path):
    import noiseaug
    from noiseaug.errors import UsageError

    src = random_images(tmp_path / "in", ["a.png", "b/c.png"])
    with pytest.raises(UsageError, match="memory:// lives in this process only"):
        noiseaug.run(src, "memory://mem-test/out", workers=2)
    summary = noiseaug.run(src, "memory://mem-test/out", workers=1)
    assert summary.exit_code == 0 and summary.counts["image", "ok"] == 2
    again = noiseaug.run(src, "memory://mem-test/out", workers=1)
    assert again.counts["image", "skipped"] == 2


def test_refused_credentials_at_the_start_are_usage_errors_later_storage_errors():
    """Credentials the storage refuses (no right to write, a bad signature) are the user's to fix: exit 2 when
    found taking the lock or listing INPUT; a refusal in the middle of a run is a storage failure (exit 1)."""
    from noiseaug.errors import StorageError, UsageError
    from noiseaug.storage.remote import _failure

    for exc in (PermissionError(13, "Access Denied"), OSError("An error occurred (SignatureDoesNotMatch) ...")):
        assert isinstance(_failure(exc, "cannot take s3://b/o's lock", start=True), UsageError)
        assert isinstance(_failure(exc, "cannot upload s3://b/o/x"), StorageError)
    assert isinstance(_failure(OSError("Internal Error"), "cannot list s3://b/i", start=True), StorageError)


def test_a_dry_run_refuses_an_output_bucket_the_run_would_refuse(s3, tmp_path):
    src = random_images(tmp_path / "in", ["a.png"])
    result = noiseaug("run", src, "s3://no-such-bucket-for-a-plan/o", "--dry-run", check=2)
    assert result.stderr == "noiseaug: error: s3://no-such-bucket-for-a-plan/o: its bucket does not exist " \
                            "(noiseaug creates no buckets)\n"
    manifest = noiseaug("run", src, tmp_path / "out", "--manifest", "s3://no-such-bucket-for-a-plan/m.jsonl",
                        "--dry-run", check=2)
    assert "its bucket does not exist" in manifest.stderr and not (tmp_path / "out").exists()
    refused = noiseaug("run", src, tmp_path / "out", "--manifest", "s3://no-such-bucket-for-a-plan/m.jsonl", check=2)
    assert "--manifest s3://no-such-bucket-for-a-plan: its bucket" in refused.stderr  # which bucket, said
    assert not (tmp_path / "out").exists()  # refused before anything is written: no OUTPUT folder either


def test_input_refused_as_the_run_starts_is_a_usage_error(monkeypatch):
    """Listing INPUT with credentials the storage refuses (or options it cannot take) is the user's to fix."""
    from noiseaug.errors import UsageError
    from noiseaug.storage.remote import FsspecStorage

    storage = FsspecStorage("memory://refused/in", {})
    for exc in (PermissionError("The AWS Access Key Id you provided does not exist in our records."),
                ValueError("Invalid endpoint: nowhere")):
        monkeypatch.setattr(storage.fs, "ls", lambda *a, exc=exc, **k: (_ for _ in ()).throw(exc))
        with pytest.raises(UsageError, match=str(exc).split(":")[0]):
            storage.exists()


def test_root_urls_are_checked_before_any_request():
    """What a root URL may not hold, and what it may (an abfs URL names container@account, no user)."""
    from noiseaug.errors import UsageError
    from noiseaug.storage.remote import check_url

    for fine in ("s3://b/x", "s3://b/x/", "gs://b", "abfs://cont@acct.dfs.core.windows.net/p", "file:///tmp/x",
                 "memory://x/y"):
        check_url(fine)
    for bad in ("s3://u@b/x", "gs://u:p@b/x", "s3://b/x/../y", "s3://b//y", "s3://b/./x", "s3://b/x?y=1",
                "s3://b/x#f", "file:///tmp/../x"):
        with pytest.raises(UsageError):
            check_url(bad)


def test_dask_tasks_join_the_pools_batches_in_order():
    """Every job once, in order; small files by the count, large ones by the bytes."""
    from noiseaug.executors.cluster import TASK_BYTES, TASK_FILES, _larger
    from noiseaug.records import Job

    small = [[Job(f"s{b}-{i}", "image", 4000) for i in range(16)] for b in range(9)]
    tasks = list(_larger(iter(small)))
    assert [len(t) for t in tasks] == [TASK_FILES, TASK_FILES, 16]
    assert [j.rel for t in tasks for j in t] == [j.rel for b in small for j in b]
    large = [[Job(f"l{i}", "image", TASK_BYTES // 3 + 1)] for i in range(7)]
    assert [len(t) for t in _larger(iter(large))] == [3, 3, 1]


def test_a_local_cluster_run_from_the_library_leaves_no_helper_process(tmp_path):
    """The LocalCluster's workers come from multiprocessing's fork server: the run that started it stops it."""
    from multiprocessing import forkserver

    import noiseaug

    forkserver._forkserver._stop()  # as in a fresh process
    src = random_images(tmp_path / "in", ["a.png", "b.png"])
    summary = noiseaug.run(src, tmp_path / "out", executor="dask", workers=2)
    assert summary.total("ok") == 2
    assert forkserver._forkserver._forkserver_pid is None


def test_a_recording_the_storage_cannot_hand_over_is_a_failed_file_not_a_crash(s3, tmp_path):
    """An option that breaks reading (here s3fs's block size) fails each file in one line, a streamed
    recording as a whole object."""
    import soundfile as sf

    client, (in_bucket, _) = s3
    src = random_images(tmp_path / "in", ["a.png"])
    sf.write(src / "t.wav", np.zeros((800, 1), np.int16), 8000, subtype="PCM_16")
    upload(client, in_bucket, "i", src)
    result = noiseaug("run", f"s3://{in_bucket}/i", tmp_path / "out", "--workers", "2",
                      "--storage-option", "default_block_size=abc", check=1)
    assert "Traceback" not in result.stderr and "exited unexpectedly" not in result.stderr, result.stderr
    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    assert sorted(r["input"] for r in recs) == ["a.png", "t.wav"]
    assert all(r["status"] == "error" and r["error"].startswith("cannot read: ") for r in recs)


def test_a_recording_read_short_of_its_size_is_a_failed_file(s3, tmp_path):
    """An option that makes s3fs stop short (a negative block size) must not give a shorter recording an ok."""
    import soundfile as sf

    client, (in_bucket, _) = s3
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "t.wav", np.zeros((800, 1), np.int16), 8000, subtype="PCM_16")
    upload(client, in_bucket, "i", src)
    noiseaug("run", f"s3://{in_bucket}/i", tmp_path / "out", "--workers", "1",
             "--storage-option", "default_block_size=-5", check=1)
    [rec] = records(tmp_path / "out" / "noiseaug-manifest.jsonl")[1]
    assert rec["status"] == "error" and rec["error"] == "cannot read: read 1639 bytes of an object of 1644"


def test_an_upper_case_scheme_is_the_same_storage(s3, tmp_path):
    client, (in_bucket, out_bucket) = s3
    upload(client, in_bucket, "i", random_images(tmp_path / "in", ["a.png"]))
    noiseaug("run", f"S3://{in_bucket}/i", f"S3://{out_bucket}/o", "--workers", "1")
    assert "a.png" in objects(client, out_bucket, "o")


def test_an_upload_to_an_endpoint_that_stops_answering_gives_up_instead_of_waiting_for_ever():
    """botocore asks for ``Expect: 100-continue`` on uploads and aiohttp waited for the interim answer under no
    timeout: against an endpoint that accepts and never answers (a stalled proxy, a network dropping packets)
    a run hung for ever, past two Ctrl-Cs. Now the read timeout (1 s here, one attempt a request) bounds each
    request, and the retries give up."""
    import socket
    import threading

    from noiseaug.storage.remote import filesystem

    silent = socket.create_server(("127.0.0.1", 0))
    held: list[Any] = []  # accepted, never answered
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in iter(int, 1)], daemon=True).start()
    fs, path = filesystem("s3://bucket/key.png", {
        "key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "config_kwargs": {"read_timeout": 1, "connect_timeout": 1, "retries": {"max_attempts": 1}}})
    outcome: list[BaseException] = []

    def upload() -> None:
        try:
            fs.pipe_file(path, b"\x89PNG" * 64)
        except Exception as exc:  # what the run's worker gets, and records
            outcome.append(exc)

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the upload is still waiting for an answer"
    assert held and outcome and "timeout" in str(outcome[0]).lower(), outcome


def test_an_input_whose_name_is_not_utf8_fails_alone_on_object_storage_with_a_reason(s3, tmp_path):
    """A key must be UTF-8: the record said "'utf-8' codec can't encode character '\\udcff'..." instead."""
    client, (_, out_bucket) = s3
    src = random_images(tmp_path / "in", ["good.png"], shape=(8, 8, 3))
    (src / os.fsdecode(b"caf\xe9.png")).write_bytes((src / "good.png").read_bytes())
    done = noiseaug("run", src, f"s3://{out_bucket}/out", "--workers", 1, check=1)
    said = [line for line in done.stderr.splitlines() if line.startswith("noiseaug: failed: ")]
    assert said == ["noiseaug: failed: caf\\xe9.png: cannot upload: its name is not UTF-8, which an object's key "
                    "must be"], done.stderr
    assert sorted(outputs(objects(client, out_bucket, "out"))) == ["good.png"]
