"""Recipe files the user supplies (`supplied: true` in sources.yaml, `--supply NAME=PATH`): the
k3s recipe's release files. Checked by their pinned hash before any work; a recipe asked for
by name without them stops naming the file, its release and where to get it; one brought in
by an umbrella is left out, and its guest checks are reported as not run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import plan_request
from tuoba.errors import InputError
from tuoba.plan import resolve

BINARY = "k3s-arm64"
SHA = "e1704d6dd74332acc8c398d36987663c7d559144b8ce789a83fd0ff1cb40cbaa"


request = plan_request


def pin(project: Path, data: bytes) -> None:
    """Pin k3s-arm64 to the hash of `data` (the real release file is not reachable here)."""
    f = project / "recipes/k3s/sources.yaml"
    f.write_text(f.read_text().replace(SHA, hashlib.sha256(data).hexdigest()))


def test_asked_by_name_without_the_binary_stops_naming_file_release_and_url(
    project: Path,
) -> None:
    with pytest.raises(InputError) as e:
        resolve(request(project, recipes=("k3s",)))
    assert e.value.message.startswith("recipes/k3s/sources.yaml:")
    assert e.value.message.endswith(
        "-> artifacts[0]: recipe 'k3s' needs k3s-arm64 (k3s v1.32.3+k3s1), which tuoba cannot "
        "download here"
    )
    hint = e.value.hint or ""
    assert "https://github.com/k3s-io/k3s/releases/download/v1.32.3%2Bk3s1/k3s-arm64" in hint
    assert f"sha256 {SHA}" in hint and "--supply k3s-arm64=PATH" in hint


def test_a_wrong_file_is_refused_by_its_hash(project: Path, tmp_path: Path) -> None:
    wrong = tmp_path / BINARY
    wrong.write_bytes(b"not k3s\n")
    with pytest.raises(InputError) as e:
        resolve(request(project, recipes=("k3s",), supplies=((BINARY, str(wrong)),)))
    got = hashlib.sha256(b"not k3s\n").hexdigest()
    assert e.value.message == (
        f"--supply k3s-arm64={wrong}: sha256 {got} is not the pinned {SHA} of k3s v1.32.3+k3s1"
    )
    assert "download it again from https://github.com/k3s-io/k3s/releases" in (e.value.hint or "")


def test_the_right_file_is_taken_and_installed_the_air_gap_way(
    project: Path, tmp_path: Path
) -> None:
    data = b"\x7fELF a k3s stand-in\n"
    pin(project, data)
    binary = tmp_path / BINARY
    binary.write_bytes(data)
    plan = resolve(request(project, recipes=("k3s",), supplies=((BINARY, str(binary)),)))
    (a,) = plan.artifacts  # the optional air-gap images were not supplied: left out
    assert (a.install, a.mode, a.given) == ("/usr/local/bin/k3s", 0o755, str(binary))
    assert "k3s" in plan.services
    assert "k3s" in [f.name for f in plan.features]
    assert "recipes/k3s/checks/test_k3s.py" in plan.tests


def test_the_umbrella_leaves_k3s_out_and_its_checks_not_run(project: Path) -> None:
    plan = resolve(request(project, recipes=("tuoba",)))
    assert "k3s" not in [r.name for r in plan.recipes]
    (why,) = [w for n, _, w in plan.left_out if n == "k3s"]
    assert why.startswith("needs k3s-arm64 (k3s v1.32.3+k3s1), which tuoba cannot download")
    assert dict(plan.not_run)["recipes/k3s/checks/test_k3s.py"].startswith(
        "recipe 'k3s' is not in this image: it needs k3s-arm64"
    )
    assert "recipes/k3s/checks/test_k3s.py" not in plan.tests


def test_the_umbrella_takes_k3s_when_supplied(project: Path, tmp_path: Path) -> None:
    data = b"\x7fELF a k3s stand-in\n"
    pin(project, data)
    binary = tmp_path / BINARY
    binary.write_bytes(data)
    plan = resolve(request(project, recipes=("tuoba",), supplies=((BINARY, str(binary)),)))
    assert "k3s" in [r.name for r in plan.recipes] and plan.not_run == ()


def test_a_supplied_file_nobody_takes_is_refused(project: Path, tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"x")
    with pytest.raises(InputError) as e:
        resolve(request(project, supplies=(("k3s", str(f)),)))
    assert e.value.message == (
        "--supply k3s: neither board 'qemu-aarch64' nor the recipes take a file named 'k3s'"
    )


def test_optional_needs_supplied(project: Path) -> None:
    f = project / "recipes/k3s/sources.yaml"
    f.write_text(f.read_text().replace("    supplied: true\n    # without it", "    # without it"))
    with pytest.raises(InputError) as e:
        resolve(request(project, recipes=("tuoba",)))
    assert "only a supplied file can be optional" in e.value.message
