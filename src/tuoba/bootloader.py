"""Bootloader variants: how a board's firmware finds the kernel. Each registers itself under the
`boot: method:` name boards use; engine code never asks which board it is building."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from tuoba import image, run, sources, ui
from tuoba.board import Board
from tuoba.errors import BuildError


class Bootloader:
    method: ClassVar[str]
    registry: ClassVar[dict[str, type[Bootloader]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Bootloader.registry[cls.method] = cls

    def __init__(self, board: Board, cache_dir: Path) -> None:
        self.board = board
        self.cache_dir = cache_dir

    def sources(self) -> list[sources.Source]:
        return [self.board.boot.firmware] if self.board.boot.firmware else []

    def boot_partition(self, dest: Path, kernel: dict[str, Any], cmdline: str) -> None:
        """Fill the tree that becomes the boot (FAT) partition."""
        raise BuildError(
            f"board '{self.board.name}' has a FAT boot partition but boot method "
            f"'{self.method}' puts nothing on it"
        )

    def root_tree(self, root: Path, kernel: dict[str, Any], cmdline: str) -> None:
        """Add what the loader reads from the root filesystem (nothing by default)."""

    def raw_writes(self, log: Path) -> list[tuple[int, Path]]:
        """(byte offset, file) written onto the disk outside any partition."""
        return []

    def board_dtbs(self, kernel: dict[str, Any]) -> list[str]:
        """The built device trees (file names) that are this board's."""
        mine = {Path(d).name for d in self.board.kernel.dtbs}
        return [d for d in kernel["dtbs"] if Path(d).stem in mine]


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
        deb = sources.cache_path(self.cache_dir, fw.sha256)
        dest = self.cache_dir / "firmware" / fw.sha256[:16]
        if not dest.is_dir():
            with image.atomic_dir(dest) as tmp:
                run.run(["dpkg-deb", "-x", str(deb), str(tmp)])
        return dest / self.board.boot.firmware_dir.lstrip("/")

    def boot_partition(self, dest: Path, kernel: dict[str, Any], cmdline: str) -> None:
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
        built = Path(kernel["dir"])
        shutil.copyfile(built / kernel["image"], dest / kernel["image"])
        for dtb in self.board_dtbs(kernel):
            shutil.copyfile(built / "dtbs" / dtb, dest / dtb)
        (dest / "config.txt").write_text("\n".join(self.board.boot.config) + "\n")
        (dest / "cmdline.txt").write_text(cmdline + "\n")


class UBoot(Bootloader):
    """U-Boot built here from its release source with the SoC's BL31, written where the boot ROM
    reads; its distro boot finds /boot/extlinux/extlinux.conf on the root filesystem and boots
    the kernel and device tree named there."""

    method = "u-boot"

    def sources(self) -> list[sources.Source]:
        u = self.board.boot.u_boot
        return [] if u is None else [u.source, u.bl31]

    def root_tree(self, root: Path, kernel: dict[str, Any], cmdline: str) -> None:
        built = Path(kernel["dir"])
        boot = root / "boot"
        (boot / "dtbs").mkdir(parents=True, exist_ok=True)
        (boot / "extlinux").mkdir(exist_ok=True)
        shutil.copyfile(built / kernel["image"], boot / kernel["image"])
        dtbs = self.board_dtbs(kernel)
        for dtb in dtbs:
            shutil.copyfile(built / "dtbs" / dtb, boot / "dtbs" / dtb)
        (boot / "extlinux" / "extlinux.conf").write_text(
            "# written by tuoba: U-Boot's distro boot reads this from the root partition\n"
            "default tuoba\n"
            "timeout 1\n"
            "label tuoba\n"
            f"    menu label TuobaOS (Linux {kernel['version']})\n"
            f"    linux /boot/{kernel['image']}\n"
            + (f"    fdt /boot/dtbs/{dtbs[0]}\n" if dtbs else "")
            + f"    append {cmdline}\n"
        )

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
        dest = self.cache_dir / "u-boot" / hashlib.sha256(key.encode()).hexdigest()[:16]
        if (dest / u.output).is_file():
            return dest / u.output
        work = self.cache_dir / "u-boot" / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with ui.step(f"Building U-Boot {u.defconfig} (BL31 from {u.bl31.name}; {compiler})"):
            tarball = sources.cache_path(self.cache_dir, u.source.sha256)
            run.run(["dpkg-deb", "-x", str(sources.cache_path(self.cache_dir, u.bl31.sha256)),
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
            with image.atomic_dir(dest) as tmp:
                shutil.copyfile(src / u.output, tmp / u.output)
                shutil.copyfile(src / ".config", tmp / "u-boot.config")
        shutil.rmtree(work, ignore_errors=True)
        return dest / u.output


def for_board(board: Board, cache_dir: Path) -> Bootloader:
    return Bootloader.registry[board.boot.method](board, cache_dir)
