"""The command tree, through CliRunner (no build is run here; see tests/integration)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import amlogic_sd_fip, zynq_boot_image
from tuoba import run
from tuoba.cache import Store
from tuoba.cli import cli


def invoke(project: Path, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--data-dir", str(project), "--out", str(project / "out"), *args],
        catch_exceptions=False,
    )
    return result.exit_code, result.output


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(project: Path, command: str) -> None:
    code, out = invoke(project, command, "--help")
    assert code == 0
    assert "Usage: " in out


def test_matrix_check_plans_without_building(project: Path) -> None:
    code, out = invoke(project, "matrix", "--boards", "qemu-aarch64,rpi4,pynq-z2", "--check")
    assert code == 0, out
    flat = " ".join(out.split())
    assert "pynq-z2-s1 is not built here: board 'pynq-z2' needs a file tuoba cannot fetch" in flat
    assert "tuoba-rpi4-s2-0.1.0" in flat and "stage-2 userland arm64" in flat
    assert not (project / "out").exists(), "--check wrote into out/"


def test_boards_lists_one_line_each(project: Path) -> None:
    code, out = invoke(project, "boards")
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert set(lines) == {
        "qemu-aarch64", "rpi4", "rpi3", "jetson-nano", "vim3", "roc-rk3328-cc", "pynq-z2"
    }  # fmt: skip
    assert "arm64" in lines["qemu-aarch64"] and "booted in QEMU virt" in lines["qemu-aarch64"]
    assert "rpi-firmware" in lines["rpi4"]
    assert "armhf" in lines["pynq-z2"] and "Zynq-7020" in lines["pynq-z2"]
    assert "amlogic-fip" in lines["vim3"] and "--supply" in lines["vim3"]
    assert "extlinux" in lines["jetson-nano"] and "QSPI" in lines["jetson-nano"]


@pytest.mark.parametrize(
    ("board", "blob"),
    [
        ("vim3", "the VIM3's signed Amlogic boot image u-boot.bin.sd.bin"),
        ("pynq-z2", "BOOT.BIN"),
    ],
)
def test_board_needing_what_cannot_be_had_stops_naming_it(
    project: Path, board: str, blob: str
) -> None:
    code, out = invoke(project, "build", "--board", board)
    assert code == 2
    assert f"board '{board}' needs a file tuoba cannot fetch: {blob}" in out
    assert "Get it from:" in out and f"boards/{board}/board.yaml" in out
    assert not (project / "out").exists()
    # the hint says how to hand it over
    assert f"--supply {'BOOT.BIN' if board == 'pynq-z2' else 'u-boot.bin.sd.bin'}=PATH" in out


@pytest.mark.parametrize(
    ("supply", "says"),
    [
        ("BOOT.BIN=/nonexistent/BOOT.BIN", "--supply BOOT.BIN=/nonexistent/BOOT.BIN: no such file"),
        (
            "boot.bin={good}",
            "--supply boot.bin: neither board 'pynq-z2' nor the recipes take a "
            "file named 'boot.bin'",
        ),
        ("BOOT.BIN", "expected FILE=PATH, got 'BOOT.BIN'"),
        ("BOOT.BIN={garbage}", "not a Zynq-7000 boot image (no boot header: the word at 0x20 is"),
        ("BOOT.BIN={corrupt}", "not a Zynq-7000 boot image (the header checksum at 0x48 is"),
    ],
)
def test_supplied_file_is_checked_before_any_side_effect(
    project: Path, tmp_path: Path, supply: str, says: str
) -> None:
    good = zynq_boot_image(tmp_path / "BOOT.BIN")
    (tmp_path / "garbage").write_bytes(b"\xff" * 4096)
    corrupt = bytearray(good.read_bytes())
    corrupt[0x30] ^= 1  # the loader's offset, covered by the header checksum
    (tmp_path / "corrupt").write_bytes(corrupt)
    files = {"good": good, "garbage": tmp_path / "garbage", "corrupt": tmp_path / "corrupt"}
    code, out = invoke(project, "build", "--board", "pynq-z2", "--supply", supply.format(**files))
    assert code == 2
    assert says in " ".join(out.split())
    assert not (project / "out").exists()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        ("garbage", "not an Amlogic SD-card boot image (bytes 0x210-0x213 are"),
        ("short", "not an Amlogic SD-card boot image (4096 bytes, shorter than"),
        ("huge", "do not fit in the 16777216 bytes before the first partition"),
    ],
)
def test_amlogic_boot_image_is_checked_before_any_side_effect(
    project: Path, tmp_path: Path, make: str, says: str
) -> None:
    path = tmp_path / "u-boot.bin.sd.bin"
    if make == "garbage":
        path.write_bytes(b"\xff" * (1 << 20))
    elif make == "short":
        path.write_bytes(amlogic_sd_fip(path).read_bytes()[:4096])
    else:
        amlogic_sd_fip(path, size=17 << 20)
    code, out = invoke(project, "build", "--board", "vim3", "--supply", f"u-boot.bin.sd.bin={path}")
    assert code == 2
    assert says in " ".join(out.split())
    assert not (project / "out").exists()


def test_supply_to_a_board_that_takes_none(project: Path, tmp_path: Path) -> None:
    boot = zynq_boot_image(tmp_path / "BOOT.BIN")
    code, out = invoke(project, "build", "--board", "rpi4", "--supply", f"BOOT.BIN={boot}")
    assert code == 2
    assert "neither board 'rpi4' nor the recipes take a file named 'BOOT.BIN'" in out
    assert "they take none" in out


def test_kernel_config_names_the_fragment_of_each_option(project: Path) -> None:
    code, out = invoke(project, "kernel", "config", "--board", "qemu-aarch64")
    assert code == 0
    lines = {ln.split()[0]: ln.split()[-1] for ln in out.splitlines() if ln.startswith("CONFIG_")}
    assert lines["CONFIG_BPF_SYSCALL=y"].startswith("kernel/features/bpf.config:")
    assert lines["CONFIG_SERIAL_AMBA_PL011=y"].startswith("boards/qemu-aarch64/kernel.config:")
    assert lines["CONFIG_MODULES=y"].startswith("kernel/base.config:")


def test_kernel_config_of_a_board_whose_boot_file_is_not_supplied(project: Path) -> None:
    """pynq-z2's kernel config needs no BOOT.BIN; its armhf parts are named."""
    code, out = invoke(project, "kernel", "config", "--board", "pynq-z2")
    assert code == 0, out
    lines = {ln.split()[0]: ln.split()[-1] for ln in out.splitlines() if ln.startswith("CONFIG_")}
    assert lines["CONFIG_COMPAT_32BIT_TIME=y"].startswith("kernel/arch/armhf.config:")
    assert lines["CONFIG_ARCH_ZYNQ=y"].startswith("boards/pynq-z2/kernel.config:")
    assert lines["CONFIG_ARM_PTDUMP_DEBUGFS=y"].startswith("kernel/features/debug.armhf.config:")


