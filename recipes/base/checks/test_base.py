"""Guest checks for the stage-1 `base` recipe: systemd, OpenSSH, the kernel's BPF syscall."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

pytestmark = pytest.mark.guest


@pytest.mark.parametrize("service", ["ssh"])
def test_service_running(host: Any, service: str) -> None:
    s = host.service(service)
    assert s.is_running
    assert s.is_enabled


def _running_config(host: Any) -> dict[str, str]:
    if host.file("/proc/config.gz").exists:
        text = gzip.decompress(host.file("/proc/config.gz").content).decode()
    else:
        text = host.file(f"/boot/config-{host.check_output('uname -r')}").content_string
    return dict(ln.split("=", 1) for ln in text.splitlines() if ln.startswith("CONFIG_"))


@pytest.mark.parametrize("option", ["CONFIG_BPF_SYSCALL"])
def test_kernel_option_set(host: Any, option: str) -> None:
    assert _running_config(host).get(option) == "y"


def test_no_failed_units(host: Any) -> None:
    failed = host.check_output("systemctl list-units --failed --no-legend --plain")
    assert failed == ""
