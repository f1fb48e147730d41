"""tuoba-fr on a kernel that lacks its hook: the build host's own kernel (no TuobaOS patch:
copyout is inlined there, and not on the error-injection list). The loader is built for the
host from the same sources (bpf/fr) against the host's BTF and libbpf, and must say in one
sentence what is missing and exit 3, in both modes, after the kernel really refused it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FR = ROOT / "bpf" / "fr"
HOST_BTF = Path("/sys/kernel/btf/vmlinux")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
    pytest.mark.skipif(not HOST_BTF.exists(), reason="the host kernel has no BTF to build against"),
]


@pytest.fixture(scope="module")
def host_fr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fr-host")
    with (out / "vmlinux.h").open("wb") as f:
        subprocess.run(["bpftool", "btf", "dump", "file", str(HOST_BTF), "format", "c"],
                       stdout=f, check=True)  # fmt: skip
    arch = {"x86_64": "x86", "aarch64": "arm64"}[os.uname().machine]
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{arch}", "-I", str(out),
         "-I", str(FR), "-c", str(FR / "fr.bpf.c"), "-o", str(out / "fr.bpf.o")],
        check=True,
    )  # fmt: skip
    with (out / "fr.skel.h").open("wb") as f:
        subprocess.run(["bpftool", "gen", "skeleton", str(out / "fr.bpf.o"), "name", "fr_bpf"],
                       stdout=f, check=True)  # fmt: skip
    subprocess.run(
        ["clang", "-O2", "-Wall", "-Werror", "-I", str(out), "-I", str(FR), "-o",
         str(out / "tuoba-fr"), str(FR / "tuoba-fr.c"), "-lbpf"],
        check=True,
    )  # fmt: skip
    return out / "tuoba-fr"


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
