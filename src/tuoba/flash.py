"""Writing an image to an SD card (or any block device) safely, with its block map.

Refused always: a device that is not a block device, is mounted (or any of its partitions),
holds the running system's root filesystem, or is smaller than the image. Refused unless
forced: a device that is not removable. Only the ranges the .bmap lists are written; each is
checked against the bmap's sha256 on the way in and read back from the device afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import re
import stat
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tuoba import manifest, run
from tuoba.errors import InputError, TuobaError

CHUNK = 4 << 20
SYS_BLOCK = Path("/sys/class/block")


class FlashError(TuobaError):
    exit_code = 6


@dataclasses.dataclass(frozen=True)
class Range:
    first: int  # block numbers, inclusive
    last: int
    sha256: str | None


@dataclasses.dataclass(frozen=True)
class BlockMap:
    image_size: int
    block_size: int
    ranges: tuple[Range, ...]

    @property
    def mapped_bytes(self) -> int:
        return sum((r.last - r.first + 1) * self.block_size for r in self.ranges)

    def spans(self) -> Iterator[tuple[int, int, str | None]]:
        """(offset, length, sha256) of each mapped range, clipped to the image size."""
        for r in self.ranges:
            start = r.first * self.block_size
            end = min((r.last + 1) * self.block_size, self.image_size)
            yield start, end - start, r.sha256


def read_bmap(path: Path) -> BlockMap:
    try:
        root = ET.parse(path).getroot()
        size = int((root.findtext("ImageSize") or "").strip())
        block = int((root.findtext("BlockSize") or "").strip())
        ranges = []
        for el in root.iter("Range"):
            text = (el.text or "").strip()
            first, _, last = text.partition("-")
            ranges.append(Range(int(first), int(last or first), el.get("chksum")))
    except (ET.ParseError, ValueError) as e:
        raise InputError(f"{path}: not a valid bmap file ({e})") from e
    return BlockMap(size, block, tuple(ranges))


def whole_image_map(image: Path) -> BlockMap:
    size = image.stat().st_size
    block = 4096
    return BlockMap(size, block, (Range(0, max(0, -(-size // block) - 1), None),))


# --- the device ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Device:
    path: Path
    name: str  # kernel name, e.g. sdb, mmcblk0, loop3
    size: int
    removable: bool
    mountpoints: tuple[str, ...]  # of the device and all its partitions
    holds_root: bool


def _lsblk(dev: Path) -> dict[str, object]:
    out = run.output(["lsblk", "-J", "-b", "-o", "NAME,PATH,SIZE,RM,MOUNTPOINTS,TYPE", str(dev)])
    data: dict[str, object] = json.loads(out)["blockdevices"][0]
    return data


def _mountpoints(node: dict[str, object]) -> list[str]:
    points = [p for p in node.get("mountpoints") or [] if p]  # type: ignore[attr-defined]
    for child in node.get("children") or []:  # type: ignore[attr-defined]
        points += _mountpoints(child)
    return points


def _disk_of(devno: int) -> str | None:
    """The whole-disk kernel name holding a device number (partition -> its disk)."""
    link = Path(f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}")
    return _whole_disk(link.resolve()) if link.exists() else None


def _whole_disk(sysdir: Path) -> str:
    return sysdir.parent.name if (sysdir / "partition").exists() else sysdir.name


def root_disks() -> set[str]:
    """Disks the running system's root filesystem lives on, also under device-mapper or md."""
    disks: set[str] = set()
    source = run.output(["findmnt", "-n", "-o", "SOURCE", "/"], check=False)
    m = re.match(r"/dev/([^\[\s]+)", source)
    candidates = [os.stat("/").st_dev]
    if m and Path(f"/dev/{m.group(1)}").exists():
        candidates.append(os.stat(f"/dev/{m.group(1)}").st_rdev)
    for devno in candidates:
        disk = _disk_of(devno)
        if disk is None:
            continue
        disks.add(disk)
        for slave in (SYS_BLOCK / disk / "slaves").glob("*"):
            disks.add(_whole_disk(slave.resolve()))
    return disks


