"""Booting an image in QEMU and reaching it over ssh on a forwarded loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from tuoba import arch as arches
from tuoba import host, run, ui
from tuoba.board import QemuSpec
from tuoba.errors import GuestCheckError, InputError


@dataclasses.dataclass(frozen=True)
class BootSpec:
    """Everything needed to boot a built image; read from its manifest."""

    arch: str
    image: Path
    kernel: Path
    initrd: Path | None
    dtb: Path | None
    cmdline: str
    qemu: QemuSpec
    card_size: int | None = None  # attach the image as a larger disk (a copy-on-write overlay)
    # Without a network the checks read the serial console: it must show every one of these
    # (regular expressions) before they run; the image's stage says what marks a finished boot.
    console_ready: tuple[str, ...] = (r" login: ",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A second forwarded port, to the guest's PROBE_GUEST_PORT: a check reaches a guest service
# from the host through it (the firewall's checks: a port the rules drop must not answer).
PROBE_GUEST_PORT = 7777


def qemu_command(
    spec: BootSpec, ssh_port: int | None, serial: str, writable: bool, probe_port: int | None = None
) -> list[str]:
    q = spec.qemu
    snapshot = "off" if writable else "on"
    fmt = "qcow2" if spec.image.suffix == ".qcow2" else "raw"
    cmd = [
        arches.of(spec.arch).qemu_system,
        "-M", q.machine,
        "-m", str(q.memory),
        "-kernel", str(spec.kernel),
        "-append", spec.cmdline,
        "-drive", f"file={spec.image},if={q.drive},format={fmt},snapshot={snapshot}",
        "-no-reboot",
    ]  # fmt: skip
    if q.cpu:
        cmd += ["-cpu", q.cpu]
    if q.smp:
        cmd += ["-smp", str(q.smp)]
    if spec.initrd is not None:
        cmd += ["-initrd", str(spec.initrd)]
    if spec.dtb is not None:
        cmd += ["-dtb", str(spec.dtb)]
    if q.network:
        fwd = "" if ssh_port is None else f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        if probe_port is not None:
            fwd += f",hostfwd=tcp:127.0.0.1:{probe_port}-:{PROBE_GUEST_PORT}"
        if q.nic == "board":  # the machine's own first NIC (e.g. the Zynq's GEM0)
            cmd += ["-nic", f"user{fwd}"]
        else:
            # romfile= : no PXE option ROM is needed for direct kernel boot (nor installed).
            cmd += [
                "-netdev",
                f"user,id=net0{fwd}",
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
            ]
            cmd += ["-device", "virtio-rng-pci"]
    if serial == "stdio":
        cmd += ["-nographic"]
    else:
        cmd += ["-display", "none", "-monitor", "none", "-serial", f"file:{serial}"]
    return cmd


@contextlib.contextmanager
def emulated(spec: BootSpec) -> Iterator[BootSpec]:
    """The spec QEMU runs: its machine checked against the installed QEMU, the image as a larger
    card if asked, and the device tree the board's dtb_edits describe (an edited copy; the image
    keeps the board's own)."""
    for path in (spec.image, spec.kernel, *(p for p in (spec.initrd, spec.dtb) if p)):
        if not path.is_file():
            raise InputError(f"cannot boot: {path} does not exist", hint="run 'tuoba build' first")
    host.require_qemu_machine(spec.arch, spec.qemu.machine_type)
    with tempfile.TemporaryDirectory(prefix="tuoba-qemu-") as tmp:
        if spec.card_size is not None:
            spec = dataclasses.replace(spec, image=_larger_card(spec, Path(tmp)))
        if spec.dtb is not None and spec.qemu.dtb_edits:
            spec = dataclasses.replace(spec, dtb=_edited_dtb(spec, Path(tmp)))
        yield spec


def _larger_card(spec: BootSpec, tmp: Path) -> Path:
    """A qcow2 overlay of the raw image with a larger virtual size: the guest sees a card with
    free space after the image (as when a small image is written to a large card); the image
    itself is only read."""
    assert spec.card_size is not None
    image_size = spec.image.stat().st_size
    mib = spec.card_size >> 20
    if spec.card_size < image_size:
        raise InputError(
            f"a {mib} MiB card cannot hold {spec.image.name} ({image_size >> 20} MiB)",
            hint="give --card-size at least the image's size",
        )
    if spec.qemu.drive == "sd" and spec.card_size & (spec.card_size - 1):
        raise InputError(
            f"QEMU's SD cards are a power of two in size; {mib} MiB is not",
            hint=f"try --card-size {(1 << spec.card_size.bit_length()) >> 20}M",
        )
    overlay = tmp / f"{spec.image.stem}.qcow2"
    qemu_img = run.require("qemu-img")
    run.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", str(spec.image), "-F", "raw",
             str(overlay), str(spec.card_size)])  # fmt: skip
    ui.info(f"emulation: the image is attached as a {mib} MiB card (copy-on-write overlay)")
    return overlay


