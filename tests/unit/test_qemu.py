"""The QEMU command line (tuoba.qemu): what a guest is given to be reached from the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuoba.board import QemuSpec
from tuoba.qemu import PROBE_GUEST_PORT, BootSpec, qemu_command


def spec(nic: str = "virtio", network: bool = True) -> BootSpec:
    q = QemuSpec("virt", "cortex-a72", 2, 2048, network=network, nic=nic)
    return BootSpec("arm64", Path("a.img"), Path("Image"), None, None, "root=x", q)


@pytest.mark.parametrize("nic", ["virtio", "board"])
def test_ssh_and_probe_ports_are_forwarded_on_loopback_only(nic: str) -> None:
    cmd = " ".join(qemu_command(spec(nic), 2222, "console.log", writable=False, probe_port=3333))
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in cmd
    assert f"hostfwd=tcp:127.0.0.1:3333-:{PROBE_GUEST_PORT}" in cmd
    assert "hostfwd=tcp::" not in cmd and "0.0.0.0" not in cmd


def test_no_probe_forward_unless_asked() -> None:
    cmd = " ".join(qemu_command(spec(), 2222, "stdio", writable=True))
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in cmd and f":{PROBE_GUEST_PORT}" not in cmd


def test_a_machine_without_network_gets_no_forward() -> None:
    cmd = qemu_command(spec(network=False), 2222, "console.log", writable=False, probe_port=3333)
    assert not any("hostfwd" in word for word in cmd)
