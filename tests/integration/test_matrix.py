"""`tuoba matrix --executor ray` on a real Ray cluster on loopback (`ray start --head` and a
second node, one CPU each): two stage-2 images that share the arm64 kernel and userland, the
second waiting for the first; the worker building the first is killed mid-build, Ray runs the
task again, and both images come out whole, told in the table and the JUnit file.

Shares ~/.cache/tuoba with the other integration tests (the stage-2 userland and kernel are
those test_qemu_aarch64_stage2 and test_rpi build): what runs here is the image steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tuoba.executors import ATTEMPT

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A head node and a worker node, one CPU each (one image at a time each)."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="tuoba-ray-", dir="/tmp")  # (Ray's socket paths are short)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--object-store-memory", str(100 << 20)]  # fmt: skip
    try:
        subprocess.run(
            [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
             "--temp-dir", temp, "--disable-usage-stats", *common],
            env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common],
                       env=env, check=True, capture_output=True, timeout=300)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(temp, ignore_errors=True)


def building(board: str) -> int | None:
    """The pid of a running `tuoba ... build --board BOARD`, if there is one."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"build" in argv and b"--board" in argv and board.encode() in argv and b"tuoba" in argv:
            return int(cmdline.parent.name)
    return None


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_matrix_on_ray_survives_a_killed_worker(ray_cluster: str, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuoba", "--data-dir", str(project), "--out", str(out), "matrix",
         "--executor", "ray", "--address", ray_cluster, "--boards", "qemu-aarch64,rpi3",
         "--stages", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    # the first image's build (the second waits for it): its Ray worker killed as it runs
    deadline = time.monotonic() + 600
    killed = None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        pid = building("qemu-aarch64")
        if pid is not None:
            time.sleep(3)  # well into it: started, cache lock taken
            worker = parent(pid)
            assert b"ray::" in Path(f"/proc/{worker}/cmdline").read_bytes(), "not a Ray worker"
            os.kill(worker, signal.SIGKILL)
            killed = worker
        time.sleep(0.2)
    said, _ = proc.communicate(timeout=3600)
    assert killed is not None, f"never saw the first image's build running:\n{said}"
    assert proc.returncode == 0, said

    flat = " ".join(said.split())
    assert "Ray cluster at" in said and "2 node(s)" in said, said
    assert "qemu-aarch64-s2: build ok" in flat and "(attempt 2)" in flat, said
    assert "rpi3-s2: build ok" in flat, said

    log = (out / "matrix" / "qemu-aarch64-s2.build.log").read_text()
    attempts = [ln for ln in log.splitlines() if ln.startswith(ATTEMPT)]
    assert len(attempts) == 2, log
    # the killed attempt's tuoba ended (SIGTERM when its worker died), leaving nothing running
    assert building("qemu-aarch64") is None

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
