"""Odd paths: links, loops, strange names; nothing written outside OUTPUT, inputs untouched."""

from __future__ import annotations

import json
import os

import numpy as np

from conftest import records, tree, write_image


def snapshot(root) -> dict[str, tuple]:
    """Every entry under root, links included, with what identifies its content."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            out[path] = (st.st_mode, st.st_size, st.st_mtime_ns,
                         os.readlink(path) if os.path.islink(path) else None)
    return out


def test_odd_names_links_and_loops(cli, tmp_path):
    src = tmp_path / "in"
    names = ["with space.png", "-leading-dash.png", "--help.png", "ünïcødé 画像.png", "new\nline.png",
             "deep/er/and/deeper/x.PNG"]
    for i, name in enumerate(names):
        write_image(src / name, np.full((6, 6), 20 * i, np.uint8), ext=".png")
    outside = tmp_path / "outside"
    write_image(outside / "secret.png", np.zeros((4, 4), np.uint8))
    os.symlink(src, src / "loop")  # a link back to INPUT: must not hang
    os.symlink(outside, src / "escape")  # a link out of INPUT: must not be followed
    os.symlink(outside / "secret.png", src / "secret_link.png")
    os.symlink(src / "missing.png", src / "dangling.png")
    os.mkfifo(src / "fifo.png")  # reading it would block forever

    before = snapshot(tmp_path)
    result = cli("run", src, tmp_path / "out", "--workers", 2, "--json")
    after = snapshot(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed and all(p.startswith(str(tmp_path / "out")) for p in changed)  # only OUTPUT moved

    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    assert sorted(r["input"] for r in recs) == sorted(names)
    assert all(r["status"] == "ok" for r in recs)
    produced = tree(tmp_path / "out")
    for name in names:
        assert name in produced
    assert not any("secret" in p or p.startswith(("loop", "escape")) for p in produced)
    not_taken = json.loads(result.stdout)["not_taken"]
    assert not_taken["links"] == 4 and not_taken["special"] == 1
