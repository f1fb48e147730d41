"""Guest checks for the `ai` recipe (stage 1, arm64): one small CNN, several frameworks, the
same numbers.

The check makes the model in the guest from seeded weights (no download of weights): a
convolution (4 filters, 3x3, padded), ReLU, 2x2 max pooling, flatten, a dense layer (Gemm) and
softmax, over a seeded batch of two 12x12 images. A numpy reference computes it in float64 with
plain loops; the ONNX file is made with onnx's helpers. Each framework must give the
reference's answer within its tolerance, and the same class for each image:

- ONNX Runtime runs the ONNX file (CPU execution provider);
- PyTorch computes the same layers with the same weights;
- TVM imports the ONNX file (Relax's ONNX frontend), compiles it for this CPU with its LLVM
  (`mtriple` aarch64-linux-gnu, `mcpu` cortex-a72) and runs it on its Relax VM;
- ARM NN (Debian's pyarmnn 20.08, system Python) is loaded with its CpuRef and CpuAcc backends;
- TVM the way its users drive a board: the host compiles the ONNX file for this board and runs
  it here over RPC (`tuoba ai run-remote` to the tvm-rpc service's forwarded port).

Each prints its inference time; under TCG only their ratios mean anything. Everything runs
under the venv's Python except ARM NN. Limits are generous: importing TVM and PyTorch under TCG
takes tens of seconds.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.guest

VENV = "/opt/tuoba/ai"
WORK = "/tmp/tuoba-ai"

# The model, its weights and the numpy reference: one module for every runner below.
CNN = r'''
import json, os, statistics, time
import numpy as np

SHAPE = (2, 1, 12, 12)
SEED = 20261203
RUNS = int(os.environ.get("TUOBA_AI_RUNS", "5"))  # timed inferences (the median is reported)


def weights():
    rng = np.random.default_rng(SEED)
    return {
        "conv_w": (rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32),
        "conv_b": (rng.standard_normal(4) * 0.1).astype(np.float32),
        "fc_w": (rng.standard_normal((10, 144)) * 0.1).astype(np.float32),
        "fc_b": (rng.standard_normal(10) * 0.1).astype(np.float32),
        "x": rng.standard_normal(SHAPE).astype(np.float32),
    }


def reference(w):
    """The CNN in float64 with plain loops: what every framework must agree with."""
    x = w["x"].astype(np.float64)
    n, _, h, wd = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, 4, h, wd))
    for k in range(4):
        for i in range(3):
            for j in range(3):
                out[:, k] += float(w["conv_w"][k, 0, i, j]) * p[:, 0, i:i + h, j:j + wd]
        out[:, k] += float(w["conv_b"][k])
    out = np.maximum(out, 0.0)
    out = out.reshape(n, 4, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    logits = out.reshape(n, -1) @ w["fc_w"].astype(np.float64).T + w["fc_b"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def save_onnx(w, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["m"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tuoba_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [SHAPE[0], 10])],
        [numpy_helper.from_array(w[k], k) for k in ("conv_w", "conv_b", "fc_w", "fc_b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # (what every runtime here reads)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def timed(run):
    """`run()` once to warm up, then RUNS times: (its last result, the times in seconds)."""
    y = run()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        y = run()
        times.append(time.perf_counter() - t)
    return y, times


def report(framework, y, times, **extra):
    w = weights()
    ref = reference(w)
    y = np.asarray(y, dtype=np.float64)
    print(json.dumps({
        "framework": framework,
        "shape": list(y.shape),
        "max_abs_err": float(np.abs(y - ref).max()),
        "same_class": bool((y.argmax(axis=1) == ref.argmax(axis=1)).all()),
        "ms": statistics.median(times) * 1000.0,
        "samples_ms": [round(t * 1000.0, 3) for t in times],
        **extra,
    }))
'''

# Each runner times its imports (what a program pays to start) and RUNS inferences.
RUNNERS = {
    "onnxruntime": r"""
import time; t0 = time.perf_counter()
import cnn, onnxruntime as ort
import_s = time.perf_counter() - t0
w = cnn.weights()
s = ort.InferenceSession("/tmp/tuoba-ai/cnn.onnx", providers=["CPUExecutionProvider"])
y, times = cnn.timed(lambda: s.run(None, {"x": w["x"]})[0])
cnn.report("onnxruntime", y, times, import_s=import_s, version=ort.__version__,
           providers=s.get_providers())
""",
    "pytorch": r"""
