"""Guest checks for the stage-2 `bpf` recipe: the kernel's BPF syscall works from a static
musl program (load, JIT, test-run a program that returns 42)."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.guest


def test_bpf_program_loads_and_runs(host: Any) -> None:
    out = host.check_output("tuoba-bpf-check")
    m = re.fullmatch(r"prog id (\d+): returned (\d+), jited (\d+) bytes", out)
    assert m, out
    assert int(m.group(2)) == 42
    assert int(m.group(3)) > 0, "the program was not JIT-compiled"
