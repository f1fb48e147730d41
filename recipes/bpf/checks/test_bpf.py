"""Guest checks for the `bpf` recipe (stage 1, arm64): each eBPF tool of the image is made to
trace something the check itself does, on the running TuobaOS kernel.

- BCC compiles a C program in the guest against the kernel's own headers
  (/sys/kernel/kheaders.tar.xz, CONFIG_IKHEADERS: no headers package exists for this kernel),
  attaches it to a tracepoint and counts exactly the system calls the check makes;
- libbpf-tools (CO-RE, relocated against /sys/kernel/btf/vmlinux) see a process and a file open
  the check makes;
- bpftrace attaches a kprobe;
- bpftool lists the program another tool loaded.

Everything runs under QEMU TCG: BCC's in-guest clang compile takes a minute or more there, so
the time limits are generous and each says what it waits for.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import pytest

pytestmark = pytest.mark.guest

CALLS = 1000  # getppid() calls the BCC check makes while its program counts them

# Runs in the guest under python3. raw_syscalls:sys_enter sees every system call; the program
# keeps those of this process (tgid) that are getppid (173 in the generic syscall table that
# arm64 uses), so the count must be exactly CALLS: Python calls getppid only when asked.
BCC_PROGRAM = r"""
import os
from bcc import BPF

text = '''
BPF_ARRAY(calls, u64, 1);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    if ((bpf_get_current_pid_tgid() >> 32) != TGID || args->id != 173)
        return 0;
    calls.atomic_increment(0);
    return 0;
}
'''.replace("TGID", str(os.getpid()))
b = BPF(text=text)
for _ in range(CALLS):
    os.getppid()
print("counted", b["calls"][0].value)
""".replace("CALLS", str(CALLS))


def test_bcc_counts_the_exact_syscalls_made(host: Any) -> None:
    """BCC: a C program compiled in the guest against the running kernel's own headers
    (kheaders), on the raw_syscalls:sys_enter tracepoint, counts 1000 getppid() calls as 1000."""
    host.run("rm -rf /tmp/kheaders-*")  # BCC reuses an extracted copy: make it extract ours
    res = host.run(f"timeout 600 python3 -c {shlex.quote(BCC_PROGRAM)}")
    assert res.rc == 0, f"BCC failed (exit {res.rc}): {res.stderr[-3000:]}"
    assert res.stdout.strip() == f"counted {CALLS}", res.stdout + res.stderr[-2000:]


# Runs in the guest: start a libbpf-tools tracer, wait until it has attached (it prints its
# column header then), do the traced thing, stop it with SIGINT and print what it saw.
TRACE = r"""
set -u
out=$(mktemp)
stdbuf -oL {tool} > "$out" 2>&1 &
pid=$!
for i in $(seq 300); do
  grep -q '{header}' "$out" && break
  kill -0 $pid 2>/dev/null || break
  sleep 1
done
grep -q '{header}' "$out" || {{ echo "{tool} did not attach in 300 s"; cat "$out"; exit 1; }}
{action}
sleep 2
kill -INT $pid
wait $pid
cat "$out"
"""


@pytest.mark.parametrize(
    ("tool", "header", "action", "seen"),
    [
        ("execsnoop", "PCOMM", "/bin/echo tuoba-exec-marker >/dev/null", "tuoba-exec-marker"),
        (
            "opensnoop",
            "PID",
            "touch /tmp/tuoba-open-marker && cat /tmp/tuoba-open-marker",
            "/tmp/tuoba-open-marker",
        ),
    ],
    ids=["execsnoop", "opensnoop"],
)
def test_libbpf_tool_sees_what_the_check_does(
    host: Any, tool: str, header: str, action: str, seen: str
) -> None:
    """libbpf-tools (CO-RE: relocated against this kernel's BTF, no headers, no compiler)."""
    script = TRACE.format(tool=tool, header=header, action=action)
    res = host.run(f"timeout 600 sh -c {shlex.quote(script)}")
    assert res.rc == 0, f"{tool} (exit {res.rc}): {res.stdout[-3000:]} {res.stderr[-2000:]}"
    assert seen in res.stdout, res.stdout[-3000:]


def test_bpftrace_kprobe_fires(host: Any) -> None:
    """bpftrace attaches a kprobe to the openat syscall path and counts a known open."""
    out = host.check_output(
        'timeout 300 bpftrace -e \'kprobe:do_sys_openat2 /comm == "cat"/ { @opens = count(); }'
        " interval:s:1 { exit(); }' -c '/usr/bin/cat /etc/hostname'"
    )
    counts = [int(ln.split(":")[1]) for ln in out.splitlines() if ln.startswith("@opens:")]
    assert counts and counts[0] >= 1, out


def test_bpftool_lists_a_loaded_program(host: Any) -> None:
    """bpftool lists the kprobe program a running bpftrace loaded, and not before it ran nor
    after it exited."""
    before = _programs(host)
    host.run(
        "nohup bpftrace -e 'kprobe:do_sys_openat2 { @n = count(); }' </dev/null >/dev/null 2>&1 & "
        "echo $! > /tmp/tuoba-bpftrace.pid"
    )
    loaded: set[int] = set()
    try:
        for _ in range(300):  # bpftrace's LLVM codegen takes a while under TCG
            loaded = {i for i, kind in _programs(host).items() if kind == "kprobe"} - set(before)
            if loaded:
                break
            time.sleep(1)
    finally:
        host.run("kill -INT $(cat /tmp/tuoba-bpftrace.pid)")
    assert loaded, f"no new kprobe program in bpftool's list in 300 s: {_programs(host)}"
    for _ in range(60):  # its ids go when the bpftrace that held them has exited
        if loaded.isdisjoint(_programs(host)):
            break
        time.sleep(1)
    assert loaded.isdisjoint(_programs(host)), "the program outlived the bpftrace that loaded it"


def _programs(host: Any) -> dict[int, str]:
    """Loaded BPF programs as bpftool lists them: id -> type."""
    listed = json.loads(host.check_output("bpftool -j prog show") or "[]")
    return {int(p["id"]): str(p["type"]) for p in listed}
