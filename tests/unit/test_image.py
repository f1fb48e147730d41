"""Composing the image (tuoba.image): what goes where on the disk and in the root tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_disk import spec
from tuoba.disk import layout


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
    from tuoba.errors import BuildError
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
        return Stage.registry[n](None)  # type: ignore[arg-type]  # (fstab_line reads no plan)

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