def inspect_device(dev: Path) -> Device:
    try:
        st = os.stat(dev)
    except FileNotFoundError:
        raise InputError(f"no device {dev}", hint="list block devices with lsblk") from None
    if not stat.S_ISBLK(st.st_mode):
        raise FlashError(
            f"{dev} is not a block device",
            hint="give the whole card, e.g. /dev/sdb or /dev/mmcblk0",
        )
    name = _disk_of(st.st_rdev) or dev.name
    info = _lsblk(dev)
    removable_file = SYS_BLOCK / name / "removable"
    removable = removable_file.exists() and removable_file.read_text().strip() == "1"
    return Device(
        path=dev,
        name=name,
        size=int(info["size"]),  # type: ignore[call-overload]
        removable=removable or bool(info.get("rm")),
        mountpoints=tuple(_mountpoints(info)),
        holds_root=name in root_disks(),
    )


def problems(device: Device, image_size: int, force: bool) -> list[str]:
    """Why writing to this device would be unsafe; empty when it is fine."""
    found = []
    if device.holds_root:
        found.append(f"{device.path} holds the running system's root filesystem")
    if device.mountpoints:
        found.append(f"{device.path} is mounted ({', '.join(device.mountpoints)})")
    if device.size < image_size:
        found.append(
            f"{device.path} is smaller than the image ({device.size} < {image_size} bytes)"
        )
    if not device.removable and not force:
        found.append(f"{device.path} is not a removable device (pass --force if you are sure)")
    return found


# --- writing ---------------------------------------------------------------------------------


def open_image(image: Path) -> IO[bytes]:
    """The raw image bytes; `.xz` images are decompressed as they are read (the bmap's ranges
    come in increasing order, so seeking only ever moves forward)."""
    if image.suffix == ".xz":
        return lzma.open(image, "rb")
    return image.open("rb")


def bmap_for(image: Path) -> Path:
    """IMAGE.img.bmap for IMAGE.img and IMAGE.img.xz."""
    raw = image.with_suffix("") if image.suffix == ".xz" else image
    return raw.with_name(raw.name + ".bmap")


