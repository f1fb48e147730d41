"""Step records (tuoba.records): typed on the way back in, and one of another form is refused
with its place named and removed, so the next build runs its step again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuoba import records, rootfs
from tuoba.cache import Store
from tuoba.errors import BuildError

KERNEL = {
    "source": "tuoba",
    "version": "6.1.170-tuoba",
    "compiler": "Debian clang version 14.0.6",
    "config_sha256": "c" * 64,
    "features": {"bpf": ["CONFIG_BPF"]},
    "kernel": "tuoba-qemu-aarch64-s1-0.1.0.Image",
    "kernel_sha256": "k" * 64,
    "build_seconds": 600,  # an int in JSON, a float in the record
    "dir": "/cache/store/kernel/x/data",
    "cache": ["kernel/x"],  # written beside the fields; not one of them
}


def test_a_record_reads_back_typed(tmp_path: Path) -> None:
    path = tmp_path / "kernel.json"
    path.write_text(json.dumps(KERNEL))
    rec = records.read(records.KernelRecord, path)
    assert rec.build_seconds == 600.0 and isinstance(rec.build_seconds, float)
    assert rec.initrd is None and rec.dtbs == []
    assert rec.built == Path("/cache/store/kernel/x/data")
    public = rec.public()
    assert "dir" not in public and "modules" not in public  # host paths stay out
    assert public["initrd"] is None  # kept: "no initrd" is said, not left out
    assert "package" not in public  # what does not apply to this kernel is left out


def test_nested_records_read_back_typed(tmp_path: Path) -> None:
    path = tmp_path / "fetch.json"
    src = {"sha256": "a" * 64, "path": "/c/f.tar", "origin": "x"}
    path.write_text(json.dumps({"sources": {"f.tar": src}, "cache": []}))
    rec = records.read(records.FetchRecord, path)
    assert rec.sources["f.tar"] == records.FetchedSource("a" * 64, "/c/f.tar", "x")
    assert rec.path("f.tar") == Path("/c/f.tar")


@pytest.mark.parametrize(
    ("kind", "data", "said"),
    [
        (records.KernelRecord, {**KERNEL, "version": 6}, "-> version: not a step record"),
        (records.KernelRecord, {**KERNEL, "build_seconds": True}, "-> build_seconds"),
        (records.KernelRecord, {k: v for k, v in KERNEL.items() if k != "kernel"}, "no 'kernel'"),
        (records.KernelRecord, [], "not a JSON object"),
        (
            records.FetchRecord,
            {"sources": {"f": {"sha256": 1, "path": None, "origin": "x"}}},
            "-> sources -> f -> sha256",
        ),
        (records.FetchRecord, {"sources": {"f": {"sha256": "a"}}}, "-> sources -> f: "),
    ],
    ids=["wrong-type", "bool-for-float", "missing", "not-object", "nested-type", "nested-missing"],
)
def test_a_record_of_another_form_is_refused_and_removed(
    tmp_path: Path, kind: type[records.Record], data: object, said: str
) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BuildError, match="not a step record this tuoba reads") as e:
        records.read(kind, path)
    assert said in str(e.value) and str(path) in str(e.value)
    assert "run the build again" in (e.value.hint or "")
    assert not path.exists(), "the next build runs the step again"


def test_a_record_that_is_not_json_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "rootfs.json"
    path.write_text('{"digest": ')
    with pytest.raises(BuildError, match="not JSON"):
        records.read(records.RootfsRecord, path)
    assert not path.exists()


def test_a_missing_record_names_its_step(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="step 'overlay' has no record"):
        records.read(records.OverlayRecord, tmp_path / "overlay.json")


def test_mkosi_workspace_is_outside_its_configuration_directory(tmp_path: Path) -> None:
    """mkosi 25 refuses a workspace under a build source: every cold stage-1 build failed so."""
    work, workspace = rootfs.work_dirs(Store(tmp_path), "ab" * 32)
    assert not workspace.is_relative_to(work) and not work.is_relative_to(workspace)
    assert workspace.parent == work.parent
