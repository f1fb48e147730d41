"""Guest checks for the `base` recipe: kernel, root filesystem, ssh, config, units, hostname."""

from __future__ import annotations

import gzip
from typing import Any

import paramiko
import pytest

pytestmark = pytest.mark.guest


def test_expected_kernel_running(host: Any, manifest: dict[str, Any]) -> None:
    assert host.check_output("uname -r") == manifest["kernel"]["version"]
    assert host.system_info.arch == "aarch64"


def test_root_is_ext4_read_write(host: Any) -> None:
    root = host.mount_point("/")
    assert root.filesystem == "ext4"
    assert "rw" in root.options


@pytest.mark.parametrize("service", ["ssh"])
def test_service_running(host: Any, service: str) -> None:
    s = host.service(service)
    assert s.is_running
    assert s.is_enabled


def test_ssh_host_key_made_on_first_boot(host: Any) -> None:
    key = host.file("/etc/ssh/ssh_host_ed25519_key")
    assert key.exists
    # The build never ships host keys: the key is younger than the boot.
    boot = float(host.check_output("cut -d' ' -f1 /proc/uptime"))
    now = int(host.check_output("date +%s"))
    assert key.mtime.timestamp() >= now - boot - 5


@pytest.mark.parametrize("password", ["", "root", "tuoba"])
def test_password_login_refused(guest_port: int, password: str) -> None:
    transport = paramiko.Transport(("127.0.0.1", guest_port))
    try:
        transport.start_client(timeout=30)
        with pytest.raises(paramiko.BadAuthenticationType) as e:
            transport.auth_password("root", password)
        assert e.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_root_has_no_password(host: Any) -> None:
    shadow = host.file("/etc/shadow").content_string  # the checks log in as root
    field = next(ln.split(":")[1] for ln in shadow.splitlines() if ln.startswith("root:"))
    assert field in ("*", "!", "!*", "!!")


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


def test_hostname_from_board(host: Any, manifest: dict[str, Any]) -> None:
    assert host.check_output("hostname") == manifest["hostname"]
    assert host.file("/etc/hostname").content_string.strip() == manifest["hostname"]
