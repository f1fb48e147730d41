"""Guest checks for the `containers` recipe (stage 1): containers really run on the TuobaOS
kernel, with both engines the image carries, from the image made at build time
(localhost/tuoba/busybox:latest, of the image's own busybox-static).

- podman runs it on crun with cgroup v2, and enforces --memory: an allocation under the limit
  completes, one above it is OOM-killed;
- two podman containers on a network of their own reach each other by name (netavark +
  aardvark-dns);
- buildah makes a new image from it that podman then runs;
- containerd runs it through `ctr run` (runc).

Everything runs under QEMU TCG, so the time limits are generous and each says what it waits
for. Each check removes what it made, so the checks can run again on the same guest.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.guest

IMAGE = "localhost/tuoba/busybox:latest"


@pytest.fixture(scope="module")
def loaded(host: Any) -> None:
    """Wait for the first-boot unit that loads the built-in image into both engines: starting
    a oneshot waits for its run (queued behind containerd, or running), and returns at once
    when it is done."""
    started = host.run("timeout 600 systemctl start tuoba-oci-images")
    log = host.run("journalctl -b -u tuoba-oci-images --no-pager").stdout
    assert started.rc == 0, f"tuoba-oci-images: {started.stderr} {log[-3000:]}"
    assert host.file("/var/lib/tuoba/oci-images-loaded").exists, log[-3000:]


def test_cgroup_v2_is_mounted(host: Any) -> None:
    """The unified cgroup hierarchy, with the memory controller the limits need."""
    assert host.check_output("stat -fc %T /sys/fs/cgroup") == "cgroup2fs"
    assert "memory" in host.file("/sys/fs/cgroup/cgroup.controllers").content_string.split()


def test_built_in_image_listed_by_both_engines(host: Any, loaded: None) -> None:
    """podman images and ctr images list the image made at build time; podman's says it is
    for this machine's architecture."""
    listed = json.loads(host.check_output("podman images --format json"))
    names = {n for image in listed for n in image.get("Names") or []}
    assert IMAGE in names, names
    assert IMAGE in host.check_output("ctr --namespace default images ls -q").split()
    arch = host.check_output(f"podman image inspect --format '{{{{.Architecture}}}}' {IMAGE}")
    assert arch == {"aarch64": "arm64", "armv7l": "arm"}[host.check_output("uname -m")]


def test_podman_runs_a_container_on_crun(host: Any, loaded: None) -> None:
    """A container computes something, in its own PID namespace, on crun under cgroup v2."""
    info = json.loads(host.check_output("podman info --format json"))
    assert info["host"]["ociRuntime"]["name"] == "crun", info["host"]["ociRuntime"]
    assert info["host"]["cgroupVersion"] == "v2"
    out = host.check_output(
        f"timeout -s KILL 300 podman run --rm {IMAGE} sh -c 'echo $((6 * 7)) $$ $(hostname)'"
    )
    answer, pid, name = out.split()
    assert (answer, pid) == ("42", "1"), out  # the shell is PID 1 of its own namespace
    assert name != host.check_output("hostname")


# Runs in the container: dd reads N bytes from /dev/zero in one read(), into a buffer of N
# bytes, which the kernel fills page by page: N bytes of memory charged to the container's
# cgroup in well under a second (a shell variable of N bytes took minutes under TCG).
ALLOCATE = "dd if=/dev/zero of=/dev/null bs={n} count=1 2>&1"


