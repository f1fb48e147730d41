"""The QEMU command line (tuoba.qemu): what a guest is given to be reached from the host."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from tuoba.board import QemuSpec
from tuoba.errors import GuestCheckError
from tuoba.qemu import (
    PROBE_GUEST_PORT,
    BootSpec,
    card_cmdline,
    emulated_cmdline,
    free_ports,
    qemu_command,
)


def spec(nic: str = "virtio", network: bool = True) -> BootSpec:
    q = QemuSpec("virt", "cortex-a72", 2, 2048, network=network, nic=nic)
    return BootSpec("arm64", Path("a.img"), Path("Image"), None, None, "root=x", q)


@pytest.mark.parametrize("nic", ["virtio", "board"])
def test_ssh_and_probe_ports_are_forwarded_on_loopback_only(nic: str) -> None:
    cmd = " ".join(qemu_command(spec(nic), 2222, "console.log", writable=False, probe_port=3333))
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in cmd
    assert f"hostfwd=tcp:127.0.0.1:3333-:{PROBE_GUEST_PORT}" in cmd
    assert "hostfwd=tcp::" not in cmd and "0.0.0.0" not in cmd


def test_no_probe_forward_unless_asked() -> None:
    cmd = " ".join(qemu_command(spec(), 2222, "stdio", writable=True))
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in cmd and f":{PROBE_GUEST_PORT}" not in cmd


def test_a_machine_without_network_gets_no_forward() -> None:
    cmd = qemu_command(spec(network=False), 2222, "console.log", writable=False, probe_port=3333)
    assert not any("hostfwd" in word for word in cmd)


def test_the_console_log_is_appended_to_across_boots() -> None:
    cmd = qemu_command(spec(), 2222, "/tmp/a,b/console.log", writable=False)
    assert "file,id=console,path=/tmp/a,,b/console.log,append=on" in cmd
    assert cmd[cmd.index("-serial") + 1] == "chardev:console"


def fat_card(tmp_path: Path, cmdline: str | None) -> tuple[Path, int, int]:
    """An image of 1 MiB lead-in and a 33 MiB FAT32 partition holding cmdline.txt."""
    fat = tmp_path / "fat.img"
    subprocess.run(["mkfs.vfat", "-F", "32", "-C", str(fat), str(33 * 1024)], check=True,
                   capture_output=True)  # fmt: skip
    if cmdline is not None:
        (tmp_path / "cmdline.txt").write_text(cmdline)
        subprocess.run(["mcopy", "-i", str(fat), str(tmp_path / "cmdline.txt"), "::/"],
                       check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    img = tmp_path / "card.img"
    with img.open("wb") as f:
        f.truncate(1 << 20)
        f.seek(1 << 20)
        f.write(fat.read_bytes())
    return img, 1 << 20, 33 << 20


def test_the_command_line_is_read_from_the_card_as_the_firmware_does(tmp_path: Path) -> None:
    """From cmdline.txt on the card's first FAT partition, of the raw image or of the qcow2
    overlay QEMU writes to, made fit for the emulated machine (its console, its extra words)."""
    img, start, size = fat_card(tmp_path, "root=PARTUUID=1-02 quiet console=ttyS0,115200\n")
    q = QemuSpec("raspi4b", None, None, 2048, drive="sd", console="ttyAMA0", network=False,
                 cmdline=("printk.devkmsg=on",), cmdline_file="cmdline.txt")  # fmt: skip
    boot = BootSpec("arm64", img, Path("Image"), None, None, "", q, cmdline_card=(start, size))
    want = "root=PARTUUID=1-02 printk.devkmsg=on console=ttyAMA0"
    assert card_cmdline(boot, tmp_path) == want
    overlay = tmp_path / "card.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(img), "-F", "raw",
                    str(overlay)], check=True)  # fmt: skip
    assert card_cmdline(dataclasses.replace(boot, image=overlay), tmp_path) == want
    assert emulated_cmdline("root=x console=ttyS0", QemuSpec("virt", None, None, 1)) == (
        "root=x console=ttyS0"
    )


def test_a_card_without_its_cmdline_file_is_refused_naming_it(tmp_path: Path) -> None:
    img, start, size = fat_card(tmp_path, None)
    q = QemuSpec("raspi4b", None, None, 2048, drive="sd", cmdline_file="cmdline.txt")
    boot = BootSpec("arm64", img, Path("Image"), None, None, "", q, cmdline_card=(start, size))
    with pytest.raises(GuestCheckError) as e:
        card_cmdline(boot, tmp_path)
    assert "its first FAT partition has no cmdline.txt" in e.value.message


def test_a_recipes_ports_are_forwarded_on_loopback() -> None:
    """The manifest's ports (recipe.PORTS): each guest port reached from its own host port."""
    forwards = {9090: 4444, 8080: 5555}
    cmd = " ".join(qemu_command(spec(), 2222, "stdio", writable=False, forwards=forwards))
    assert "hostfwd=tcp:127.0.0.1:4444-:9090" in cmd and "hostfwd=tcp:127.0.0.1:5555-:8080" in cmd


def test_free_ports_are_different() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
