"""Stage-2 serial-console checks: busybox init reports what it starts on the console."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.guest


def test_busybox_init_ran_rcs(console: str) -> None:
    assert "init started: BusyBox v" in console
    assert "'/etc/init.d/rcS'" in console


def test_dropbear_started_and_stays_up(console: str) -> None:
    assert "starting pid" in console and "'/usr/sbin/dropbear -F -E" in console
    assert "Failed" not in console.split("'/usr/sbin/dropbear -F -E", 1)[1]


def test_nothing_respawns(console: str) -> None:
    """A getty on a console device the machine lacks, or a dying server, loops here."""
    assert "Scheduling for restart" not in console


def test_rcs_ran_without_errors(console: str) -> None:
    """busybox's messages for a command rcS could not run or that failed."""
    bad = [ln for ln in console.splitlines() if ": not found" in ln or "can't " in ln]
    assert bad == []


def test_card_partitions_are_mounted(console: str, manifest: dict[str, Any]) -> None:
    """rcS mounts what /etc/fstab lists besides the root (busybox mount, by filesystem UUID)
    and says so: on the raspi boards, the firmware partition at /boot/firmware."""
    others = [p for p in manifest["partitions"] if p["mountpoint"] not in (None, "/")]
    if not others:
        pytest.skip("the image has no partition besides the root")
    for part in others:
        assert f"rcS: {part['mountpoint']} mounted ({part['fs']}, UUID=" in console
