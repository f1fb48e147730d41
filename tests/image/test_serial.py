"""Guest checks read from the serial console, for emulated boards without a network (QEMU's
raspi machines). `tuoba test` passes the console log once the login prompt is up; systemd's
messages reach the console because the emulation cmdline sets systemd.log_target=kmsg."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def console() -> str:
    text = open(os.environ["TUOBA_CONSOLE_LOG"], errors="replace").read()  # noqa: SIM115
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # drop colour codes


def test_clang_built_kernel_booted(console: str, manifest: dict[str, Any]) -> None:
    line = next(ln for ln in console.splitlines() if "Linux version" in ln)
    assert manifest["kernel"]["version"] in line
    assert "clang version" in line and "LLD" in line


def test_root_mounted_from_sd_card(console: str) -> None:
    assert re.search(r"EXT4-fs \(mmcblk\dp2\): mounted filesystem", console)


def test_login_prompt_shows_board_hostname(console: str, manifest: dict[str, Any]) -> None:
    assert f"{manifest['hostname']} login:" in console


@pytest.mark.parametrize(
    "unit", ["systemd-networkd.service", "tuoba-ssh-hostkeys.service", "ssh.service",
             "tuoba-grow-root.service"],
)  # fmt: skip
def test_unit_started(console: str, unit: str) -> None:
    assert re.search(rf"systemd\[1\]: (Started|Finished) {re.escape(unit)}", console)


def test_no_failed_units(console: str) -> None:
    failed = [ln for ln in console.splitlines() if "Failed to start" in ln or "FAILED" in ln]
    assert failed == []
