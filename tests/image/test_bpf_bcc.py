"""Guest checks for the `bpf` recipe where the image has BCC in place of bpftrace (armhf): a
BPF program attaches to a kprobe and counts a known open."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.guest

# BCC compiles the C below with the guest's own LLVM, then loads it through the bpf syscall.
PROGRAM = r'''
import os, subprocess, sys
from bcc import BPF
b = BPF(text="""
BPF_ARRAY(opens, u64, 1);
int count(struct pt_regs *ctx) {
    char comm[16];
    bpf_get_current_comm(&comm, sizeof(comm));
    if (comm[0] != 'c' || comm[1] != 'a' || comm[2] != 't' || comm[3] != 0) return 0;
    int zero = 0;
    u64 *n = opens.lookup(&zero);
    if (n) __sync_fetch_and_add(n, 1);
    return 0;
}
""")
b.attach_kprobe(event="do_sys_openat2", fn_name="count")
subprocess.run(["/usr/bin/cat", "/etc/hostname"], check=True, stdout=subprocess.DEVNULL)
print("opens:", b["opens"][0].value)
'''


def test_kprobe_fires_with_bcc(host: Any) -> None:
    """BCC attaches a kprobe to the openat path; `cat` opening a file makes it count."""
    host.run("mkdir -p /run/tuoba && cat > /run/tuoba/kprobe.py << 'EOF'\n" + PROGRAM + "EOF")
    out = host.check_output("timeout 600 python3 /run/tuoba/kprobe.py 2>&1")
    counts = [int(ln.split(":")[1]) for ln in out.splitlines() if ln.startswith("opens:")]
    assert counts and counts[0] >= 1, out


def test_bpftool_sees_jited_programs(host: Any) -> None:
    """systemd attaches cgroup BPF programs at boot; bpftool lists them JIT-compiled."""
    out = host.check_output("bpftool prog show")
    assert "jited" in out, out
