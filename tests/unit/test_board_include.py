"""Boards include shared defaults (boards/common/*.yaml); each value stays located where it
was written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import invoke
from tuoba.board import board_doc, load_board
from tuoba.config import flatten
from tuoba.errors import InputError
from tuoba.plan import Request, resolve


def check(project: Path, board: str) -> None:
    resolve(Request(board=board, recipes=("base",), stage=1, data_dir=str(project),
                    out_dir=str(project / "out"), cache_dir=str(project / "cache")))  # fmt: skip


def test_the_arm64_boards_get_the_shared_kernel(project: Path) -> None:
    for name in ("qemu-aarch64", "rpi4", "jetson-nano"):
        board, _ = load_board(project, name)
        assert board.arch == "arm64"
        assert board.kernel.flavour == "arm64-generic"
        assert board.kernel.features == (
            "bpf",
            "readpath",
            "kvm",
            "virtio",
            "containers",
            "k3s",
            "security",
            "debug",
            "net",
            "storage",
        )
        assert board.kernel.cmdline == ("rw", "quiet", "systemd.firstboot=off")
    pynq, _ = load_board(project, "pynq-z2")
    assert pynq.kernel.cmdline == ("rw", "quiet", "systemd.firstboot=off")  # from all.yaml
    assert pynq.kernel.features == ("bpf", "containers", "debug", "net")  # its own


def test_a_board_value_replaces_the_shared_one(project: Path) -> None:
    f = project / "boards/rpi4/board.yaml"
    f.write_text(f.read_text().replace("kernel:\n", "kernel:\n  features: [bpf]\n", 1))
    board, doc = load_board(project, "rpi4")
    assert board.kernel.features == ("bpf",)  # replaced, not appended to
    assert board.kernel.flavour == "arm64-generic"  # the rest of the mapping still merged
    where = {path: at for path, _, at in flatten(doc)}
    assert where[("kernel", "features")].startswith("boards/rpi4/board.yaml:")
    assert where[("kernel", "flavour")] == "boards/common/arm64.yaml:5"


def test_a_bad_shared_value_is_reported_in_its_own_file(project: Path) -> None:
    f = project / "boards/common/arm64.yaml"
    f.write_text(f.read_text().replace("[bpf, readpath, kvm,", "[bpf, readpath, kvmm,"))
    with pytest.raises(InputError) as e:
        check(project, "rpi4")
    assert e.value.message.startswith(
        "boards/common/arm64.yaml:6 -> kernel -> features[2]: unknown feature 'kvmm'"
    )


@pytest.mark.parametrize(
    ("include", "message"),
    [
        ("[all, nope]", "boards/rpi3/board.yaml:4 -> include[1]: no shared board file "
                        "boards/common/nope.yaml"),
        ("all", "boards/rpi3/board.yaml:4 -> include: expected a list"),
    ],
)  # fmt: skip
def test_bad_include(project: Path, include: str, message: str) -> None:
    f = project / "boards/rpi3/board.yaml"
    f.write_text(f.read_text().replace("include: [all, arm64]", f"include: {include}"))
    with pytest.raises(InputError) as e:
        board_doc(project, "rpi3")
    assert e.value.message.startswith(message)
    assert e.value.hint


def test_a_shared_file_cannot_include_another(project: Path) -> None:
    f = project / "boards/common/arm64.yaml"
    f.write_text("include: [all]\n" + f.read_text())
    with pytest.raises(InputError, match=r"^boards/common/arm64.yaml:1 -> include: a shared "):
        board_doc(project, "rpi3")


def test_boards_show_prints_each_value_with_its_origin(project: Path) -> None:
    code, out = invoke(project, "boards", "--show", "rpi4")
    assert code == 0
    rows = {line.split()[0] if " -> " not in line else line.split("  ")[0].strip(): line
            for line in out.splitlines()}  # fmt: skip
    assert rows["arch"].endswith("(boards/common/arm64.yaml:3)")
    assert rows["kernel -> cmdline"].endswith("(boards/common/all.yaml:7)")
    assert "broadcom/bcm2711-rpi-4-b" in rows["kernel -> dtbs"]
    assert rows["kernel -> dtbs"].endswith("(boards/rpi4/board.yaml:15)")
    assert rows["image -> partitions[1] -> fs"].split()[-2] == "ext4"
    code, out = invoke(project, "boards", "--show", "nope")
    assert code == 2 and "no board named 'nope'" in out
