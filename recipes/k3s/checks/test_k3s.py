"""Guest checks for the `k3s` recipe (stage 1, arm64): k3s, supplied by the user (its release
files are in no archive this project reaches), runs on the TuobaOS kernel: its own
check-config passes, the node becomes Ready, and a pod runs to completion from the air-gap
images. An image built without k3s reports these checks as not run, with the reason.

k3s under QEMU TCG is slow to start (a server wants ~1.6 GB of memory and minutes of CPU):
the time limits say what each waits for.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

pytestmark = pytest.mark.guest

KUBECTL = "k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml"
AIRGAP = "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst"


def test_k3s_check_config_passes_on_the_tuoba_kernel(host: Any) -> None:
    """k3s's own check-config finds every kernel option it requires (the k3s feature)."""
    res = host.run("k3s check-config 2>&1")
    assert res.rc == 0, res.stdout[-4000:]
    assert "STATUS: pass" in res.stdout, res.stdout[-4000:]


def test_k3s_node_becomes_ready(host: Any) -> None:
    """The k3s server unit runs and its one node reports Ready (up to 15 minutes under TCG)."""
    res = host.run(
        f"timeout 900 sh -c 'until {KUBECTL} get nodes 2>/dev/null | grep -qw Ready; "
        "do sleep 10; done'"
    )
    assert res.rc == 0, host.run("journalctl -u k3s --no-pager | tail -50").stdout
    assert host.service("k3s").is_running


def test_a_pod_runs_from_the_airgap_images(host: Any) -> None:
    """A pod of the air-gap images' busybox runs to completion and prints what it was told."""
    if not host.file(AIRGAP).exists:
        pytest.skip("not run: k3s-airgap-images-arm64.tar.zst was not supplied, so no pod image")
    image = host.run(
        f"{KUBECTL} get --raw / >/dev/null; k3s ctr -n k8s.io images ls -q | grep busybox | head -1"
    ).stdout.strip()
    assert image, "the air-gap images hold no busybox image"
    run = (
        f"{KUBECTL} run tuoba-k3s-check --image={shlex.quote(image)} --restart=Never "
        "--image-pull-policy=Never --command -- echo tuoba-k3s-ok"
    )
    assert host.run(run).rc == 0
    res = host.run(
        f"timeout 600 sh -c 'until {KUBECTL} get pod tuoba-k3s-check -o "
        "jsonpath={{.status.phase}} | grep -q Succeeded; do sleep 5; done'"
    )
    assert res.rc == 0, host.run(f"{KUBECTL} describe pod tuoba-k3s-check").stdout[-3000:]
    assert host.run(f"{KUBECTL} logs tuoba-k3s-check").stdout.strip() == "tuoba-k3s-ok"
