"""Guest checks read from the serial console, for emulated boards without a network (QEMU's
raspi machines), both stages; test_s1serial / test_s2serial hold each stage's own. `tuoba test`
passes the console log once the login prompt is up."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

pytestmark = pytest.mark.guest


def test_clang_built_kernel_booted(console: str, manifest: dict[str, Any]) -> None:
    line = next(ln for ln in console.splitlines() if "Linux version" in ln)
    assert manifest["kernel"]["version"] in line
    assert "clang version" in line and "LLD" in line


def test_root_mounted_from_sd_card(console: str) -> None:
    assert re.search(r"EXT4-fs \(mmcblk\dp2\): mounted filesystem", console)


def test_login_prompt_shows_board_hostname(console: str, manifest: dict[str, Any]) -> None:
    assert f"{manifest['hostname']} login:" in console


def test_root_grew_to_fill_the_card(console: str, manifest: dict[str, Any]) -> None:
    """sdcard images grow / on first boot: into the whole card when `tuoba test --card-size`
    attached a larger one, else they say there is nothing to grow (or take the last MiB the
    image's partition table leaves free)."""
    if "sdcard" not in manifest["recipes"]:
        assert "tuoba-grow-root" not in console
        return
    root = next(p for p in manifest["partitions"] if p["mountpoint"] == "/")
    card = int(os.environ.get("TUOBA_CARD_SIZE") or 0)
    lines = [ln for ln in console.splitlines() if "tuoba-grow-root: " in ln]
    assert len(lines) == 1, lines
    if card > root["start"] + root["size"]:
        found = re.search(r"grew /dev/mmcblk\dp2 from (\d+) to (\d+) MiB", lines[0])
        assert found, lines[0]
        assert int(found.group(1)) == root["size"] >> 20
        assert abs(int(found.group(2)) - ((card - root["start"]) >> 20)) <= 1
    else:  # the image as the card: nothing, or the MiB its table leaves free at the end
        grew = re.search(r"grew /dev/mmcblk\dp2 from (\d+) to (\d+) MiB", lines[0])
        if grew is None:
            assert "nothing to grow" in lines[0], lines[0]
        else:
            assert int(grew.group(2)) - int(grew.group(1)) <= 1, lines[0]
