#!/usr/bin/env python3
"""Benchmark the shared remote cache: a machine with an empty local cache builds qemu-aarch64
from a warm remote one; prints a table and writes JSON.

    .venv/bin/python bench/remote_cache.py

A real S3 API server (moto's) runs on loopback. The entries a qemu-aarch64 stage-1 build uses
(kernel, root filesystem, sources, as its step records name them) are pushed from the warm
local cache (~/.cache/tuoba, which must hold them: build once first) with `tuoba cache push`;
then `tuoba build` with an empty cache directory and --cache-url pulls them. The figure to
compare is the cold build of the same image (its kernel compile alone is in the manifest).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench import run_context, timed_build, write_results  # noqa: E402  (bench/bench.py)

from tests.conftest import copy_project  # noqa: E402
from tests.unit.test_remote import free_port  # noqa: E402
from tuoba.manifest import load as load_manifest  # noqa: E402
from tuoba.plan import image_name  # noqa: E402

BOARD = "qemu-aarch64"
WARM = Path(os.environ.get("TUOBA_CACHE_DIR", Path.home() / ".cache" / "tuoba"))


def tuoba(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tuoba", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tuoba {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # (one line per S3 request)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    boto3.client("s3").create_bucket(Bucket="bench")
    url = "s3://bench/tuoba"
    results: dict[str, object] = {"board": BOARD, **run_context()}
    try:
        with tempfile.TemporaryDirectory(prefix="tuoba-bench-remote-") as tmp:
            tmpdir = Path(tmp)
            project = copy_project(tmpdir / "project")
            # the warm machine: its build names the entries it relies on
            warm_out = tmpdir / "warm-out"
            secs, _ = timed_build(project, warm_out, WARM)
            refs = sorted({ref for rec in (warm_out / ".build" / f"{BOARD}-s1").glob("*.json")
                           for ref in _refs(rec)})  # fmt: skip
            start = time.monotonic()
            pushed = tuoba("--cache-dir", str(WARM), "--cache-url", url, "cache", "push", *refs)
            push_s = time.monotonic() - start
            results["push_s"] = round(push_s, 1)
            results["entries"] = refs
            print(f"{'push ' + str(len(refs)) + ' entries':<34} {push_s:8.1f} s   "
                  f"({pushed.stdout.strip()})")  # fmt: skip

            # the fresh machine: an empty local cache, the remote one warm
            fresh = tmpdir / "fresh-cache"
            secs, ran = timed_build(project, tmpdir / "fresh-out", fresh, 1, BOARD,
                                    "--cache-url", url)  # fmt: skip
            results["remote_warm_build_s"] = round(secs, 1)
            print(f"{'build, empty local, warm remote':<34} {secs:8.1f} s   ({ran})")
            img = tmpdir / "fresh-out" / f"{image_name(BOARD, 1)}.img"
            kernel_s = load_manifest(img).kernel.get("build_seconds")
            results["cold_kernel_compile_s"] = kernel_s
            if isinstance(kernel_s, int | float):
                ratio = secs / kernel_s
                results["ratio_to_cold_kernel_compile"] = round(ratio, 3)
                print(f"{'  vs the kernel compile alone':<34} {kernel_s:8.1f} s   "
                      f"(ratio {ratio:.3f}; a cold build is longer still)")  # fmt: skip
            size = sum(f.stat().st_size for f in fresh.rglob("*") if f.is_file())
            results["local_cache_after_bytes"] = size
            print(f"{'  local cache filled':<34} {size / (1 << 20):8.0f} MiB")
    finally:
        server.stop()
    write_results(ROOT / "bench" / "results" / "latest-remote-cache.json", results)


def _refs(record: Path) -> list[str]:
    try:
        data = json.loads(record.read_text())
    except ValueError:
        return []
    return [str(r) for r in data.get("cache", [])] if isinstance(data, dict) else []


if __name__ == "__main__":
    main()
