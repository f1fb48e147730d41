"""The comparison behind `tuoba build --check-reproducible`: where two builds' artifacts differ,
down to the files inside a partition (real ext4 filesystems made by mkfs.ext4, mounted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_project, plan_request
from tuoba import reproducible
from tuoba.build import BuildResult, ensure_ssh_key
from tuoba.errors import InputError
from tuoba.plan import DEFAULT_EPOCH, Plan, resolve

MIB = 1 << 20


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for p in [root, *root.rglob("*")]:
        os.utime(p, (1700000000, 1700000000), follow_symlinks=False)
    return root


def disk(path: Path, files: dict[str, str], tmp: Path) -> dict[str, object]:
    """A 1 MiB lead-in (the 'table') then an 8 MiB ext4 partition holding `files`."""
    src = tree(tmp / f"{path.name}-tree", files)
    fs = tmp / f"{path.name}.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", "0b8d2f4e-3a1c-4c3e-9d55-1a2b3c4d5e6f",
                    "-E", "hash_seed=0b8d2f4e-3a1c-4c3e-9d55-1a2b3c4d5e6f", "-d", str(src),
                    str(fs), "8M"], check=True, capture_output=True,
                   env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000",
                        "E2FSPROGS_FAKE_TIME": "1700000000"})  # fmt: skip
    with path.open("wb") as out:
        out.write(b"\0" * MIB)
        out.write(fs.read_bytes())
    return {"partitions": [{"name": "root", "fs": "ext4", "start": MIB, "size": 8 * MIB}]}


def test_trees_compared_by_content_metadata_and_presence(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {"etc/same": "x", "etc/changed": "one", "only-a": ""})
    b = tree(tmp_path / "b", {"etc/same": "x", "etc/changed": "two", "only-b": ""})
    (b / "etc/same").chmod(0o600)
    assert reproducible.compare_trees(a, b) == [
        "/etc/changed: content",
        "/etc/same: mode",
        "/only-a: only in the first build",
        "/only-b: only in the second build",
    ]
    os.utime(b / "etc/changed", (1, 1))
    assert "/etc/changed: mtime" in reproducible.compare_trees(a, b)


def test_json_and_byte_differences_are_located(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"k": {"x": 1, "y": [1, 2]}, "same": True}))
    b.write_text(json.dumps({"k": {"x": 1, "y": [1, 3]}, "same": True}))
    assert reproducible.json_paths(a, b) == ["k.y[1]"]
    a.write_bytes(b"abcdef")
    b.write_bytes(b"abcxef")
    assert reproducible.first_byte(a, b) == "first differs at byte 3"
    b.write_bytes(b"abc")
    assert reproducible.first_byte(a, b) == "sizes differ (6 and 3 bytes)"


def test_unknown_reuse_kind_is_refused_naming_the_kinds() -> None:
    with pytest.raises(InputError) as e:
        reproducible.check_reuse(("kernel", "kernal"))
    assert "--reuse kernal" in e.value.message and "rootfs" in str(e.value.hint)
    assert reproducible.check_reuse(("kernel", "kernel")) == ("kernel",)


@pytest.mark.skipif(os.geteuid() != 0, reason="the partitions are mounted (root)")
def test_a_differing_image_names_the_partition_and_the_file_inside(tmp_path: Path) -> None:
    files = {"etc/hostname": "tuoba\n", "usr/bin/tool": "#!/bin/sh\n"}
    m = disk(tmp_path / "a.img", files, tmp_path)
    disk(tmp_path / "same.img", files, tmp_path)
    disk(tmp_path / "b.img", {**files, "etc/hostname": "tuobb\n"}, tmp_path)
    a, same, b = tmp_path / "a.img", tmp_path / "same.img", tmp_path / "b.img"
    assert a.read_bytes() == same.read_bytes(), "mkfs.ext4 with pinned inputs is reproducible"

    [diff] = reproducible.compare_images(a, b, m)
    assert diff.where == "a.img, partition 1 (root, ext4)"
    assert diff.files == ("/etc/hostname: content",)
    assert diff.what == "1 files differ"

    b.write_bytes(a.read_bytes())  # the same files, a byte of the lead-in changed
    with b.open("r+b") as f:
        f.seek(446)
        f.write(b"\x80")
    [diff] = reproducible.compare_images(a, b, m)
    assert "before the first partition" in diff.where and "bytes 0–1048576" in diff.what


@pytest.mark.skipif(os.geteuid() != 0, reason="the partitions are mounted (root)")
def test_check_builds_twice_apart_and_names_what_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow of --check-reproducible, with the builds stood in for: the second build gets
    an output and a cache directory of its own and the first one's key and downloads; a
    difference is one sentence naming the file, the report is written, the scratch goes."""
    project = copy_project(tmp_path / "project")
    seen: list[Plan] = []

    def fake_build(plan: Plan, explain: bool = False) -> BuildResult:
        seen.append(plan)
        ensure_ssh_key(plan)
        second = reproducible.SCRATCH in str(plan.out_dir)
        img = plan.out_dir / f"{plan.image_name}.img"
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        m = disk(img, {"etc/hostname": "b\n" if second else "a\n"}, tmp_path / str(len(seen)))
        img.with_suffix(".manifest.json").write_text(json.dumps(m))
        return BuildResult(img, img.with_suffix(".manifest.json"), ("image",), 1.0)

    monkeypatch.setattr(reproducible, "build", fake_build)
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    request = plan_request(project, ssh_key=None)
    with pytest.raises(reproducible.NotReproducible) as e:
        reproducible.check(request, ("kernel",))
    first, second = seen
    assert e.value.message == (
        f"the two builds of {first.image_name} differ: {first.image_name}.img, partition 1 "
        "(root, ext4): 1 files differ (/etc/hostname: content…)"
    )
    assert second.cache_dir == first.out_dir / ".reproducible" / "cache"
    assert second.request.reuse_from == request.cache_dir
    assert second.request.reuse_kinds == ("source", "tool", "kernel")
    assert second.request.ssh_key == str(first.ssh_key)
    assert not (first.out_dir / ".reproducible").exists()
    report = json.loads((first.out_dir / f"{first.image_name}.reproducible.json").read_text())
    assert report["reproducible"] is False
    assert report["identical"] == [f"{first.image_name}.manifest.json"]
    [diff] = report["differences"]
    assert diff["files"] == ["/etc/hostname: content"]
    if shutil.which("diffoscope"):
        assert "-a" in diff["diffoscope"] and "+b" in diff["diffoscope"], diff["diffoscope"]


def test_images_are_dated_by_the_environment_then_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_project(tmp_path / "project")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert resolve(plan_request(project)).source_date_epoch == DEFAULT_EPOCH  # no checkout
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "boards"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True,
                   env={**os.environ, "GIT_COMMITTER_DATE": "@1750000000 +0000"})  # fmt: skip
    assert resolve(plan_request(project)).source_date_epoch == 1750000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    assert resolve(plan_request(project)).source_date_epoch == 1600000000
