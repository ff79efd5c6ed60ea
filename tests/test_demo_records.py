"""`make demo`'s manifest file records equal the checked-in copy: refactors change no byte.

The copy was made on the library versions it records; on other versions (a
`make test-min` run, another numpy) the encoders' bytes may differ, so only
the fields those versions do not decide are compared there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import records

ROOT = Path(__file__).resolve().parent.parent
CODEC_FIELDS = ("output_sha256", "output_bytes")


def test_demo_file_records_are_unchanged(tmp_path):
    subprocess.run([sys.executable, "-m", "noiseaug", "run", ROOT / "sample_data", tmp_path / "out", "-q"],
                   check=True)
    run, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    lines = (ROOT / "tests" / "data" / "demo_manifest_records.jsonl").read_text(encoding="utf-8").splitlines()
    versions, *want = [json.loads(line) for line in lines]
    versions.pop("type")
    same_build = all(run["versions"].get(k) == v for k, v in versions.items() if k != "python")
    if not same_build:
        want = [{k: v for k, v in r.items() if k not in CODEC_FIELDS} for r in want]
        recs = [{k: v for k, v in r.items() if k not in CODEC_FIELDS} for r in recs]
    assert recs == want
