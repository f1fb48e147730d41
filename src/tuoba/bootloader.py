"""Bootloader variants: how a board's firmware finds the kernel. Each registers itself under the
`boot: method:` name boards use; engine code never asks which board it is building."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, ClassVar

from tuoba import disk, run, sources, ui
from tuoba.board import Board, UBootSpec
from tuoba.cache import Store
from tuoba.errors import BuildError, InputError
from tuoba.records import KernelRecord


class Bootloader:
    method: ClassVar[str]
    registry: ClassVar[dict[str, type[Bootloader]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Bootloader.registry[cls.method] = cls

    def __init__(self, board: Board, store: Store, supplied: dict[str, Path] | None = None) -> None:
        self.board = board
        self.store = store
        self.supplied = supplied or {}  # file name -> path, for the board's needs

    def sources(self) -> list[sources.Source]:
        return [self.board.boot.firmware] if self.board.boot.firmware else []

    def boot_partition(self, dest: Path, kernel: KernelRecord, cmdline: str) -> None:
        """Fill the tree that becomes the boot (FAT) partition."""
        raise BuildError(
            f"board '{self.board.name}' has a FAT boot partition but boot method "
            f"'{self.method}' puts nothing on it"
        )

    def root_tree(self, root: Path, kernel: KernelRecord, cmdline: str) -> None:
        """Add what the loader reads from the root filesystem (nothing by default)."""

    def raw_writes(self, log: Path) -> list[tuple[int, Path]]:
        """(byte offset, file) written onto the disk outside any partition."""
        return []

    def board_dtbs(self, kernel: KernelRecord) -> list[str]:
        """The built device trees (file names) that are this board's."""
        mine = {Path(d).name for d in self.board.kernel.dtbs}
        return [d for d in kernel.dtbs if Path(d).stem in mine]

    def copy_kernel(self, kernel: KernelRecord, dest: Path, dtb_dir: Path) -> list[str]:
        """The built kernel image into `dest` and this board's device trees into `dtb_dir`;
        returns the device trees' file names."""
        built = kernel.built
        dtb_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built / kernel.boot_image, dest / kernel.boot_image)
        dtbs = self.board_dtbs(kernel)
        for dtb in dtbs:
            shutil.copyfile(built / "dtbs" / dtb, dtb_dir / dtb)
        return dtbs


class Direct(Bootloader):
    """QEMU loads kernel (and initrd) itself: nothing goes on the disk."""

    method = "direct"


class RpiFirmware(Bootloader):
    """Raspberry Pi: the GPU firmware reads config.txt from the first FAT partition, then loads
    the kernel, the device tree and cmdline.txt from it."""

    method = "rpi-firmware"

    def firmware_tree(self) -> Path:
        fw = self.board.boot.firmware
        assert fw is not None
        if (entry := self.store.get("firmware", fw.sha256)) is None:
            deb = _fetched(self.store, fw)
            with self.store.make(
                "firmware", fw.sha256, what=f"{fw.name} unpacked", inputs={"deb": fw.name}
            ) as tmp:
                run.run(["dpkg-deb", "-x", str(deb), str(tmp)])
            entry = self.store.get("firmware", fw.sha256)
            assert entry is not None  # (just made)
        return entry.data / self.board.boot.firmware_dir.lstrip("/")

    def boot_partition(self, dest: Path, kernel: KernelRecord, cmdline: str) -> None:
        fw = self.firmware_tree()
        for name in self.board.boot.firmware_files:
            src = fw / name
            if not src.is_file():
                raise BuildError(
                    f"firmware file '{name}' is not in {self.board.boot.firmware_dir} of "
                    f"{self.board.boot.firmware.name if self.board.boot.firmware else '?'}",
                    hint=f"fix boot -> firmware -> files in boards/{self.board.name}/board.yaml",
                )
            shutil.copyfile(src, dest / name)
        self.copy_kernel(kernel, dest, dest)
        (dest / "config.txt").write_text("\n".join(self.board.boot.config) + "\n")
        (dest / "cmdline.txt").write_text(cmdline + "\n")


