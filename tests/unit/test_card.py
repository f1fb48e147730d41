"""`tuoba test --card`: booting the card an image was flashed to. The card must hold the image
(its partitions where the manifest has them, with the same PARTUUIDs), and QEMU attaches a block
device through an overlay whose size suits the machine's SD controller."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_manifest import M
from tests.unit.test_qemu import spec
from tuoba.errors import InputError
from tuoba.guest import boot_spec, check_card
from tuoba.qemu import card_size_for, disk_size, is_block_device

MIB = 1 << 20
GPT_ROOT = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
ROOT_UUID = "6e1e8a39-4c1b-4f58-9d1e-2f6b0f1a7c11"


def card(path: Path, table: str, size: int = 64 * MIB) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    return path


def gpt(path: Path, uuid: str = ROOT_UUID, start: int = 2048) -> Path:
    return card(path, f"label: gpt\nstart={start}, type={GPT_ROOT}, uuid={uuid}\n")


GPT_IMAGE = dataclasses.replace(
    M, partitions=[{"start": 1 * MIB, "size": 63 * MIB, "uuid": ROOT_UUID, "mountpoint": "/"}]
)
MBR_IMAGE = dataclasses.replace(
    M,
    partitions=[
        {"start": 1 * MIB, "size": 8 * MIB, "uuid": "1234abcd-01", "mountpoint": "/boot/firmware"},
        {"start": 9 * MIB, "size": 55 * MIB, "uuid": "1234abcd-02", "mountpoint": "/"},
    ],
)


def test_a_card_holding_the_image_is_taken(tmp_path: Path) -> None:
    check_card(gpt(tmp_path / "gpt"), GPT_IMAGE)
    mbr = card(tmp_path / "mbr", "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=16384, "
               "type=c\nstart=18432, type=83\n")  # fmt: skip
    check_card(mbr, MBR_IMAGE)


@pytest.mark.parametrize(
    "made",
    [
        lambda p: gpt(p, uuid="0b0b0b0b-4c1b-4f58-9d1e-2f6b0f1a7c11"),  # another image's card
        lambda p: gpt(p, start=4096),
        lambda p: card(p, "label: dos\nlabel-id: 0x1234abcd\nstart=2048, type=83\n"),
    ],
    ids=["other-partuuid", "other-start", "other-table"],
)
def test_a_card_holding_another_image_is_refused(tmp_path: Path, made: object) -> None:
    path = made(tmp_path / "card")  # type: ignore[operator]
    with pytest.raises(InputError, match=r"card does not hold tuoba-x-s1-0\.1\.0: its partitions "
                       r"are not the image's \(6e1e8a39-.* at 1 MiB\)") as e:  # fmt: skip
        check_card(path, GPT_IMAGE)
    assert "tuoba flash tuoba-x-s1-0.1.0.img.xz --device" in (e.value.hint or "")


def test_a_blank_card_or_none_is_refused(tmp_path: Path) -> None:
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(MIB))
    with pytest.raises(InputError, match="blank has no partition table: it does not hold"):
        check_card(blank, GPT_IMAGE)
    with pytest.raises(InputError, match=r"no card at .*nowhere: give a block device or an image"):
        check_card(tmp_path / "nowhere", GPT_IMAGE)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "backing"
    with backing.open("wb") as f:
        f.truncate(24 * MIB)  # an "SD card" of no power-of-two size
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_a_block_device_is_attached_at_its_size_rounded_for_an_sd_slot(loop: Path) -> None:
    assert is_block_device(loop) and disk_size(loop) == 24 * MIB
    on_virtio = dataclasses.replace(spec(), image=loop)
    assert card_size_for(on_virtio) == 24 * MIB
    on_sd = dataclasses.replace(on_virtio, qemu=dataclasses.replace(on_virtio.qemu, drive="sd"))
    assert card_size_for(on_sd) == 32 * MIB  # QEMU's SD cards are a power of two


def test_an_image_file_is_attached_at_its_own_size(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(bytes(3 * MIB))
    assert not is_block_device(img) and disk_size(img) == 3 * MIB
    assert card_size_for(dataclasses.replace(spec(), image=img)) == 3 * MIB


def test_an_image_file_on_an_sd_slot_is_rounded_up_too(tmp_path: Path) -> None:
    """A copy of a real card (dd of an "8 GB" one) boots like the card itself."""
    img = tmp_path / "card-copy.img"
    with img.open("wb") as f:
        f.truncate(24 * MIB)
    on_sd = dataclasses.replace(spec(), image=img)
    on_sd = dataclasses.replace(on_sd, qemu=dataclasses.replace(on_sd.qemu, drive="sd"))
    assert card_size_for(on_sd) == 32 * MIB


def test_a_compressed_image_is_not_booted_as_a_disk(tmp_path: Path) -> None:
    """A downloaded NAME.img.xz finds its manifest, but only a card it was flashed to boots."""
    xz = tmp_path / "tuoba-x-s1-0.1.0.img.xz"
    xz.write_bytes(b"\xfd7zXZ\0")
    with pytest.raises(InputError, match=r"img\.xz is compressed: QEMU boots a disk") as e:
        boot_spec(xz, M)
    assert "--card DEV" in (e.value.hint or "")
