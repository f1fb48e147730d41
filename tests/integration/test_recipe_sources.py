"""A recipe's sources.yaml for real: a pinned file that is no Debian package, served by an HTTP
server on loopback, fetched into the cache, installed into a qemu-aarch64 image at its path
and mode, and named in the manifest; bytes that do not match the pin stop the build and leave
no image.

Uses the shared cache: with the qemu-aarch64 root filesystem and kernel cached (the other
integration tests make them), only the fetch, overlay and image steps run here. The board's
default stack is dropped (`base` alone): a pinned file is installed the same way into any
image, and a base image is composed in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    FileServer,
    base_only,
    copy_project,
    ext4_file,
    partition_table,
    serve_files,
    tuoba_build,
)

pytestmark = pytest.mark.integration

BOARD = "qemu-aarch64"
TOOL = b"#!/bin/sh\necho 'hello from a pinned artifact'\n"


def add_recipe(project: Path, url: str, sha256: str) -> None:
    recipe = project / "recipes" / "pinned"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(
        "description: a pinned file that is no Debian package (test)\nstage1:\n  packages: []\n"
    )
    (recipe / "sources.yaml").write_text(
        "artifacts:\n"
        f"  - url: {url}/missing/tuoba-hello\n"  # the first URL fails: the mirror serves it
        f"    mirrors: [{url}/tuoba-hello]\n"
        f"    sha256: {sha256}\n"
        "    origin: made by the test\n"
        "    install: /usr/local/bin/tuoba-hello\n"
        '    mode: "0755"\n'
        "    arch: [arm64]\n"
    )


def root_start(img: Path) -> int:
    table = partition_table(img)
    root = next(p for p in table["partitions"] if p.get("name") == "root")
    return int(root["start"]) * 512


def test_pinned_file_is_fetched_installed_and_named(tmp_path: Path) -> None:
    project = base_only(copy_project(tmp_path / "project"))
    served = tmp_path / "www"
    served.mkdir()
    tool = TOOL + f"# {os.urandom(8).hex()}\n".encode()  # downloaded, not found cached
    (served / "tuoba-hello").write_bytes(tool)
    sha = hashlib.sha256(tool).hexdigest()
    with serve_files(FileServer(served)) as url:
        add_recipe(project, url, sha)
        proc = tuoba_build(project, BOARD, "--recipe", "pinned")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = project / "out"
    img = out / f"tuoba-{BOARD}-s1-0.1.0.img"
    assert ext4_file(img, root_start(img), "/usr/local/bin/tuoba-hello") == tool
    stat = subprocess.run(
        ["debugfs", "-R", "stat /usr/local/bin/tuoba-hello", f"{img}?offset={root_start(img)}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Mode:  0755" in stat, stat
    manifest = json.loads((out / f"tuoba-{BOARD}-s1-0.1.0.manifest.json").read_text())
    assert manifest["sources"]["tuoba-hello"] == {"sha256": sha, "origin": "made by the test"}
    subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, check=True,
                   capture_output=True)  # fmt: skip

    # the server is gone: the cached file serves an offline rebuild
    again = tuoba_build(project, BOARD, "--recipe", "pinned", "--offline")
    assert again.returncode == 0, again.stdout + again.stderr


def test_bytes_that_do_not_match_the_pin_stop_the_build(tmp_path: Path) -> None:
    project = base_only(copy_project(tmp_path / "project"))
    served = tmp_path / "www"
    served.mkdir()
    # bytes no run has cached (the cache would rightly serve pinned bytes it has), served with
    # one byte flipped
    tool = TOOL + f"# {os.urandom(8).hex()}\n".encode()
    (served / "tuoba-hello").write_bytes(tool)
    server = FileServer(served)
    server.tamper = {"tuoba-hello"}
    with serve_files(server) as url:
        add_recipe(project, url, hashlib.sha256(tool).hexdigest())
        proc = tuoba_build(project, BOARD, "--recipe", "pinned")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "source 'tuoba-hello'" in proc.stderr and "expected" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((project / "out").glob("*.img*")), "no image after a refused source"