def extlinux_conf(kernel: KernelRecord, cmdline: str, prefix: str, dtb: str | None) -> str:
    """extlinux.conf for U-Boot's distro boot (doc/develop/distro.rst): paths are relative to
    the partition it is read from."""
    return (
        "# written by tuoba: U-Boot's distro boot reads this file\n"
        "default tuoba\n"
        "timeout 1\n"
        "label tuoba\n"
        f"    menu label TuobaOS (Linux {kernel.version})\n"
        f"    linux {prefix}/{kernel.boot_image}\n"
        + (f"    fdt {prefix}/{dtb}\n" if dtb else "")
        + f"    append {cmdline}\n"
    )


class Zynq(Bootloader):
    """Xilinx Zynq-7000: the boot ROM reads BOOT.BIN (FSBL or U-Boot SPL with the board's
    ps7_init, optionally a bitstream, then U-Boot) from the first FAT partition; that U-Boot's
    distro boot reads /extlinux/extlinux.conf from the same partition, which names the kernel
    and device tree beside it. BOOT.BIN is the user's (a board's Vivado design makes it)."""

    method = "zynq"

    def boot_partition(self, dest: Path, kernel: KernelRecord, cmdline: str) -> None:
        for file, path in self.supplied.items():
            shutil.copyfile(path, dest / file)
        dtbs = self.copy_kernel(kernel, dest, dest)
        (dest / "extlinux").mkdir()
        (dest / "extlinux" / "extlinux.conf").write_text(
            extlinux_conf(kernel, cmdline, "", dtbs[0] if dtbs else None)
        )


ZYNQ_WIDTH_WORD = 0xAA995566  # boot header at 0x20: the boot ROM's bus-width detection word
ZYNQ_IDENT = b"XNLX"  # at 0x24


def zynq_boot_image_problem(data: bytes, size: int) -> str | None:
    """What is wrong with a Zynq-7000 boot image's header (Xilinx UG585, "BootROM Header"), or
    None: width word at 0x20, 'XNLX' at 0x24, the checksum at 0x48 (the complement of the sum
    of the words 0x20-0x44) and the first stage loader lying inside the file. `data` is the
    file's start (at least its 2240-byte header), `size` the whole file's."""
    if size < 0x8C0:
        return f"{size} bytes, shorter than a boot header (2240 bytes)"
    words = struct.unpack_from("<10I", data, 0x20)
    if words[0] != ZYNQ_WIDTH_WORD:
        return f"no boot header: the word at 0x20 is {words[0]:#010x}, not {ZYNQ_WIDTH_WORD:#x}"
    if data[0x24:0x28] != ZYNQ_IDENT:
        return f"no boot header: bytes 0x24-0x27 are {data[0x24:0x28]!r}, not {ZYNQ_IDENT!r}"
    (checksum,) = struct.unpack_from("<I", data, 0x48)
    want = ~sum(words) & 0xFFFFFFFF
    if checksum != want:
        return f"the header checksum at 0x48 is {checksum:#010x}, the header sums to {want:#010x}"
    offset, length = words[4], words[5]
    if offset < 0x8C0 or offset >= size or length == 0:
        return f"the first stage loader (offset {offset:#x}, {length} bytes) is not in the file"
    return None


