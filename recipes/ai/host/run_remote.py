"""`tuoba ai run-remote`'s work on the build host, the way TVM users work with a board: an ONNX
model compiled by TVM for the board's CPU (its LLVM, here), linked by the host's clang and lld
into a shared library for the board, uploaded to the board's TVM RPC server, run and timed
there, and its outputs compared with ONNX's reference implementation (numpy) run here.

Run by tuoba.inference with the wheels of host/wheels.yaml on its path (tuoba's interpreter,
without its site-packages). Prints one JSON object: the result, or {"error", "hint"} with exit
status 2 (the model or an input), 3 (the RPC server), 4 (compiling or linking), 5 (the board's
outputs differ from the reference).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

RPC_MAGIC = 0xFF271  # TVM's RPC handshake (tvm.rpc.base): magic, then a key
RPC_CODE_MISMATCH = RPC_MAGIC + 2


def fail(code: int, error: str, hint: str) -> NoReturn:
    print(json.dumps({"error": error, "hint": hint}))
    sys.exit(code)


def first_line(e: BaseException) -> str:
    """The most telling line of an error: TVM's put the C++ side's message last, after the
    frames of its traceback."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("File ", "at ", "Traceback", "^"))]
    return (said[-1] if said else type(e).__name__)[:300]


def read_model(path: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(path))
    except OSError as e:
        fail(2, f"cannot read {path}: {e.strerror}", "give the path of an .onnx file")
    except Exception as e:  # a DecodeError: not a ModelProto at all
        fail(2, f"{path} is not an ONNX model: {first_line(e)}",
             "give a model ONNX wrote (onnx.save, torch.onnx.export)")  # fmt: skip
    try:
        # full_check: also ONNX's strict shape inference, so a graph whose shapes do not fit
        # (a MatMul of (1, 32) by (5, 32)) is refused here, not half-way through compiling it
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        fail(2, f"{path} is not a valid ONNX model: {first_line(e)}",
             "check it with onnx.checker.check_model(model, full_check=True)")  # fmt: skip
    return model


def make_inputs(model: Any, given: dict[str, Path], seed: int) -> dict[str, Any]:
    """The model's inputs: each from its .npy file, or seeded random numbers of its shape."""
    import numpy as np
    from onnx import helper

    initializers = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if value.name in given:
            try:
                array = np.load(given.pop(value.name))
            except (OSError, ValueError) as e:
                fail(2, f"input '{value.name}': cannot read its .npy file: {e}",
                     "save it with numpy.save")  # fmt: skip
            fits = len(array.shape) == len(shape) and all(
                want in (None, got) for want, got in zip(shape, array.shape, strict=True)
            )
            if array.dtype != dtype or not fits:
                fail(2, f"input '{value.name}' wants {dtype} {shape}, its file holds "
                     f"{array.dtype} {list(array.shape)}", "give an array of the model's type "
                     "and shape")  # fmt: skip
        elif None in shape:
            fail(2, f"input '{value.name}' has a dimension without a size ({shape}): no "
                 "random input can be made for it",
                 f"give one: --input {value.name}=FILE.npy")  # fmt: skip
        elif dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            array = rng.integers(0, 10, shape).astype(dtype)
        else:
            fail(2, f"input '{value.name}' is {dtype}: no random input is made of that type",
                 f"give one: --input {value.name}=FILE.npy")  # fmt: skip
        inputs[value.name] = array
    if given:
        fail(2, f"the model has no input named {', '.join(sorted(given))} (its inputs: "
             f"{', '.join(inputs) or 'none'})", "name the model's inputs in --input")  # fmt: skip
    return inputs


def compile_for_board(model: Any, mtriple: str, mcpu: str, cc: str, dest: Path) -> float:
    """The model compiled by TVM (Relax, from its ONNX frontend) and linked for the board;
    the seconds TVM took."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc as tvm_cc

    try:
        mod = from_onnx(model, keep_params_in_input=False)
    except Exception as e:  # an operator TVM's frontend lacks, or an opset it does not read
        fail(2, f"TVM's ONNX frontend cannot import the model: {first_line(e)}",
             "use operators TVM 0.27's Relax ONNX frontend supports (see its "
             "convert map), or export the model with other operators")  # fmt: skip
    target = tvm.target.Target({"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu})
    start = time.perf_counter()
    try:
        executable = tvm.compile(mod, target=target)
    except Exception as e:
        fail(4, f"TVM could not compile the model for {mtriple} ({mcpu}): {first_line(e)}",
             "run with --debug for TVM's whole message")  # fmt: skip
    seconds = time.perf_counter() - start
    # No C library of the board is needed to link: the library's few calls (memcpy, expf, TVM's
    # runtime) are resolved when the board's TVM loads it.
    link = tvm_cc.cross_compiler(cc, options=[f"--target={mtriple}", "-fuse-ld=lld", "-nostdlib"])
    try:
        executable.export_library(str(dest), fcompile=link)
    except Exception as e:
        fail(4, f"linking the model for {mtriple} with {cc} failed: {first_line(e)}",
             "the host needs clang and lld (tuoba doctor --fix)")  # fmt: skip
    return seconds


def is_rpc_server(host: str, port: int, timeout: float) -> str:
    """'' when a TVM RPC server answers the handshake at host:port; else what happened. The
    probe gives a key the server refuses (it answers 'mismatch' and goes on waiting, starting
    no session; its log says "mismatch key")."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            key = b"client:tuoba-probe"
            s.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key)
            answer = s.recv(4)
    except OSError as e:
        return f"{e.strerror or e}"
    if len(answer) < 4:
        return "the connection was closed without an answer"
    code = struct.unpack("<i", answer)[0]
    return "" if code in (RPC_MAGIC, RPC_CODE_MISMATCH) else "it does not speak TVM's RPC"


