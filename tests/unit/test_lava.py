"""tuoba.lava without a CLI: what a job checks in the guest (from the manifest and the
recipes), how its steps quote, the console shell it adds, and its choices per board. The jobs
themselves are validated by LAVA's schema in tests/cli/test_export_lava.py."""

from __future__ import annotations

import dataclasses
import io
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tuoba import lava
from tuoba.board import board_names, load_board
from tuoba.errors import InputError
from tuoba.manifest import Manifest

STAGE1_PACKAGES = [{"name": "systemd", "version": "252.38-1~deb12u1", "arch": "arm64"}]
STAGE2_PACKAGES = [
    {"name": "busybox", "version": "1.35.0", "role": "package"},
    {"name": "dropbear", "version": "2022.83", "role": "package"},
]


def manifest(**kw: object) -> Manifest:
    base: dict[str, object] = dict(
        name="tuoba-rpi4-s1-0.1.0", version="0.1.0", board="rpi4", arch="arm64", stage=1,
        recipes=["base", "bpf", "sdcard"], tests=[], hostname="tuoba-rpi4",
        inputs_digest="0" * 64,
        kernel={"version": "6.1.170-tuoba", "requested": {"CONFIG_DEBUG_INFO_BTF": "y"}},
        boot={}, sources={}, rootfs={}, packages=STAGE1_PACKAGES,
        partitions=[
            {"name": "boot", "fs": "vfat", "mountpoint": "/boot/firmware", "start": 1 << 20},
            {"name": "root", "fs": "ext4", "mountpoint": "/", "start": 257 << 20},
        ],
        files={}, source_date_epoch=1700000000,
    )  # fmt: skip
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def names(cases: list[lava.Case]) -> list[str]:
    return [c.name for c in cases]


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8000/tuoba", "https://dl.example.org/tuoba/0.1.0/"]
)
def test_artifacts_url_is_an_http_directory(url: str) -> None:
    assert lava.artifacts_base(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.org/tuoba", "dl.example.org/tuoba", "https://", "file:///srv/tuoba",
     "https://example.org/tuoba?x=1", ""],
)  # fmt: skip
def test_artifacts_url_refused(url: str) -> None:
    with pytest.raises(InputError) as e:
        lava.artifacts_base(url)
    assert "is not an http(s) URL" in e.value.message and e.value.hint


def test_stage1_services_come_from_the_recipes_the_manifest_names() -> None:
    m = manifest()
    assert lava.enabled_services(ROOT, m) == (
        "ssh", "systemd-networkd", "systemd-resolved", "tuoba-ssh-hostkeys", "tuoba-grow-root"
    )  # fmt: skip
    cases = lava.guest_cases(m, lava.enabled_services(ROOT, m))
    assert names(cases) == [
        "kernel-release", "root-ext4-rw", "hostname", "service-ssh", "service-systemd-networkd",
        "service-systemd-resolved", "service-tuoba-ssh-hostkeys", "service-tuoba-grow-root",
        "no-failed-units", "btf",
    ]  # fmt: skip
    by_name = {c.name: c for c in cases}
    assert by_name["kernel-release"].command == 'test "$(uname -r)" = "6.1.170-tuoba"'
    assert by_name["service-ssh"].command.startswith("systemctl is-enabled --quiet ssh && ")
    assert "systemctl is-active --quiet ssh" in by_name["service-ssh"].command


def test_stage2_has_no_systemd_checks_and_checks_its_ssh_server() -> None:
    m = manifest(stage=2, recipes=["base", "bpf", "sdcard"], packages=STAGE2_PACKAGES)
    assert lava.enabled_services(ROOT, m) == ()  # (recipes' services are stage 1's)
    assert names(lava.guest_cases(m, ())) == [
        "kernel-release", "root-ext4-rw", "hostname", "ssh-server-running", "btf"
    ]  # fmt: skip


def test_btf_is_checked_only_when_the_kernel_was_asked_for_it() -> None:
    m = manifest(kernel={"version": "6.1.170-tuoba", "requested": {"CONFIG_BPF": "y"}})
    assert "btf" not in names(lava.guest_cases(m, ()))


def test_a_manifest_without_a_kernel_version_is_refused() -> None:
    with pytest.raises(InputError, match="names no kernel version"):
        lava.guest_cases(manifest(kernel={}), ())


def test_a_step_hands_lava_test_case_its_command_whole() -> None:
    case = lava.Case("root-ext4-rw", 'grep -Eq "^[^ ]+ / ext4 rw[ ,]" /proc/mounts', "")
    words = shlex.split(case.step())
    assert words == ["lava-test-case", "root-ext4-rw", "--shell", case.command]
    tricky = lava.Case("q", "printf '%s' \"it's\"", "")
    assert shlex.split(tricky.step())[3] == tricky.command


