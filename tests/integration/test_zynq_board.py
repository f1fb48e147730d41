"""pynq-z2: the armhf pipeline (ARCH=arm clang kernel as zImage, a board device tree built from
the board's own .dts, a Debian armhf root) and the Zynq boot layout: BOOT.BIN, which a user
supplies, on the first FAT partition beside the kernel, device tree and extlinux.conf. The image
boots in QEMU's xilinx-zynq-a9, which loads the kernel and device tree itself (it has no boot
ROM, so BOOT.BIN and U-Boot are checked structurally only) and runs the guest checks over ssh.

The test's BOOT.BIN is made by U-Boot's `mkimage -T zynqimage` around a placeholder payload: a
valid boot header, not a loader for real hardware (that needs the board's Vivado design)."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import (
    copy_project,
    kernel_config,
    partition_table,
    tuoba_build,
    tuoba_test,
    zynq_boot_image,
)
from tuoba import apt, run
from tuoba.plan import DEBIAN_RELEASE, image_name

pytestmark = pytest.mark.integration

BOARD = "pynq-z2"
MIB = 1 << 20


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], Path]:
    project = copy_project(tmp_path_factory.mktemp("pynq") / "project")
    boot_bin = zynq_boot_image(project.parent / "BOOT.BIN")
    # --mirror: the main archive only. The -security suite's armhf index this machine's archive
    # serves does not match its signed Release file (apt: "File has unexpected size"), which
    # stops the default build with a message saying so.
    mirror = apt.debian_mirrors(DEBIAN_RELEASE)[0]
    proc = tuoba_build(project, BOARD, "--supply", f"BOOT.BIN={boot_bin}",
                 "--mirror", mirror)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    img = project / "out" / f"{image_name(BOARD, 1)}.img"
    manifest = json.loads(img.with_name(img.stem + ".manifest.json").read_text())
    return img, manifest, boot_bin


def fat_file(img: Path, name: str) -> bytes:
    start = partition_table(img)["partitions"][0]["start"] * 512
    return subprocess.run(
        ["mcopy", "-n", "-i", f"{img}@@{start}", f"::/{name}", "-"],
        capture_output=True, check=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip


def test_boot_partition_holds_what_the_boot_rom_and_u_boot_read(
    built: tuple[Path, dict[str, object], Path],
) -> None:
    img, manifest, boot_bin = built
    table = partition_table(img)
    assert table["label"] == "dos"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and root["type"] == "83"  # FAT32 (LBA), Linux
    assert fat_file(img, "BOOT.BIN") == boot_bin.read_bytes()  # the supplied file, unchanged
    (supplied,) = manifest["boot"]["supplied"]  # type: ignore[index]
    assert supplied["file"] == "BOOT.BIN" and supplied["from"] == boot_bin.name  # (no host path)
    kernel = manifest["kernel"]  # type: ignore[index]
    zimage = fat_file(img, "zImage")
    assert zimage == (img.parent / kernel["kernel"]).read_bytes()
    assert int.from_bytes(zimage[0x24:0x28], "little") == 0x016F2818  # ARM zImage magic
    dtb = fat_file(img, "zynq-pynq-z2.dtb")
    assert dtb == (img.parent / f"{img.stem}.zynq-pynq-z2.dtb").read_bytes()
    conf = fat_file(img, "extlinux/extlinux.conf").decode()
    disk_id = str(table["id"]).removeprefix("0x")
    assert "linux /zImage" in conf and "fdt /zynq-pynq-z2.dtb" in conf
    assert f"root=PARTUUID={disk_id}-02" in conf and "console=ttyPS0,115200" in conf


def test_device_tree_is_the_boards_own(built: tuple[Path, dict[str, object], Path]) -> None:
    """Built from boards/pynq-z2/zynq-pynq-z2.dts against the kernel's zynq-7000.dtsi."""
    img, _, _ = built
    dtb = img.with_name(f"{img.stem}.zynq-pynq-z2.dtb")

    def get(node: str, prop: str) -> str:
        return run.output(["fdtget", str(dtb), node, prop])

    assert get("/", "compatible").split() == ["tul,pynq-z2", "xlnx,zynq-7000"]
    assert get("/memory@0", "reg").split() == ["0", "536870912"]  # 512 MiB
    assert get("/axi/serial@e0000000", "status") == "okay"  # UART0: the USB-UART
    assert get("/axi/mmc@e0100000", "status") == "okay"  # SD0
    assert get("/axi/ethernet@e000b000", "status") == "okay"  # GEM0


def test_kernel_and_root_are_armhf(built: tuple[Path, dict[str, object], Path]) -> None:
    img, manifest, _ = built
    kernel = manifest["kernel"]  # type: ignore[index]
    config = kernel_config(img, manifest)  # type: ignore[arg-type]
    for option in ("CONFIG_ARM=y", "CONFIG_ARCH_ZYNQ=y", "CONFIG_SERIAL_XILINX_PS_UART=y",
                   "CONFIG_MMC_SDHCI_OF_ARASAN=y", "CONFIG_MACB=y", "CONFIG_BPF_JIT=y",
                   "CONFIG_FPGA_MGR_ZYNQ_FPGA=y"):  # fmt: skip
        assert option in config.splitlines(), option
    assert "CONFIG_KVM=y" not in config  # 32-bit ARM has had no KVM since Linux 5.7
    assert kernel["compiler"].startswith("Debian clang")
    archs = {p["arch"] for p in manifest["packages"]}  # type: ignore[attr-defined]
    assert archs <= {"armhf", "all"} and "armhf" in archs
    names = {p["name"] for p in manifest["packages"]}  # type: ignore[attr-defined]
    assert "bpftool" in names and "bpftrace" not in names


def test_boots_in_qemu_zynq(built: tuple[Path, dict[str, object], Path]) -> None:
    """xilinx-zynq-a9 boots the image's kernel and device tree from this build, the SD image
    grown into a 4 GiB card; the guest checks run over ssh through the emulated GEM0."""
    img, _, _ = built
    junit = img.parent / "pynq-report.xml"
    proc = tuoba_test(img, BOARD, "--junit", str(junit),
                 "--timeout", "900", "--card-size", "4G")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    wanted = [
        "test_kprobe_fires_with_a_raw_bpf_program",
        "test_bpftool_sees_jited_programs",
        "test_kernel_built_by_clang",
        "test_no_failed_units",
        "test_modules_load",
    ]
    ran = {n.split("[")[0] for n in cases}  # without the [ssh://…] host suffix
    for name in wanted:
        assert name in ran, sorted(ran)
    failed = [n for n, c in cases.items() if c.find("failure") is not None
              or c.find("error") is not None]  # fmt: skip
    assert not failed
    log = junit.with_name(junit.stem + ".console.log").read_text(errors="replace")
    assert "tuoba-pynq login:" in log  # (the kernel boots with quiet: no early messages)
    assert re.search(r"grow-root: grew /dev/mmcblk0p2 from 1790 to 383\d MiB", log)


def test_unsupplied_boot_bin_stops_before_any_side_effect(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    proc = tuoba_build(project, BOARD)
    assert proc.returncode == 2
    said = " ".join(proc.stderr.split())
    assert "board 'pynq-z2' needs a file tuoba cannot fetch: BOOT.BIN" in said
    assert "--supply BOOT.BIN=PATH" in said
    assert not (project / "out").exists()
