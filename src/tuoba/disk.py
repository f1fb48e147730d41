"""Disk images: partition table, filesystems, block map, compression, checksums.

Everything is written under a temporary name and renamed when complete, so an interrupted
build never leaves a finished-looking artifact.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from tuoba import run, ui
from tuoba.board import PARTITION_TYPES, ImageSpec
from tuoba.publish import atomic
from tuoba.sources import sha256_file

SECTOR = 512
MBR_BOOT_CODE = 440  # the MBR's boot code area; the disk signature and partition table follow
ALIGN = 1 << 20  # partitions start on 1 MiB boundaries
BMAP_BLOCK = 4096
# The time filesystems are dated when the caller gives none (the build gives its plan's).
SOURCE_DATE_EPOCH = 1700000000


@dataclasses.dataclass(frozen=True)
class PlacedPartition:
    name: str
    type: str  # GPT type GUID or MBR type byte, as the table wants
    fs: str
    mountpoint: str | None
    start: int  # bytes
    size: int  # bytes
    uuid: str  # PARTUUID as the kernel sees it (GPT: a UUID; MBR: <disk id>-<number>)
    fs_uuid: str


def stable_uuid(seed: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tuoba:{seed}:{what}"))


def mbr_disk_id(seed: str) -> str:
    return stable_uuid(seed, "disk")[:8]


def layout(spec: ImageSpec, seed: str) -> list[PlacedPartition]:
    """Place partitions on 1 MiB boundaries; the last one without a size takes the rest."""
    placed = []
    offset = spec.first_partition
    end = spec.size - ALIGN  # room for the backup GPT
    gpt = spec.table == "gpt"
    for number, p in enumerate(spec.partitions, start=1):
        size = p.size if p.size is not None else end - offset
        if size <= 0 or offset + size > end:
            raise ValueError(f"partition '{p.name}' does not fit in {spec.size} bytes")
        placed.append(
            PlacedPartition(
                name=p.name,
                type=PARTITION_TYPES[p.type][0 if gpt else 1],
                fs=p.fs,
                mountpoint=p.mountpoint,
                start=offset,
                size=size,
                uuid=(
                    stable_uuid(seed, f"part:{p.name}")
                    if gpt
                    else f"{mbr_disk_id(seed)}-{number:02x}"
                ),
                fs_uuid=stable_uuid(seed, f"fs:{p.name}"),
            )
        )
        offset += -(-size // ALIGN) * ALIGN
    return placed


def tree_bytes(tree: Path) -> int:
    """The disk space the files under `tree` take: allocated blocks, a hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def ext4_room(tree: int) -> int:
    """A root partition that holds a tree of `tree` bytes as ext4, with room to spare: the
    filesystem's own metadata (inode tables, journal) and a first boot's writes."""
    return -(-(tree + tree // 5 + (256 << 20)) // ALIGN) * ALIGN


def grown_size(spec: ImageSpec, root: PlacedPartition, room: int) -> int:
    """The image size (the board's, doubled until it fits: SD cards and QEMU's raspi machines
    take powers of two) whose root partition, taking the rest of the disk, has `room` bytes."""
    size = spec.size
    while size - spec.size + root.size < room:
        size *= 2
    return size


def sfdisk_script(table: str, parts: list[PlacedPartition], seed: str) -> str:
    lines = [f"label: {'gpt' if table == 'gpt' else 'dos'}", "unit: sectors"]
    if table == "gpt":
        lines.append(f"label-id: {stable_uuid(seed, 'disk')}")
    else:
        lines.append(f"label-id: 0x{mbr_disk_id(seed)}")
    for p in parts:
        fields = [f"start={p.start // SECTOR}", f"size={p.size // SECTOR}", f"type={p.type}"]
        if table == "gpt":
            fields += [f"uuid={p.uuid}", f'name="{p.name}"']
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


# mke2fs's configuration for every image, whatever the host's /etc/mke2fs.conf says: Debian 12's
# defaults, as e2fsprogs 1.47.0 has them. A newer e2fsprogs (1.47.2, from backports, for
# SOURCE_DATE_EPOCH) would add metadata_csum_seed, an incompatible feature U-Boot's and GRUB's
# ext4 readers refuse to mount, and orphan_file.
MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	small = {
		blocksize = 1024
		inode_ratio = 4096
	}
	floppy = {
		blocksize = 1024
		inode_ratio = 8192
	}
"""


def make_ext4(tree: Path, dest: Path, size: int, label: str, fs_uuid: str, log: Path,
              epoch: int = SOURCE_DATE_EPOCH) -> None:  # fmt: skip
    """An ext4 filesystem holding `tree`, the same bytes for the same tree: UUID and directory
    hash seed from the partition, entries in name order (mke2fs -d sorts them), every inode's
    times and the superblock's at `epoch` (SOURCE_DATE_EPOCH: e2fsprogs >= 1.47.1 for the
    inodes, E2FSPROGS_FAKE_TIME for the superblock of older ones)."""
    dest.unlink(missing_ok=True)
    conf = dest.with_name(f".{dest.name}.mke2fs.conf")
    conf.write_text(MKE2FS_CONF)
    try:
        run.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                label,
                "-U",
                fs_uuid,
                "-E",
                f"hash_seed={fs_uuid}",
                "-d",
                str(tree),
                str(dest),
                f"{size // 1024}k",
            ],
            env={
                "SOURCE_DATE_EPOCH": str(epoch),
                "E2FSPROGS_FAKE_TIME": str(epoch),
                "MKE2FS_CONFIG": str(conf),
            },
            log=log,
        )
    finally:
        conf.unlink()


def vfat_volume_id(fs_uuid: str) -> str:
    """The 32-bit FAT volume serial (8 hex digits) made from a partition's filesystem UUID."""
    return fs_uuid.replace("-", "")[:8]


def fs_uuid_as_seen(part: PlacedPartition) -> str:
    """A partition's filesystem UUID as blkid and busybox's volume_id print it (for UUID=):
    FAT's volume serial is XXXX-XXXX in upper case."""
    if part.fs == "vfat":
        serial = vfat_volume_id(part.fs_uuid).upper()
        return f"{serial[:4]}-{serial[4:]}"
    return part.fs_uuid


def make_vfat(tree: Path, dest: Path, size: int, label: str, fs_uuid: str, log: Path,
              epoch: int = SOURCE_DATE_EPOCH) -> None:  # fmt: skip
    """A FAT32 filesystem holding `tree`, made without mounting (mtools): the volume serial
    from the partition, files copied in name order, every date at `epoch`."""
    dest.unlink(missing_ok=True)
    volume_id = vfat_volume_id(fs_uuid)
    run.run(
        ["mkfs.vfat", "-F", "32", "-n", label.upper()[:11], "-i", volume_id, "-C", str(dest),
         str(size // 1024)],
        env={"SOURCE_DATE_EPOCH": str(epoch)},
        log=log,
    )  # fmt: skip
    entries = sorted(str(p) for p in tree.iterdir())
    if entries:
        run.run(
            ["mcopy", "-s", "-p", "-m", "-i", str(dest), *entries, "::/"],
            env={"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(epoch)},
            log=log,
        )


def copy_sparse(src: Path, dest: Path, offset: int) -> None:
    """Copy src into dest at offset, skipping holes (images stay sparse)."""
    with src.open("rb") as fi, dest.open("r+b") as fo:
        for start, end in data_ranges(fi.fileno(), os.fstat(fi.fileno()).st_size):
            fi.seek(start)
            fo.seek(offset + start)
            remaining = end - start
            while remaining:
                chunk = fi.read(min(remaining, 8 << 20))
                fo.write(chunk)
                remaining -= len(chunk)


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges that hold data, from SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def write_bmap(image: Path, dest: Path) -> None:
    """A bmaptool-compatible (format 2.0) block map with a sha256 per mapped range."""
    size = image.stat().st_size
    blocks = -(-size // BMAP_BLOCK)
    ranges = []
    mapped = 0
    with image.open("rb") as f:
        for start, end in data_ranges(f.fileno(), size):
            first, last = start // BMAP_BLOCK, (min(end, size) - 1) // BMAP_BLOCK
            f.seek(first * BMAP_BLOCK)
            h = hashlib.sha256()
            remaining = (last - first + 1) * BMAP_BLOCK
            while remaining > 0:
                chunk = f.read(min(remaining, 8 << 20))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
            ranges.append((first, last, h.hexdigest()))
            mapped += last - first + 1
    body = "\n".join(
        f'        <Range chksum="{c}"> {a if a == b else f"{a}-{b}"} </Range>' for a, b, c in ranges
    )
    head = (
        '<?xml version="1.0" ?>\n<bmap version="2.0">\n'
        f"    <ImageSize> {size} </ImageSize>\n"
        f"    <BlockSize> {BMAP_BLOCK} </BlockSize>\n"
        f"    <BlocksCount> {blocks} </BlocksCount>\n"
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
        "    <ChecksumType> sha256 </ChecksumType>\n"
    )
    # bmaptool checks BmapFileChecksum: sha256 of the file with the checksum field zeroed.
    placeholder = "0" * 64
    text = (
        head
        + f"    <BmapFileChecksum> {placeholder} </BmapFileChecksum>\n"
        + f"    <BlockMap>\n{body}\n    </BlockMap>\n</bmap>\n"
    )
    checksum = hashlib.sha256(text.encode()).hexdigest()
    dest.write_text(text.replace(placeholder, checksum, 1))


XZ_PRESET = 0


def compress_xz(src: Path, dest: Path) -> None:
    """src compressed into dest by xz, with progress (the bytes written so far) on a terminal,
    or a line every half minute in a log: the developer image takes a minute or more."""

    def written() -> str:
        done = dest.stat().st_size if dest.exists() else 0
        return f"{done >> 20} MiB written (of an image of {src.stat().st_size >> 20} MiB)"

    stop = threading.Event()
    watcher = threading.Thread(target=ui.watch, args=("xz", written, stop), daemon=True)
    watcher.start()
    try:
        _xz(src, dest)
    finally:
        stop.set()
        watcher.join()


def _xz(src: Path, dest: Path) -> None:
    with dest.open("wb") as out:
        # Preset 0: the developer image (4 GiB, 2.2 GiB of data) in 81 s on 2 cores to 619 MB,
        # where preset 1 took 164 s to 588 MB (2026-12-07): half the time for 5 % more bytes.
        # (Preset 1 had been within 6 % of preset 3 at 40 % of its time.)
        # Multi-threaded mode always (-T0 is, from xz 5.4, even on one core) with a fixed
        # block size: the blocks, and so the bytes, do not depend on the machine's cores.
        run.run(
            ["xz", "-T0", "--block-size=8MiB", f"-{XZ_PRESET}", "-c", str(src)], stdout_file=out
        )


def sha256sums(directory: Path, files: list[Path], known: dict[str, str] | None = None) -> None:
    """Merge entries for `files` into directory/SHA256SUMS (other images' lines are kept).
    `known`: digests by file name already computed (a 4 GiB image is not read twice)."""

    sums = directory / "SHA256SUMS"
    entries: dict[str, str] = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name and (directory / name).exists():  # entries of deleted files go
                entries[name] = digest
    for f in files:
        entries[f.name] = (known or {}).get(f.name) or sha256_file(f)
    with atomic(sums) as tmp:
        tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))