@pytest.mark.parametrize(
    ("size", "killed"), [(4 << 20, False), (256 << 20, True)], ids=["4MiB-kept", "256MiB-killed"]
)
def test_podman_memory_limit_enforced(host: Any, loaded: None, size: int, killed: bool) -> None:
    """--memory 64m: 4 MiB fits and completes; 256 MiB does not, and the kernel's OOM killer
    kills it inside the container's memory cgroup. The proof is the kernel's own log line: with
    bookworm's podman 4.3 + crun 1.8, State.OOMKilled stayed false for a container the kernel
    had OOM-killed (seen in this guest), so that flag proves nothing either way."""
    name = f"tuoba-check-mem-{size}"
    host.run(f"podman rm -f {name}")
    try:
        res = host.run(
            f"timeout -s KILL 600 podman run --name {name} --memory 64m {IMAGE} "
            f"sh -c '{ALLOCATE.format(n=size)}'"
        )
        cid = host.check_output(f"podman inspect --format '{{{{.Id}}}}' {name}")
        limit = host.check_output(f"podman inspect --format '{{{{.HostConfig.Memory}}}}' {name}")
    finally:
        host.run(f"podman rm -f {name}")
    assert limit == str(64 << 20)
    kernel_log = host.check_output("journalctl -k -b --no-pager -o cat")
    oom_lines = [
        ln for ln in kernel_log.splitlines()
        if ln.startswith("oom-kill:constraint=CONSTRAINT_MEMCG") and f"libpod-{cid}.scope" in ln
    ]  # fmt: skip
    if killed:
        assert res.rc == 137, f"exit {res.rc}: {res.stdout} {res.stderr}"
        assert oom_lines, "no memory-cgroup OOM kill of this container in the kernel's log"
    else:
        assert (res.rc, oom_lines) == (0, []), f"exit {res.rc}: {res.stderr} {oom_lines}"
        # one whole block of N bytes read (a short read would be "0+1")
        assert "1+0 records out" in res.stdout, res.stdout


def test_podman_containers_reach_each_other_by_name(host: Any, loaded: None) -> None:
    """A server container on a podman network answers a client container that finds it by
    name (aardvark-dns) over the network's bridge (netavark)."""
    net, server = "tuoba-check-net", "tuoba-check-srv"
    host.run(f"podman rm -f {server}; podman network rm -f {net}")
    try:
        host.check_output(f"podman network create {net}")
        host.check_output(
            f"podman run -d --name {server} --network {net} {IMAGE} sh -c "
            "'mkdir /www && echo hello-from-server > /www/index.html && "
            "exec httpd -f -p 8080 -h /www'"
        )
        res = host.run(
            f"timeout -s KILL 300 podman run --rm --network {net} {IMAGE} sh -c "
            f"'for i in $(seq 60); do wget -q -O - http://{server}:8080/ && exit 0; sleep 1; "
            "done; exit 1'"
        )
    finally:
        host.run(f"podman rm -f {server}; podman network rm -f {net}")
    assert res.rc == 0, f"exit {res.rc}: {res.stdout} {res.stderr}"
    assert res.stdout.strip() == "hello-from-server"


def test_buildah_builds_an_image_podman_runs(host: Any, loaded: None) -> None:
    """buildah makes a new image on top of the built-in one; podman runs what it made."""
    built = "localhost/tuoba/check-built:latest"
    host.run(f"podman rmi -f {built}")
    try:
        host.check_output(
            f"timeout 300 sh -ec 'c=$(buildah from {IMAGE}); "
            'buildah run $c -- sh -c "echo made-by-buildah > /made"; '
            f"buildah commit --quiet $c {built}; buildah rm $c'"
        )
        out = host.check_output(f"timeout -s KILL 300 podman run --rm {built} cat /made")
    finally:
        host.run(f"podman rmi -f {built}")
    assert out == "made-by-buildah"


def test_ctr_runs_a_container(host: Any, loaded: None) -> None:
    """containerd runs the built-in image through `ctr run` (runc shim)."""
    name = "tuoba-check-ctr"
    ctr = "ctr --namespace default"
    cleanup = f"{ctr} task kill -s KILL {name}; {ctr} task rm -f {name}; {ctr} containers rm {name}"
    host.run(cleanup)
    try:
        res = host.run(
            f"timeout -s KILL 300 {ctr} run --rm {IMAGE} {name} sh -c 'echo ctr-ran-$((6 * 7))'"
        )
    finally:
        host.run(cleanup)
    assert res.rc == 0, f"exit {res.rc}: {res.stdout} {res.stderr}"
    assert res.stdout.strip() == "ctr-ran-42"
