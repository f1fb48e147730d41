"""Checking a built image: boot it in QEMU, run the testinfra checks its recipes select."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from tuoba import manifest as manifests
from tuoba import qemu, run, ui
from tuoba.board import QemuSpec
from tuoba.errors import GuestCheckError, InputError


@dataclasses.dataclass(frozen=True)
class CheckResult:
    boot_seconds: float
    junit: Path | None
    console_log: Path


CHECK_TIMEOUT = 900  # seconds for one guest check (TCG is slow; none needs near this)


def boot_spec(
    image: Path,
    manifest: manifests.Manifest,
    card_size: int | None = None,
    card: Path | None = None,
) -> qemu.BootSpec:
    """How QEMU boots the image: the kernel, device tree and command line from the files beside
    it (as its manifest names them), the disk the image itself or a `card` it was flashed to."""
    if card is None and image.name.endswith(".xz"):
        raise InputError(
            f"{image.name} is compressed: QEMU boots a disk, not the .xz of one",
            hint=f"flash it and pass the card: tuoba flash {image.name} --device DEV, then "
            "--card DEV (or unpack it: xz -dk)",
        )
    boot = manifest.boot
    if boot.get("qemu") is None:
        raise InputError(
            f"board '{manifest.board}' has no QEMU machine to boot in",
            hint="boards with a qemu section in board.yaml can be booted",
        )
    q = boot["qemu"]
    spec = QemuSpec(
        **{**q, "cmdline": tuple(q.get("cmdline", ())), "dtb_edits": tuple(q.get("dtb_edits", ()))}
    )
    cmdline_fat = None
    if spec.cmdline_file:  # read from the first FAT partition at each boot, as the board does
        fat = next((p for p in manifest.partitions if p.get("fs") == "vfat"), None)
        if fat is None:
            raise InputError(
                f"{image.name}: board '{manifest.board}' reads its command line from "
                f"{spec.cmdline_file} on a FAT partition, and the image has none",
                hint="build the image again (tuoba build)",
            )
        cmdline_fat = (int(fat["start"]), int(fat["size"]))
    return qemu.BootSpec(
        arch=manifest.arch,
        image=card or image,
        kernel=image.parent / boot["kernel"],
        initrd=image.parent / boot["initrd"] if boot.get("initrd") else None,
        dtb=image.parent / f"{manifest.name}.{spec.dtb}" if spec.dtb else None,
        cmdline=qemu.emulated_cmdline(boot["cmdline"], spec),
        qemu=spec,
        card_size=card_size,
        cmdline_card=cmdline_fat,
        console_ready=CONSOLE_READY[manifest.stage],
        ports=tuple(manifest.ports) if spec.network else (),
    )


def check_card(card: Path, manifest: manifests.Manifest) -> None:
    """The card holds the image the manifest describes: its partitions where the image has them,
    with the PARTUUIDs the kernel's root= and fstab name. (Later first-boot work, such as growing
    the root partition, keeps both.)"""
    hint = f"flash it first: tuoba flash {manifest.name}.img.xz --device {card}"
    if not (qemu.is_block_device(card) or card.is_file()):
        raise InputError(f"no card at {card}: give a block device or an image file", hint=hint)
    proc = run.run([run.require("sfdisk"), "--json", str(card)], capture=True,
                   capture_stderr=True, check=False)  # fmt: skip
    said = " ".join((proc.stderr or "").split())
    if proc.returncode != 0 and "does not contain a recognized partition table" not in said:
        why = said or f"sfdisk exited with {proc.returncode}"
        raise InputError(f"cannot read the partition table of {card}: {why}", hint=hint)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise InputError(
            f"{card} has no partition table: it does not hold {manifest.name}", hint=hint
        )
    table = json.loads(proc.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    disk_id = str(table.get("id", "")).lower().removeprefix("0x")

    def partuuid(p: dict[str, Any]) -> str:
        """GPT: the partition's UUID; MBR: <disk id>-<number, 2 hex digits>, as the kernel
        names it (the number is the node's: slots may be empty)."""
        if p.get("uuid"):
            return str(p["uuid"]).lower()
        number = re.search(r"(\d+)$", str(p.get("node", "")))
        return f"{disk_id}-{int(number[1]) if number else 0:02x}"

    found = [(int(p["start"]) * sector, partuuid(p)) for p in table.get("partitions", [])]
    want = [(int(p["start"]), str(p["uuid"]).lower()) for p in manifest.partitions]
    if found[: len(want)] != want:
        show = ", ".join(f"{u} at {s >> 20} MiB" for s, u in want)
        raise InputError(
            f"{card} does not hold {manifest.name}: its partitions are not the image's ({show})",
            hint=hint,
        )


# What a finished boot shows on the serial console, per stage. Stage 1: systemd says "Startup
# finished" once every job of the boot transaction is done (ssh, first-boot growth), which can
# come after getty's prompt. Stage 2: busybox init runs rcS to its end before the inittab
# entries, so the prompt comes last.
CONSOLE_READY: dict[int, tuple[str, ...]] = {
    1: (r" login: ", r"systemd\[1\]: Startup finished in "),
    2: (r" login: ",),
}


# The checks' ssh: testinfra runs one `ssh` per command, and asks for connection sharing
# (ControlMaster auto) but names no socket, so each of the hundreds of commands made a new
# connection (a key exchange and a login, slow in an emulated guest). ControlPath gives the
# socket: the first command's connection carries the rest.
SSH_CONFIG = """\
Host *
  User root
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  IdentitiesOnly yes
  ConnectTimeout 20
  ControlPath {control_dir}/%C
"""


def check_image(
    image: Path,
    ssh_key: Path,
    data_dir: Path,
    junit: Path | None,
    console_log: Path,
    timeout: float,
    extra_pytest_args: tuple[str, ...] = (),
    card_size: int | None = None,
    keep_card: Path | None = None,
    card: Path | None = None,
    cache_dir: Path | None = None,
) -> CheckResult:
    """Boot the image (or the `card` it was flashed to: a block device or an image file) and
    run its guest checks; raises GuestCheckError when one fails."""
    manifest = manifests.load(image)
    if card is not None:
        check_card(card, manifest)
    spec = boot_spec(image, manifest, card_size, card)
    if card is not None and card_size is None:  # (the checks compare growth with the card's size)
        card_size = qemu.card_size_for(spec)
        spec = dataclasses.replace(spec, card_size=card_size)
    if not ssh_key.is_file():
        raise InputError(f"no ssh private key at {ssh_key}", hint="pass --ssh-key PRIVATE_KEY")
    tests = manifest.tests
    if not spec.qemu.network:
        ui.warn(
            f"QEMU '{spec.qemu.machine}' gives this board no network: running the serial-console "
            f"checks (tests/image/test_serial.py, test_s{manifest.stage}serial.py) instead of "
            f"the ssh checks ({', '.join(tests)})"
        )
        tests = ["tests/image/test_serial.py", f"tests/image/test_s{manifest.stage}serial.py"]
    not_run = dict(manifest.not_run) if spec.qemu.network else {}
    test_files = [data_dir / t for t in (*tests, *not_run)]
    missing = [str(t) for t in test_files if not t.is_file()]
    if missing:
        raise InputError(f"guest check modules missing: {', '.join(missing)}")
    if not test_files:
        raise InputError(f"{image.name}: its recipes select no guest checks")

    with tempfile.TemporaryDirectory(prefix="tuoba-test-") as tmp:
        ssh_config = Path(tmp) / "ssh_config"
        ssh_config.write_text(SSH_CONFIG.format(control_dir=tmp))
        with qemu.booted(spec, console_log, timeout=timeout, keep_card=keep_card) as guest:
            ssh_args = [
                f"--hosts=ssh://root@127.0.0.1:{guest.ssh_port}",
                f"--ssh-config={ssh_config}",
                f"--ssh-identity-file={ssh_key}",
            ] if spec.qemu.network else []  # fmt: skip
            cmd = [
                sys.executable, "-m", "pytest",
                *map(str, test_files),
                *ssh_args,
                "-p", "no:cacheprovider",
                "-p", "tuoba.guestchecks",  # the fixtures every guest check may use
                "--import-mode=importlib",  # (checks of different recipes may share a name)
                "--rootdir", str(data_dir),
                "-c", os.devnull,  # not the project's own pytest settings, nor its conftests:
                "--confcutdir", str(data_dir / "tests" / "image"),
                "-o", f"timeout={CHECK_TIMEOUT}",  # a hung check fails, naming itself
                "-o", f"junit_suite_name=tuoba-{manifest.board}-s{manifest.stage}",
                "-v",
                *extra_pytest_args,
            ]  # fmt: skip
            if junit is not None:
                cmd.append(f"--junitxml={junit}")
            env = {
                "TUOBA_MANIFEST": manifest.to_json(),
                "TUOBA_GUEST_PORT": str(guest.ssh_port),
                "TUOBA_PROBE": f"{guest.probe_port}:{qemu.PROBE_GUEST_PORT}",
                # the recipes' ports: guest:host,… (guestchecks.forwarded)
                "TUOBA_FORWARDS": ",".join(f"{g}:{h}" for g, h in guest.forwards.items()),
                "TUOBA_SSH_KEY": str(ssh_key),
                "TUOBA_CONSOLE_LOG": str(console_log),
                "TUOBA_CARD_SIZE": str(card_size or ""),
                "TUOBA_NOT_RUN": json.dumps(not_run),
                # a check that runs tuoba itself (the ai recipe's run-remote) uses this cache
                **({"TUOBA_CACHE_DIR": str(cache_dir)} if cache_dir else {}),
            }
            proc = run.run(cmd, env=env, check=False, cwd=data_dir)
            boot_seconds = guest.boot_seconds
    ui.info(f"serial console log: {console_log}")
    if proc.returncode != 0:
        raise GuestCheckError(
            f"guest checks failed for {image.name} (pytest exit code {proc.returncode})",
            hint=f"see the report above{f' and {junit}' if junit else ''}; console: {console_log}",
        )
    return CheckResult(boot_seconds, junit, console_log)
