"""Host facts: which QEMU machines the installed QEMU has, and what doctor says when one lacks."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuoba import host
from tuoba.board import QemuSpec
from tuoba.errors import HostToolError


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A qemu-system-aarch64 on PATH that knows only virt and raspi3b (like Debian 12's 7.2)."""
    binary = tmp_path / "qemu-system-aarch64"
    binary.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "QEMU emulator version 7.2.22 (Debian)"; exit 0; fi\n'
        "echo 'Supported machines are:'\n"
        "echo 'raspi3b  Raspberry Pi 3B'\n"
        "echo 'virt     QEMU 7.2 ARM Virtual Machine'\n"
    )
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    host.qemu_machines.cache_clear()
    yield binary
    host.qemu_machines.cache_clear()


def test_machine_options_are_not_part_of_the_name(fake_qemu: Path) -> None:
    spec = QemuSpec(machine="virt,virtualization=on,gic-version=3", cpu=None, smp=None, memory=1)
    host.require_qemu_machine("arm64", spec.machine_type)


def test_missing_machine_names_version_and_fix(fake_qemu: Path) -> None:
    with pytest.raises(HostToolError) as e:
        host.require_qemu_machine("arm64", "raspi4b")
    assert e.value.message == f"QEMU 7.2.22 ({fake_qemu}) has no machine 'raspi4b'"
    assert "-backports" in (e.value.hint or "") and "tuoba doctor --fix" in (e.value.hint or "")


def test_doctor_names_the_boards_whose_machine_is_missing(fake_qemu: Path, project: Path) -> None:
    check = host.qemu_machine_check(project)
    assert not check.ok
    assert check.detail == "missing raspi4b (rpi4)"
    assert check.fix is host.install_backports_qemu
