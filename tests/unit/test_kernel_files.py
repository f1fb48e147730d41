"""The built kernel's own files a recipe keeps in the image (`stage1: kernel_files:`): the
boot image for nested guests (virt) and the vmlinux with its debug info for drgn and perf
(devtools), copied from the kernel's cache entry to where those tools look."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import plan_request
from tuoba import kbuild
from tuoba.errors import BuildError, InputError
from tuoba.image import install_kernel_files
from tuoba.plan import resolve
from tuoba.records import KernelRecord, OverlayRecord

DISTRO = "kernel:\n  source: distro\n  package: linux-image-arm64\n"


def test_recipes_ask_for_the_kernels_files(project: Path) -> None:
    plan = resolve(plan_request(project, recipes=("virt", "devtools")))
    assert sorted(plan.kernel_files) == ["debug-info", "image"]
    assert plan.image_inputs()["kernel_files"] == plan.kernel_files
    board = project / "boards/qemu-aarch64/board.yaml"
    board.write_text(board.read_text().replace("recipes: [tuoba]", "recipes: [base]"))
    base = resolve(plan_request(project, recipes=("base",)))
    assert base.kernel_files == ()
    assert "kernel_files" not in base.image_inputs()  # (earlier images stay valid)


def test_an_unknown_kernel_file_is_located(project: Path) -> None:
    recipe = project / "recipes/devtools/recipe.yaml"
    recipe.write_text(
        recipe.read_text().replace("kernel_files: [debug-info]", "kernel_files: [dwarf]")
    )
    with pytest.raises(InputError) as e:
        resolve(plan_request(project, recipes=("devtools",)))
    assert e.value.message.startswith("recipes/devtools/recipe.yaml:")
    assert "unknown kernel file 'dwarf'" in e.value.message
    assert "image, debug-info" in (e.value.hint or "")


def test_a_distro_kernel_has_no_files_to_keep(project: Path) -> None:
    board = project / "boards/qemu-aarch64/board.yaml"
    board.write_text((board.read_text() + DISTRO).replace("recipes: [tuoba]", "recipes: [base]"))
    with pytest.raises(InputError) as e:
        resolve(plan_request(project, recipes=("devtools",)))
    assert e.value.message.startswith("recipes/devtools/recipe.yaml:")
    assert "boots Debian's kernel, so its 'debug-info' is not built here" in e.value.message


def kernel(entry: Path) -> KernelRecord:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "Image").write_bytes(b"kernel image")
    (entry / kbuild.DEBUG_FILE).write_bytes(b"\x7fELF debug")
    return KernelRecord(
        source="tuoba", version="6.1.170-tuoba", compiler="clang", config_sha256="0" * 64,
        features={}, kernel="Image", kernel_sha256="1" * 64, image="Image", dir=str(entry),
        config_digest="abcdef0123456789",
    )  # fmt: skip


def test_the_files_go_where_tools_look(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install_kernel_files(root, ("image", "debug-info"), kernel(tmp_path / "entry"),
                         OverlayRecord(files={}, tree=""))  # fmt: skip
    assert (root / "boot/vmlinuz-6.1.170-tuoba").read_bytes() == b"kernel image"
    debug = root / "usr/lib/debug/lib/modules/6.1.170-tuoba/vmlinux"
    assert debug.read_bytes() == b"\x7fELF debug"
    assert debug.stat().st_mode & 0o777 == 0o644


def test_an_overlay_file_or_a_link_in_the_way_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    k = kernel(tmp_path / "entry")
    clash = OverlayRecord(files={"boot/vmlinuz-6.1.170-tuoba": "f" * 64}, tree="")
    with pytest.raises(BuildError, match="both the kernel's image and an overlay file"):
        install_kernel_files(root, ("image",), k, clash)
    (root / "usr/lib/debug").symlink_to("/tmp")
    with pytest.raises(BuildError, match="/usr/lib/debug is a symbolic link in the image"):
        install_kernel_files(root, ("debug-info",), k, OverlayRecord(files={}, tree=""))


def test_an_entry_without_the_file_names_the_entry(tmp_path: Path) -> None:
    k = kernel(tmp_path / "entry")
    (tmp_path / "entry" / kbuild.DEBUG_FILE).unlink()
    with pytest.raises(BuildError) as e:
        install_kernel_files(tmp_path, ("debug-info",), k, OverlayRecord(files={}, tree=""))
    assert "has no vmlinux.debug" in e.value.message
    assert "tuoba cache rm kernel/abcdef012345" in (e.value.hint or "")
