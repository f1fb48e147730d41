"""`tuoba matrix --executor ray` on a real Ray cluster on loopback (`ray start --head` and a
second node, one CPU each): two stage-2 images that share the arm64 kernel and userland, the
second waiting for the first; the worker building the first is killed mid-build, Ray runs the
task again, and both images come out whole, told in the table and the JUnit file.

Shares ~/.cache/tuoba with the other integration tests (the stage-2 userland and kernel are
those test_qemu_aarch64_stage2 and test_rpi build): what runs here is the image steps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import copy_project, ray_cluster
from tuoba.executors import ATTEMPT

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_cluster_2() -> Iterator[str]:
    with ray_cluster(nodes=2) as address:
        yield address


def building(out: Path) -> int | None:
    """The pid of the `tuoba build` writing into `out`, if it runs."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"build" in argv and str(out).encode() in argv and b"tuoba" in argv:
            return int(cmdline.parent.name)
    return None


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not Path(f"/proc/{pid}").exists()


def test_matrix_on_ray_survives_a_killed_worker(ray_cluster_2: str, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuoba", "--data-dir", str(project), "--out", str(out), "matrix",
         "--executor", "ray", "--address", ray_cluster_2, "--boards", "qemu-aarch64,rpi3",
         "--stages", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    # the first image's build (the second waits for it): its Ray worker killed as it runs
    first = out / "qemu-aarch64-s2"
    deadline = time.monotonic() + 600
    build = worker = None
    while worker is None and time.monotonic() < deadline and proc.poll() is None:
        build = building(first)
        if build is not None:
            time.sleep(3)  # well into it: started, locks taken
            worker = parent(build)
            if worker is None:  # (it ended already: wait for the next try)
                continue
            assert b"ray::" in Path(f"/proc/{worker}/cmdline").read_bytes(), "not a Ray worker"
            os.kill(worker, signal.SIGKILL)
        time.sleep(0.2)
    assert build is not None and worker is not None, "never saw the first image's build running"
    # the build the dead worker started is ended with it (SIGTERM: PR_SET_PDEATHSIG)
    assert gone(build, within=60), "the killed worker's tuoba build kept running"
    said, _ = proc.communicate(timeout=3600)
    assert proc.returncode == 0, said

    flat = " ".join(said.split())
    assert "Ray cluster at" in said and "2 node(s)" in said, said
    assert "qemu-aarch64-s2: build ok in" in flat, said
    assert re.search(r"qemu-aarch64-s2: build ok in \d+ s on \S+ \(attempt 2\)", flat), said
    assert "rpi3-s2: build ok" in flat, said

    log = (out / "matrix" / "qemu-aarch64-s2.build.log").read_text()
    attempts = [ln for ln in log.splitlines() if ln.startswith(ATTEMPT)]
    assert len(attempts) == 2, log

    suite = ET.parse(out / "matrix" / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "0", "0")
    out_of = {c.get("classname"): (c.findtext("system-out") or "") for c in suite.iter("testcase")}
    assert "attempts: 2" in out_of["tuoba.matrix.qemu-aarch64"]

    # both images whole: each matches the digests its manifest recorded
    for cell, board in (("qemu-aarch64-s2", "qemu-aarch64"), ("rpi3-s2", "rpi3")):
        (manifest,) = (out / cell).glob(f"tuoba-{board}-s2-*.manifest.json")
        record = json.loads(manifest.read_text())
        assert record["board"] == board and record["stage"] == 2
        img = manifest.with_name(manifest.name.replace(".manifest.json", ".img"))
        sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out / cell,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert sums.returncode == 0 and f"{img.name}: OK" in sums.stdout, sums.stdout
