"""The qemu-aarch64 LAVA job that `tuoba export lava` writes, run for real by LAVA's own
dispatcher (`lava-run`, Debian's lava-dispatcher): a lab's worker does the same.

lava-dispatcher cannot go on this host: it needs python3-guestfs, whose libguestfs wants
bookworm's QEMU 7.2 while the project needs backports' QEMU 10. So the dispatcher runs in a
bookworm root of its own (mmdebstrap from the host's apt mirror; cached outside the clone,
keyed by its packages), with QEMU 7.2, libguestfs's appliance kernel, and LAVA's device-type
templates (lava-server's, unpacked, not installed). The device dictionary is rendered from
them with the job's context, as a LAVA server renders it for the job it schedules.

A base-only image (its build is cached by the other modules), its files and the job's console
tar served on loopback; the job deploys them to tmpfs (downloaded, sha256-checked, unxz'd,
LAVA's overlay and the console tar applied to the root partition by libguestfs), boots QEMU
to root's shell on the serial console and runs the in-guest checks as a LAVA test shell.
Every case of the job's test definition must pass, and the job itself.

A tier of its own (`./dev test-lava`, marker `lava`): outside `./dev test`, whose budget has
no room for a TCG boot in a second QEMU (75 s warm, the root made once in ~1.5 min)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, base_only, copy_project
from tests.integration.test_qemu_aarch64 import BOARD, Project
from tuoba import apt
from tuoba.cli import default_cache_dir
from tuoba.lava import DEFINITION, JOB_SUFFIX

pytestmark = [pytest.mark.integration, pytest.mark.lava]

SUITE = "bookworm"
# lava-dispatcher (python3-guestfs, QEMU for x86 for its appliance), the guest's QEMU, and a
# kernel for libguestfs's appliance (supermin builds it from this root's packages)
PACKAGES = ("lava-dispatcher", "qemu-system-arm", "linux-image-amd64", "xz-utils")
TEMPLATES = "/opt/lava-server/usr/share/lava-server/device-types"  # (in the root)
# the device dictionary a lab writes for a QEMU worker without KVM: LAVA's qemu type, its
# user-mode network
DEVICE = "{% extends 'qemu.jinja2' %}\n{% set netdevice = 'user' %}\n{% set no_kvm = True %}\n"
RENDER = """\
import sys, json, jinja2
env = jinja2.Environment(loader=jinja2.FileSystemLoader(sys.argv[1]), autoescape=False)
print(env.from_string(open(sys.argv[2]).read()).render(**json.load(open(sys.argv[3]))))
"""


def dispatcher_root() -> Path:
    """The dispatcher's root: made once per package list and mirror, kept in tuoba's cache."""
    mirrors = apt.debian_mirrors(SUITE)
    assert mirrors, "no Debian mirror in the host's apt configuration for " + SUITE
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, mirrors[0]]).encode()).hexdigest()[:16]
    root = default_cache_dir() / "lab" / f"lava-{SUITE}-{key}"
    if (root / "usr/bin/lava-run").exists():
        return root
    tmp = root.with_name(root.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # lava-server's device-type templates, unpacked (lava-server itself is a Django site)
    fetch_templates = (
        'chroot "$1" sh -c "cd /tmp && apt-get download -q lava-server '
        '&& dpkg-deb -x lava-server_*.deb /opt/lava-server && rm lava-server_*.deb"'
    )
    made = subprocess.run(
        ["mmdebstrap", "--variant=apt", "--include=" + ",".join(PACKAGES),
         "--customize-hook=" + fetch_templates, SUITE, str(tmp),
         f"deb {mirrors[0]} {SUITE} main", f"deb {mirrors[0]} {SUITE}-updates main"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, f"mmdebstrap failed ({made.returncode}):\n{made.stderr[-3000:]}"
    tmp.rename(root)
    return root


def in_root(root: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """ARGV in the dispatcher's root: its own mount namespace, /proc /sys /dev of the host's
    (QEMU and libguestfs need them), the host's network (the files are served on loopback),
    none of the host's environment. Past TIMEOUT it is ended as a lab's worker ends a job:
    SIGTERM (lava-run cancels, stopping its QEMU), then SIGKILL to what is left."""
    mounts = (
        f"mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys "
        f"&& mount --rbind /dev {root}/dev && mount -t tmpfs tmpfs {root}/tmp"
    )
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{mounts} && exec chroot {root} "$@"', "sh", *env, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        err += f"\n(ended after {timeout:.0f} s)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """DIRECTORY over HTTP on loopback (GET and HEAD, as LAVA's downloads ask)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def results(log: str) -> list[dict[str, Any]]:
    """The results lava-run logged (on stderr: a YAML flow mapping per line, as
    lava_common.log writes them)."""
    return [yaml.safe_load(line)["msg"] for line in log.splitlines()
            if line.startswith("{") and '"lvl": "results"' in line]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = Project(base_only(copy_project(tmp_path_factory.mktemp("lava") / "project")))
    project.tuoba("build", "--board", BOARD)
    return project


@pytest.mark.skipif(os.geteuid() != 0, reason="the dispatcher's root is a chroot: root only")
@pytest.mark.timeout(3 * 3600)  # (cold: the kernel, the image, the dispatcher's root, the job)
def test_lava_run_boots_the_exported_job_and_its_checks_pass(built: Project) -> None:
    root = dispatcher_root()
    with served(built.out) as url:
        built.tuoba("export", "lava", "--board", BOARD, "--artifacts-url", url)
        job_file = next(built.out.glob(f"*{JOB_SUFFIX}"))
        job = yaml.safe_load(job_file.read_text())
        work = root / "run" / "tuoba-lava"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copy(job_file, work / "job.yaml")
        (work / "device.jinja2").write_text(DEVICE)
        (work / "context.json").write_text(json.dumps(job.get("context", {})))
        (work / "render.py").write_text(RENDER)
        # (LAVA asks it for the address a guest reaches the worker at; QEMU's user network
        # reaches the host's loopback)
        (work / "dispatcher.yaml").write_text("dispatcher_ip: 127.0.0.1\n")
        rendered = in_root(root, "python3", "/run/tuoba-lava/render.py", TEMPLATES,
                           "/run/tuoba-lava/device.jinja2", "/run/tuoba-lava/context.json",
                           timeout=60)  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        (work / "device.yaml").write_text(rendered.stdout)
        # libguestfs's appliance under TCG: this machine's /dev/kvm (nested) fails in the
        # root's QEMU 7.2 ("failed to set MSR 0x10a", an assertion in its kvm.c); TCG: 17 s
        proc = in_root(root, "LIBGUESTFS_BACKEND=direct", "LIBGUESTFS_BACKEND_SETTINGS=force_tcg",
                       "lava-run", "--job-id", "1",
                       "--output-dir", "/run/tuoba-lava/out",
                       "--device", "/run/tuoba-lava/device.yaml",
                       "--dispatcher", "/run/tuoba-lava/dispatcher.yaml",
                       "/run/tuoba-lava/job.yaml",
                       timeout=60 * job["timeouts"]["job"]["minutes"] + 120)  # fmt: skip
    kept = ROOT / "out" / "test-artifacts"
    kept.mkdir(parents=True, exist_ok=True)
    (kept / "lava-run.log").write_text(proc.stdout + proc.stderr)  # (kept: what LAVA did)
    found = results(proc.stderr)
    tail = (proc.stdout + proc.stderr)[-4000:]
    ours = {r["case"]: r["result"] for r in found if str(r.get("definition")).endswith(DEFINITION)}
    steps = job["actions"][2]["test"]["definitions"][0]["repository"]["run"]["steps"]
    cases = [s.split()[1] for s in steps if s.startswith("lava-test-case ")]
    assert cases and set(ours) == set(cases), f"cases {sorted(ours)} of {cases}\n{tail}"
    assert all(v == "pass" for v in ours.values()), f"{ours}\n{tail}"
    job_result = [r for r in found if r.get("definition") == "lava" and r.get("case") == "job"]
    assert job_result and job_result[-1]["result"] == "pass", tail
