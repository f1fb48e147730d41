"""roc-rk3328-cc: a board with a U-Boot built here (no distribution packages one for it), checked
structurally, since no emulator runs an RK3328: the loader at the offsets the boot ROM reads,
the GPT layout around it, extlinux.conf and the kernel + device tree it names, and the kernel
shared with the other arm64 boards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_project, ext4_file, partition_table, tuoba_build
from tuoba.plan import image_name

pytestmark = pytest.mark.integration

BOARD = "roc-rk3328-cc"
MIB = 1 << 20
ROOT_START = 16 * MIB  # image -> first_partition


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    project = copy_project(tmp_path_factory.mktemp("roc") / "project")
    proc = tuoba_build(project, BOARD)
    assert proc.returncode == 0, proc.stderr
    img = project / "out" / f"{image_name(BOARD, 1)}.img"
    manifest = json.loads(img.with_name(img.stem + ".manifest.json").read_text())
    return img, manifest


@pytest.fixture(scope="module")
def built_s2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    project = copy_project(tmp_path_factory.mktemp("roc-s2") / "project")
    proc = tuoba_build(project, BOARD, "--stage", "2")
    assert proc.returncode == 0, proc.stderr
    img = project / "out" / f"{image_name(BOARD, 2)}.img"
    return img, json.loads(img.with_name(img.stem + ".manifest.json").read_text())


def test_gpt_leaves_room_for_the_loader(built: tuple[Path, dict[str, object]]) -> None:
    img, _ = built
    table = partition_table(img)
    assert table["label"] == "gpt"
    (root,) = table["partitions"]
    assert root["start"] == 16 * MIB // 512  # first_partition: 16M


def test_loader_bytes_at_the_boot_roms_offsets(built: tuple[Path, dict[str, object]]) -> None:
    img, manifest = built
    (loader,) = manifest["boot"]["loaders"]  # type: ignore[index]
    assert loader["offset"] == 64 * 512  # sector 64: idbloader (TPL + SPL)
    blob = (img.parent / loader["file"]).read_bytes()
    assert len(blob) == loader["size"]
    with img.open("rb") as f:
        f.seek(64 * 512)
        on_disk = f.read(len(blob))
        f.seek(16384 * 512)  # sector 16384: u-boot.itb, a FIT image (a flattened device tree)
        itb = f.read(4096)
    assert on_disk == blob  # what the build made, where it belongs
    assert blob[0x800:0x804] == b"RK32"  # rk3328's boot ROM header magic for the TPL (rkcommon)
    assert itb[:4] == b"\xd0\x0d\xfe\xed"
    assert b"ARM Trusted Firmware" in itb and b"atf_1" in itb  # BL31, loaded by SPL
    assert b"firefly,roc-rk3328-cc" in blob  # U-Boot's own device tree is this board's


def test_bmap_maps_the_loader(built: tuple[Path, dict[str, object]]) -> None:
    """`tuoba flash` writes only mapped blocks: the loader region must be among them."""
    img, _ = built
    bmap = img.with_name(img.name + ".bmap").read_text()
    first = bmap.split("<Range", 1)[1].split(">", 1)[1].split("<", 1)[0].strip()
    start = int(first.split("-")[0])
    assert start * 4096 <= 64 * 512


def test_extlinux_boots_this_kernel_and_device_tree(built: tuple[Path, dict[str, object]]) -> None:
    img, manifest = built
    conf = ext4_file(img, ROOT_START, "/boot/extlinux/extlinux.conf").decode()
    table = partition_table(img)
    root_uuid = table["partitions"][0]["uuid"].lower()
    assert "linux /boot/Image" in conf
    assert "fdt /boot/dtbs/rk3328-roc-cc.dtb" in conf
    assert f"root=PARTUUID={root_uuid}" in conf and "console=ttyS2,1500000" in conf
    kernel = manifest["kernel"]  # type: ignore[index]
    assert ext4_file(img, ROOT_START, "/boot/Image") == (img.parent / kernel["kernel"]).read_bytes()
    dtb = ext4_file(img, ROOT_START, "/boot/dtbs/rk3328-roc-cc.dtb")
    assert dtb[:4] == b"\xd0\x0d\xfe\xed" and b"firefly,roc-rk3328-cc" in dtb


def test_a_loader_over_a_partition_is_refused(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    board = project / "boards" / BOARD / "board.yaml"
    board.write_text(board.read_text().replace("first_partition: 16M", "first_partition: 4M"))
    proc = tuoba_build(project, BOARD)
    assert proc.returncode == 4, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "u-boot-rockchip.bin (" in said and "overlaps partition 'root'" in said
    assert not (project / "out" / f"{image_name(BOARD, 1)}.img").exists()


def test_stage2_image_boots_the_same_way(
    built: tuple[Path, dict[str, object]], built_s2: tuple[Path, dict[str, object]]
) -> None:
    """Stage 2 (busybox, dropbear, musl) on the same card layout: the same loader bytes at the
    same offsets, extlinux.conf and the shared kernel, busybox as init, first-boot growth hook."""
    img, manifest = built
    img2, manifest2 = built_s2
    (loader,) = manifest["boot"]["loaders"]  # type: ignore[index]
    (loader2,) = manifest2["boot"]["loaders"]  # type: ignore[index]
    assert loader2["offset"] == loader["offset"] and loader2["size"] == loader["size"]
    with img2.open("rb") as f:
        f.seek(loader2["offset"])
        assert f.read(loader2["size"]) == (img.parent / loader["file"]).read_bytes()
    conf = ext4_file(img2, ROOT_START, "/boot/extlinux/extlinux.conf").decode()
    assert "linux /boot/Image" in conf and "fdt /boot/dtbs/rk3328-roc-cc.dtb" in conf
    kernel2 = manifest2["kernel"]  # type: ignore[index]
    assert kernel2["config_sha256"] == manifest["kernel"]["config_sha256"]  # type: ignore[index]
    assert (
        ext4_file(img2, ROOT_START, "/boot/Image") == (img2.parent / kernel2["kernel"]).read_bytes()
    )
    listing = subprocess.run(
        ["debugfs", "-R", "stat /sbin/init", f"{img2}?offset={ROOT_START}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Fast link dest:" in listing and "busybox" in listing
    assert ext4_file(img2, ROOT_START, "/etc/rcS.d/S20grow-root")  # stage 2's first-boot growth
    assert manifest2["audit"]  # every ELF file audited (clang + musl)
