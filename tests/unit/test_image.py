"""Composing the image (tuoba.image): what goes where on the disk and in the root tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_disk import spec
from tuoba.disk import layout
from tuoba.errors import BuildError
from tuoba.image import install_artifacts
from tuoba.recipe import Artifact
from tuoba.records import ArtifactsRecord, FetchedSource, OverlayRecord
from tuoba.sources import Source


@pytest.mark.parametrize(
    ("table", "offset", "size", "clash"),
    [
        ("mbr", 0, 440, None),  # the MBR's boot code area is a loader's
        ("mbr", 0, 441, "the partition table"),  # ... the disk signature is not
        ("mbr", 512, (1 << 20) - 512, None),  # up to the first partition
        ("mbr", 512, 1 << 20, "partition 'boot'"),
        ("gpt", 0, 440, "the partition table"),  # a GPT's protective MBR is the table's
        ("gpt", 34 * 512, 4096, None),
    ],
)
def test_raw_writes_keep_off_the_table_and_partitions(
    tmp_path: Path, table: str, offset: int, size: int, clash: str | None
) -> None:
    from tuoba.image import check_raw_writes

    blob = tmp_path / "loader.bin"
    blob.write_bytes(b"\x01" * size)
    parts = layout(spec(), "seed")
    if clash is None:
        check_raw_writes([(offset, blob)], parts, table, "b")
    else:
        with pytest.raises(BuildError, match=f"overlaps {clash}"):
            check_raw_writes([(offset, blob)], parts, table, "b")


def test_fstab_names_partitions_the_way_each_stage_can_mount_them(tmp_path: Path) -> None:
    from tuoba.disk import fs_uuid_as_seen
    from tuoba.image import write_fstab
    from tuoba.stages import Stage

    def stage(n: int) -> Stage:
        return Stage.registry[n](None)  # (fstab_line reads no plan)

    boot, root = layout(spec(), "seed")
    (tmp_path / "etc").mkdir()
    write_fstab(tmp_path, [boot, root], stage(1).fstab_line)  # systemd resolves PARTUUID=
    s1 = (tmp_path / "etc/fstab").read_text()
    assert f"PARTUUID={boot.uuid} /boot vfat defaults,nofail 0 2" in s1
    write_fstab(tmp_path, [boot, root], stage(2).fstab_line)  # busybox: UUID= only, no nofail
    s2 = (tmp_path / "etc/fstab").read_text()
    serial = fs_uuid_as_seen(boot)
    assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", serial)
    assert f"UUID={serial} /boot vfat defaults 0 2" in s2
    assert f"PARTUUID={root.uuid} / ext4 " in s1 and f"PARTUUID={root.uuid} / ext4 " in s2
    assert (tmp_path / "boot").is_dir()


def _artifact(install: str) -> tuple[object, object]:
    from tuoba.records import ArtifactsRecord, FetchedSource

    a = Artifact(Source("k3s-arm64", "http://x/k3s-arm64", "a" * 64), install, 0o755, ())
    return a, ArtifactsRecord(files={install: FetchedSource("a" * 64, "", "test")})


def test_artifacts_go_to_their_path_with_their_mode(tmp_path: Path) -> None:

    cached = tmp_path / "cached"
    cached.write_bytes(b"\x7fELF binary")
    a, _ = _artifact("/usr/local/bin/k3s")
    rec = ArtifactsRecord(files={a.install: FetchedSource("a" * 64, str(cached), "t")})
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/k3s").write_text("old")  # (a hard link into the cache: replaced)
    install_artifacts(root, (a,), rec, OverlayRecord(files={}, tree=""))
    dest = root / "usr/local/bin/k3s"
    assert dest.read_bytes() == b"\x7fELF binary" and dest.stat().st_mode & 0o777 == 0o755


def test_an_artifact_an_overlay_also_writes_is_refused(tmp_path: Path) -> None:

    a, rec = _artifact("/usr/local/bin/k3s")
    overlays = OverlayRecord(files={"usr/local/bin/k3s": "f" * 64}, tree="")
    with pytest.raises(BuildError, match=r"both a pinned file .* and an overlay file"):
        install_artifacts(tmp_path, (a,), rec, overlays)


def test_an_artifact_behind_a_symlink_is_refused(tmp_path: Path) -> None:

    (tmp_path / "var").mkdir()
    (tmp_path / "var/run").symlink_to("/run")  # as in Debian: it would lead out of the tree
    a, rec = _artifact("/var/run/k3s/k3s")
    with pytest.raises(BuildError, match="/var/run is a symbolic link in the image"):
        install_artifacts(tmp_path, (a,), rec, OverlayRecord(files={}, tree=""))
    assert not Path("/run/k3s").exists()


def test_an_image_grows_to_hold_its_root_tree(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """image.size is the smallest image made: a root tree that does not fit with room to spare
    doubles the image (cards come in powers of two), the root partition taking the rest, the
    UUIDs unchanged; a tree that fits keeps the board's size."""
    from tests.conftest import plan_request
    from tuoba.image import fit_root
    from tuoba.plan import resolve

    board = project / "boards/qemu-aarch64/board.yaml"
    board.write_text(board.read_text().replace("size: 2G", "size: 300M"))
    plan = resolve(plan_request(project))
    parts = layout(plan.board.image, "seed")
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr/small").write_bytes(b"x" * 4096)
    assert fit_root(plan, tree, parts, "seed") == (plan.board.image, parts)

    (tree / "usr/big").write_bytes(b"\1" * (64 << 20))  # 64 MiB + 256 MiB to spare > 298 MiB
    (tree / "usr/big-link").hardlink_to(tree / "usr/big")  # (counted once)
    spec, grown = fit_root(plan, tree, parts, "seed")
    said = " ".join(capsys.readouterr().err.split())
    assert "the root tree takes 64 MiB: the image is 600 MiB, not 300" in said, said
    assert spec.size == 600 << 20
    root = grown[-1]
    assert root.size == (600 - 2) << 20 and root.uuid == parts[-1].uuid
    assert root.fs_uuid == parts[-1].fs_uuid


def test_a_root_partition_of_fixed_size_that_is_too_small_is_an_error(
    project: Path, tmp_path: Path
) -> None:
    from tests.conftest import plan_request
    from tuoba.image import fit_root
    from tuoba.plan import resolve

    board = project / "boards/qemu-aarch64/board.yaml"
    text = board.read_text().replace(
        "      mountpoint: /\n", "      mountpoint: /\n      size: 200M\n"
    )
    board.write_text(text)
    plan = resolve(plan_request(project))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(b"\1" * (8 << 20))
    with pytest.raises(BuildError) as e:
        fit_root(plan, tree, layout(plan.board.image, "seed"), "seed")
    assert "board qemu-aarch64's root partition of 200 MiB cannot hold it" in e.value.message
    assert "boards/qemu-aarch64/board.yaml" in (e.value.hint or "")
