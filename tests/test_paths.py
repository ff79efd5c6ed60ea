"""Odd paths: links, loops, strange names; nothing written outside OUTPUT, inputs untouched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

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


def _entries(listing) -> list[tuple]:
    """A packed listing as (name, kind, size, stamp) tuples."""
    from noiseaug.storage.local import KIND_NAMES

    return [(name, KIND_NAMES.get(kind, "!"), size, stamp) for name, kind, size, stamp in zip(*listing)]


def test_the_compiled_folder_listing_gives_what_the_python_one_gives(tmp_path, monkeypatch):
    """The local walk lists folders in C where it was built (``_listing.c``) and in Python otherwise: the
    same entries, in the same (unsigned byte) order, with the same kinds and stamps."""
    from noiseaug.storage import local
    if local._listing is None:
        pytest.skip(f"no compiled listing beside {local.__file__} (no compiler at install time)")
    root = os.fsencode(tmp_path / "in")
    os.makedirs(root + b"/sub/deeper")
    for name in [b"b.png", b"B.png", b"a\xff.png", b"a\xc3\xa9.wav", b"a.png", b"-x", b"sub/deeper/z.flac"]:
        with open(root + b"/" + name, "wb") as fh:
            fh.write(name * 3)
    os.utime(root + b"/a.png", ns=(1, 1_234_567_891_234_567_891))
    os.symlink(b"a.png", root + b"/link.png")
    os.symlink(b"sub", root + b"/dirlink")
    os.symlink(b"missing", root + b"/dangling.png")
    os.mkfifo(root + b"/fifo.png")

    compiled = _entries(local.list_folder(root))
    names = [entry[0] for entry in compiled]
    assert names == [b"-x", b"B.png", b"a.png", b"a\xc3\xa9.wav", b"a\xff.png", b"b.png", b"dangling.png",
                     b"dirlink", b"fifo.png", b"link.png", b"sub"]  # unsigned bytes: 0xc3 and 0xff after ASCII
    kinds = {entry[0]: entry[1] for entry in compiled}
    assert kinds == {b"b.png": "file", b"B.png": "file", b"a\xff.png": "file", b"a\xc3\xa9.wav": "file",
                     b"a.png": "file", b"-x": "file", b"sub": "dir", b"link.png": "link", b"dirlink": "link",
                     b"dangling.png": "link", b"fifo.png": "special"}
    st = os.lstat(root + b"/a.png")
    assert (b"a.png", "file", st.st_size, st.st_mtime_ns) in compiled and st.st_mtime_ns == 1_234_567_891_234_567_891
    assert all(entry[2:] == (0, 0) for entry in compiled if entry[1] != "file")
    compiled_walk = list(local._walk(root, b""))
    compiled_digest = local.listing_digest(local.list_folder(root), [b"fifo.png"])
    with pytest.raises(FileNotFoundError):
        local.list_folder(root + b"/nothing")
    names = [b"a.png", b"a\xff.png", b"link.png", b"sub", b"fifo.png", b"dangling.png", b"nothing"]
    stamps = [local.stamp(root + b"/" + name) for name in names]
    assert stamps[0] == (st.st_size, st.st_mtime_ns) and stamps[1] and stamps[2:] == [None] * 5
    _listed_stamps_agree(local, root, names + [b"-", b"-x", b"B.png", b"b.png", b"dirlink", b"zz", b"0"])

    monkeypatch.setattr(local, "_listing", None)
    assert _entries(local.list_folder(root)) == compiled
    assert local.listing_digest(local.list_folder(root), [b"fifo.png"]) == compiled_digest
    assert local.listing_digest(local.list_folder(root)) != compiled_digest
    assert [local.stamp(root + b"/" + name) for name in names] == stamps
    _listed_stamps_agree(local, root, names + [b"-", b"-x", b"B.png", b"b.png", b"dirlink", b"zz", b"0"])
    assert list(local._walk(root, b"")) == compiled_walk
    assert [e.rel for e in compiled_walk if e.kind == "file"][-1] == b"sub/deeper/z.flac"
    with pytest.raises(FileNotFoundError):
        local.list_folder(root + b"/nothing")


def test_input_and_output_roots_whose_names_are_not_utf8(cli, tmp_path):
    """The roots are recorded losslessly, as file names are (an escaped name and a base64 `_raw` twin): the
    manifest stays UTF-8 JSON, verify finds both roots, and a re-run is up to date."""
    base = os.fsencode(tmp_path)
    src, out = base + b"/in\xff", base + b"/o\xfeut"
    write_image(Path(os.fsdecode(src + b"/a.png")), np.full((6, 6), 80, np.uint8))
    manifest = os.fsdecode(out + b"/noiseaug-manifest.jsonl")
    for _ in range(2):
        cli("run", os.fsdecode(src), os.fsdecode(out), "--workers", 1)
    text = Path(manifest).read_bytes().decode("utf-8")  # strict: every byte UTF-8
    run = json.loads(text.splitlines()[0])
    assert run["input_root"].endswith("in\\xff") and run["output_root"].endswith("o\\xfeut")
    from noiseaug.manifest import recorded_root

    assert (os.fsencode(recorded_root(run, "input_root")), os.fsencode(recorded_root(run, "output_root"))) == (src, out)
    assert "1 of 1 outputs" in cli("verify", manifest, "--regenerate").stderr  # found, and regenerated
    assert "up to date" in cli("run", os.fsdecode(src), os.fsdecode(out), "--workers", 1).stderr
    write_image(Path(os.fsdecode(src + b"/caf\xe9.png")), np.full((6, 6), 90, np.uint8))
    cli("run", os.fsdecode(src), os.fsdecode(out), "--workers", 1)
    os.unlink(src + b"/caf\xe9.png")
    result = cli("run", os.fsdecode(src), os.fsdecode(out), "--workers", 1, "--json")
    summary = json.loads(result.stdout_bytes.decode("utf-8"))  # strict: --json is UTF-8 any parser reads
    assert summary["gone"] == ["caf\\xe9.png"] and summary["output"].endswith("o\\xfeut")
    assert "caf\\xe9.png" in result.stderr and "\\udc" not in result.stderr  # shown as the manifest shows it
    report = cli("verify", manifest, "--json")
    assert json.loads(report.stdout_bytes.decode("utf-8"))["output_root"].endswith("o\\xfeut")


def _listed_stamps_agree(local, root: bytes, names: list[bytes]) -> None:
    """A folder's stamps looked up in its listing (the folder shortcut's noting) are lstat's, name by name;
    the listing's digest is the folder's."""
    storage = local.LocalStorage(os.fsdecode(root))
    digest, listed = storage.listed_folder(b"", [b"fifo.png"])
    assert digest == storage.folder_digest(b"", [b"fifo.png"]) == local.listing_digest(local.list_folder(root),
                                                                                        [b"fifo.png"])
    assert [listed.get(name) for name in names] == [local.stamp(root + b"/" + name) for name in names]
    assert storage.listed_folder(b"nothing")[0] is None and storage.listed_folder(b"nothing")[1].get(b"a") is None


def test_a_folder_link_planted_in_output_or_input_is_not_followed_by_the_quick_check_or_verify(cli, tmp_path):
    """An output folder replaced by a link to a copy elsewhere: the outputs behind it are not OUTPUT's (a
    write there is refused), so a re-run does not call them up to date and verify does not pass through the
    link. An input folder replaced by a link is not walked: its inputs are gone, not silently kept."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "deep/x/a.png", np.full((8, 8, 3), 100, np.uint8))
    write_image(src / "b.png", np.full((8, 8, 3), 50, np.uint8))
    cli("run", src, out, "--workers", 1)
    os.rename(out / "deep/x", tmp_path / "copy")
    os.symlink(tmp_path / "copy", out / "deep/x")
    checked = cli("verify", out / "noiseaug-manifest.jsonl", code=1)
    assert "deep/x/a.png: cannot read: reached through a symbolic link" in checked.stderr
    again = cli("run", src, out, "--workers", 1, "--json", code=1)  # the folder shortcut, then file by file
    assert json.loads(again.stdout)["up_to_date"] is False
    assert "refusing to write through it" in again.stderr and (tmp_path / "copy/a.png").exists()
    os.rename(src / "deep", tmp_path / "inputs")
    os.symlink(tmp_path / "inputs", src / "deep")
    cli("run", src, out, "--workers", 1)  # its failed record is dropped: the input is gone, not there behind a link
    assert [r["input"] for r in records(out / "noiseaug-manifest.jsonl")[1]] == ["b.png"]
