#!/usr/bin/env python3
"""Benchmark `tuoba matrix`: the same images built by the local executor (one at a time), and
as Ray tasks on a loopback cluster of one node and of two; prints a table and writes JSON.

    .venv/bin/python bench/matrix.py [--boards qemu-aarch64,rpi3,rpi4] [--stages 2] [--prime]

By default the whole matrix: every board, stages 1 and 2 (cells that cannot be built here —
a vendor's file nobody supplied, a stage the board cannot have — are skipped, and counted).
Each run builds into an empty output directory from the warm cache (~/.cache/tuoba; --prime
makes one untimed run first, so that whatever was not in it yet is), so what is measured is
the images' own steps and the scheduling: the figure to read is each run's wall time as a
ratio to the local one, beside the serial sum of its images' build times (the JUnit file's).
One machine: two Ray nodes share its two cores, so the ratio shows what overlapping the images
gains here, not what a second machine would.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench import run_context, write_results  # noqa: E402  (bench/bench.py)

from tests.conftest import copy_project, ray_cluster  # noqa: E402


def matrix(project: Path, out: Path, boards: str | None, stages: str, *executor: str) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tuoba", "--data-dir", str(project), "--out", str(out), "matrix",
         *(("--boards", boards) if boards else ()), "--stages", stages, *executor],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"tuoba matrix {' '.join(executor)} failed:\n{proc.stdout}{proc.stderr}")
    return time.monotonic() - start


def serial_sum(out: Path) -> float:
    suite = ET.parse(out / "matrix" / "junit.xml").getroot()
    return sum(float(c.get("time", "0")) for c in suite.iter("testcase"))


def cells(out: Path) -> dict[str, object]:
    """Each cell's build time (s), or why it was skipped, from the run's JUnit file."""
    found: dict[str, object] = {}
    for case in ET.parse(out / "matrix" / "junit.xml").getroot().iter("testcase"):
        skipped = case.find("skipped")
        board = str(case.get("classname")).removeprefix("tuoba.matrix.")
        found[f"{board} {case.get('name')}"] = (
            f"skipped: {skipped.get('message')}" if skipped is not None
            else round(float(case.get("time", "0")), 1)
        )  # fmt: skip
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default=None, help="comma-separated (default: every board)")
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--prime", action="store_true", help="one untimed run first")
    args = ap.parse_args()
    results: dict[str, object] = {
        **run_context(), "boards": args.boards or "all", "stages": args.stages
    }  # fmt: skip
    runs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tuoba-bench-matrix-") as tmp:
        project = copy_project(Path(tmp) / "project")
        if args.prime:
            primed = matrix(project, Path(tmp) / "prime", args.boards, args.stages)
            results["prime_wall_s"] = round(primed, 1)
        out = Path(tmp) / "local"
        wall = matrix(project, out, args.boards, args.stages)
        runs["local"] = {"wall_s": round(wall, 1), "serial_sum_s": round(serial_sum(out), 1)}
        results["cells"] = cells(out)
        for nodes in (1, 2):
            with ray_cluster(nodes) as address:
                out = Path(tmp) / f"ray{nodes}"
                wall = matrix(project, out, args.boards, args.stages, "--executor", "ray",
                              "--address", address)  # fmt: skip
                summed = round(serial_sum(out), 1)
                runs[f"ray, {nodes} node(s)"] = {"wall_s": round(wall, 1), "serial_sum_s": summed}
    local = runs["local"]["wall_s"]
    print(f"tuoba matrix --boards {args.boards or '(all)'} --stages {args.stages} (warm cache)")
    for name, what in results["cells"].items():  # type: ignore[attr-defined]
        print(f"  {name}: {what}")
    print(f"{'executor':<16} {'wall s':>8} {'x local':>8} {'serial sum s':>13}")
    for name, r in runs.items():
        r["ratio_to_local"] = round(r["wall_s"] / local, 2)
        print(f"{name:<16} {r['wall_s']:>8.1f} {r['ratio_to_local']:>8.2f} "
              f"{r['serial_sum_s']:>13.1f}")  # fmt: skip
    results["runs"] = runs
    write_results(ROOT / "bench" / "results" / "latest-matrix.json", results)


if __name__ == "__main__":
    main()
