#!/usr/bin/env python3
"""The ai recipe's frameworks in the booted qemu-aarch64 image: per-framework latency of the
guest checks' CNN, import times, TVM's compile time, and the image's size; prints a table and
writes JSON.

    tuoba build --board qemu-aarch64 -r ai        # (any image with the ai recipe)
    .venv/bin/python bench/ai.py [--out out] [--runs 20]

In the guest, each runner of recipes/ai/checks/test_ai.py (ONNX Runtime, PyTorch, TVM, ARM NN
on CpuRef and CpuAcc) makes the same seeded CNN's inference --runs times after one warm-up and
reports the median, with its error against the float64 numpy reference; then TVM the edge way:
the model compiled on this host for the guest's CPU and run there over RPC (`tuoba ai
run-remote`'s code, timed on the board by TVM's time_evaluator). QEMU TCG: compare the ratios,
not the milliseconds with hardware.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BOARD, ROOT, guest_ssh, run_context, write_results

from tuoba import inference
from tuoba.cache import Store
from tuoba.cli import default_cache_dir
from tuoba.guest import boot_spec
from tuoba.manifest import load as load_manifest
from tuoba.plan import default_ssh_key, image_name
from tuoba.qemu import booted


def checks_module() -> object:
    spec = importlib.util.spec_from_file_location(
        "ai_checks", ROOT / "recipes/ai/checks/test_ai.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed inferences (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="where the image is")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/latest-ai.json")
    args = parser.parse_args()
    img = args.out / f"{image_name(BOARD, 1)}.img"
    if not img.is_file():
        sys.exit(f"no image at {img}: run `tuoba build --board {BOARD} -r ai` first")
    manifest = load_manifest(img)
    if "ai" not in manifest.recipes:
        sys.exit(f"{img.name} has no ai recipe: build it with -r ai")
    checks = checks_module()
    key = default_ssh_key(args.out)
    sizes = {
        "raw_mib": img.stat().st_size / 2**20,
        "allocated_mib": img.stat().st_blocks * 512 / 2**20,
        "xz_mib": img.with_suffix(".img.xz").stat().st_size / 2**20,
    }
    results: dict[str, object] = {**run_context(), "board": BOARD, "runs": args.runs,
                                  "recipes": manifest.recipes, "image": sizes}  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="tuoba-bench-ai") as tmp,
        booted(boot_spec(img, manifest), Path(tmp) / "console.log", timeout=600) as guest,
    ):

        def ssh(command: str, timeout: float = 3600) -> str:
            return guest_ssh(key, guest.ssh_port, command, timeout)

        def put(path: str, text: str) -> None:
            ssh(f"printf '%s' {shlex.quote(text)} > {path}")

        work, venv = checks.WORK, checks.VENV  # type: ignore[attr-defined]
        ssh("systemctl is-system-running --wait || true", timeout=900)
        ssh(f"rm -rf {work} && mkdir -p {work}")
        put(f"{work}/cnn.py", checks.CNN)  # type: ignore[attr-defined]
        save = (
            f"import cnn, numpy as np; w = cnn.weights(); cnn.save_onnx(w, '{work}/cnn.onnx'); "
            f"np.save('{work}/x.npy', w['x']); np.savez('{work}/weights.npz', **w)"
        )
        ssh(f"cd {work} && {venv}/bin/python -c {shlex.quote(save)}")
        rows = {}
        for name, runner in checks.RUNNERS.items():  # type: ignore[attr-defined]
            put(f"{work}/run_{name}.py", runner)
            out = ssh(f"cd {work} && TUOBA_AI_RUNS={args.runs} {venv}/bin/python run_{name}.py")
            rows[name] = json.loads(out.strip().splitlines()[-1])
        put(f"{work}/run_armnn.py", checks.ARMNN_CNN)  # type: ignore[attr-defined]
        out = ssh(f"cd {work} && TUOBA_AI_RUNS={args.runs} python3 run_armnn.py")
        for line in out.strip().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                rows[row["framework"]] = row
        # TVM over RPC: compiled here, run there (the tvm-rpc service's forwarded port)
        for name in ("cnn.onnx", "x.npy"):
            (Path(tmp) / name).write_bytes(base64.b64decode(ssh(f"base64 -w0 {work}/{name}")))
        job = inference.Run(model=Path(tmp) / "cnn.onnx", inputs=(("x", Path(tmp) / "x.npy"),),
                            runs=args.runs, wait=600)  # fmt: skip
        port = guest.forwards[inference.rpc_port(ROOT)]
        report = inference.run_on(f"127.0.0.1:{port}", job, ROOT, Store(default_cache_dir()))
        y = report["outputs"]["y"]
        rows["tvm-rpc"] = {"framework": "tvm-rpc", "ms": report["ms"], "import_s": 0.0,
                           "max_abs_err": y["max_abs_err"], "same_class": y["agrees"],
                           "compile_s": report["compile_s"], "upload_s": report["upload_s"],
                           "library_bytes": report["library_bytes"],
                           "samples_ms": report["samples_ms"],
                           "error_against": "onnx.reference (numpy) on the host"}  # fmt: skip
        results["venv_mib"] = int(ssh(f"du -sm {venv} | cut -f1"))
    fastest = min(r["ms"] for r in rows.values())
    print(f"{'framework':<12} {'median ms':>10} {'x fastest':>10} {'import s':>9} {'max err':>9}")
    for name, r in rows.items():
        r["ratio_to_fastest"] = round(r["ms"] / fastest, 2)
        print(f"{name:<12} {r['ms']:>10.3f} {r['ratio_to_fastest']:>10.2f} "
              f"{r['import_s']:>9.1f} {r['max_abs_err']:>9.1e}")  # fmt: skip
    if "tvm" in rows:
        print(f"TVM compile (in the guest, LLVM for cortex-a72): {rows['tvm']['compile_s']:.1f} s")
    if "tvm-rpc" in rows:
        print(f"TVM compile on the host for the guest: {rows['tvm-rpc']['compile_s']:.2f} s; "
              f"upload + load over RPC {rows['tvm-rpc']['upload_s']:.2f} s")  # fmt: skip
    print(f"image: {sizes['raw_mib']:.0f} MiB raw, {sizes['allocated_mib']:.0f} MiB allocated, "
          f"{sizes['xz_mib']:.0f} MiB xz; the venv {results['venv_mib']} MiB")  # fmt: skip
    results["frameworks"] = rows
    write_results(args.json, results)


if __name__ == "__main__":
    main()
