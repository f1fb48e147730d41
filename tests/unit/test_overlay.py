from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuoba.errors import InputError
from tuoba.overlay import apply_overlay, render_overlays
from tuoba.plan import Overlay


def test_render_and_later_overlay_wins(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "etc").mkdir(parents=True)
    (b / "etc").mkdir(parents=True)
    (a / "etc/hostname.j2").write_text("{{ board.hostname }}\n")
    (a / "etc/motd").write_text("from a\n")
    (b / "etc/motd").write_text("from b\n")
    dest = tmp_path / "out"
    files = render_overlays((Overlay("a", a), Overlay("b", b)), {"board": {"hostname": "h1"}}, dest)
    assert sorted(files) == ["etc/hostname", "etc/motd"]
    assert (dest / "etc/hostname").read_text() == "h1\n"
    assert (dest / "etc/motd").read_text() == "from b\n"


def test_undefined_value_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o/x.j2").write_text("{{ nope }}")
    with pytest.raises(InputError, match=r"overlays/o/x\.j2: template uses an undefined value"):
        render_overlays((Overlay("o", tmp_path / "o"),), {}, tmp_path / "out")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o/x.j2").write_text("ok\n{% if %}\n")
    with pytest.raises(InputError, match=r"overlays/o/x.j2:2: template error"):
        render_overlays((Overlay("o", tmp_path / "o"),), {}, tmp_path / "out")


def test_apply_never_writes_through_hard_links(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "etc").mkdir(parents=True)
    (cache / "etc/motd").write_text("cached\n")
    staging = tmp_path / "staging"
    (staging / "etc").mkdir(parents=True)
    os.link(cache / "etc/motd", staging / "etc/motd")
    src = tmp_path / "overlay"
    (src / "etc").mkdir(parents=True)
    (src / "etc/motd").write_text("overlay\n")
    apply_overlay(src, staging)
    assert (staging / "etc/motd").read_text() == "overlay\n"
    assert (cache / "etc/motd").read_text() == "cached\n"