def check_supplied(path: Path, fmt: str, file: str, room: int) -> None:
    """Refuse a supplied file that is not what the board needs (`format` in board.yaml);
    `room` is what the card has before its first partition, for a file written there."""
    if fmt == "zynq-boot-image":
        with path.open("rb") as f:
            problem = zynq_boot_image_problem(f.read(0x8C0), path.stat().st_size)
        if problem is not None:
            raise InputError(
                f"--supply {file}={path}: not a Zynq-7000 boot image ({problem})",
                hint="give the BOOT.BIN made by bootgen (or U-Boot's mkimage -T zynqimage)",
            )
        return
    if fmt == "amlogic-sd-fip":
        with path.open("rb") as f:
            head = f.read(AML_SD_OFFSET + 0x40)
        problem = amlogic_sd_fip_problem(head, path.stat().st_size, room)
        if problem is not None:
            raise InputError(
                f"--supply {file}={path}: not an Amlogic SD-card boot image ({problem})",
                hint="give the u-boot.bin.sd.bin that Amlogic's FIP packing (amlogic-boot-fip's "
                "build-fip.sh, or the board vendor's fip/ Makefile) made around U-Boot",
            )
        return
    raise AssertionError(f"no check for supplied format {fmt!r}")


# An Amlogic SD-card boot image (u-boot.bin.sd.bin): 512 bytes for the card's MBR sector, then
# the signed boot image the G12B boot ROM reads from sector 1: BL2's 16-byte nonce, then its
# header starting with "@AML" (the layout meson-tools' AmlogicHeader and gxlimg's BL2 signing
# write), then the FIP with BL30/BL31/U-Boot.
AML_SD_OFFSET = 512
AML_MAGIC = b"@AML"


def amlogic_sd_fip_problem(head: bytes, size: int, room: int) -> str | None:
    """What is wrong with an Amlogic u-boot.bin.sd.bin, or None. `head` is the file's first
    0x240 bytes, `size` the whole file's, `room` the bytes free before the first partition."""
    if size < AML_SD_OFFSET + 0x1000:
        return f"{size} bytes, shorter than the MBR sector and a BL2 header"
    at = AML_SD_OFFSET + 0x10
    if head[at : at + 4] != AML_MAGIC:
        return f"bytes {at:#x}-{at + 3:#x} are {head[at : at + 4]!r}, not BL2's {AML_MAGIC!r}"
    if size > room:
        return f"{size} bytes do not fit in the {room} bytes before the first partition"
    return None


class Extlinux(Bootloader):
    """A U-Boot that is already on the board (in its SPI/QSPI flash, put there by the vendor's
    tools) runs distro boot, which finds /boot/extlinux/extlinux.conf on the card's first
    partition and boots the kernel and device tree named there: the card holds no loader."""

    method = "extlinux"

    def root_tree(self, root: Path, kernel: KernelRecord, cmdline: str) -> None:
        boot = root / "boot"
        (boot / "extlinux").mkdir(parents=True, exist_ok=True)
        dtbs = self.copy_kernel(kernel, boot, boot / "dtbs")
        (boot / "extlinux" / "extlinux.conf").write_text(
            extlinux_conf(kernel, cmdline, "/boot", f"dtbs/{dtbs[0]}" if dtbs else None)
        )