def flash(
    image: Path,
    bmap: BlockMap,
    device: Device,
    progress: Callable[[int], None],
    verify: bool = True,
) -> None:
    """Write the mapped ranges, checking each against the bmap, then read them back."""
    try:
        fd = os.open(device.path, os.O_WRONLY | os.O_EXCL | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FlashError(f"cannot open {device.path} exclusively: {e.strerror}") from e
    try:
        with open_image(image) as src:
            for offset, length, sha in bmap.spans():
                h = hashlib.sha256()
                src.seek(offset)
                os.lseek(fd, offset, os.SEEK_SET)
                remaining = length
                while remaining:
                    chunk = src.read(min(CHUNK, remaining))
                    if not chunk:
                        raise FlashError(
                            f"{image} ended early at byte {offset + length - remaining}"
                        )
                    h.update(chunk)
                    os.write(fd, chunk)
                    remaining -= len(chunk)
                    progress(len(chunk))
                _check(sha, h, f"image range at byte {offset}")
        os.fsync(fd)
    finally:
        os.close(fd)
    if verify:
        verify_device(image, bmap, device.path, progress)


def verify_device(image: Path, bmap: BlockMap, dev: Path, progress: Callable[[int], None]) -> None:
    """Read every mapped range back from the device and compare it with the image."""
    run.run(["blockdev", "--flushbufs", str(dev)])
    with dev.open("rb") as d, open_image(image) as src:
        for offset, length, sha in bmap.spans():
            dh, ih = hashlib.sha256(), hashlib.sha256()
            d.seek(offset)
            src.seek(offset)
            remaining = length
            while remaining:
                n = min(CHUNK, remaining)
                dh.update(d.read(n))
                ih.update(src.read(n))
                remaining -= n
                progress(n)
            if dh.digest() != ih.digest():
                raise FlashError(
                    f"read-back mismatch on {dev} in the range at byte {offset}",
                    hint="the card may be failing or counterfeit; try another card",
                )
            _check(sha, ih, f"image range at byte {offset}")


def _check(expected: str | None, h: hashlib._Hash, what: str) -> None:
    if expected is not None and h.hexdigest() != expected:
        raise FlashError(
            f"{what} has sha256 {h.hexdigest()}, the bmap says {expected}",
            hint="the image does not match its .bmap; rebuild or re-download it",
        )


AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"


def manifest_beside(image: Path) -> manifest.Manifest:
    """The manifest of an image as built or downloaded (.img or .img.xz beside it)."""
    raw = image.with_suffix("") if image.suffix == ".xz" else image
    m_file = manifest.path_for(raw)
    if not m_file.is_file():
        raise FlashError(
            f"no manifest beside {image} ({m_file.name}): tuoba cannot find the root partition",
            hint="keep the .manifest.json that came with the image beside it",
        )
    return manifest.Manifest.from_json(m_file.read_text(), str(m_file))


def authorize_key(device: Path, m: manifest.Manifest, key: Path) -> None:
    """Make `key` root's only authorized ssh key on a flashed card (the image's is its
    builder's), writing the card's ext4 root filesystem with debugfs, then reading it back
    (content, mode 0600, owner root): debugfs exits 0 when a request fails, so its own words
    are checked too."""
    root = next((p for p in m.partitions if p.get("mountpoint") == "/"), None)
    if root is None or root.get("fs") != "ext4":
        raise FlashError(f"{m.name} has no ext4 root partition to put the key on")
    fs = f"{device}?offset={int(root['start'])}"
    text = key.read_text().strip() + "\n"
    # (debugfs splits its requests at spaces: a temporary directory without any)
    tmp_root = None if " " not in tempfile.gettempdir() else "/tmp"
    with tempfile.TemporaryDirectory(prefix="tuoba-key-", dir=tmp_root) as tmp:
        src = Path(tmp) / "authorized_keys"
        src.write_text(text)
        src.chmod(0o600)
        script = Path(tmp) / "debugfs.cmds"
        script.write_text(
            "mkdir /root/.ssh\n"  # (there already: debugfs says so, which is fine)
            f"rm {AUTHORIZED_KEYS}\n"
            f"write {src} {AUTHORIZED_KEYS}\n"
            f"sif {AUTHORIZED_KEYS} mode 0100600\n"
            f"sif {AUTHORIZED_KEYS} uid 0\n"
            f"sif {AUTHORIZED_KEYS} gid 0\n"
        )
        proc = run.run(["debugfs", "-w", "-f", str(script), fs], capture=True,
                       capture_stderr=True)  # fmt: skip
    complaints = [
        line
        for line in (proc.stderr or "").splitlines()
        # (the banner; /root/.ssh there already; no old key to remove)
        if line.strip()
        and not line.startswith(("debugfs ", "rm: "))
        and "already exists" not in line
    ]
    run.run(["blockdev", "--flushbufs", str(device)], check=False)
    got = run.run(["debugfs", "-R", f"cat {AUTHORIZED_KEYS}", fs], capture=True,
                  capture_stderr=True).stdout  # fmt: skip
    stat = run.run(["debugfs", "-R", f"stat {AUTHORIZED_KEYS}", fs], capture=True,
                   capture_stderr=True).stdout  # fmt: skip
    if (
        complaints
        or got != text
        or not re.search(r"Mode:\s+0600\b", stat)
        or not re.search(r"User:\s+0\s+Group:\s+0\b", stat)
    ):
        raise FlashError(
            f"{AUTHORIZED_KEYS} on {device} is not the key given, root-owned and 0600"
            + (f" (debugfs: {'; '.join(complaints)[:300]})" if complaints else ""),
            hint="a full root filesystem, or a failing card; flash it again",
        )
