"""The pytest plugin of guest checks: `tuoba test` runs the checks of an image's recipes
(recipes/<name>/checks/test_*.py) and of every image (tests/image/) with `-p tuoba.guestchecks`,
against the booted image (testinfra's `host` fixture), and passes the image's manifest, the
forwarded ssh port and the probe port in the environment. These are the fixtures every check
may use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guest: a check run inside a booted image by `tuoba test`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The checks of recipes the image was built without (TUOBA_NOT_RUN: check file -> why)
    are reported as skipped with the reason: not run, and never passed."""
    not_run: dict[str, str] = json.loads(os.environ.get("TUOBA_NOT_RUN") or "{}")
    root = config.rootpath
    for item in items:
        try:
            rel = str(item.path.relative_to(root))
        except ValueError:
            continue
        if rel in not_run:
            item.add_marker(pytest.mark.skip(reason=f"not run: {not_run[rel]}"))


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    raw = os.environ.get("TUOBA_MANIFEST")
    if not raw:
        pytest.fail("guest checks run through `tuoba test`, which sets TUOBA_MANIFEST")
    data: dict[str, Any] = json.loads(raw)
    return data


@pytest.fixture(scope="session")
def guest_port() -> int:
    return int(os.environ["TUOBA_GUEST_PORT"])


@dataclasses.dataclass(frozen=True)
class Probe:
    """A loopback port of the host that QEMU forwards to a fixed port of the guest."""

    host_port: int
    guest_port: int


@pytest.fixture(scope="session")
def probe() -> Probe:
    """The probe forward: what the host reaches on 127.0.0.1:host_port is the guest's
    guest_port, arriving from outside the guest (through its network interface)."""
    host_port, guest_port = os.environ["TUOBA_PROBE"].split(":")
    return Probe(int(host_port), int(guest_port))


@pytest.fixture(scope="session")
def forwarded() -> dict[int, int]:
    """The recipes' ports (the manifest's `ports`): guest port -> the loopback port of the host
    that QEMU forwards to it."""
    raw = os.environ.get("TUOBA_FORWARDS", "")
    pairs = (item.split(":") for item in raw.split(",") if item)
    return {int(guest): int(host) for guest, host in pairs}


@pytest.fixture(scope="session")
def console() -> str:
    """The serial console log of the boot (checks for boards without a network read it): of
    the last boot, when the guest rebooted on its way up (tuoba.qemu.REBOOT_MARK)."""
    with open(os.environ["TUOBA_CONSOLE_LOG"], errors="replace") as f:
        text = f.read().rpartition("tuoba: the guest rebooted; ")[2]
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # drop colour codes


@pytest.fixture(autouse=True)
def _boot_finished(request: pytest.FixtureRequest, manifest: dict[str, Any]) -> None:
    """ssh answers before systemd has finished the boot (units still starting, first-boot work
    still running): stage-1 checks over ssh wait for systemd's own verdict first, once."""
    if "host" not in request.fixturenames or manifest["stage"] != 1:
        return
    if _BOOT_STATE:
        return
    state = request.getfixturevalue("host").run("timeout 600 systemctl is-system-running --wait")
    verdict = state.stdout.strip() or f"no answer (exit {state.rc})"
    _BOOT_STATE.append(verdict)  # once: the checks after a failed wait do not wait again
    if verdict not in ("running", "degraded"):  # degraded: test_no_failed_units names the unit
        pytest.fail(f"systemd did not finish the boot: {verdict!r} {state.stderr}")


_BOOT_STATE: list[str] = []
