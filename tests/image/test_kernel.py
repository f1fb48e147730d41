"""Guest checks for the clang-built TuobaOS kernel: every requested option is really in the
running kernel, BPF's JIT is on and BTF present, KVM is available, modules load."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import pytest

pytestmark = pytest.mark.guest


REQUESTED: dict[str, str] = (
    json.loads(os.environ.get("TUOBA_MANIFEST", "{}")).get("kernel", {}).get("requested", {})
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test case per option a fragment set, named after the option."""
    if "requested" in metafunc.fixturenames:
        metafunc.parametrize("requested", sorted(REQUESTED.items()), ids=sorted(REQUESTED))


@pytest.fixture(scope="module")
def running_config(host: Any) -> dict[str, str]:
    raw = gzip.decompress(host.file("/proc/config.gz").content).decode()
    config = {}
    for line in raw.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            config[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split()[0]] = "n"
    return config


def test_kernel_built_by_clang(host: Any) -> None:
    version = host.file("/proc/version").content_string
    assert "clang version" in version
    assert "LLD" in version


def test_option_in_running_kernel(running_config: dict[str, str], requested: Any) -> None:
    name, value = requested
    assert running_config.get(name, "n") == value


def test_bpf_jit_enabled(host: Any) -> None:
    assert host.file("/proc/sys/net/core/bpf_jit_enable").content_string.strip() == "1"


def test_btf_present(host: Any) -> None:
    btf = host.file("/sys/kernel/btf/vmlinux")
    assert btf.exists
    assert btf.size > 1_000_000 or int(host.check_output("wc -c < /sys/kernel/btf/vmlinux")) > 0


@pytest.mark.skipif(
    REQUESTED.get("CONFIG_KVM") != "y", reason="the board's kernel has no kvm feature (armhf)"
)
def test_kvm_device_present(host: Any) -> None:
    assert host.run("test -c /dev/kvm").rc == 0, "/dev/kvm is not a character device"
    dmesg = host.check_output("dmesg")
    assert "kvm [" in dmesg and "initialized successfully" in dmesg


def test_modules_load(host: Any) -> None:
    """Modules installed into the rootfs match the running kernel and load: vhost_net where
    the kernel has KVM's vhost, else cls_bpf (the bpf feature, in every TuobaOS kernel)."""
    module = "vhost_net" if REQUESTED.get("CONFIG_VHOST_NET") == "m" else "cls_bpf"
    host.run_expect([0], f"modprobe {module}")
    assert host.file(f"/sys/module/{module}").exists