def connect(host: str, port: int, wait: float) -> Any:
    from tvm import rpc

    deadline = time.monotonic() + wait
    while why := is_rpc_server(host, port, timeout=10.0):
        if time.monotonic() > deadline:
            fail(3, f"no TVM RPC server answered at {host}:{port} within {wait:.0f} s ({why})",
                 "is the board up, with the ai recipe's tvm-rpc service running (systemctl "
                 "status tvm-rpc), and its port reachable from here?")  # fmt: skip
        time.sleep(2.0)
    try:
        return rpc.connect(host, port)
    except Exception as e:
        fail(3, f"the TVM RPC server at {host}:{port} refused the session: {first_line(e)}",
             "is it busy with another client? it serves one at a time")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--rpc", required=True, help="HOST:PORT of the board's TVM RPC server")
    p.add_argument("--mtriple", default="aarch64-linux-gnu")
    p.add_argument("--mcpu", default="cortex-a72")
    p.add_argument("--cc", default="clang")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait", type=float, default=30.0)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-4)
    args = p.parse_args()
    host, _, port = args.rpc.rpartition(":")
    given = {}
    for item in args.input:
        name, sep, file = item.partition("=")
        if not sep:
            fail(2, f"--input {item}: expected NAME=FILE.npy", "e.g. --input x=x.npy")
        given[name] = Path(file)

    import numpy as np
    import tvm
    from onnx.reference import ReferenceEvaluator
    from tvm import relax

    model = read_model(args.model)
    inputs = make_inputs(model, given, args.seed)
    names = [o.name for o in model.graph.output]
    try:
        reference = dict(zip(names, ReferenceEvaluator(model).run(None, inputs), strict=True))
    except Exception as e:  # (shapes inference could not see: the inputs', data-dependent ones)
        said = first_line(e.__cause__ or e)
        fail(2, f"ONNX's reference implementation cannot run {args.model.name} on these inputs: "
             f"{said}", "check the inputs' shapes and types against the model's")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tuoba-ai-") as tmp:
        library = Path(tmp) / "tuoba_model.so"
        compile_s = compile_for_board(model, args.mtriple, args.mcpu, args.cc, library)
        library_bytes = library.stat().st_size
        remote = connect(host, int(port), args.wait)
        try:
            start = time.perf_counter()
            remote.upload(str(library))
            module = remote.load_module(library.name)
            upload_s = time.perf_counter() - start
            dev = remote.cpu()
            vm = relax.VirtualMachine(module, dev)
            tensors = [tvm.runtime.tensor(inputs[v], dev) for v in inputs]
            got = vm["main"](*tensors)
            got = list(got) if not hasattr(got, "numpy") else [got]
            vm.set_input("main", *tensors)
            timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=args.runs)
            times = list(timer("main").results)
        except Exception as e:  # TVM's RPCError carries the board's own message
            fail(3, f"the board at {args.rpc} could not load or run the model: {first_line(e)}",
                 f"the board needs TVM {tvm.__version__}'s runtime on a {args.mtriple} CPU "
                 "(--mtriple, --mcpu)")  # fmt: skip
    outputs = {}
    worst = ""
    for name, value in zip(names, got, strict=True):
        y, ref = value.numpy(), reference[name]
        err = float(np.abs(y.astype(np.float64) - ref).max()) if y.size else 0.0
        ok = y.shape == ref.shape and bool(np.allclose(y, ref, rtol=args.rtol, atol=args.atol))
        outputs[name] = {"shape": list(y.shape), "dtype": str(y.dtype), "max_abs_err": err,
                         "agrees": ok}  # fmt: skip
        if y.size <= 4096:
            outputs[name]["values"] = y.tolist()
        if not ok and not worst:
            worst = f"output '{name}' differs from the reference by up to {err:.3g}"
    result = {
        "model": args.model.name,
        "rpc": args.rpc,
        "target": {"mtriple": args.mtriple, "mcpu": args.mcpu, "linker": f"{args.cc} -fuse-ld=lld"},
        "tvm": tvm.__version__,
        "library_bytes": library_bytes,
        "compile_s": round(compile_s, 3),
        "upload_s": round(upload_s, 3),
        "runs": args.runs,
        "ms": statistics.median(times) * 1000.0,
        "samples_ms": [round(t * 1000.0, 3) for t in times],
        "tolerance": {"rtol": args.rtol, "atol": args.atol},
        "reference": "onnx.reference.ReferenceEvaluator (numpy), on the host",
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
        "outputs": outputs,
    }
    if worst:
        error = f"{worst} (rtol {args.rtol}, atol {args.atol})"
        hint = "see the outputs with --json; code made for another CPU (--mcpu) can do this"
        print(json.dumps({**result, "error": error, "hint": hint}))
        sys.exit(5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