def test_recipes_lists_one_line_each(project: Path) -> None:
    code, out = invoke(project, "recipes")
    assert code == 0
    names = [ln.split()[0] for ln in out.splitlines() if ln and not ln.startswith(" ")]
    assert names == sorted(names) and {"ai", "base", "tuoba"} <= set(names)


def test_build_unknown_board_exits_2_with_known_boards(project: Path) -> None:
    code, out = invoke(project, "build", "--board", "rpi5")
    assert code == 2
    assert "error: no board named 'rpi5'" in out
    assert "known boards: jetson-nano, pynq-z2, qemu-aarch64, roc-rk3328-cc, rpi3, rpi4" in out
    assert "Traceback" not in out
    assert not (project / "out").exists()  # validated before any side effect


def test_build_malformed_recipe_reports_file_line(project: Path) -> None:
    (project / "recipes/base/recipe.yaml").write_text("description: [\n")
    code, out = invoke(project, "build")
    assert code == 2
    assert "recipes/base/recipe.yaml:2: malformed YAML" in out


def test_build_stage_3_not_supported(project: Path) -> None:
    code, out = invoke(project, "build", "--stage", "3")
    assert code == 2
    assert "stage 3 is not supported" in out


def test_debug_shows_traceback(project: Path) -> None:
    runner = CliRunner()
    with pytest.raises(Exception, match="no board named"):
        runner.invoke(
            cli, ["--debug", "--data-dir", str(project), "build", "-b", "x"],
            catch_exceptions=False,
        )  # fmt: skip


PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIESIgl0bq4s0mj/Nf9R5E6XYtyKqEM3okcF/e7UQGYkJ test\n"
)


def test_missing_host_tool_names_package_and_fix(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(run.shutil, "which", lambda tool, path=None: None)
    key = project / "key.pub"
    key.write_text(PUBLIC_KEY)
    code, out = invoke(project, "build", "--ssh-key", str(key))
    assert code == 3
    assert "host tool" in out
    assert "tuoba doctor --fix" in out


def test_test_without_image_says_build_first(project: Path) -> None:
    code, out = invoke(project, "test")
    assert code == 2
    assert "no image at" in out
    assert "tuoba build" in out


def test_missing_ssh_key_file(project: Path) -> None:
    code, out = invoke(project, "build", "--ssh-key", str(project / "nope.pub"))
    assert code == 2
    assert "nope.pub: no such file" in out


def test_cache_list_du_and_prune(project: Path) -> None:
    cache_dir = project / "cache"
    store = Store(cache_dir, label="rpi4-s1")
    for kind, key, size in (("kernel", "ab" * 32, 3000), ("source", "cd" * 32, 10)):
        with store.make(kind, key, what=f"the {kind}", inputs={}) as data:
            (data / "f").write_bytes(b"x" * size)
    old = cache_dir / "store" / "source" / ("cd" * 32)
    raw = json.loads((old / "entry.json").read_text())
    (old / "entry.json").write_text(json.dumps(raw | {"created": 0}))
    long_ago = time.time() - 40 * 86400
    os.utime(old / "used-by" / "rpi4-s1", (long_ago, long_ago))

    code, out = invoke(project, "--cache-dir", str(cache_dir), "cache", "list")
    assert code == 0
    kernel, source = out.splitlines()
    assert kernel.split()[:4] == ["kernel", "ab" * 6, "2.9", "KiB"]
    assert "rpi4-s1" in kernel and kernel.endswith("the kernel")
    assert source.split()[4] == "40d"
    code, out = invoke(project, "cache", "list", "--json", "--kind", "source",
                       "--cache-dir", str(cache_dir))  # fmt: skip
    assert code == 0 and json.loads(out)["used_by"] == ["rpi4-s1"]

    code, out = invoke(project, "--cache-dir", str(cache_dir), "cache", "du")
    assert code == 0
    assert "kernel (1 entry)" in out and "source (1 entry)" in out and "total in" in out

    code, out = invoke(project, "--cache-dir", str(cache_dir), "cache", "prune",
                       "--older-than", "30d", "--dry-run")  # fmt: skip
    assert code == 0 and "would remove source/" in out and "1 entry," in out
    assert store.has(f"source/{'cd' * 32}")
    code, out = invoke(project, "--cache-dir", str(cache_dir), "cache", "prune",
                       "--older-than", "30d")  # fmt: skip
    assert code == 0 and "removed source/" in out
    assert not store.has(f"source/{'cd' * 32}") and store.has(f"kernel/{'ab' * 32}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs --older-than AGE or --keep-last N"),
        (("--older-than", "30 days"), "not a duration: '30 days'"),
    ],
)
def test_cache_prune_bad_input(project: Path, args: tuple[str, ...], message: str) -> None:
    code, out = invoke(project, "--cache-dir", str(project / "cache"), "cache", "prune", *args)
    assert code == 2
    assert message in out and "hint:" in out


def test_cache_rm_takes_a_unique_key_prefix(project: Path) -> None:
    cache_dir = project / "cache"
    store = Store(cache_dir)
    for key in ("ab" * 32, "ac" * 32):
        with store.make("rootfs", key, what="a root", inputs={}) as data:
            (data / "f").write_text("x")
    args = ("--cache-dir", str(cache_dir), "cache", "rm")
    code, out = invoke(project, *args, "rootfs/a")
    assert code == 2 and "rootfs/a: 2 cache entries match" in out and "hint:" in out
    code, out = invoke(project, *args, "kernel/ab")
    assert code == 2 and "kernel/ab: no cache entries match" in out
    code, out = invoke(project, *args, "rootfs/ab")
    assert code == 0 and "removed rootfs/abab" in out
    assert [e.meta.key for e in store.entries()] == ["ac" * 32]
