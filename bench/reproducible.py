#!/usr/bin/env python3
"""How reproducible are TuobaOS images? `tuoba build --check-reproducible` on qemu-aarch64,
stage 2 and stage 1 (`base`, from Debian's packages at the versions the archive has now);
prints a table and writes JSON.

    .venv/bin/python bench/reproducible.py [--reuse KIND ...] [--stage 1|2 ...]

Each check builds the image twice: the second time with an output and a cache directory of
its own, so it makes again everything but downloads and the kinds given with --reuse (by
default the kernel: its own build is the longest step by far). Reported per stage: the two
build times, whether the images are bit-identical, and where not, how many files differ and
the first of them, from the check's report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench import run_context, write_results  # noqa: E402  (bench/bench.py)

from tests.conftest import copy_project  # noqa: E402
from tuoba.plan import image_name  # noqa: E402

BOARD = "qemu-aarch64"
CACHE = Path(os.environ.get("TUOBA_CACHE_DIR", Path.home() / ".cache" / "tuoba"))


def check(project: Path, out: Path, stage: int, reuse: list[str]) -> dict[str, object]:
    board = project / "boards" / BOARD / "board.yaml"
    # stage 1 with its default stack dropped: `base` alone (the developer image is the same
    # code path, at ten times the packages)
    board.write_text(board.read_text().replace("\nrecipes: [tuoba]\n", "\nrecipes: []\n"))
    cmd = [sys.executable, "-m", "tuoba", "--data-dir", str(project), "--out", str(out),
           "--cache-dir", str(CACHE), "build", "--board", BOARD, "--stage", str(stage),
           "--check-reproducible", *(a for k in reuse for a in ("--reuse", k))]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    report_file = out / f"{image_name(BOARD, stage)}.reproducible.json"
    if not report_file.is_file():
        sys.exit(f"stage {stage}: the check made no report (exit {proc.returncode}):\n"
                 f"{proc.stderr[-3000:]}")  # fmt: skip
    report = json.loads(report_file.read_text())
    differences = report["differences"]
    files = [f for d in differences for f in d["files"]]
    return {
        "stage": stage,
        "reproducible": report["reproducible"],
        "exit_code": proc.returncode,
        "first_build_s": report["seconds"][0],
        "second_build_s": report["seconds"][1],
        "total_s": round(seconds, 1),
        "shared": report["shared"],
        "identical": report["identical"],
        "differing_regions": [f"{d['where']}: {d['what']}" for d in differences],
        "differing_files": len(files),
        "first_files": files[:15],
        "source_date_epoch": report["source_date_epoch"],
        "date": run_context()["date"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="append", default=None, metavar="KIND")
    parser.add_argument("--stage", action="append", type=int, default=None)
    args = parser.parse_args()
    reuse = ["kernel"] if args.reuse is None else args.reuse
    results: dict[str, object] = {"board": BOARD, "reuse": reuse, **run_context(), "runs": []}
    print(f"{'stage':<7}{'first':>9}{'second':>9}  result")
    for stage in args.stage or [2, 1]:
        with tempfile.TemporaryDirectory(prefix="tuoba-bench-repro-") as tmp:
            project = copy_project(Path(tmp) / "project")
            row = check(project, Path(tmp) / "out", stage, reuse)
        results["runs"].append(row)  # type: ignore[union-attr]
        verdict = ("bit-identical" if row["reproducible"] else
                   f"{row['differing_files']} files differ, e.g. {row['first_files'][:3]}; "
                   f"regions: {row['differing_regions']}")  # fmt: skip
        print(f"{stage:<7}{row['first_build_s']:>8.1f}s{row['second_build_s']:>8.1f}s  {verdict}")
    out = ROOT / "bench" / "results" / "latest-reproducible.json"
    if out.is_file():  # keep the figures of the stages not measured this time
        done = {r["stage"] for r in results["runs"]}  # type: ignore[union-attr]
        kept = [r for r in json.loads(out.read_text()).get("runs", []) if r["stage"] not in done]
        results["runs"] = sorted([*results["runs"], *kept], key=lambda r: -r["stage"])  # type: ignore[misc]
    write_results(out, results)


if __name__ == "__main__":
    main()
