"""tuoba-snoop on the build host's own kernel (x86_64 here): the loader and its BPF programs
built for the host from the same sources (bpf/snoop) by the bpf step's own compile function,
against the host's BTF, and the guest checks of recipes/bpf/checks/test_snoop.py run against
this machine through testinfra's local backend. A second kernel and a second architecture
(the open system calls' numbers differ) for the same program, in seconds; the guests' runs
are the proof on the TuobaOS kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import HOST_BTF, host_bpf
from tuoba import bpf, elfaudit

ROOT = Path(__file__).resolve().parents[2]

pytestmark = host_bpf


def test_the_guest_checks_pass_on_the_hosts_kernel(tmp_path: Path) -> None:
    out = tmp_path / "snoop"
    out.mkdir()
    bpf.make_vmlinux_h(HOST_BTF, out)
    built = bpf.compile_program(bpf.load_program(ROOT, "snoop"), out, bpf.host_target())
    assert elfaudit.inspect(built.loader)["needed"] == ["libc.so.6"]  # no libbpf, no libelf
    junit = tmp_path / "host.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--hosts=local://", f"--junitxml={junit}", f"--basetemp={tmp_path / 'bt'}",
         "--rootdir", str(tmp_path), "-c", os.devnull,
         str(ROOT / "recipes/bpf/checks/test_snoop.py")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
        env={**os.environ, "PATH": f"{out}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    report = junit.read_text()
    assert 'failures="0"' in report and 'errors="0"' in report and 'skipped="0"' in report
    assert report.count("<testcase ") == 8, report
