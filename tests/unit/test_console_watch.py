"""When the serial-console checks may read the console: once it shows a finished boot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tuoba import qemu
from tuoba.guest import CONSOLE_READY


def wait(watch: qemu.ConsoleWatch, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if watch():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "CONSOLE_QUIET", 0.2)
    monkeypatch.setattr(qemu, "CONSOLE_SETTLE_MAX", 1.0)


def test_a_login_prompt_before_systemd_finished_is_not_ready(tmp_path: Path) -> None:
    """The race of a slow machine: getty's prompt, then ssh and the root growth still to come."""
    log = tmp_path / "console.log"
    log.write_text("[  OK  ] Started getty@ttyAMA0.service\ntuoba-rpi4 login: ")
    watch = qemu.ConsoleWatch(log, CONSOLE_READY[1])
    assert not wait(watch, 0.6)
    with log.open("a") as f:
        f.write("\nsystemd[1]: Started ssh.service\nsystemd[1]: Startup finished in 9.1s\n")
    assert wait(watch, 1.0)


def test_ready_only_after_the_console_is_quiet(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("tuoba-qemu login: \n")
    watch = qemu.ConsoleWatch(log, CONSOLE_READY[2])
    assert not watch()  # the first look starts the quiet period
    assert wait(watch, 1.0)


def test_a_console_that_never_goes_quiet_is_ready_after_the_settle_limit(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("tuoba-qemu login: \n")
    watch = qemu.ConsoleWatch(log, CONSOLE_READY[2])
    start = time.monotonic()
    while not watch():
        with log.open("a") as f:
            f.write("a unit restarting\n")
        time.sleep(0.05)
        assert time.monotonic() - start < 3
    assert time.monotonic() - start >= 0.9


def test_a_later_boot_is_watched_from_where_it_starts(tmp_path: Path) -> None:
    """After a reboot the log goes on: the prompt of the boot before does not count."""
    log = tmp_path / "console.log"
    log.write_text("tuoba-rpi4 login: \nreboot: Restarting system\n")
    watch = qemu.ConsoleWatch(log, (r" login: ",), offset=log.stat().st_size)
    assert not watch()
    with log.open("a") as f:
        f.write("imager-pi login: \n")
    watch()
    assert watch.matched_at is not None
