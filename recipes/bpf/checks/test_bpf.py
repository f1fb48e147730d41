"""Guest checks for the `bpf` recipe: BPF programs attach and run in the running kernel."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.guest


def test_kprobe_fires(host: Any) -> None:
    """bpftrace attaches a kprobe to the openat syscall path and counts a known open."""
    out = host.check_output(
        'timeout 120 bpftrace -e \'kprobe:do_sys_openat2 /comm == "cat"/ { @opens = count(); }'
        " interval:s:1 { exit(); }' -c '/usr/bin/cat /etc/hostname'"
    )
    counts = [int(ln.split(":")[1]) for ln in out.splitlines() if ln.startswith("@opens:")]
    assert counts and counts[0] >= 1, out