import time; t0 = time.perf_counter()
import cnn, torch
import torch.nn.functional as F
import_s = time.perf_counter() - t0
w = {k: torch.from_numpy(v) for k, v in cnn.weights().items()}
def forward():
    with torch.no_grad():
        c = F.relu(F.conv2d(w["x"], w["conv_w"], w["conv_b"], padding=1))
        m = F.max_pool2d(c, 2).flatten(1)
        return F.softmax(F.linear(m, w["fc_w"], w["fc_b"]), dim=1)
y, times = cnn.timed(forward)
cnn.report("pytorch", y.numpy(), times, import_s=import_s, version=torch.__version__,
           cuda=torch.cuda.is_available())
""",
    "tvm": r"""
import time; t0 = time.perf_counter()
import cnn, onnx, tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
import_s = time.perf_counter() - t0
w = cnn.weights()
mod = from_onnx(onnx.load("/tmp/tuoba-ai/cnn.onnx"), shape_dict={"x": list(cnn.SHAPE)})
target = tvm.target.Target(
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
t = time.perf_counter(); ex = tvm.compile(mod, target=target); compile_s = time.perf_counter() - t
vm = relax.VirtualMachine(ex, tvm.cpu())
x = tvm.runtime.tensor(w["x"], tvm.cpu())
def run():
    y = vm["main"](x)
    return y[0] if isinstance(y, (list, tuple)) or type(y).__name__ == "Array" else y
y, times = cnn.timed(run)
cnn.report("tvm", y.numpy(), times, import_s=import_s, version=tvm.__version__,
           compile_s=compile_s, target=str(target))
""",
}

ARMNN = r"""
import json
import pyarmnn as ann
rt = ann.IRuntime(ann.CreationOptions())
backends = sorted(str(b) for b in rt.GetDeviceSpec().GetSupportedBackends())
print(json.dumps({"version": ann.ARMNN_VERSION, "backends": backends}))
"""

# ARM NN (Debian's 20.08: no ONNX parser, only TFLite's) computes the CNN from the same weights
# through its network API, the layers the ONNX file has, NCHW; on each CPU backend. The system
# Python runs it (pyarmnn is built for Debian's numpy 1.24): the weights come from the venv's
# file, so the reference is computed from the same numbers.
ARMNN_CNN = r"""
import time; t0 = time.perf_counter()
import numpy as np, cnn
import pyarmnn as ann
import_s = time.perf_counter() - t0
saved = dict(np.load("/tmp/tuoba-ai/weights.npz"))
cnn.weights = lambda: saved
F32 = ann.DataType_Float32
def info(shape):
    return ann.TensorInfo(ann.TensorShape(tuple(shape)), F32)
def const(a):
    return ann.ConstTensor(info(a.shape), np.ascontiguousarray(a, dtype=np.float32))
net = ann.INetwork()
conv_d = ann.Convolution2dDescriptor()
conv_d.m_PadLeft = conv_d.m_PadRight = conv_d.m_PadTop = conv_d.m_PadBottom = 1
conv_d.m_StrideX = conv_d.m_StrideY = 1
conv_d.m_BiasEnabled = True
conv_d.m_DataLayout = ann.DataLayout_NCHW
relu_d = ann.ActivationDescriptor()
relu_d.m_Function = ann.ActivationFunction_ReLu
pool_d = ann.Pooling2dDescriptor()
pool_d.m_PoolType = ann.PoolingAlgorithm_Max
pool_d.m_PoolWidth = pool_d.m_PoolHeight = pool_d.m_StrideX = pool_d.m_StrideY = 2
pool_d.m_DataLayout = ann.DataLayout_NCHW
flat_d = ann.ReshapeDescriptor()
flat_d.m_TargetShape = ann.TensorShape((2, 144))
fc_d = ann.FullyConnectedDescriptor()
fc_d.m_BiasEnabled = True
fc_d.m_TransposeWeightMatrix = True  # weights [out, in], as Gemm's transB
soft_d = ann.SoftmaxDescriptor()
soft_d.m_Beta = 1.0
layers = [
    (net.AddInputLayer(0, "x"), (2, 1, 12, 12)),
    (net.AddConvolution2dLayer(conv_d, const(saved["conv_w"]), const(saved["conv_b"]), "conv"),
     (2, 4, 12, 12)),
    (net.AddActivationLayer(relu_d, "relu"), (2, 4, 12, 12)),
    (net.AddPooling2dLayer(pool_d, "pool"), (2, 4, 6, 6)),
    (net.AddReshapeLayer(flat_d, "flatten"), (2, 144)),
    (net.AddFullyConnectedLayer(fc_d, const(saved["fc_w"]), const(saved["fc_b"]), "dense"),
     (2, 10)),
    (net.AddSoftmaxLayer(soft_d, "softmax"), (2, 10)),
]
out = net.AddOutputLayer(0, "y")
for (layer, shape), following in zip(layers, [l for l, _ in layers[1:]] + [out]):
    layer.GetOutputSlot(0).SetTensorInfo(info(shape))
    layer.GetOutputSlot(0).Connect(following.GetInputSlot(0))
rt = ann.IRuntime(ann.CreationOptions())
for backend in ("CpuRef", "CpuAcc"):
    opt, _ = ann.Optimize(net, [ann.BackendId(backend)], rt.GetDeviceSpec(),
                          ann.OptimizerOptions())
    net_id, _ = rt.LoadNetwork(opt)
    inputs = ann.make_input_tensors([(0, rt.GetInputTensorInfo(net_id, 0))], [saved["x"]])
    outputs = ann.make_output_tensors([(0, rt.GetOutputTensorInfo(net_id, 0))])
    def run():
        rt.EnqueueWorkload(net_id, inputs, outputs)
        return ann.workload_tensors_to_ndarray(outputs)[0]
    y, times = cnn.timed(run)
    cnn.report(f"armnn-{backend}", y, times, import_s=import_s, version=ann.ARMNN_VERSION)
"""

TOLERANCE = {"onnxruntime": 1e-5, "pytorch": 1e-5, "tvm": 1e-4, "armnn-CpuRef": 1e-5,
             "armnn-CpuAcc": 1e-4}  # fmt: skip


def ok(host: Any, command: str, limit: int = 900) -> str:
    """Run `command` in the guest with a time limit; its output, or a failure that shows it."""
    res = host.run(f"timeout {limit} sh -c {shlex.quote(command)}")
    assert res.rc == 0, f"{command!r}: exit {res.rc}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return str(res.stdout)


def put(host: Any, path: str, text: str) -> None:
    host.check_output(f"printf '%s' {shlex.quote(text)} > {path}")


@pytest.fixture(scope="module")
def model(host: Any) -> Iterator[str]:
    """The CNN's module and ONNX file in the guest, made by the venv's onnx and numpy."""
    host.run(f"rm -rf {WORK} && mkdir -p {WORK}")
    put(host, f"{WORK}/cnn.py", CNN)
    save = (
        f"import cnn, numpy as np; w = cnn.weights(); cnn.save_onnx(w, '{WORK}/cnn.onnx'); "
        f"np.savez('{WORK}/weights.npz', **w)"
    )  # (for ARM NN's Python: another numpy)
    ok(host, f"cd {WORK} && {VENV}/bin/python -c {shlex.quote(save)}")
    yield WORK
    host.run(f"rm -rf {WORK}")


def run_framework(host: Any, name: str) -> dict[str, Any]:
    put(host, f"{WORK}/run_{name}.py", RUNNERS[name])
    out = ok(host, f"cd {WORK} && {VENV}/bin/python run_{name}.py")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result))  # (the latency, in the report's captured output)
    return result


LIST_DISTRIBUTIONS = r"""
import importlib.metadata as m, json, re, sys
names = sorted((re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(), d.version)
               for d in m.distributions())
print(json.dumps({"prefix": sys.prefix, "distributions": names}))
"""


def test_the_venv_holds_the_pinned_wheels(host: Any, manifest: dict[str, Any]) -> None:
    """The venv's Python sees exactly the distributions the manifest says were installed."""
    wheels = manifest["python"][VENV]["wheels"]
    out = json.loads(ok(host, f"{VENV}/bin/python -c {shlex.quote(LIST_DISTRIBUTIONS)}"))
    assert out["prefix"] == VENV
    assert {tuple(d) for d in out["distributions"]} == {(w["name"], w["version"]) for w in wheels}


@pytest.mark.parametrize("framework", sorted(RUNNERS))
def test_framework_agrees_with_numpy(host: Any, model: str, framework: str) -> None:
    result = run_framework(host, framework)
    assert result["shape"] == [2, 10]
    assert result["same_class"], result
    assert result["max_abs_err"] <= TOLERANCE[framework], result
    if framework == "pytorch":
        assert result["cuda"] is False and "+cu" not in result["version"]  # the CPU build


def test_armnn_loads_with_its_cpu_backends(host: Any) -> None:
    """ARM NN (Debian's, for the system Python) creates a runtime that offers its reference
    and its NEON (Compute Library) backends."""
    out = ok(host, f"python3 -c {shlex.quote(ARMNN)}")
    result = json.loads(out.strip().splitlines()[-1])
    assert {"CpuRef", "CpuAcc"} <= set(result["backends"]), result


def test_armnn_computes_the_cnn_on_both_cpu_backends(host: Any, model: str) -> None:
    """ARM NN gives the reference's answer on its reference backend (CpuRef) and its NEON one
    (CpuAcc, the Compute Library), the network built with its API from the same weights."""
    put(host, f"{WORK}/run_armnn.py", ARMNN_CNN)
    out = ok(host, f"cd {WORK} && python3 run_armnn.py")
    results = [json.loads(ln) for ln in out.strip().splitlines() if ln.startswith("{")]
    print(json.dumps(results))  # (the latency)
    assert [r["framework"] for r in results] == ["armnn-CpuRef", "armnn-CpuAcc"], results
    for r in results:
        assert r["shape"] == [2, 10] and r["same_class"], r
        assert r["max_abs_err"] <= TOLERANCE[r["framework"]], r


SAVE_FOR_HOST = r"""
import cnn, json, numpy as np
w = cnn.weights()
np.save("/tmp/tuoba-ai/x.npy", w["x"])
print(json.dumps(cnn.reference(w).tolist()))
"""
RPC_PORT = 9090  # the recipe's ports: tvm-rpc's


def test_the_rpc_server_runs_tvms_runtime_without_torch(host: Any) -> None:
    """The tvm-rpc service loads TVM's runtime library, not its compiler (LLVM, 240 MB), and no
    PyTorch (tvm_ffi imports it when installed): what lets it listen in seconds, not minutes,
    and keeps a board's memory for the models it runs."""
    listening = host.socket(f"tcp://0.0.0.0:{RPC_PORT}")
    for _ in range(60):  # (while it starts: it listens once its imports are done, ~15 s)
        if listening.is_listening:
            break
        time.sleep(5)
    assert listening.is_listening, f"tvm-rpc does not listen on {RPC_PORT} after 5 minutes"
    pid = host.check_output("systemctl show -P MainPID tvm-rpc")
    assert pid.isdigit() and int(pid) > 0, f"tvm-rpc is not running (MainPID {pid!r})"
    maps = host.check_output(f"cat /proc/{pid}/maps")
    libs = {line.split("/")[-1] for line in maps.splitlines() if ".so" in line}
    assert "libtvm_runtime.so" in libs, sorted(libs)
    unwanted = {lib for lib in libs if lib.startswith(("libtvm_compiler", "libtorch"))}
    assert not unwanted, sorted(libs)


def test_tvm_compiled_on_the_host_runs_here_over_rpc(
    host: Any, model: str, forwarded: dict[int, int], tmp_path: Path
) -> None:
    """TVM's edge workflow: the host (its TVM, its clang and lld) compiles the guest's ONNX file
    for this board (aarch64, cortex-a72), uploads it to the tvm-rpc service through the port
    `tuoba test` forwards, runs and times it here. The tool checks the outputs against ONNX's
    numpy reference on the host; this check against the guest's float64 reference too."""
    assert host.service("tvm-rpc").is_running
    out = ok(host, f"cd {WORK} && {VENV}/bin/python -c {shlex.quote(SAVE_FOR_HOST)}")
    reference = json.loads(out.strip().splitlines()[-1])
    for name in ("cnn.onnx", "x.npy"):
        (tmp_path / name).write_bytes(host.file(f"{WORK}/{name}").content)
    cmd = [sys.executable, "-m", "tuoba", "ai", "run-remote", str(tmp_path / "cnn.onnx"),
           "--rpc", f"127.0.0.1:{forwarded[RPC_PORT]}", "--input", f"x={tmp_path / 'x.npy'}",
           "--runs", "5", "--wait", "300", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    said = f"exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    assert proc.returncode == 0, said
    report = json.loads(proc.stdout)
    print(json.dumps({k: v for k, v in report.items() if k != "outputs"}))  # (the latency)
    assert report["target"]["mtriple"] == "aarch64-linux-gnu" and report["library_bytes"] > 0
    y = report["outputs"]["y"]
    assert y["agrees"] and y["shape"] == [2, 10], y
    err = max(abs(a - b) for got, ref in zip(y["values"], reference, strict=True)
              for a, b in zip(got, ref, strict=True))  # fmt: skip
    assert err <= TOLERANCE["tvm"], (err, y["values"], reference)
    classes = [max(range(10), key=row.__getitem__) for row in (*y["values"], *reference)]
    assert classes[:2] == classes[2:], classes