@pytest.mark.parametrize("value", ["6.1.170-tuoba", 'a"b', "$(reboot)", "back\\slash`x`"])
def test_values_in_commands_are_literal_to_the_shell(value: str) -> None:
    shown = subprocess.run(["sh", "-c", f"printf %s {lava._dq(value)}"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert shown == value


def test_inittab_console_getty_becomes_a_root_shell() -> None:
    shipped = (ROOT / "recipes/base/overlay-s2/etc/inittab").read_text()
    edited = lava.console_inittab(shipped, "img").splitlines()
    assert lava.CONSOLE_SHELL in edited
    assert "console::respawn:/sbin/getty -L 0 console vt100" not in edited
    assert "::sysinit:/etc/init.d/rcS" in edited
    with pytest.raises(InputError, match="has no console entry"):
        lava.console_inittab("::sysinit:/etc/init.d/rcS\n# console::respawn:x\n", "img")


def test_stage2_inittab_is_the_one_the_image_got_from_its_overlays() -> None:
    m = manifest(stage=2, packages=STAGE2_PACKAGES)
    found = lava.overlay_file(ROOT, m, "etc/inittab")
    assert found == (ROOT / "recipes/base/overlay-s2/etc/inittab").read_text()
    assert lava.overlay_file(ROOT, manifest(), "etc/inittab") is None  # (stage 1: systemd)


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {i.name: i for i in tar.getmembers()}


def test_console_overlay_is_the_same_bytes_each_time_and_owned_by_root() -> None:
    for m in (manifest(), manifest(stage=2, packages=STAGE2_PACKAGES)):
        data = lava.console_overlay(ROOT, m)
        assert data == lava.console_overlay(ROOT, m)
        for info in _members(data).values():
            assert (info.uid, info.gid, info.mode, info.mtime) == (0, 0, 0o644, 1700000000)
    assert list(_members(lava.console_overlay(ROOT, manifest()))) == [lava.GETTY_DROP_IN]


def test_an_image_without_systemd_or_an_inittab_has_no_console_for_lava() -> None:
    m = manifest(stage=2, recipes=["bpf"], packages=[])
    with pytest.raises(InputError, match="no console for LAVA's shell"):
        lava.console_overlay(ROOT, m)


def test_root_partition_counts_from_zero_in_the_table_order() -> None:
    assert lava.root_partition(manifest()) == 1
    parts = list(reversed(manifest().partitions))  # (listed out of order: placed by start)
    assert lava.root_partition(manifest(partitions=parts)) == 1
    only = [{"name": "root", "fs": "ext4", "mountpoint": "/", "start": 16 << 20}]
    assert lava.root_partition(manifest(partitions=only)) == 0
    with pytest.raises(InputError, match="lists no root partition"):
        lava.root_partition(manifest(partitions=[]))
    vfat = [{"name": "root", "fs": "vfat", "mountpoint": "/", "start": 1 << 20}]
    with pytest.raises(InputError, match="not ext4"):
        lava.root_partition(manifest(partitions=vfat))


@pytest.mark.parametrize("board", board_names(ROOT))
def test_deploy_and_device_type_follow_the_board_data(board: str) -> None:
    b, _ = load_board(ROOT, board)
    kind = lava.deploy_kind(b)
    if b.boot.method == "direct":  # QEMU loads the kernel itself
        assert kind is lava.QEMU and lava.default_device_type(b) == "qemu"
    else:  # the board's firmware boots its card
        assert kind is lava.CARD
        assert lava.default_device_type(b) == b.kernel.dtbs[0].rsplit("/", 1)[-1]
    assert kind.deploy_minutes + kind.boot_minutes + kind.test_minutes <= kind.job_minutes


def test_the_boards_device_types() -> None:
    types = {b: lava.default_device_type(load_board(ROOT, b)[0]) for b in board_names(ROOT)}
    assert types["qemu-aarch64"] == "qemu"
    assert types["rpi4"] == "bcm2711-rpi-4-b"
    assert types["rpi3"] == "bcm2837-rpi-3-b"
    assert types["vim3"] == "meson-g12b-a311d-khadas-vim3"


def test_a_direct_board_without_qemu_data_is_refused() -> None:
    b, _ = load_board(ROOT, "qemu-aarch64")
    b = dataclasses.replace(b, qemu=None)
    m = manifest(board="qemu-aarch64", files={"tuoba-rpi4-s1-0.1.0.img.xz": "a" * 64})
    with pytest.raises(InputError, match="has no qemu: section"):
        lava.make_job(m, b, lava.QEMU, (), "https://x", b"", "qemu")


def test_the_description_says_what_is_and_is_not_checked() -> None:
    m = manifest(tests=["recipes/base/checks/test_login.py"])
    cases = tuple(lava.guest_cases(m, lava.enabled_services(ROOT, m)))
    said = lava.describe(m, cases)
    assert "the in-guest subset of its guest checks" in said
    assert "services are enabled and active" in said and "tuoba-grow-root" in said
    assert "pytest-testinfra files run from a host over ssh" in said
    assert "recipes/base/checks/test_login.py" in said


def test_found_image_prefers_this_tuobas_version(tmp_path: Path) -> None:
    old = manifest(name="tuoba-rpi4-s1-0.0.9", version="0.0.9")
    now = manifest()
    for m in (old, now):
        (tmp_path / f"{m.name}.manifest.json").write_text(m.to_json())
    assert lava.find_built(tmp_path, "rpi4", 1).name == now.name
    (tmp_path / f"{now.name}.manifest.json").unlink()
    assert lava.find_built(tmp_path, "rpi4", 1).name == old.name
    with pytest.raises(InputError, match="no built image of board 'rpi4' stage 2"):
        lava.find_built(tmp_path, "rpi4", 2)