class UBoot(Extlinux):
    """U-Boot built here from its release source with the SoC's BL31, written where the boot ROM
    reads; its distro boot finds /boot/extlinux/extlinux.conf on the root filesystem and boots
    the kernel and device tree named there."""

    method = "u-boot"

    def sources(self) -> list[sources.Source]:
        u = self.board.boot.u_boot
        return [] if u is None else [u.source, u.bl31]

    def raw_writes(self, log: Path) -> list[tuple[int, Path]]:
        u = self.board.boot.u_boot
        assert u is not None
        return [(u.offset, self.build(log))]

    def build(self, log: Path) -> Path:
        """The loader file, built once per input set into CACHE/u-boot/<digest>/."""
        u = self.board.boot.u_boot
        assert u is not None
        gcc = run.require(f"{u.cross_compile}gcc")
        compiler = run.output([gcc, "--version"]).splitlines()[0]
        key = json.dumps(
            [u.source.sha256, u.bl31.sha256, u.bl31_path, u.defconfig, u.output, compiler]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self.store.making("u-boot", digest) as entry:
            if entry is not None:
                return entry.data / u.output
            with self.store.using("u-boot") as work:
                return self._make(u, digest, compiler, work, log)

    def _make(self, u: UBootSpec, digest: str, compiler: str, work: Path, log: Path) -> Path:
        """Build U-Boot in the working tree `work` and publish it as entry u-boot/`digest`."""
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with ui.step(f"Building U-Boot {u.defconfig} (BL31 from {u.bl31.name}; {compiler})"):
            tarball = _fetched(self.store, u.source)
            run.run(["dpkg-deb", "-x", str(_fetched(self.store, u.bl31)),
                     str(work / "bl31")], log=log)  # fmt: skip
            bl31 = work / "bl31" / u.bl31_path
            if not bl31.is_file():
                raise BuildError(
                    f"{u.bl31_path} is not in {u.bl31.name}",
                    hint="fix boot -> u_boot -> bl31 -> path in "
                    f"boards/{self.board.name}/board.yaml",
                )
            run.run(["tar", "-xf", str(tarball), "-C", str(work)], log=log)
            src = work / u.strip_prefix
            make = ["make", "-C", str(src), f"CROSS_COMPILE={u.cross_compile}"]
            env = {"SOURCE_DATE_EPOCH": "1767225600", "PYTHONDONTWRITEBYTECODE": "1",
                   "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}  # fmt: skip
            run.run([*make, u.defconfig], log=log, env=env)
            run.run([*make, f"-j{os.cpu_count() or 1}", f"BL31={bl31}"], log=log, env=env)
            if not (src / u.output).is_file():
                raise BuildError(
                    f"U-Boot's build made no {u.output}",
                    hint=f"see {log}; fix boot -> u_boot -> output in "
                    f"boards/{self.board.name}/board.yaml",
                )
            what = f"U-Boot {u.defconfig} with BL31 from {u.bl31.name}"
            inputs = {"source": u.source.name, "bl31": u.bl31.name, "defconfig": u.defconfig,
                      "compiler": compiler}  # fmt: skip
            with self.store.make("u-boot", digest, what=what, inputs=inputs) as tmp:
                shutil.copyfile(src / u.output, tmp / u.output)
                shutil.copyfile(src / ".config", tmp / "u-boot.config")
        shutil.rmtree(work, ignore_errors=True)
        entry = self.store.get("u-boot", digest)
        assert entry is not None  # (just made)
        return entry.data / u.output


class AmlogicFip(Extlinux):
    """Amlogic G12 (VIM3): the boot ROM reads the signed boot image (BL2, DDR firmware, BL30,
    BL31 and U-Boot as BL33, packed by Amlogic's tools: the user's u-boot.bin.sd.bin) from the
    card at sector 1; its first sector's boot code goes to the MBR's boot code area, whose disk
    signature and partition table stay the image's. U-Boot's distro boot then reads
    /boot/extlinux/extlinux.conf from the root partition."""

    method = "amlogic-fip"

    def raw_writes(self, log: Path) -> list[tuple[int, Path]]:
        (file,) = [n.file for n in self.board.boot.needs if n.format == "amlogic-sd-fip"]
        assert file is not None  # board.yaml's validation
        data = self.supplied[file].read_bytes()
        work = log.parent / "amlogic-fip"
        work.mkdir(parents=True, exist_ok=True)
        code, fip = work / "mbr-boot-code.bin", work / "boot-image.bin"
        code.write_bytes(data[: disk.MBR_BOOT_CODE])
        fip.write_bytes(data[AML_SD_OFFSET:])
        return [(0, code), (AML_SD_OFFSET, fip)]


def for_board(board: Board, store: Store, supplied: dict[str, Path] | None = None) -> Bootloader:
    return Bootloader.registry[board.boot.method](board, store, supplied)


def _fetched(store: Store, source: sources.Source) -> Path:
    """A source the fetch step put in the cache."""
    path = sources.cached(store, source.sha256)
    if path is None:
        raise BuildError(
            f"source '{source.name}' is not in the cache",
            hint="the fetch step downloads it; run the build again",
        )
    return path
