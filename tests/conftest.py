from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_PARTS = (
    "boards", "recipes", "kernel", "overlays", "host", "userland", "tests/image", "SConstruct",
)  # fmt: skip


def copy_project(dest: Path) -> Path:
    """A private copy of the project's data, so a test can edit boards/recipes/overlays."""
    for part in DATA_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(
                src, dest / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    return dest


def zynq_boot_image(dest: Path) -> Path:
    """A Zynq-7000 boot image (the boot ROM's BOOT.BIN format) made by U-Boot's
    `mkimage -T zynqimage` around a placeholder first-stage loader: a valid boot header for the
    builds that need one supplied, not a loader for any real board."""
    payload = dest.with_name(dest.name + ".payload")
    payload.write_bytes(b"TUOBA-TEST-FSBL\n" * 256)
    subprocess.run(
        ["mkimage", "-T", "zynqimage", "-d", str(payload), str(dest)],
        capture_output=True, check=True,
    )  # fmt: skip
    return dest


def tuoba_build(project: Path, board: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`tuoba build --board BOARD` on a project copy, out in PROJECT/out, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tuoba", "--data-dir", str(project), "--out",
         str(project / "out"), "build", "--board", board, *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def tuoba_test(img: Path, board: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`tuoba test --board BOARD` on an image tuoba_build made (its project is two levels up)."""
    return subprocess.run(
        [sys.executable, "-m", "tuoba", "--data-dir", str(img.parents[1]), "--out",
         str(img.parent), "test", "--board", board, *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def partition_table(img: Path) -> dict[str, Any]:
    """The image's partition table as `sfdisk --json` reads it."""
    out = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True)
    table: dict[str, Any] = json.loads(out.stdout)["partitiontable"]
    return table


def ext4_file(img: Path, start: int, path: str) -> bytes:
    """A file's bytes from the ext4 filesystem at byte `start` of the image (debugfs)."""
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{img}?offset={start}"], capture_output=True, check=True
    ).stdout


AML_BOOT_CODE = b"TUOBA-TEST-MBR-BOOT-CODE\n"


def amlogic_sd_fip(dest: Path, size: int = 1536 * 1024) -> Path:
    """A placeholder Amlogic u-boot.bin.sd.bin: a first sector with recognisable boot code, then
    BL2's 16-byte nonce and "@AML" header magic, then filler. It has the shape the vim3 build
    checks and places, not a loader any VIM3 would run."""
    first = (AML_BOOT_CODE * 17)[:440].ljust(512, b"\0")
    body = bytearray(hashlib.sha256(b"tuoba-test-fip").digest()[:16] + b"@AML")
    while len(body) < size - 512:
        body += hashlib.sha256(bytes(body[-32:])).digest()
    dest.write_bytes(first + bytes(body[: size - 512]))
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


def kernel_config(img: Path, manifest: dict[str, Any]) -> str:
    """The .config of the kernel an image was built with: the manifest names it only by its
    cache key (it carries no host paths); the build's own record knows its cache entry."""
    record = img.parent / ".build" / f"{manifest['board']}-s{manifest['stage']}" / "kernel.json"
    data = Path(json.loads(record.read_text())["dir"])  # CACHE/store/kernel/<key>/data
    assert data.parent.name == manifest["kernel"]["config_digest"]
    return (data / "config").read_text()
