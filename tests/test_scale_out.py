"""Dask and object storage, with real components: a moto S3 server on 127.0.0.1 and Dask clusters.

Every run is the real program in a subprocess (``python -m noiseaug``), with
the endpoint and credentials in its environment as a user would set them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import random_images, records, tree

pytest.importorskip("distributed", reason="the test extra installs dask")  # noqa: the extra is part of make test
boto3 = pytest.importorskip("boto3")

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
    name = request.node.name.lower().replace("_", "-")[:40].strip("-")
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
