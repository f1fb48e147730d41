from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import plan_request, zynq_boot_image
from tuoba.board import load_board
from tuoba.config import load_yaml
from tuoba.errors import InputError
from tuoba.plan import resolve

request = plan_request


def test_default_board_resolves(project: Path) -> None:
    plan = resolve(request(project))
    assert plan.board.arch == "arm64"
    assert "openssh-server" in plan.packages
    assert "bpftrace" in plan.packages  # the board's default recipes come in
    assert "linux-image-arm64" not in plan.packages  # the kernel is built here
    assert [r.name for r in plan.recipes] == [
        "base", "tuoba", "bpf", "containers", "security", "virt", "devtools", "wifi"
    ]  # fmt: skip
    assert [i.name for i in plan.oci_images] == ["localhost/tuoba/busybox:latest"]
    assert [f.name for f in plan.features][:3] == ["bpf", "readpath", "kvm"]
    # one arm64 kernel serves every arm64 board: all their platform fragments, by board name
    names = [f.name for f in plan.fragments]
    assert names[:8] == ["base", "arch:arm64", *(f"board:{b}" for b in (
        "jetson-nano", "qemu-aarch64", "roc-rk3328-cc", "rpi3", "rpi4", "vim3"))]  # fmt: skip
    assert "board:pynq-z2" not in names
    assert "tests/image/test_kernel.py" in plan.tests
    assert "recipes/bpf/checks/test_bpf.py" in plan.tests
    assert plan.image_name == f"tuoba-qemu-aarch64-s1-{plan.version}"
    assert plan.board.image.root.fs == "ext4"


def test_unknown_board_lists_known(project: Path) -> None:
    with pytest.raises(InputError) as e:
        resolve(request(project, board="rpi5"))
    assert e.value.message == "no board named 'rpi5'"
    assert "qemu-aarch64" in (e.value.hint or "")
    assert e.value.exit_code == 2


def test_unknown_recipe_lists_known(project: Path) -> None:
    with pytest.raises(InputError, match="no recipe named 'k8s'") as e:
        resolve(request(project, recipes=("base", "k8s")))
    assert "base" in (e.value.hint or "")


def test_unknown_feature_names_file_line_and_path(project: Path) -> None:
    board = project / "boards/qemu-aarch64/board.yaml"
    board.write_text(board.read_text() + "kernel:\n  features: [bpf, kvmm, virtio]\n")
    with pytest.raises(InputError) as e:
        resolve(request(project))
    line = next(
        i for i, ln in enumerate(board.read_text().splitlines(), 1) if "features: [bpf, kvmm" in ln
    )
    assert e.value.message == (
        f"boards/qemu-aarch64/board.yaml:{line} -> kernel -> features[1]: unknown feature 'kvmm'"
    )
    assert "bpf" in (e.value.hint or "")


def test_distro_kernel_board_installs_the_package(project: Path) -> None:
    board = project / "boards/qemu-aarch64/board.yaml"
    text = board.read_text() + "kernel:\n  source: distro\n  package: linux-image-arm64\n"
    board.write_text(text.replace("recipes: [tuoba]", "recipes: [base]"))
    plan = resolve(request(project))
    assert "linux-image-arm64" in plan.packages
    assert "tests/image/test_kernel.py" not in plan.tests
    assert [f.name for f in plan.fragments] == [f.name for f in plan.features]


def test_a_bpf_program_needs_the_kernel_tuoba_builds(project: Path) -> None:
    """bpf/ programs are compiled against the BTF of the kernel tuoba builds (and fr needs its
    patch): a board on the distribution's kernel that asks for one is told so, by place."""
    board = project / "boards/qemu-aarch64/board.yaml"
    board.write_text(
        board.read_text() + "kernel:\n  source: distro\n  package: linux-image-arm64\n"
    )
    recipe = project / "recipes/bpf/recipe.yaml"
    recipe.write_text(
        recipe.read_text().replace("  tests: [bpf]\n", "  bpf: [fr]\n  tests: [bpf]\n")
    )
    with pytest.raises(InputError) as e:
        resolve(request(project, recipes=("bpf",)))
    assert e.value.message.startswith("recipes/bpf/recipe.yaml:")
    assert "bpf/fr is compiled against the BTF of a kernel tuoba builds" in e.value.message


def test_malformed_yaml_names_file_and_line(project: Path) -> None:
    recipe = project / "recipes/base/recipe.yaml"
    recipe.write_text("description: x\nstage1:\n  packages: [a, b\n  oops: 1\n")
    with pytest.raises(InputError, match=r"^recipes/base/recipe\.yaml:4: malformed YAML"):
        resolve(request(project))


def test_wrong_type_names_the_item(project: Path) -> None:
    recipe = project / "recipes/base/recipe.yaml"
    recipe.write_text("description: x\nstage1:\n  packages:\n    - a\n    - {b: 1}\n")
    with pytest.raises(InputError) as e:
        resolve(request(project))
    assert e.value.message == (
        "recipes/base/recipe.yaml:5 -> stage1 -> packages[1]: expected a string, got a mapping"
    )


