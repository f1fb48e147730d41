#!/usr/bin/env python3
"""What each stack costs: qemu-aarch64 stage 1 built with `base` alone, base + one recipe, and
the `tuoba` umbrella (every stack); prints a table and writes JSON.

    .venv/bin/python bench/recipes.py               # base, each recipe, tuoba
    .venv/bin/python bench/recipes.py --only bpf    # base and base + bpf

Each image is built in a copy of the project whose qemu-aarch64 board has no default recipes,
from a cache holding only the shared kernel build and apt's downloaded packages (so each row's
build time is installing its root filesystem by mkosi plus the image: the stack's own cost),
then booted to ssh (QEMU TCG).
Sizes: the root filesystem's used space (what the stack adds is the difference to base), the
raw image's allocated blocks and its xz (what a download carries).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    BOARD,
    ROOT,
    measure_boots,
    run_context,
    timed_build,
    workspace,
    write_results,
)

from tuoba.plan import image_name

STACKS = ["bpf", "containers", "security", "virt", "devtools", "tuoba"]
MIB = 1 << 20
HOME_CACHE = Path.home() / ".cache" / "tuoba"


def root_used(img: Path, manifest: dict[str, object]) -> int:
    """Bytes in use in the image's root filesystem (ext4: blocks in use × block size)."""
    root = next(p for p in manifest["partitions"] if p["mountpoint"] == "/")  # type: ignore[attr-defined]
    out = subprocess.run(
        ["debugfs", "-R", "stats", f"{img}?offset={root['start']}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    fields = dict(ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    count, free = int(fields["Block count"]), int(fields["Free blocks"])
    return (count - free) * int(fields["Block size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=STACKS, help="just these (repeatable)")
    parser.add_argument("--boots", type=int, default=1, help="boot-to-ssh samples per image")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/latest-recipes.json")
    args = parser.parse_args()
    results: dict[str, object] = {**run_context(), "board": BOARD, "images": {}}
    images: dict[str, dict[str, object]] = results["images"]  # type: ignore[assignment]
    width = 34
    print(f"{'recipes':<22} {'build':>8} {'root used':>10} {'+ on base':>10} "
          f"{'raw alloc':>10} {'xz':>8}  boot to ssh")  # fmt: skip
    for stack in ["base", *(args.only or STACKS)]:
        with workspace(f"recipes-{stack}") as (tmpdir, project, out, cache):
            # apt's downloads are shared: the figure is installing, not fetching, the packages
            (cache / "work" / "mkosi-packages").symlink_to(HOME_CACHE / "work" / "mkosi-packages")
            board = project / "boards" / BOARD / "board.yaml"
            text = board.read_text()
            board.write_text("\n".join(
                "recipes: []" if ln.startswith("recipes:") else ln for ln in text.splitlines()
            ) + "\n")  # fmt: skip
            extra = [] if stack == "base" else ["--recipe", stack]
            seconds, ran = timed_build(project, out, cache, 1, BOARD, *extra)
            img = out / f"{image_name(BOARD, 1)}.img"
            manifest = json.loads(img.with_suffix(".manifest.json").read_text())
            row: dict[str, object] = {
                "recipes": manifest["recipes"],
                "build_s": round(seconds, 1),
                "steps_run": ran,
                "packages": len(manifest["packages"]),
                "root_used_mib": round(root_used(img, manifest) / MIB, 1),
                "raw_allocated_mib": round(img.stat().st_blocks * 512 / MIB, 1),
                "xz_mib": round(img.with_suffix(".img.xz").stat().st_size / MIB, 1),
            }
            measure_boots(img, tmpdir, args.boots, row, width)
            images[stack] = row
            base = images["base"]["root_used_mib"]
            added = float(row["root_used_mib"]) - float(base)  # type: ignore[arg-type]
            print(
                f"{'+'.join(manifest['recipes']):<22} {seconds:7.1f}s "
                f"{row['root_used_mib']:>9}M {added:>+9.1f}M {row['raw_allocated_mib']:>9}M "
                f"{row['xz_mib']:>7}M  {row['boot_to_ssh_median_s']} s"
            )
    write_results(args.json, results)


if __name__ == "__main__":
    main()
