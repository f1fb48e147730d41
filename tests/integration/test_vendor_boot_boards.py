"""jetson-nano and vim3: boards whose first boot stages are the vendor's, checked structurally
(no emulator runs a Tegra210 or an A311D).

- jetson-nano: the boot chain lives in the module's QSPI flash (L4T); the card is one GPT root
  partition whose /boot/extlinux/extlinux.conf that U-Boot reads. The build says so.
- vim3: the user's signed Amlogic boot image (a placeholder here, made by tests/conftest.py) at
  byte 512, its boot code in the MBR's first 440 bytes, the disk signature and the partition
  table kept, the root from 16 MiB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import (
    amlogic_sd_fip,
    copy_project,
    ext4_file,
    kernel_config,
    partition_table,
    tuoba_build,
)
from tuoba.plan import image_name

pytestmark = pytest.mark.integration

MIB = 1 << 20


class Built:
    def __init__(self, img: Path, output: str) -> None:
        self.img = img
        self.output = output
        self.manifest = json.loads(img.with_name(img.stem + ".manifest.json").read_text())
        self.table = partition_table(img)

    def root_file(self, path: str) -> bytes:
        return ext4_file(self.img, self.table["partitions"][0]["start"] * 512, path)

    def built_file(self, name: str) -> bytes:
        return (self.img.parent / name).read_bytes()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("vendor") / "project")


@pytest.fixture(scope="module")
def sd_bin(project: Path) -> Path:
    return amlogic_sd_fip(project.parent / "u-boot.bin.sd.bin")


@pytest.fixture(scope="module")
def jetson(project: Path) -> Built:
    proc = tuoba_build(project, "jetson-nano")
    assert proc.returncode == 0, proc.stderr
    return Built(project / "out" / f"{image_name('jetson-nano', 1)}.img", proc.stderr)


@pytest.fixture(scope="module")
def vim3(project: Path, sd_bin: Path) -> Built:
    proc = tuoba_build(project, "vim3", "--supply", f"u-boot.bin.sd.bin={sd_bin}")
    assert proc.returncode == 0, proc.stderr
    return Built(project / "out" / f"{image_name('vim3', 1)}.img", proc.stderr)


def check_extlinux(built: Built, dtb: str, console: str, compatible: bytes) -> None:
    """extlinux.conf names this build's kernel and the board's device tree, root by PARTUUID."""
    conf = built.root_file("/boot/extlinux/extlinux.conf").decode()
    root_uuid = built.manifest["partitions"][0]["uuid"]
    assert "linux /boot/Image" in conf and f"fdt /boot/dtbs/{dtb}" in conf
    assert f"root=PARTUUID={root_uuid} " in conf and f"console={console}" in conf
    kernel = built.manifest["kernel"]
    assert built.root_file("/boot/Image") == built.built_file(kernel["kernel"])
    on_card = built.root_file(f"/boot/dtbs/{dtb}")
    (exported,) = kernel["board_dtbs"]
    assert on_card == built.built_file(exported) and exported.endswith(dtb)
    assert on_card[:4] == b"\xd0\x0d\xfe\xed" and compatible in on_card


def test_jetson_card_is_one_gpt_root_with_extlinux(jetson: Built) -> None:
    assert jetson.table["label"] == "gpt"
    (root,) = jetson.table["partitions"]
    assert root["start"] == MIB // 512
    assert jetson.manifest["boot"]["loaders"] == []  # nothing of ours before the partition
    check_extlinux(jetson, "tegra210-p3450-0000.dtb", "ttyS0,115200", b"nvidia,p3450-0000")


def test_jetson_build_says_what_the_module_needs(jetson: Built) -> None:
    said = " ".join(jetson.output.split())
    assert "before this card boots a jetson-nano: the module's QSPI flash must hold" in said
    assert "L4T R32.5 or later" in said


def test_one_kernel_has_every_arm64_boards_platform(jetson: Built, vim3: Built) -> None:
    """jetson-nano and vim3 share the arm64 kernel: one build with Tegra210, G12B and RK3328."""
    kj, kv = jetson.manifest["kernel"], vim3.manifest["kernel"]
    assert kj["config_sha256"] == kv["config_sha256"]
    assert kj["config_digest"] == kv["config_digest"]
    config = kernel_config(jetson.img, jetson.manifest)
    platforms = (
        "ARCH_TEGRA_210_SOC MMC_SDHCI_TEGRA PCI_TEGRA R8169 "
        "ARCH_MESON MMC_MESON_GX SERIAL_MESON_CONSOLE DWMAC_MESON "
        "ARCH_ROCKCHIP MMC_DW_ROCKCHIP DWMAC_ROCKCHIP ARCH_BCM2835"
    )
    for option in platforms.split():
        assert f"CONFIG_{option}=y\n" in config, option


def test_vim3_boot_image_sits_where_the_boot_rom_reads(vim3: Built, sd_bin: Path) -> None:
    supplied = sd_bin.read_bytes()
    with vim3.img.open("rb") as f:
        head = f.read(len(supplied))
    assert head[512:] == supplied[512:]  # sector 1 onwards: the boot image, byte for byte
    assert head[:440] == supplied[:440]  # its boot code in the MBR's boot code area
    assert head[440:444] == bytes.fromhex(vim3.table["id"][2:])[::-1]  # our disk signature
    assert head[510:512] == b"\x55\xaa"
    assert head[0x210:0x214] == b"@AML"
    loaders = vim3.manifest["boot"]["loaders"]
    assert [(x["offset"], x["size"]) for x in loaders] == [(0, 440), (512, len(supplied) - 512)]
    (given,) = vim3.manifest["boot"]["supplied"]
    assert given["file"] == "u-boot.bin.sd.bin" and given["from"] == sd_bin.name  # (no host path)


def test_vim3_partition_table_survives_the_loader(vim3: Built) -> None:
    assert vim3.table["label"] == "dos"
    (root,) = vim3.table["partitions"]
    assert root["start"] == 16 * MIB // 512 and root["type"] == "83"
    assert vim3.manifest["partitions"][0]["uuid"] == f"{vim3.table['id'][2:]}-01"
    check_extlinux(vim3, "meson-g12b-a311d-khadas-vim3.dtb", "ttyAML0,115200", b"khadas,vim3")


def test_vim3_bmap_maps_the_loader(vim3: Built, sd_bin: Path) -> None:
    """`tuoba flash` writes only mapped blocks: the whole boot image must be among them."""
    bmap = vim3.img.with_name(vim3.img.name + ".bmap").read_text()
    ranges = [
        tuple(int(n) for n in r.split(">", 1)[1].split("<", 1)[0].strip().split("-"))
        for r in bmap.split("<Range")[1:]
    ]
    end_block = (sd_bin.stat().st_size - 1) // 4096
    assert any(r[0] == 0 and r[-1] >= end_block for r in ranges), ranges[:3]
