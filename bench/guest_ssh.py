#!/usr/bin/env python3
"""What one guest check's command costs over ssh, a new connection each time (what testinfra
did) against one shared connection (ssh's ControlPath, what `tuoba test` sets); prints a table
and writes JSON.

    .venv/bin/python bench/guest_ssh.py                # the qemu-aarch64 image in out/
    .venv/bin/python bench/guest_ssh.py --out /tmp/p/out --commands 40

One boot; the same command (`true`) run --commands times each way, in turns; the figure is the
median wall time per command on the host, and the ratio of the two in this one run (QEMU TCG:
compare the ratio, not the seconds with hardware).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BOARD, ROOT, run_context, write_results

from tuoba.guest import SSH_CONFIG, boot_spec
from tuoba.manifest import load as load_manifest
from tuoba.plan import default_ssh_key, image_name
from tuoba.qemu import booted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=30, help="commands timed each way")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="where the image is")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/latest-guest-ssh.json")
    args = parser.parse_args()
    img = args.out / f"{image_name(BOARD, 1)}.img"
    if not img.is_file():
        sys.exit(f"no image at {img}: run `tuoba build --board {BOARD}` first")
    key = default_ssh_key(args.out)
    manifest = load_manifest(img)
    with tempfile.TemporaryDirectory(prefix="tuoba-bench-ssh") as tmp:
        config = Path(tmp) / "ssh_config"
        config.write_text(SSH_CONFIG.format(control_dir=tmp))
        spec = boot_spec(img, manifest)
        with booted(spec, Path(tmp) / "console.log") as guest:

            def ssh(shared: bool, command: str) -> float:
                sharing = ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s"]
                if not shared:
                    sharing += ["-o", "ControlPath=none"]
                start = time.monotonic()
                subprocess.run(["ssh", "-F", str(config), "-i", str(key), "-p",
                                str(guest.ssh_port), *sharing, "127.0.0.1", command],
                               check=True, capture_output=True, timeout=600)  # fmt: skip
                return time.monotonic() - start

            ssh(True, "systemctl is-system-running --wait >/dev/null || true")
            samples: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.commands):
                for shared in (False, True):
                    samples[shared].append(ssh(shared, "true"))
    new, one = (statistics.median(samples[s]) for s in (False, True))
    print(f"{BOARD} guest (QEMU TCG), {args.commands} commands each way")
    print(f"{'ssh':<34} {'median s':>9} {'ratio':>7}")
    print(f"{'a new connection per command':<34} {new:>9.3f} {1:>7.2f}")
    print(f"{'one shared connection':<34} {one:>9.3f} {one / new:>7.2f}")
    write_results(args.json, {
        **run_context(), "board": BOARD, "recipes": manifest.recipes, "commands": args.commands,
        "new_connection_median_s": round(new, 3), "shared_connection_median_s": round(one, 3),
        "ratio_shared_to_new": round(one / new, 3),
        "samples_s": {"new": [round(s, 3) for s in samples[False]],
                      "shared": [round(s, 3) for s in samples[True]]},
    })  # fmt: skip


if __name__ == "__main__":
    main()
