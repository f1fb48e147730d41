from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from tuoba.board import ImageSpec, Partition
from tuoba.disk import layout, sfdisk_script, sha256sums, write_bmap
from tuoba.publish import atomic


def spec() -> ImageSpec:
    return ImageSpec(
        "gpt",
        64 << 20,
        (
            Partition("boot", "esp", "vfat", 16 << 20, "/boot"),
            Partition("root", "root-arm64", "ext4", None, "/"),
        ),
    )


def test_layout_aligns_and_fills() -> None:
    a, b = layout(spec(), "seed")
    assert a.start == 1 << 20 and a.size == 16 << 20
    assert b.start == 17 << 20
    assert b.start + b.size == (64 << 20) - (1 << 20)
    assert layout(spec(), "seed") == [a, b]  # stable UUIDs for the same seed
    assert layout(spec(), "other")[1].uuid != b.uuid


def test_sfdisk_writes_that_table(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with img.open("wb") as f:
        f.truncate(64 << 20)
    parts = layout(spec(), "seed")
    subprocess.run(
        ["sfdisk", "-q", str(img)], input=sfdisk_script("gpt", parts, "seed"), text=True, check=True
    )
    dump = subprocess.run(["sfdisk", "-d", str(img)], capture_output=True, text=True).stdout
    assert f"uuid={parts[1].uuid.upper()}" in dump
    assert "type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE" in dump


def test_bmap_maps_only_data_and_checksums(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    with img.open("wb") as f:
        f.truncate(1 << 20)
        f.seek(8192)
        f.write(b"a" * 5000)  # blocks 2-3
    bmap = tmp_path / "x.bmap"
    write_bmap(img, bmap)
    text = bmap.read_text()
    assert "<MappedBlocksCount> 2 </MappedBlocksCount>" in text
    m = re.search(r'<Range chksum="([0-9a-f]+)"> 2-3 </Range>', text)
    assert m is not None
    data = img.read_bytes()[8192 : 4 * 4096]
    assert m.group(1) == hashlib.sha256(data).hexdigest()
    stated = re.search(r"<BmapFileChecksum> ([0-9a-f]+) </BmapFileChecksum>", text)
    assert stated is not None
    zeroed = text.replace(stated.group(1), "0" * 64)
    assert hashlib.sha256(zeroed.encode()).hexdigest() == stated.group(1)


def test_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    with pytest.raises(RuntimeError), atomic(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_sha256sums_merges(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    sha256sums(tmp_path, [tmp_path / "a"])
    sha256sums(tmp_path, [tmp_path / "b"])
    lines = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert lines == [
        f"{hashlib.sha256(b'a').hexdigest()}  a",
        f"{hashlib.sha256(b'b').hexdigest()}  b",
    ]


def test_mbr_layout_uses_disk_id_partuuids(tmp_path: Path) -> None:
    from tuoba.disk import mbr_disk_id

    mbr = ImageSpec(
        "mbr",
        64 << 20,
        (
            Partition("boot", "fat32", "vfat", 16 << 20, "/boot/firmware"),
            Partition("root", "root-arm64", "ext4", None, "/"),
        ),
    )
    boot, root = layout(mbr, "seed")
    disk_id = mbr_disk_id("seed")
    assert (boot.uuid, root.uuid) == (f"{disk_id}-01", f"{disk_id}-02")
    assert (boot.type, root.type) == ("c", "83")
    img = tmp_path / "disk.img"
    with img.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(
        ["sfdisk", "-q", str(img)],
        input=sfdisk_script("mbr", [boot, root], "seed"),
        text=True,
        check=True,
    )
    dump = subprocess.run(["sfdisk", "-d", str(img)], capture_output=True, text=True).stdout
    assert f"label-id: 0x{disk_id}" in dump
    assert "type=c" in dump and "type=83" in dump


def test_vfat_filesystem_holds_the_tree(tmp_path: Path) -> None:
    from tuoba.disk import make_vfat

    tree = tmp_path / "boot"
    (tree / "overlays").mkdir(parents=True)
    (tree / "config.txt").write_text("arm_64bit=1\n")
    (tree / "overlays" / "x.dtbo").write_bytes(b"\xd0\x0d")
    fs = tmp_path / "boot.vfat"
    make_vfat(tree, fs, 64 << 20, "boot", "1234abcd-0000-0000-0000-000000000000", tmp_path / "l")
    out = subprocess.run(
        ["mtype", "-i", str(fs), "::/config.txt"],
        capture_output=True,
        text=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert out == "arm_64bit=1\n"
    listing = subprocess.run(
        ["mdir", "-i", str(fs), "-b", "::/overlays"],
        capture_output=True,
        text=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert "x.dtbo" in listing


def test_amlogic_sd_fip_checks() -> None:
    from tuoba.bootloader import amlogic_sd_fip_problem

    good = bytes(512) + bytes(16) + b"@AML" + bytes(0x1000)
    assert amlogic_sd_fip_problem(good[:0x240], len(good), 1 << 20) is None
    assert "shorter than" in (amlogic_sd_fip_problem(good[:0x240], 0x1000, 1 << 20) or "")
    bad = good[:0x210] + b"XAML" + good[0x214:]
    assert "not BL2's b'@AML'" in (amlogic_sd_fip_problem(bad[:0x240], len(bad), 1 << 20) or "")
    assert "do not fit" in (amlogic_sd_fip_problem(good[:0x240], 2 << 20, 1 << 20) or "")


def test_fat_serial_is_what_blkid_reads(tmp_path: Path) -> None:
    from tuoba.disk import fs_uuid_as_seen, make_vfat

    boot, _ = layout(spec(), "seed")
    fs = tmp_path / "boot.vfat"
    (tmp_path / "tree").mkdir()
    make_vfat(tmp_path / "tree", fs, 33 << 20, "boot", boot.fs_uuid, tmp_path / "log")
    seen = subprocess.run(
        ["blkid", "-o", "value", "-s", "UUID", str(fs)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert seen == fs_uuid_as_seen(boot)


def test_a_flashed_card_gets_the_users_key(tmp_path: Path) -> None:
    """`tuoba flash --ssh-key`: the card's root's authorized_keys becomes the user's key (the
    image's is its builder's), root-owned and 0600, written with debugfs and read back."""
    from tuoba.flash import authorize_key
    from tuoba.manifest import Manifest

    tree = tmp_path / "tree"
    (tree / "root/.ssh").mkdir(parents=True)
    (tree / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA builder@release\n")
    fs = tmp_path / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(fs), "16M"], check=True)
    card = tmp_path / "card"
    card.write_bytes(bytes(1 << 20) + fs.read_bytes())  # the root partition from 1 MiB
    user = tmp_path / "id.pub"
    user.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser user@laptop\n")
    m = Manifest(name="n", version="0.1.0", board="b", arch="arm64", stage=1, recipes=[],
                 tests=[], hostname="h", inputs_digest="0" * 64, kernel={}, boot={},
                 partitions=[{"name": "root", "start": 1 << 20, "fs": "ext4", "mountpoint": "/"}],
                 sources={}, rootfs={}, packages=[], files={})  # fmt: skip
    authorize_key(card, m, user)
    seen = subprocess.run(
        ["debugfs", "-R", "stat /root/.ssh/authorized_keys", f"{card}?offset={1 << 20}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Mode:  0600" in seen and "User:     0" in seen, seen
    content = subprocess.run(
        ["debugfs", "-R", "cat /root/.ssh/authorized_keys", f"{card}?offset={1 << 20}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert content == user.read_text() and "builder" not in content
