"""Guest checks for the `bpf` recipe where Debian has no bpftrace and BCC cannot compile against
the kernel's headers (armhf): a kprobe BPF program, assembled here as raw instructions, loaded
through the bpf(2) system call from the image's python3, attached to `do_sys_openat2` through
the kprobe PMU, counts the opens of a known `cat` — what test_bpf.py does with bpftrace."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.guest

# Runs in the guest. Syscall numbers per `uname -m`; BPF and perf structures as in
# include/uapi/linux/bpf.h and perf_event.h. The program: if comm == "cat", count[0] += 1.
PROGRAM = r"""
import ctypes, os, platform, struct, subprocess
libc = ctypes.CDLL(None, use_errno=True)
NR = {"armv7l": (386, 364), "aarch64": (280, 241)}[platform.machine()]  # bpf, perf_event_open

def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(NR[0], cmd, buf, 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf cmd {cmd}")
    return fd, buf

def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)

map_fd, _ = bpf(0, struct.pack("<IIII", 2, 4, 4, 1))  # BPF_MAP_CREATE: array, 4/4, 1 entry
prog = b"".join([
    insn(0xbf, 1, 10), insn(0x07, 1, imm=-16), insn(0xb7, 2, imm=16),  # r1 = fp-16, r2 = 16
    insn(0x85, imm=16),                                  # bpf_get_current_comm(r1, r2)
    insn(0x61, 1, 10, -16), insn(0x55, 1, off=10, imm=0x00746163),  # comm[0:4] != "cat\0"?
    insn(0x18, 1, 1, imm=map_fd), insn(0),               # r1 = the map
    insn(0x62, 10, off=-4, imm=0), insn(0xbf, 2, 10), insn(0x07, 2, imm=-4),  # key 0 at fp-4
    insn(0x85, imm=1), insn(0x15, 0, off=3, imm=0),      # r0 = lookup(map, key); if !r0 out
    insn(0x61, 1, 0), insn(0x07, 1, imm=1), insn(0x63, 0, 1),  # *r0 += 1 (no atomics: arm32 JIT)
    insn(0xb7, 0, imm=0), insn(0x95),                    # return 0
])
code = ctypes.create_string_buffer(prog, len(prog))
lic = ctypes.create_string_buffer(b"GPL")
log = ctypes.create_string_buffer(65536)
try:
    prog_fd, _ = bpf(5, struct.pack("<IIQQIIQI", 2, len(prog) // 8, ctypes.addressof(code),
                                    ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0))
except OSError:
    print(log.value.decode())
    raise
pmu = int(open("/sys/bus/event_source/devices/kprobe/type").read())
func = ctypes.create_string_buffer(b"do_sys_openat2")
events = []
for cpu in range(os.cpu_count()):
    # perf_event_attr: type, size, config; sample_period, sample_type, read_format, flags,
    # wakeup, bp_type, config1 (kprobe_func), config2 (probe_offset)
    attr = struct.pack("<IIQQQQQIIQQ", pmu, 112, 0, 1, 0, 0, 0, 0, 0,
                       ctypes.addressof(func), 0)
    abuf = ctypes.create_string_buffer(attr, 112)
    fd = libc.syscall(NR[1], abuf, -1, cpu, -1, 8)  # PERF_FLAG_FD_CLOEXEC
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"perf_event_open cpu {cpu}")
    if libc.ioctl(fd, 0x40042408, prog_fd) or libc.ioctl(fd, 0x2400, 0):  # SET_BPF, ENABLE
        raise OSError(ctypes.get_errno(), "attaching the program")
    events.append(fd)
subprocess.run(["/usr/bin/cat", "/etc/hostname"], check=True, stdout=subprocess.DEVNULL)
value = ctypes.create_string_buffer(4)
key = ctypes.create_string_buffer(4)
bpf(1, struct.pack("<IIQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(value)))
print("opens:", struct.unpack("<I", value.raw)[0])
"""


def test_kprobe_fires_with_a_raw_bpf_program(host: Any) -> None:
    """The kprobe fires for `cat` opening /etc/hostname, counted by the loaded program."""
    host.run("mkdir -p /run/tuoba && cat > /run/tuoba/kprobe.py << 'EOF'\n" + PROGRAM + "EOF")
    out = host.check_output("python3 /run/tuoba/kprobe.py 2>&1")
    counts = [int(ln.split(":")[1]) for ln in out.splitlines() if ln.startswith("opens:")]
    assert counts and counts[0] >= 1, out


def test_bpftool_sees_jited_programs(host: Any) -> None:
    """systemd attaches cgroup BPF programs at boot; bpftool lists them JIT-compiled."""
    out = host.check_output("bpftool prog show")
    assert "jited" in out, out