def _edited_dtb(spec: BootSpec, tmp: Path) -> Path:
    """The board's device tree with its dtb_edits, for QEMU only."""
    assert spec.dtb is not None
    fdtput = run.require("fdtput")
    edited = tmp / spec.dtb.name
    shutil.copyfile(spec.dtb, edited)
    for edit in spec.qemu.dtb_edits:
        verb, *args = edit.split()
        run.run([fdtput, "-r" if verb == "delete-node" else "-d", str(edited), *args])
    ui.info(
        f"emulation: QEMU '{spec.qemu.machine}' gets {spec.dtb.name} with these edits "
        "(the image keeps the board's own): " + "; ".join(spec.qemu.dtb_edits)
    )
    return edited


def ssh_banner(port: int, timeout: float = 3.0) -> bool:
    """True once an ssh server answers with its banner on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


@dataclasses.dataclass
class Guest:
    ssh_port: int
    probe_port: int  # forwarded to the guest's PROBE_GUEST_PORT
    console_log: Path
    process: subprocess.Popen[bytes]
    boot_seconds: float = 0.0


@contextlib.contextmanager
def booted(spec: BootSpec, console_log: Path, timeout: float = 180.0) -> Iterator[Guest]:
    """Boot the image, wait until it is up (ssh answers; without a network: the serial console
    shows a login prompt), yield the guest; QEMU is always stopped afterwards, also on failure,
    Ctrl-C or SIGTERM."""
    with emulated(spec) as run_spec:
        yield from _run_until_up(run_spec, console_log, timeout)


def _run_until_up(spec: BootSpec, console_log: Path, timeout: float) -> Iterator[Guest]:
    port, probe = free_port(), free_port()
    while probe == port:  # (the kernel may hand the same free port out twice)
        probe = free_port()
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.write_text("")
    proc = run.spawn(qemu_command(spec, port, str(console_log), writable=False, probe_port=probe))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        start = time.monotonic()
        deadline = start + timeout
        ready: Callable[[], bool]
        if spec.qemu.network:
            what = f"an ssh answer on 127.0.0.1:{port}"
            ready = functools.partial(ssh_banner, port)
        else:
            what = (
                "the serial console to show a finished boot ("
                + ", ".join(repr(p) for p in spec.console_ready)
                + f", then {CONSOLE_QUIET:.0f} s without output)"
            )
            ready = ConsoleWatch(console_log, spec.console_ready)
        while not ready():
            if proc.poll() is not None:
                raise GuestCheckError(
                    f"QEMU exited with code {proc.returncode} before {what}",
                    hint=_console_tail(console_log),
                )
            if time.monotonic() > deadline:
                raise GuestCheckError(
                    f"gave up waiting for {what} after {timeout:.0f} s",
                    hint=_console_tail(console_log),
                )
            time.sleep(0.5)
        guest = Guest(port, probe, console_log, proc, time.monotonic() - start)
        ui.info(f"  guest up ({what}) after {guest.boot_seconds:.1f} s")
        yield guest
    finally:
        run.stop(proc)
        signal.signal(signal.SIGTERM, previous)


CONSOLE_QUIET = 5.0  # seconds without console output that count as a settled boot
CONSOLE_SETTLE_MAX = 30.0  # a console that never goes quiet: ready this long after the patterns


class ConsoleWatch:
    """Ready once the console log shows every pattern and then stays quiet for CONSOLE_QUIET
    seconds: a login prompt alone races units that finish after getty (ssh, first-boot growth)
    on a slower machine, and the checks read a console that must hold the whole boot."""

    def __init__(self, log: Path, patterns: tuple[str, ...]) -> None:
        self.log = log
        self.patterns = [re.compile(p) for p in patterns]
        self.size = -1
        self.quiet_since = 0.0
        self.matched_at: float | None = None

    def __call__(self) -> bool:
        try:
            size = self.log.stat().st_size
        except OSError:
            return False
        now = time.monotonic()
        if self.matched_at is None:
            text = self.log.read_text(errors="replace")
            if not all(p.search(text) for p in self.patterns):
                self.size, self.quiet_since = size, now
                return False
            self.matched_at = now
        if size != self.size:
            self.size, self.quiet_since = size, now
        # settled: quiet for a while, or (a unit that keeps printing) long enough after
        quiet = now - self.quiet_since >= CONSOLE_QUIET
        return quiet or now - self.matched_at >= CONSOLE_SETTLE_MAX


def _console_tail(log: Path, lines: int = 20) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return f"serial console ({log}), last lines:\n  " + "\n  ".join(tail)


def interactive(spec: BootSpec, writable: bool) -> int:
    """Boot with the serial console on this terminal (Ctrl-A X quits QEMU)."""
    with emulated(spec) as run_spec:
        port = free_port()
        if spec.qemu.network:
            ui.info(f"ssh: forwarded on 127.0.0.1:{port}")
        ui.info("quit QEMU with Ctrl-A X")
        proc = run.spawn(qemu_command(run_spec, port, "stdio", writable), stdin=None)
        try:
            return proc.wait()
        finally:
            run.stop(proc)
