#!/usr/bin/env python3
"""Benchmark the qemu-aarch64 pipeline; prints a table and writes JSON.

    .venv/bin/python bench/bench.py                 # cold build with an empty cache
    .venv/bin/python bench/bench.py --warm-cache    # reuse ~/.cache/tuoba (rootfs cached)
    .venv/bin/python bench/bench.py --stage 2       # stage 2: userland from an empty cache
    .venv/bin/python bench/bench.py --boards        # every buildable board, both stages

Stage 2 measures the LLVM + musl userland cold (sources, toolchain, packages: an empty cache,
except the kernel build, which is shared with stage 1 and measured by the stage-1 run),
no-change rebuild, boot-to-ssh and the sizes (image xz, kernel xz: what a download carries).

--boards builds each board that can be built here, in both stages, from a cache holding only the
shared kernel build (so: root filesystem or stage-2 toolchain and packages, firmware, image),
in order, so later boards reuse what earlier ones made (said per row); boots each in its QEMU
machine (raspi: to the login prompt on the serial console, 4 GiB card) and notes the sizes.

Measures: cold build (and the kernel compile inside it), no-change rebuild, one-overlay-change
rebuild, one-kernel-fragment rebuild (incremental, same out-of-tree dir), boot-to-ssh (QEMU TCG),
image size (raw apparent, raw allocated, xz).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import amlogic_sd_fip, copy_project, zynq_boot_image  # noqa: E402
from tuoba import apt  # noqa: E402
from tuoba.guest import boot_spec  # noqa: E402
from tuoba.manifest import load as load_manifest  # noqa: E402
from tuoba.plan import DEBIAN_RELEASE, image_name  # noqa: E402
from tuoba.qemu import booted  # noqa: E402

BOARD = "qemu-aarch64"


LAST_STDERR: list[str] = [""]  # what the last timed build said (for how it ran)


def timed_build(
    project: Path, out: Path, cache: Path, stage: int = 1, board: str = BOARD, *extra: str
) -> tuple[float, str]:
    cmd = [
        sys.executable, "-m", "tuoba",
        "--data-dir", str(project), "--out", str(out), "--cache-dir", str(cache),
        "build", "--board", board, "--stage", str(stage), *extra,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build failed:\n{proc.stderr}")
    LAST_STDERR[0] = proc.stderr
    ran = next(ln for ln in proc.stderr.splitlines() if ln.startswith("steps run:"))
    return seconds, ran.removeprefix("steps run:").strip()


def run_context() -> dict[str, object]:
    """Where and when the figures were taken."""
    return {
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def guest_ssh(key: Path, port: int, command: str, timeout: float = 3600) -> str:
    """Run `command` as root in a booted guest (its ssh forwarded to loopback `port`)."""
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
        capture_output=True, text=True, check=True, timeout=timeout,
    ).stdout  # fmt: skip


def write_results(path: Path, results: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-cache", action="store_true", help="use ~/.cache/tuoba")
    parser.add_argument("--boots", type=int, default=3, help="boot-to-ssh samples")
    parser.add_argument("--stage", type=int, default=1, choices=(1, 2))
    parser.add_argument("--boards", action="store_true", help="every buildable board")
    parser.add_argument(
        "--only", action="append", metavar="BOARD", help="with --boards: just these (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="[default: bench/results/latest[-s2].json]")
    args = parser.parse_args()
    suffix = "-boards" if args.boards else "" if args.stage == 1 else "-s2"
    if args.boards and args.only:  # a subset does not replace the all-boards figures
        suffix += "-" + "-".join(args.only)
    args.json = args.json or ROOT / "bench" / "results" / f"latest{suffix}.json"
    if args.boards:
        return boards(args)
    if args.stage == 2:
        return stage2(args)

    results: dict[str, object] = {
        "board": BOARD,
        **run_context(),
    }
    with workspace("", "home" if args.warm_cache else "empty") as (tmpdir, project, out, cache):
        label = "warm-cache build" if args.warm_cache else "cold build (empty cache)"
        secs, ran = timed_build(project, out, cache)
        results["first_build_s"] = round(secs, 1)
        results["first_build_kind"] = label
        print(f"{label:<34} {secs:8.1f} s   ({ran})")

        img = out / f"{image_name(BOARD, 1)}.img"
        kernel = load_manifest(img).kernel
        results["kernel_compile_s"] = kernel.get("build_seconds")
        print(f"{'  of which kernel compile (make)':<34} {kernel.get('build_seconds')!s:>8} s")

        secs, ran = timed_build(project, out, cache)
        results["no_change_rebuild_s"] = round(secs, 2)
        print(f"{'no-change rebuild':<34} {secs:8.2f} s   ({ran})")

        (project / "recipes/base/overlay/etc/motd").write_text("bench overlay change\n")
        secs, ran = timed_build(project, out, cache)
        results["overlay_rebuild_s"] = round(secs, 1)
        print(f"{'one-overlay-file rebuild':<34} {secs:8.1f} s   ({ran})")

        net = project / "kernel/features/net.config"
        net.write_text(net.read_text() + "CONFIG_DUMMY=m\n")
        secs, ran = timed_build(project, out, cache)
        results["fragment_rebuild_s"] = round(secs, 1)
        hit = "reusing kernel built for these inputs" in " ".join(LAST_STDERR[0].split())
        results["fragment_rebuild_kind"] = "kernel cache hit" if hit else "incremental compile"
        kernel = load_manifest(img).kernel
        compile_s = None if hit else kernel.get("build_seconds")
        results["fragment_rebuild_kernel_compile_s"] = compile_s
        label = "one-fragment rebuild (+DUMMY=m)"
        how = "the kernel was in the cache" if hit else f"make {compile_s} s"
        print(f"{label:<34} {secs:8.1f} s   ({ran}; {how})")
        # The +DUMMY kernel is the bench's own: removed, so the next run compiles it again
        # (a cache hit measures another thing: see fragment_rebuild_kind)
        rm = ["cache", "rm", f"kernel/{kernel['config_digest']}"]
        subprocess.run([sys.executable, "-m", "tuoba", "--cache-dir", str(cache), *rm],
                       capture_output=True, check=False)  # fmt: skip

        measure_boots(img, tmpdir, args.boots, results, width=34)

        st = img.stat()
        xz = img.with_name(img.name + ".xz").stat().st_size
        results["image_raw_bytes"] = st.st_size
        results["image_raw_allocated_bytes"] = st.st_blocks * 512
        results["image_xz_bytes"] = xz
        mib = 1 << 20
        print(
            f"{'image size':<34} raw {st.st_size / mib:.0f} MiB "
            f"({st.st_blocks * 512 / mib:.0f} MiB allocated), xz {xz / mib:.1f} MiB"
        )
        if not args.warm_cache:
            shutil.rmtree(cache, ignore_errors=True)

    write_results(args.json, results)


def measure_boots(img: Path, tmpdir: Path, n: int, results: dict[str, object], width: int) -> None:
    """Boot the image n times; record and print the boot-to-ssh times."""
    spec = boot_spec(img, load_manifest(img))
    samples = []
    for i in range(n):
        with booted(spec, tmpdir / f"console-{i}.log") as guest:
            samples.append(guest.boot_seconds)
    results["boot_to_ssh_s"] = [round(s, 1) for s in samples]
    results["boot_to_ssh_median_s"] = round(statistics.median(samples), 1)
    label = "boot to ssh (QEMU TCG, median)"
    print(
        f"{label:<{width}} {statistics.median(samples):8.1f} s   "
        f"(samples: {', '.join(f'{s:.1f}' for s in samples)})"
    )


@contextlib.contextmanager
def workspace(name: str, cache: str = "kernel-only") -> Iterator[tuple[Path, Path, Path, Path]]:
    """(scratch dir, a copy of the project, output dir, cache dir) for one bench run; the cache
    is empty, ~/.cache/tuoba ("home") or one holding only its shared kernel build."""
    with tempfile.TemporaryDirectory(prefix=f"tuoba-bench-{name}") as tmp:
        tmpdir = Path(tmp)
        project = copy_project(tmpdir / "project")
        cache_dir = Path.home() / ".cache" / "tuoba" if cache == "home" else tmpdir / "cache"
        if cache == "kernel-only":
            kernel_only_cache(cache_dir)
        yield tmpdir, project, tmpdir / "out", cache_dir


def kernel_only_cache(cache: Path) -> None:
    """A cache holding only the kernel entries (and the kernel work trees and ccache) of
    ~/.cache/tuoba."""
    home = Path.home() / ".cache" / "tuoba"
    if not (home / "store" / "kernel").is_dir():
        sys.exit("run a stage-1 build first: the boards share its kernel build")
    (cache / "store").mkdir(parents=True)
    (cache / "work").mkdir()
    for kind in ("kernel", "kernel-src"):
        (cache / "store" / kind).symlink_to(home / "store" / kind)
    for work in (home / "work").glob("kernel-build-*"):
        (cache / "work" / work.name).symlink_to(work)
    (cache / "work" / "ccache").symlink_to(home / "work" / "ccache")


BOARDS = [("qemu-aarch64", 1), ("qemu-aarch64", 2), ("rpi4", 1), ("rpi4", 2), ("rpi3", 1),
          ("rpi3", 2), ("roc-rk3328-cc", 1), ("jetson-nano", 1), ("vim3", 1),
          ("pynq-z2", 1)]  # fmt: skip


def board_args(board: str, tmpdir: Path) -> list[str]:
    """What a board's build needs from the user: vim3 its Amlogic boot image, pynq-z2 a
    BOOT.BIN (placeholders made as the test suite makes them) and, on this archive, pynq-z2 the
    main suite only (its -security armhf index is stale: see tests/integration/
    test_zynq_board.py)."""
    if board == "vim3":
        return ["--supply", f"u-boot.bin.sd.bin={amlogic_sd_fip(tmpdir / 'u-boot.bin.sd.bin')}"]
    if board != "pynq-z2":
        return []
    boot_bin = zynq_boot_image(tmpdir / "BOOT.BIN")
    mirror = apt.debian_mirrors(DEBIAN_RELEASE)[0]
    return ["--supply", f"BOOT.BIN={boot_bin}", "--mirror", mirror]


def boards(args: argparse.Namespace) -> None:
    results: dict[str, object] = {
        **run_context(),
    }
    rows: list[dict[str, object]] = []
    mib = 1 << 20
    print(f"{'board':<14}{'stage':>6}{'build s':>9}{'boot s':>8}{'raw MiB':>9}{'alloc MiB':>10}"
          f"{'xz MiB':>8}  steps run (kernel: shared, cached)")  # fmt: skip
    with workspace("boards-") as (tmpdir, project, out, cache):
        for board, stage in BOARDS:
            if args.only and board not in args.only:
                continue
            extra = board_args(board, tmpdir)
            secs, ran = timed_build(project, out, cache, stage, board, *extra)
            img = out / f"{image_name(board, stage)}.img"
            manifest = load_manifest(img)
            boot: float | None = None
            machine = None
            if manifest.boot["qemu"] is not None:  # boards with no emulator are not booted
                card = 4 << 30 if manifest.boot["qemu"]["drive"] == "sd" else None
                spec = boot_spec(img, manifest, card_size=card)
                machine = spec.qemu.machine_type
                with booted(spec, tmpdir / f"console-{board}-{stage}.log", timeout=600) as guest:
                    boot = guest.boot_seconds
            st = img.stat()
            xz = img.with_name(img.name + ".xz").stat().st_size
            row = {
                "board": board, "stage": stage, "build_s": round(secs, 1),
                "boot_s": None if boot is None else round(boot, 1), "machine": machine,
                "image_raw_bytes": st.st_size, "image_raw_allocated_bytes": st.st_blocks * 512,
                "image_xz_bytes": xz, "steps_run": ran,
            }  # fmt: skip
            rows.append(row)
            boot_txt = "-" if boot is None else f"{boot:.1f}"
            print(f"{board:<14}{stage:>6}{secs:>9.1f}{boot_txt:>8}{st.st_size / mib:>9.0f}"
                  f"{st.st_blocks * 512 / mib:>10.1f}{xz / mib:>8.1f}  {ran}")  # fmt: skip
    print("boot s: to ssh (virt, xilinx-zynq-a9) or to the login prompt on the serial console")
    print("        (raspi: no network); SD boards get a 4 GiB card, so it includes first-boot")
    print("        growth; -: no emulator for the board")
    results["boards"] = rows
    write_results(args.json, results)


def stage2(args: argparse.Namespace) -> None:
    results: dict[str, object] = {
        "board": BOARD,
        "stage": 2,
        **run_context(),
    }
    mib = 1 << 20
    with workspace("s2-") as (tmpdir, project, out, cache):
        secs, ran = timed_build(project, out, cache, stage=2)
        results["cold_userland_build_s"] = round(secs, 1)
        print(f"{'stage-2 cold build (kernel cached)':<36} {secs:8.1f} s   ({ran})")
        secs, ran = timed_build(project, out, cache, stage=2)
        results["no_change_rebuild_s"] = round(secs, 2)
        print(f"{'no-change rebuild':<36} {secs:8.2f} s   ({ran})")

        img = out / f"{image_name(BOARD, 2)}.img"
        measure_boots(img, tmpdir, args.boots, results, width=36)
        st = img.stat()
        xz = img.with_name(img.name + ".xz").stat().st_size
        kernel = img.with_name(img.name.removesuffix(".img") + ".Image")
        kernel_xz = len(
            subprocess.run(
                ["xz", "-1", "-T0", "-c", str(kernel)], capture_output=True, check=True
            ).stdout
        )
        results |= {
            "image_raw_bytes": st.st_size,
            "image_raw_allocated_bytes": st.st_blocks * 512,
            "image_xz_bytes": xz,
            "kernel_bytes": kernel.stat().st_size,
            "kernel_xz_bytes": kernel_xz,
        }
        print(
            f"{'image size':<36} raw {st.st_size / mib:.0f} MiB "
            f"({st.st_blocks * 512 / mib:.1f} MiB allocated), xz {xz / mib:.1f} MiB"
        )
        print(
            f"{'kernel (Image, booted directly)':<36} {kernel.stat().st_size / mib:.1f} MiB, "
            f"xz {kernel_xz / mib:.1f} MiB; image + kernel xz {(xz + kernel_xz) / mib:.1f} MiB"
        )
    write_results(args.json, results)


if __name__ == "__main__":
    main()
