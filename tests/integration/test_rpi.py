"""Raspberry Pi images: checked structurally (partition table, boot files on the FAT partition
matching the build, the board's device tree, root by PARTUUID, fstab, the shared TuobaOS kernel)
and booted in QEMU's raspi3b / raspi4b machines with the serial-console checks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_project, ext4_file, partition_table, tuoba_build, tuoba_test
from tuoba.plan import image_name

pytestmark = pytest.mark.integration

MIB = 1 << 20
BOARDS = {
    # board: (firmware files, device tree, a compatible string the DTB must carry)
    "rpi4": (["start4.elf", "fixup4.dat"], "bcm2711-rpi-4-b.dtb", b"raspberrypi,4-model-b"),
    "rpi3": (
        ["bootcode.bin", "start.elf", "fixup.dat"],
        "bcm2837-rpi-3-b.dtb",
        b"raspberrypi,3-model-b",
    ),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("rpi") / "project")


@pytest.fixture(scope="module", params=sorted(BOARDS))
def built(request: pytest.FixtureRequest, project: Path) -> tuple[str, Path]:
    return build(project, request.param)


def build(project: Path, board: str, stage: int = 1, *extra: str) -> tuple[str, Path]:
    proc = tuoba_build(project, board, "--stage", str(stage), *extra)
    assert proc.returncode == 0, proc.stderr
    return board, project / "out" / f"{image_name(board, stage)}.img"


def partuuids(img: Path) -> tuple[str, str]:
    """(boot, root) PARTUUIDs as the kernel sees an MBR disk: <disk id>-<partition number>."""
    disk_id = str(partition_table(img)["id"]).removeprefix("0x")
    return f"{disk_id}-01", f"{disk_id}-02"


def fat_file(img: Path, start: int, name: str) -> bytes:
    return subprocess.run(
        ["mtype", "-i", f"{img}@@{start}", f"::/{name}"],
        capture_output=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout


def test_partition_table(built: tuple[str, Path]) -> None:
    _, img = built
    table = partition_table(img)
    assert table["label"] == "dos"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and boot["start"] == 2048 and boot["size"] == 256 * MIB // 512
    assert root["type"] == "83"


def test_boot_partition_files_match_the_build(built: tuple[str, Path]) -> None:
    board, img = built
    firmware, dtb, compatible = BOARDS[board]
    manifest = json.loads(
        img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
    )
    boot, _ = partition_table(img)["partitions"]
    start = boot["start"] * 512
    kernel = fat_file(img, start, "Image")
    assert kernel == (img.parent / manifest["kernel"]["kernel"]).read_bytes()
    for name in firmware:
        data = fat_file(img, start, name)
        assert len(data) > 1000, name
    blob = fat_file(img, start, dtb)
    assert blob[:4] == b"\xd0\x0d\xfe\xed"  # a flattened device tree
    assert compatible in blob
    config = fat_file(img, start, "config.txt").decode()
    assert "arm_64bit=1" in config and f"device_tree={dtb}" in config and "kernel=Image" in config
    cmdline = fat_file(img, start, "cmdline.txt").decode()
    assert f"root=PARTUUID={partuuids(img)[1]}" in cmdline  # the table's own PARTUUID
    assert "rootwait" in cmdline and "console=ttyS0,115200" in cmdline


def test_root_filesystem_mounts_boot_and_has_the_kernel_modules(built: tuple[str, Path]) -> None:
    _, img = built
    _, root = partition_table(img)["partitions"]
    start = root["start"] * 512
    fstab = ext4_file(img, start, "/etc/fstab").decode()
    boot_id, root_id = partuuids(img)
    assert f"PARTUUID={root_id} / ext4" in fstab
    assert f"PARTUUID={boot_id} /boot/firmware vfat" in fstab
    modules = ext4_file(img, start, "/usr/lib/modules/6.1.170-tuoba/modules.dep").decode()
    assert "vhost_net.ko" in modules
    unit = ext4_file(img, start, "/etc/systemd/system/tuoba-grow-root.service").decode()
    assert "ExecStart=/usr/lib/tuoba/grow-root" in unit
    assert "growpart" in ext4_file(img, start, "/usr/lib/tuoba/grow-root").decode()
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /etc/systemd/system/multi-user.target.wants",
         f"{img}?offset={start}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "tuoba-grow-root.service" in listing  # enabled


def test_one_kernel_serves_all_arm64_boards(built: tuple[str, Path]) -> None:
    """rpi3, rpi4 and qemu-aarch64 share the arm64-generic flavour: the same kernel image."""
    board, img = built
    manifest = json.loads(
        img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
    )
    digest = manifest["kernel"]["config_digest"]
    kernel = img.parent / manifest["kernel"]["kernel"]
    other = "rpi3" if board == "rpi4" else "rpi4"
    other_manifest = img.parent / f"{image_name(other, 1)}.manifest.json"
    if other_manifest.exists():
        theirs = json.loads(other_manifest.read_text())
        assert theirs["kernel"]["config_digest"] == digest
    assert hashlib.sha256(kernel.read_bytes()).hexdigest() == manifest["kernel"]["kernel_sha256"]


@pytest.mark.parametrize(
    ("board", "stage", "machine", "recipes"),
    [("rpi3", 1, "raspi3b", ()), ("rpi3", 2, "raspi3b", ()),
     ("rpi4", 1, "raspi4b", ("--recipe", "tuoba")), ("rpi4", 2, "raspi4b", ())],
)  # fmt: skip
def test_boots_in_qemu_raspi(
    project: Path, board: str, stage: int, machine: str, recipes: tuple[str, ...]
) -> None:
    """QEMU's raspi3b/raspi4b boots the image's kernel and device tree from this build with the
    SD image attached as a card twice its size; the raspi machines have no network, so the
    serial-console checks run, among them the root partition grown into the whole card on first
    boot.
    raspi4b gets the board's dtb_edits (said on the way), raspi3b the DTB unchanged. rpi4's
    stage 1 is the developer image (`-r tuoba`, every stack: the release image)."""
    _, img = build(project, board, stage, *recipes)
    # a card twice the image (the developer image outgrows the board's 2 GiB and is 4 GiB)
    card = 2 * img.stat().st_size
    junit = img.parent / f"{board}-s{stage}-report.xml"
    proc = tuoba_test(img, board, "--stage", str(stage), "--junit", str(junit), "--timeout", "400",
                      "--card-size", f"{card >> 30}G")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "instead of the ssh checks" in said  # the limit is said, not hidden
    assert ("with these edits" in said) == (board == "rpi4")
    report = junit.read_text()
    assert 'failures="0"' in report and 'errors="0"' in report
    assert "test_root_grew_to_fill_the_card" in report
    if recipes:
        m = json.loads(img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text())
        assert {"bpf", "containers", "security"} <= set(m["recipes"])
    if stage == 1:
        assert "test_unit_started[ssh.service]" in report
    else:
        assert "test_dropbear_started_and_stays_up" in report
    log = junit.with_name(junit.stem + ".console.log").read_text(errors="replace")
    assert f"{board} login:" in log
    assert "Machine model: Raspberry Pi " + ("4 Model B" if board == "rpi4" else "3 Model B") in log
    # the card is mmcblk0 or mmcblk1 depending on which SD controller probes first
    grew = re.search(r"tuoba-grow-root: grew /dev/mmcblk\dp2 from (\d+) to (\d+) MiB", log)
    assert grew, log[-3000:]
    # from the image's root partition (all but the boot partition and the first MiB) to the
    # card's end, less the few MiB the tools keep
    image_mib, card_mib = img.stat().st_size >> 20, card >> 20
    assert int(grew[1]) == image_mib - 256 - 2
    assert card_mib - 256 - 16 <= int(grew[2]) < card_mib - 256
    if stage == 2:
        manifest = json.loads(
            img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
        )
        assert "usr/sbin/tuoba-grow-root" in {f["file"] for f in manifest["audit"]}


def test_card_size_must_hold_the_image_and_suit_qemus_sd(project: Path) -> None:
    _, img = build(project, "rpi4", 2)
    for size, message in [
        ("1G", "a 1024 MiB card cannot hold"),
        ("3G", "QEMU's SD cards are a power of two in size; 3072 MiB is not"),
    ]:
        proc = tuoba_test(img, "rpi4", "--stage", "2", "--card-size", size)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