def test_unknown_key_is_an_error_with_known_keys(project: Path) -> None:
    recipe = project / "recipes/base/recipe.yaml"
    recipe.write_text(recipe.read_text() + "pakages: [x]\n")
    with pytest.raises(InputError, match="unknown key 'pakages'") as e:
        resolve(request(project))
    assert "stage1" in (e.value.hint or "")


def test_missing_overlay_dir_is_reported_at_its_place(project: Path) -> None:
    recipe = project / "recipes/base/recipe.yaml"
    recipe.write_text(
        recipe.read_text().replace("overlays: [common]", "overlays: [common, nope]", 1)
    )
    with pytest.raises(
        InputError, match=r"recipes/base/recipe\.yaml:\d+ -> stage1 -> overlays\[1\]: no overlay"
    ):
        resolve(request(project))


@pytest.mark.parametrize("stage", [3, 7])
def test_unsupported_stage_is_a_clear_error(project: Path, stage: int) -> None:
    with pytest.raises(InputError, match=f"stage {stage} is not supported"):
        resolve(request(project, stage=stage))


def test_size_units(tmp_path: Path) -> None:
    f = tmp_path / "b.yaml"
    f.write_text("x: 1\n")
    doc = load_yaml(f)
    from tuoba.config import size

    assert size(doc, ("x",), "2G") == 2 << 30
    assert size(doc, ("x",), "512M") == 512 << 20
    assert size(doc, ("x",), "64MiB") == 64 << 20
    with pytest.raises(InputError, match="expected a size"):
        size(doc, ("x",), "big")


def test_only_last_partition_may_omit_size(project: Path) -> None:
    board = project / "boards/qemu-aarch64/board.yaml"
    text = board.read_text().replace(
        "  partitions:\n",
        "  partitions:\n    - name: boot\n      type: esp\n      fs: vfat\n",
    )
    board.write_text(text)
    with pytest.raises(InputError, match=r"partitions\[0\]: only the last partition"):
        load_board(project, "qemu-aarch64")


def test_no_mirror_anywhere_is_an_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tuoba.apt.debian_mirrors", lambda release: [])
    with pytest.raises(InputError, match="no Debian mirror"):
        resolve(request(project, mirror=None))


def test_boards_of_one_flavour_share_one_kernel_config(project: Path) -> None:
    boards = ("qemu-aarch64", "rpi3", "rpi4", "roc-rk3328-cc", "jetson-nano", "vim3")
    # vim3's supplied file does not matter for the kernel (it is checked when given)
    plans = {b: resolve(request(project, board=b, check_needs=False)) for b in boards}
    configs = {b: [(o.name, o.value) for f in p.fragments for o in f.options]
               for b, p in plans.items()}  # fmt: skip
    assert all(configs[b] == configs["qemu-aarch64"] for b in boards)
    assert all(plans[b].kernel_dtbs == plans["rpi4"].kernel_dtbs for b in boards)
    assert plans["rpi4"].kernel_dtbs == (
        "amlogic/meson-g12b-a311d-khadas-vim3",
        "broadcom/bcm2711-rpi-4-b",
        "broadcom/bcm2837-rpi-3-b",
        "nvidia/tegra210-p3450-0000",
        "rockchip/rk3328-roc-cc",
    )
    assert "cloud-guest-utils" in plans["rpi4"].packages  # from the sdcard recipe
    assert plans["rpi4"].board.boot.method == "rpi-firmware"


def test_rpi_firmware_without_package_is_an_error(project: Path) -> None:
    board = project / "boards/rpi4/board.yaml"
    text = board.read_text()
    start = text.index("  firmware:")
    end = text.index("  config:")
    board.write_text(text[:start] + text[end:])
    with pytest.raises(InputError, match=r"boards/rpi4/board\.yaml:\d+ -> boot: method 'rpi-firm"):
        resolve(request(project, board="rpi4"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("remove-node /soc/x", "unknown edit 'remove-node' (known: delete-node, delete-property)"),
        ("delete-property /soc/x", "expected 'delete-property PATH PROPERTY'"),
        ("delete-node soc/x", "expected 'delete-node PATH' with an absolute node path"),
    ],
)
def test_bad_dtb_edit_names_its_place(project: Path, edit: str, message: str) -> None:
    board = project / "boards/rpi4/board.yaml"
    text = board.read_text()
    board.write_text(text.replace("    - delete-node /soc/mmc@7e300000/wifi@1", f"    - {edit}"))
    with pytest.raises(InputError) as e:
        load_board(project, "rpi4")
    assert e.value.message.startswith("boards/rpi4/board.yaml:")
    assert "-> qemu -> dtb_edits[0]: " + message in e.value.message


def test_dtb_edits_are_read_in_order(project: Path) -> None:
    board, _ = load_board(project, "rpi4")
    assert board.qemu is not None and board.qemu.machine == "raspi4b"
    assert board.qemu.dtb_edits[0] == "delete-node /soc/mmc@7e300000/wifi@1"
    assert board.qemu.dtb_edits[-1] == "delete-node /wifi-pwrseq"
    assert len(board.qemu.dtb_edits) == 8


