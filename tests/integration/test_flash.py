"""`tuoba flash` against real loop devices (root only): what is mapped is written byte for byte,
what is not is left alone, and every unsafe device is refused before a byte is written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuoba.disk import write_bmap
from tuoba.flash import inspect_device, problems, root_disks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
    pytest.mark.timeout(300),
]

# Every host command gets a bound: a hang in one (it happened once in CI, in the mounted-device
# case) must fail that test naming the command, not stall the suite until CI's own limit.
COMMAND_TIMEOUT = 120

MIB = 1 << 20
FILL = b"\xaa"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 64 MiB sparse image with data in three places and holes between."""
    img = tmp_path / "card.img"
    with img.open("wb") as f:
        f.truncate(64 * MIB)
        for offset, byte in ((0, b"\x01"), (10 * MIB + 123, b"\x02"), (63 * MIB, b"\x03")):
            f.seek(offset)
            f.write(byte * (300 * 1024))
    write_bmap(img, tmp_path / "card.img.bmap")
    return img


def make_loop(backing: Path, size: int) -> Path:
    with backing.open("wb") as f:
        f.write(FILL * size)
    out = sh("losetup", "-f", "--show", str(backing))
    return Path(out.stdout.strip())


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=COMMAND_TIMEOUT,
        check=check,
    )


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    dev = make_loop(tmp_path / "disk", 80 * MIB)
    yield dev
    sh("losetup", "-d", str(dev), check=False)


def tuoba(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuoba", "flash", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def read(dev: Path, offset: int, length: int) -> bytes:
    with dev.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def assert_mapped_equal(image: Path, dev: Path) -> None:
    """Every mapped block of the image is on the device, byte for byte."""
    from tuoba.flash import read_bmap

    data = image.read_bytes()
    bmap = read_bmap(image.with_name(image.name + ".bmap"))
    assert len(bmap.ranges) == 3
    for offset, length, _ in bmap.spans():
        assert read(dev, offset, length) == data[offset : offset + length]


def test_flash_writes_mapped_blocks_only_and_verifies(image: Path, loop: Path) -> None:
    proc = tuoba(str(image), "--device", str(loop), "--yes", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "read back and verified" in proc.stderr
    assert_mapped_equal(image, loop)
    assert read(loop, 30 * MIB, 4096) == FILL * 4096  # a hole in the image: never written
    assert read(loop, 70 * MIB, 4096) == FILL * 4096  # beyond the image: untouched


def test_flash_xz_image_through_its_bmap(image: Path, loop: Path) -> None:
    sh("xz", "-k", "-T0", "-1", str(image))
    xz = image.with_name(image.name + ".xz")
    proc = tuoba(str(xz), "--device", str(loop), "--yes", "--force")
    assert proc.returncode == 0, proc.stderr
    assert_mapped_equal(image, loop)


def test_refuses_mounted_device(image: Path, loop: Path, tmp_path: Path) -> None:
    sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(loop))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", "-o", "ro", str(loop), str(mnt))
    try:
        before = read(loop, 0, 1 * MIB)
        proc = tuoba(str(image), "--device", str(loop), "--yes", "--force")
        assert proc.returncode == 6
        assert f"{loop} is mounted ({mnt})" in proc.stderr
        assert read(loop, 0, 1 * MIB) == before
    finally:
        if sh("umount", str(mnt), check=False).returncode != 0:
            sh("umount", "-l", str(mnt))


def test_refuses_smaller_device(image: Path, tmp_path: Path) -> None:
    small = make_loop(tmp_path / "small", 16 * MIB)
    try:
        proc = tuoba(str(image), "--device", str(small), "--yes", "--force")
        assert proc.returncode == 6
        assert "is smaller than the image" in proc.stderr
        assert read(small, 0, 4096) == FILL * 4096
    finally:
        sh("losetup", "-d", str(small), check=False)


def test_refuses_non_removable_without_force(image: Path, loop: Path) -> None:
    proc = tuoba(str(image), "--device", str(loop), "--yes")
    assert proc.returncode == 6
    assert "is not a removable device (pass --force" in proc.stderr
    assert read(loop, 0, 4096) == FILL * 4096


def test_refuses_a_regular_file(image: Path, tmp_path: Path) -> None:
    target = tmp_path / "not-a-disk"
    target.write_bytes(b"x")
    proc = tuoba(str(image), "--device", str(target), "--yes", "--force")
    assert proc.returncode == 6
    assert "is not a block device" in proc.stderr
    assert target.read_bytes() == b"x"


def test_asks_for_confirmation_or_yes(image: Path, loop: Path) -> None:
    proc = tuoba(str(image), "--device", str(loop), "--force")
    assert proc.returncode == 2
    assert "pass --yes" in proc.stderr
    assert read(loop, 0, 4096) == FILL * 4096


def test_image_not_matching_its_bmap_is_refused(image: Path, loop: Path) -> None:
    with image.open("r+b") as f:
        f.seek(10 * MIB + 200)
        f.write(b"corrupt")
    proc = tuoba(str(image), "--device", str(loop), "--yes", "--force")
    assert proc.returncode == 6
    assert "does not match its .bmap" in proc.stderr


def test_root_disk_is_always_refused() -> None:
    """Checked through the inspection only: no write path is ever pointed at the host's disk."""
    (disk,) = sorted(root_disks())[:1]
    device = inspect_device(Path(f"/dev/{disk}"))
    found = problems(device, 1, force=True)
    assert any("holds the running system's root filesystem" in p for p in found)
