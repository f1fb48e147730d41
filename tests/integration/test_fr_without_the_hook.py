"""tuoba-fr on a kernel that lacks its hook: the build host's own kernel (no TuobaOS patch:
copyout is inlined there, and not on the error-injection list). The loader is built for the
host from the same sources (bpf/fr), by the bpf step's own compile function, against the host's
BTF and libbpf headers (a light skeleton: no libbpf at run time), and must say in one sentence
what is missing and exit 3, in both modes, after the kernel really refused it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import HOST_BTF, host_bpf
from tuoba import bpf, elfaudit

ROOT = Path(__file__).resolve().parents[2]

pytestmark = host_bpf


@pytest.fixture(scope="module")
def host_fr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fr-host")
    bpf.make_vmlinux_h(HOST_BTF, out)
    built = bpf.compile_program(bpf.load_program(ROOT, "fr"), out, bpf.host_target())
    # a light skeleton's loader needs no libbpf (nor libelf) at run time: the C library only
    assert elfaudit.inspect(built.loader)["needed"] == ["libc.so.6"]
    return built.loader


def has_hook() -> bool:
    with open("/proc/kallsyms") as f:
        return any(line.split()[2] == "copyout" for line in f if len(line.split()) >= 3)


@pytest.mark.parametrize("mode", [[], ["--copy"]], ids=["reduce", "copy"])
def test_a_kernel_without_the_hook_is_named_with_status_3(
    host_fr: Path, tmp_path: Path, mode: list[str]
) -> None:
    if has_hook():
        pytest.skip("the host kernel has a copyout symbol: this check needs one without it")
    data = tmp_path / "values.txt"
    data.write_text("1\n2\n3\n")
    proc = subprocess.run(
        [str(host_fr), str(data), "--filter", "gt 1", "--reduce", "sum", *mode],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    first, _, rest = proc.stderr.partition("\n")
    assert first.startswith("tuoba-fr: the running kernel "), proc.stderr
    assert "  hint: " in rest and "TuobaOS kernel" in rest, proc.stderr
    assert proc.stdout == ""
