"""The manifest's one reader and writer: round trip, schema, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuoba import manifest
from tuoba.errors import InputError
from tuoba.manifest import SCHEMA, Manifest

M = Manifest(
    name="tuoba-x-s1-0.1.0", version="0.1.0", board="x", arch="arm64", stage=1,
    recipes=["base"], tests=["recipes/base/checks/test_base.py"], hostname="h",
    inputs_digest="d", kernel={"version": "6.1"}, boot={"qemu": None}, partitions=[],
    sources={}, rootfs={"digest": "r"}, packages=[], files={},
)  # fmt: skip


def test_round_trip_and_schema(tmp_path: Path) -> None:
    text = M.to_json()
    assert json.loads(text)["schema"] == SCHEMA and "audit" not in json.loads(text)
    assert Manifest.from_json(text, "m") == M
    img = tmp_path / "tuoba-x-s1-0.1.0.img"
    img.write_bytes(b"")
    manifest.path_for(img).write_text(text)
    assert manifest.load(img) == M


def test_an_older_manifest_is_refused_with_the_rebuild_hint() -> None:
    raw = json.loads(M.to_json())
    del raw["schema"]  # (schema 1 did not write the field; its tests were module names)
    with pytest.raises(InputError, match=r"^m: manifest schema 1 \(an older tuoba's") as e:
        Manifest.from_json(json.dumps(raw), "m")
    assert "rebuild the image" in (e.value.hint or "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "m: not a manifest (not JSON"),
        ("[]", "m: not a manifest (not a JSON object)"),
        (json.dumps(json.loads(M.to_json()) | {"schema": SCHEMA + 1}),
         f"m: manifest schema {SCHEMA + 1}, this tuoba reads up to {SCHEMA}"),
        (json.dumps({k: v for k, v in json.loads(M.to_json()).items() if k != "boot"}),
         "m: manifest lacks boot"),
    ],
)  # fmt: skip
def test_what_is_not_a_manifest_it_can_read_is_refused(text: str, message: str) -> None:
    with pytest.raises(InputError) as e:
        Manifest.from_json(text, "m")
    assert e.value.message.startswith(message)
    assert e.value.hint


def test_load_names_what_is_missing(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    with pytest.raises(InputError, match="no image at"):
        manifest.load(img)
    img.write_bytes(b"")
    with pytest.raises(InputError, match=r"has no manifest beside it \(a.manifest.json\)"):
        manifest.load(img)


def test_a_release_image_finds_its_manifest_beside_it(tmp_path: Path) -> None:
    """A downloaded release has NAME.img.xz, not NAME.img: its manifest is found the same."""
    xz = tmp_path / "tuoba-x-s1-0.1.0.img.xz"
    assert manifest.path_for(xz) == tmp_path / "tuoba-x-s1-0.1.0.manifest.json"
    xz.write_bytes(b"")
    manifest.path_for(xz).write_text(M.to_json())
    assert manifest.load(xz) == M
