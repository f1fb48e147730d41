"""Guest checks for the stage-2 `base` recipe: a busybox/dropbear userland built by LLVM
against musl, with no glibc and no GCC output anywhere (checked here from inside the guest,
independently of the build's own ELF audit)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.guest

# Every regular file on the root filesystem that starts with the ELF magic.
FIND_ELF = (
    "find / -xdev -type f -exec sh -c "
    '\'for f; do [ "$(head -c 4 "$f" | tail -c 3)" = ELF ] && echo "${f#/}"; done; true\' sh {} +'
)


@pytest.fixture(scope="module")
def elf_files(host: Any) -> list[str]:
    files = sorted(host.check_output(FIND_ELF).split())
    # the checks below pass over an empty list: it must hold the userland's programs
    assert {"usr/bin/busybox", "usr/sbin/dropbearmulti"} <= set(files), files
    return files


def test_init_is_busybox(host: Any) -> None:
    assert host.check_output("readlink /proc/1/exe") == "/usr/bin/busybox"


def test_ssh_server_is_dropbear(host: Any) -> None:
    pids = host.check_output("pidof dropbear").split()
    assert pids, "dropbear is not running"
    exes = {host.run(f"readlink /proc/{pid}/exe").stdout.strip() for pid in pids}
    assert "/usr/sbin/dropbearmulti" in exes


def test_no_glibc_loader(host: Any) -> None:
    assert host.check_output("find / -xdev -name 'ld-linux*'") == ""


def test_elf_files_are_the_audited_ones(elf_files: list[str], manifest: dict[str, Any]) -> None:
    """What is on the running system is exactly what the build audited."""
    assert elf_files == sorted(row["file"] for row in manifest["audit"])
    assert len(elf_files) >= 3


@pytest.mark.parametrize(
    "mark",
    [
        "GCC: (",  # GCC's .comment
        "GLIBC_2.",  # glibc symbol versions
        "ld-linux-",  # glibc's dynamic loader
        "libgcc_s",  # GCC's runtime
    ],
)
def test_no_gnu_marks_inside(host: Any, elf_files: list[str], mark: str) -> None:
    cmd = host.run("cd / && grep -l -F -e %s " + " ".join(elf_files), mark)
    assert cmd.rc == 1 and cmd.stdout == "", f"files carrying {mark!r}: {cmd.stdout}"


def programs(elf_files: list[str]) -> list[str]:
    """The ELF files the CPU runs: not kernel modules, not bpf/ programs' objects (the kernel's
    BPF machine is theirs: the build's audit lets only relocatable EM_BPF objects through)."""
    return [f for f in elf_files if not f.endswith((".ko", ".bpf.o"))]


def test_bpf_objects_are_audited_as_bpf(elf_files: list[str], manifest: dict[str, Any]) -> None:
    audited = {row["file"]: row for row in manifest["audit"]}
    rows = [audited[f] for f in elf_files if f.endswith(".bpf.o")]
    assert all(r["type"] == "REL" and r["linker"] == "relocatable" for r in rows), rows


def test_programs_are_static_or_musl(host: Any, elf_files: list[str]) -> None:
    """A dynamically linked program names its loader in PT_INTERP: only musl's may appear."""
    cmd = host.run("cd / && grep -l -F -e /lib/ld- " + " ".join(programs(elf_files)))
    linked = cmd.stdout.split()
    for f in linked:
        assert host.run("grep -q -F -e /lib/ld-musl- /%s", f).rc == 0, f


def test_clang_built_the_programs(host: Any, elf_files: list[str]) -> None:
    cmd = host.run("cd / && grep -L -F -e 'clang version' " + " ".join(programs(elf_files)))
    assert cmd.stdout == "", f"programs without clang's .comment: {cmd.stdout}"
