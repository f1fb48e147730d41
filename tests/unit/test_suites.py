"""Packages from another suite of the image's release (`stage1: suites:`): Suricata from
bookworm-backports. The suite comes from the data, its mirror from the host's apt
configuration (here: the plan's mirror), and apt is asked for each such package by suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import plan_request
from tuoba import rootfs
from tuoba.errors import InputError
from tuoba.plan import Request, resolve


def request(project: Path, **kw: object) -> Request:
    return plan_request(project, **{"recipes": ("security",), **kw})


def test_backports_packages_are_asked_for_by_suite(project: Path, tmp_path: Path) -> None:
    plan = resolve(request(project))
    assert ("suricata", "bookworm-backports") in plan.suites
    assert "suricata" in plan.packages  # (for every check that asks what the image holds)
    conf = rootfs.mkosi_conf(plan, tmp_path / "out", tmp_path / "ws")
    assert "suricata/bookworm-backports" in conf and "libhtp2/bookworm-backports" in conf
    assert "\n         nftables\n" in conf  # the others from the release itself
    sources = rootfs.apt_sources(plan)
    assert "URIs: http://127.0.0.1:9/debian\nSuites: bookworm-backports\n" in sources
    assert rootfs.inputs(plan)["suites"] == sorted(plan.suites)


def test_no_suites_no_backports_source(project: Path) -> None:
    board = project / "boards/qemu-aarch64/board.yaml"
    assert "recipes: [tuoba]" in board.read_text()
    board.write_text(board.read_text().replace("recipes: [tuoba]", "recipes: []"))
    plan = resolve(request(project, recipes=("base",)))
    assert plan.suites == ()
    assert "backports" not in rootfs.apt_sources(plan)
    assert "suites" not in rootfs.inputs(plan)  # (earlier root filesystems stay valid)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("trixie-backports: [suricata, libhtp2]",
         "the image is Debian bookworm: suite 'trixie-backports' is of another release"),
        ("bookworm-backports: []", "no packages listed for bookworm-backports"),
        ("backports: [suricata, libhtp2]", "'backports' is not a suite of a Debian release"),
    ],
)  # fmt: skip
def test_a_bad_suite_is_located(project: Path, edit: str, message: str) -> None:
    recipe = project / "recipes/security/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("bookworm-backports: [suricata, libhtp2]", edit))
    with pytest.raises(InputError) as e:
        resolve(request(project))
    assert e.value.message.startswith("recipes/security/recipe.yaml:")
    assert message in e.value.message


def test_a_recipes_component_is_in_every_suites_sources(project: Path) -> None:
    """recipes/wifi takes firmware from non-free-firmware: the image's apt sources list that
    component for each suite, and it is in the root's inputs (a root without it stays valid)."""
    plan = resolve(request(project, board="rpi4", recipes=("wifi",)))
    assert plan.components == ("non-free-firmware",)
    assert "firmware-brcm80211" in plan.packages
    sources = rootfs.apt_sources(plan)
    assert sources.count("Components: main non-free-firmware\n") == sources.count("Types: deb")
    assert rootfs.inputs(plan)["components"] == ["non-free-firmware"]
    board = project / "boards/qemu-aarch64/board.yaml"
    board.write_text(board.read_text().replace("recipes: [tuoba]", "recipes: []"))
    plain = resolve(request(project, recipes=("base",)))
    assert "components" not in rootfs.inputs(plain)
    assert "Components: main\n" in rootfs.apt_sources(plain)


def test_an_unknown_component_is_located(project: Path) -> None:
    recipe = project / "recipes/wifi/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("[non-free-firmware]", "[non-free-firmwre]"))
    with pytest.raises(InputError) as e:
        resolve(request(project, board="rpi4", recipes=("wifi",)))
    assert e.value.message.startswith("recipes/wifi/recipe.yaml:")
    assert "'non-free-firmwre' is no component of Debian's archive" in e.value.message
