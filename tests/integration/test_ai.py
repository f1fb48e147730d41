"""The ai recipe for real: qemu-aarch64 with `base` and `ai` (the developer image's stacks
left out: their checks run in test_qemu_aarch64), its venv made from the pinned wheels (pip
into the shared cache), booted, and the CNN computed by each framework in the guest. Only the
ai checks run in that boot (the base and kernel checks run in every other qemu-aarch64 boot)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.conftest import base_only, copy_project, ext4_file
from tests.integration.test_qemu_aarch64 import BOARD, Project

# (its own tier, `./dev test-ai`: the image and its TCG checks take about 8 minutes warm, more
# than `./dev test`'s 30-minute CI budget has left)
pytestmark = [pytest.mark.integration, pytest.mark.ai]

VENV = "/opt/tuoba/ai"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = Project(base_only(copy_project(tmp_path_factory.mktemp("ai") / "project")))
    project.tuoba("build", "--board", BOARD, "-r", "ai")
    return project


def test_manifest_lists_the_venv_and_its_wheels(built: Project) -> None:
    m = built.manifest()
    assert m["recipes"] == ["base", "ai"]
    venv = m["python"][VENV]  # type: ignore[index]
    assert venv["python"] == "3.11"
    names = {w["name"]: w["version"] for w in venv["wheels"]}
    assert names["apache-tvm"] == "0.27.0.post1" and names["torch"] == "2.9.1"
    assert {"onnxruntime", "onnx", "numpy"} <= set(names)


def test_every_framework_agrees_with_numpy_in_the_guest(built: Project) -> None:
    junit = built.out / "report-ai.xml"
    proc = built.tuoba("test", "--board", BOARD, "--junit", str(junit), "--timeout", "600",
                       "-k", "pinned_wheels or framework_agrees or armnn", check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert len(cases) == 5, sorted(cases)  # the venv, three frameworks, ARM NN
    for name, case in cases.items():
        assert len(case) == 0, f"{name} did not pass: {ET.tostring(case, encoding='unicode')}"


def test_the_venvs_scripts_name_the_images_interpreter(built: Project) -> None:
    """Made on the build host, the venv's entry points still start the image's Python."""
    root = next(p for p in built.manifest()["partitions"] if p["mountpoint"] == "/")  # type: ignore[attr-defined]
    img = built.artifact(".img")
    torchrun = ext4_file(img, root["start"], f"{VENV}/bin/torchrun").decode()
    assert torchrun.startswith(f"#!{VENV}/bin/python3.11\n"), torchrun[:200]
    cfg = ext4_file(img, root["start"], f"{VENV}/pyvenv.cfg").decode()
    assert "home = /usr/bin" in cfg and "include-system-site-packages = false" in cfg
