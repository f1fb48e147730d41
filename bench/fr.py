#!/usr/bin/env python3
"""tuoba-fr against user-space baselines, in the booted qemu-aarch64 image; prints a table and
writes JSON.

    .venv/bin/python bench/fr.py                 # the image in out/ (tuoba build first)
    .venv/bin/python bench/fr.py --values 2000000 --runs 5

In the guest: a text file of random integers (one a line), read once to warm the page cache,
then the same question -- the sum of the values > 0 -- asked of
  cat > /dev/null    the read alone (every byte copied to user space, no computing)
  tuoba-fr           the filter -> reduce in the kernel, the copy skipped
  tuoba-fr --copy    the same, with the copy done
  C reader           bench/fr_reader.c: read() into 64 KiB, parsed in C (every byte copied)
  awk, python3       user-space baselines (every byte copied, then parsed)
Each is timed in the guest (wall clock of the command, median of --runs), and the bytes that
reached user space are noted. QEMU TCG: compare the ratios, not the seconds with hardware.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BOARD, ROOT, guest_ssh, run_context, write_results

from tuoba import bpf
from tuoba.guest import boot_spec
from tuoba.manifest import load as load_manifest
from tuoba.plan import default_ssh_key, image_name
from tuoba.qemu import booted

DATA = "/tmp/bench-fr.txt"
READER = "/tmp/fr-reader"  # bench/fr_reader.c, compiled here for the image
MAKE = (
    "import random; r = random.Random(7); "
    "open('{f}', 'w').write('\\n'.join(str(r.randint(-10**6, 10**6)) for _ in range({n})) + '\\n')"
)
CASES = {
    "cat (read only)": f"cat {DATA} > /dev/null",
    "tuoba-fr (in kernel, no copy)": f"tuoba-fr {DATA} --filter 'gt 0' --reduce sum",
    "tuoba-fr --copy": f"tuoba-fr {DATA} --filter 'gt 0' --reduce sum --copy",
    "C reader (read(), 64 KiB)": f"{READER} {DATA}",
    "awk": f"awk '$1 > 0 {{ s += $1 }} END {{ printf \"%.0f\\n\", s }}' {DATA}",
    "python3": f"python3 -c \"print(sum(v for v in map(int, open('{DATA}')) if v > 0))\"",
}


def compile_reader(out: Path, tmp: Path) -> Path:
    """bench/fr_reader.c for the image, by clang with the image's root tree as its sysroot (as
    the bpf step builds the loaders)."""
    record = out / ".build" / f"{BOARD}-s1" / "rootfs.json"
    tree = Path(json.loads(record.read_text())["tree"])
    cc = bpf.image_target("arm64", tree).loader_cc()
    reader = tmp / "fr-reader"
    subprocess.run([*cc, "-O2", "-Wall", "-Werror", "-o", str(reader),
                    str(ROOT / "bench" / "fr_reader.c")], check=True)  # fmt: skip
    return reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # (9.2 million values: about 64 MiB of text, the size the issue asks for)
    parser.add_argument("--values", type=int, default=9_200_000, help="integers in the file")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="where the image is")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/latest-fr.json")
    args = parser.parse_args()
    img = args.out / f"{image_name(BOARD, 1)}.img"
    if not img.is_file():
        sys.exit(f"no image at {img}: run `tuoba build --board {BOARD}` first")
    key = default_ssh_key(args.out)
    results: dict[str, object] = {**run_context(), "board": BOARD, "values": args.values}
    with tempfile.TemporaryDirectory(prefix="tuoba-bench-fr") as tmp:
        spec = boot_spec(img, load_manifest(img))
        with booted(spec, Path(tmp) / "console.log") as guest:

            def ssh(command: str, timeout: float = 3600) -> str:
                return guest_ssh(key, guest.ssh_port, command, timeout)

            ssh("systemctl is-system-running --wait || true", timeout=900)
            reader = compile_reader(args.out, Path(tmp))
            subprocess.run(["ssh", "-i", str(key), "-p", str(guest.ssh_port), "-o", "BatchMode=yes",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "LogLevel=ERROR", "root@127.0.0.1",
                            f"cat > {READER} && chmod +x {READER}"],
                           input=reader.read_bytes(), check=True)  # fmt: skip
            ssh(f"python3 -c {shlex.quote(MAKE.format(f=DATA, n=args.values))}")
            size = int(ssh(f"stat -c %s {DATA}"))
            ssh(f"cat {DATA} > /dev/null")  # the page cache holds it from here on
            fr = json.loads(ssh(f"tuoba-fr {DATA} --filter 'gt 0' --reduce sum --json"))
            rows: dict[str, dict[str, object]] = {}
            print(f"{args.values} values, {size / 2**20:.1f} MiB of text (QEMU TCG guest)")
            print(f"{'case':<32} {'median s':>9} {'x cat':>7} {'answer':>16}  bytes to user")
            for name, command in CASES.items():
                samples, answer = [], ""
                for _ in range(args.runs):
                    out = ssh(
                        "s=$(date +%s.%N); a=$(" + command + "); e=$(date +%s.%N); "
                        'echo "$a"; echo "$s $e"'
                    ).splitlines()
                    start, end = map(float, out[-1].split())
                    samples.append(end - start)
                    answer = out[0] if len(out) > 1 else ""
                to_user = 0 if name.startswith("tuoba-fr (") else size
                rows[name] = {"median_s": round(statistics.median(samples), 3),
                              "samples_s": [round(s, 3) for s in samples],
                              "answer": answer, "bytes_to_user": to_user}  # fmt: skip
            base = float(rows["cat (read only)"]["median_s"])  # type: ignore[arg-type]
            for name, row in rows.items():
                ratio = float(row["median_s"]) / base  # type: ignore[arg-type]
                row["ratio_to_cat"] = round(ratio, 2)
                print(f"{name:<32} {row['median_s']:>9} {ratio:>7.2f} {row['answer']:>16}  "
                      f"{row['bytes_to_user']}")  # fmt: skip
            answers = {r["answer"] for n, r in rows.items() if not n.startswith("cat")}
            assert len(answers) == 1, f"the cases disagree: {rows}"
            results |= {
                "file_bytes": size,
                "cases": rows,
                "fr_json": fr,
                "in_kernel_read_loop_s": fr["seconds"],
            }
    write_results(args.json, results)


if __name__ == "__main__":
    main()