def test_armhf_board_gets_its_arch_everywhere(project: Path, tmp_path: Path) -> None:
    """pynq-z2: the armhf kernel fragment and feature parts, its own .dts, armhf packages."""
    boot = zynq_boot_image(tmp_path / "BOOT.BIN")
    plan = resolve(
        request(project, board="pynq-z2", recipes=("base",), supplies=(("BOOT.BIN", str(boot)),))
    )
    names = [f.name for f in plan.fragments]
    assert names[:3] == ["base", "arch:armhf", "board:pynq-z2"]
    options = {o.name: (o.value, o.feature) for f in plan.fragments for o in f.options}
    assert options["CONFIG_ARM_PTDUMP_DEBUGFS"] == ("y", "kernel/features/debug.armhf.config")
    assert "CONFIG_PTDUMP_DEBUGFS" not in options and "CONFIG_RANDOMIZE_BASE" not in options
    assert plan.kernel_dtbs == ("zynq-pynq-z2",)
    assert plan.board_dts == (project / "boards/pynq-z2/zynq-pynq-z2.dts",)
    assert "bpftool" in plan.packages and "bpftrace" not in plan.packages
    assert "recipes/bpf/checks/test_bpf_syscall.py" in plan.tests
    assert "recipes/bpf/checks/test_bpf.py" not in plan.tests
    (supplied,) = plan.supplied
    assert (supplied.file, supplied.path) == ("BOOT.BIN", boot)
    assert plan.image_inputs()["supplied"] == {"BOOT.BIN": supplied.sha256}


def test_arm64_board_keeps_its_arch_parts(project: Path) -> None:
    plan = resolve(request(project))
    options = {o.name: o.feature for f in plan.fragments for o in f.options}
    assert options["CONFIG_ARM64_VA_BITS_48"] == "kernel/arch/arm64.config"
    assert options["CONFIG_PTDUMP_DEBUGFS"] == "kernel/features/debug.arm64.config"
    assert "bpftrace" in plan.packages and plan.board_dts == ()


def test_recipe_arch_part_names_an_unknown_arch(project: Path) -> None:
    recipe = project / "recipes/bpf/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("    armhf:\n", "    riscv64:\n"))
    with pytest.raises(InputError) as e:
        resolve(request(project, recipes=("base", "bpf")))
    assert e.value.message.startswith("recipes/bpf/recipe.yaml:")
    assert "unknown arch 'riscv64' (known: arm64, armhf)" in e.value.message


def test_feature_arch_part_is_not_a_feature_of_its_own(project: Path) -> None:
    from tuoba.kernel import feature_names, load_feature

    assert "debug" in feature_names(project)
    assert not [n for n in feature_names(project) if "." in n]
    with pytest.raises(InputError, match=r"unknown kernel feature 'debug\.arm64'"):
        load_feature(project, "debug.arm64")
    plain = load_feature(project, "debug")
    assert "CONFIG_PROC_KCORE" not in {o.name for o in plain.options}
    assert "CONFIG_PROC_KCORE" in {o.name for o in load_feature(project, "debug", "arm64").options}


def test_board_with_a_need_nobody_can_supply(project: Path) -> None:
    """A need with no file to hand over stops the board's build, and such a board does not
    shape the kernel the other boards of its flavour share."""
    board = project / "boards/jetson-nano/board.yaml"
    board.write_text(
        board.read_text().replace(
            "  method: extlinux\n",
            "  method: extlinux\n  needs:\n    - what: a vendor blob\n      why: it is "
            "nowhere\n      where: the vendor\n",
        )
    )
    with pytest.raises(InputError) as e:
        resolve(request(project, board="jetson-nano"))
    assert e.value.message == "board 'jetson-nano' cannot be built here: it needs a vendor blob"
    assert "--supply" not in (e.value.hint or "")
    names = [f.name for f in resolve(request(project)).fragments]
    assert "board:jetson-nano" not in names and "board:vim3" in names


def test_amlogic_method_needs_the_boot_image_to_be_supplied(project: Path) -> None:
    board = project / "boards/vim3/board.yaml"
    board.write_text(board.read_text().replace("      format: amlogic-sd-fip\n", ""))
    with pytest.raises(
        InputError, match=r"boards/vim3/board\.yaml:\d+ -> boot: method 'amlogic-fip"
    ):
        resolve(request(project, board="vim3"))


@pytest.mark.parametrize(
    ("text", "same"),
    [
        ("1: a\n'1': b\n", False),  # an int and a string
        ("1: a\ntrue: b\n", True),  # two YAML keys, but one dict key: one would be lost
        ("1: a\n0x1: b\n", True),  # one int, written two ways
        ('a: 1\n"a": 2\n', True),  # one string, quoted once
    ],
)
def test_duplicate_keys_compare_as_yaml_values(tmp_path: Path, text: str, same: bool) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(text)
    if same:
        with pytest.raises(InputError, match=r"d.yaml:2: key .* given twice in one mapping"):
            load_yaml(f)
    else:
        assert len(load_yaml(f).data) == 2
