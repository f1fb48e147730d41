"""Guest checks every image has (stage 1 and stage 2): the expected kernel, a writable ext4
root, the board's hostname, an ssh host key made on first boot, and root reachable by key only."""

from __future__ import annotations

from typing import Any

import paramiko
import pytest

pytestmark = pytest.mark.guest

HOST_KEY = {1: "/etc/ssh/ssh_host_ed25519_key", 2: "/etc/dropbear/dropbear_ed25519_host_key"}


def test_expected_kernel_running(host: Any, manifest: dict[str, Any]) -> None:
    assert host.check_output("uname -r") == manifest["kernel"]["version"]
    assert (
        host.check_output("uname -m") == {"arm64": "aarch64", "armhf": "armv7l"}[manifest["arch"]]
    )


def test_root_is_ext4_read_write(host: Any) -> None:
    root = host.mount_point("/")
    assert root.filesystem == "ext4"
    assert "rw" in root.options


def test_ssh_host_key_made_on_first_boot(host: Any, manifest: dict[str, Any]) -> None:
    key = host.file(HOST_KEY[manifest["stage"]])
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


def test_hostname_from_board(host: Any, manifest: dict[str, Any]) -> None:
    assert host.check_output("hostname") == manifest["hostname"]
    assert host.file("/etc/hostname").content_string.strip() == manifest["hostname"]
