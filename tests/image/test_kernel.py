"""Guest checks for the clang-built TuobaOS kernel: every requested option is really in the
running kernel, BPF's JIT is on and BTF present, KVM is available, modules load."""

from __future__ import annotations

import gzip
import json
import os
import struct
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
    """The kernel's BTF (what CO-RE programs and BCC's fallbacks read) is real BTF and
    describes the kernel: its task_struct resolves to a struct with members."""
    data = host.file("/sys/kernel/btf/vmlinux").content
    members = btf_struct_members(data, "task_struct")
    assert members is not None, "no struct task_struct in /sys/kernel/btf/vmlinux"
    assert members > 50


# Bytes after the 12-byte btf_type, per BTF kind (include/uapi/linux/btf.h): fixed, per member.
_BTF_KIND_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8),
                   14: (4, 0), 15: (0, 12), 17: (4, 0), 19: (0, 12)}  # fmt: skip


def btf_struct_members(data: bytes, name: str) -> int | None:
    """The member count of struct `name` in raw BTF, None if it has none; fails on bytes that
    are not BTF (magic 0xeB9F, version 1)."""
    magic, version, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from(
        "<HBBIIIII", data
    )
    assert (magic, version) == (0xEB9F, 1), f"not BTF: magic {magic:#x}, version {version}"
    types = data[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off :]
    want = name.encode() + b"\0"
    at = 0
    while at < len(types):
        name_off, info, _ = struct.unpack_from("<III", types, at)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == 4 and strings[name_off : name_off + len(want)] == want:  # BTF_KIND_STRUCT
            return vlen
        fixed, per_member = _BTF_KIND_EXTRA.get(kind, (0, 0))
        at += 12 + fixed + per_member * vlen
    return None


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
