"""Bootloader variants: how a board's firmware finds the kernel. Each registers itself under the
`boot: method:` name boards use; engine code never asks which board it is building."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

from tuoba import run, sources
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
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            run.run(["dpkg-deb", "-x", str(deb), str(tmp)])
            tmp.rename(dest)
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
        for dtb in kernel["dtbs"]:
            if Path(dtb).stem in {Path(d).name for d in self.board.kernel.dtbs}:
                shutil.copyfile(built / "dtbs" / dtb, dest / dtb)
        (dest / "config.txt").write_text("\n".join(self.board.boot.config) + "\n")
        (dest / "cmdline.txt").write_text(cmdline + "\n")


def for_board(board: Board, cache_dir: Path) -> Bootloader:
    return Bootloader.registry[board.boot.method](board, cache_dir)
