"""The ai recipe for real: qemu-aarch64 with `base` and `ai` (the developer image's stacks
left out: their checks run in test_qemu_aarch64), its venv made from the pinned wheels (pip
into the shared cache), booted, and the CNN computed by each framework in the guest. Only the
ai checks run in that boot (the base and kernel checks run in every other qemu-aarch64 boot)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import base_only, copy_project, ext4_file
from tests.integration.test_qemu_aarch64 import BOARD, Project
from tuoba.cache import Store
from tuoba.cli import default_cache_dir
from tuoba.inference import host_packages

# (in `./dev test`, and alone with `./dev test-ai`: the image and its TCG checks take about 5
# minutes warm)
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
                       "-k", "pinned_wheels or framework_agrees or armnn or rpc",
                       check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    # the venv, 3 frameworks, ARM NN twice, the RPC server, TVM over RPC
    assert len(cases) == 8, sorted(cases)
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


# A model made on the host with the recipe's host packages (onnx): the CNN's layers with
# seeded weights, or one operator TVM's ONNX frontend does not have.
MAKE_MODELS = r"""
import sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(7)
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
def save(nodes, out, inits, path):
    g = helper.make_graph(nodes, "m", [x], [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)
w = numpy_helper.from_array((rng.standard_normal((2, 1, 3, 3)) * 0.5).astype(np.float32), "w")
fc = numpy_helper.from_array((rng.standard_normal((32, 5)) * 0.1).astype(np.float32), "fc")
save([helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
      helper.make_node("Relu", ["c"], ["r"]),
      helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
      helper.make_node("Flatten", ["p"], ["f"]),
      helper.make_node("MatMul", ["f", "fc"], ["g"], ),
      helper.make_node("Softmax", ["g"], ["y"], axis=1)],
     helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]), [w, fc], sys.argv[1])
save([helper.make_node("Celu", ["x"], ["y"])],
     helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8]), [], sys.argv[2])
bad = numpy_helper.from_array(np.zeros((5, 32), np.float32), "fc")  # (1, 32) @ (5, 32)
save([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])],
     helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]), [bad], sys.argv[3])
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small CNN, a model with an operator TVM lacks, and a file that is no model."""
    d = tmp_path_factory.mktemp("models")
    site = host_packages(Path(__file__).resolve().parents[2], Store(default_cache_dir()))
    code = f"import sys; sys.path[:1] = [{str(site)!r}]\n" + MAKE_MODELS
    subprocess.run([sys.executable, "-S", "-c", code, str(d / "cnn.onnx"),
                    str(d / "celu.onnx"), str(d / "shapes.onnx")], check=True)  # fmt: skip
    (d / "notes.onnx").write_text("a text file, named like a model\n")
    return {"cnn": d / "cnn.onnx", "celu": d / "celu.onnx", "text": d / "notes.onnx",
            "shapes": d / "shapes.onnx"}  # fmt: skip


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            s.settimeout(0.5)
            while not stop.is_set():
                try:
                    held.append(s.accept()[0])
                except OSError:
                    continue

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        yield int(s.getsockname()[1])
        stop.set()
        t.join()
        for c in held:
            c.close()


def run_remote(built: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return built.tuoba("ai", "run-remote", *args, check=False)


@pytest.mark.parametrize(
    ("model", "rpc", "code", "said"),
    [
        ("text", "127.0.0.1:9", 2, "notes.onnx is not an ONNX model: Error parsing message"),
        ("shapes", "127.0.0.1:9", 2, "shapes.onnx is not a valid ONNX model: "),
        ("celu", "127.0.0.1:9", 2, "TVM's ONNX frontend cannot import the model: The following "
         "operators are not supported for frontend ONNX: Celu"),
        ("cnn", "127.0.0.1:9", 5, "no TVM RPC server answered at 127.0.0.1:9 within 3 s "
         "(Connection refused)"),
        ("cnn", "silent", 5, "within 3 s (timed out)"),
    ],
    ids=["not-onnx", "shapes-that-do-not-fit", "unsupported-operator", "nobody-listening",
         "no-answer"],
)  # fmt: skip
def test_run_remote_refusals_are_one_sentence(
    built: Project, models: dict[str, Path], silent_port: int, model: str, rpc: str, code: int,
    said: str,
) -> None:  # fmt: skip
    """Bad input and an RPC server that does not answer: one sentence, the exit status of its
    kind, no traceback. (The model is read and compiled before the board is asked.)"""
    address = f"127.0.0.1:{silent_port}" if rpc == "silent" else rpc
    proc = run_remote(built, str(models[model]), "--rpc", address, "--wait", "3")
    text = " ".join(proc.stderr.split())
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "error: " in text and said in text and "Traceback" not in text, text


def test_run_remote_boots_the_image_and_runs_there(built: Project, models: dict[str, Path]
                                                    ) -> None:  # fmt: skip
    """The one command a user types: the built image booted in QEMU, its tvm-rpc port forwarded,
    the model compiled here for the board, run there on seeded random input, checked against
    ONNX's numpy reference; QEMU stopped afterwards."""
    proc = run_remote(built, str(models["cnn"]), "--board", BOARD, "--runs", "3", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    y = report["outputs"]["y"]
    assert y["agrees"] and y["shape"] == [1, 5] and abs(sum(y["values"][0]) - 1) < 1e-5, y
    assert report["inputs"] == {"x": {"shape": [1, 1, 8, 8], "dtype": "float32"}}
    assert len(report["samples_ms"]) == 3 and report["ms"] > 0
    assert "guest up" in proc.stderr  # (booted for the run)
