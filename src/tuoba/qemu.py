"""Booting an image in QEMU and reaching it over ssh on a forwarded loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import signal
import socket
import stat
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
    # The first FAT partition (start, size in bytes) when the command line is read from a file
    # on it at each boot (QemuSpec.cmdline_file), as the board's firmware does.
    cmdline_card: tuple[int, int] | None = None
    scratch_card: bool = False  # the disk is an overlay made for this boot: QEMU writes to it
    # Without a network the checks read the serial console: it must show every one of these
    # (regular expressions) before they run; the image's stage says what marks a finished boot.
    console_ready: tuple[str, ...] = (r" login: ",)
    ports: tuple[int, ...] = ()  # the guest's TCP ports its services listen on, to forward


def emulated_cmdline(cmdline: str, q: QemuSpec) -> str:
    """The board's kernel command line as the emulated machine needs it: its console, and the
    emulation's extra words (then without `quiet`)."""
    if not (q.console or q.cmdline):
        return cmdline
    words = [w for w in cmdline.split() if not q.console or not w.startswith("console=")]
    if q.cmdline:
        words = [w for w in words if w != "quiet"] + list(q.cmdline)
    return " ".join([*words, *([f"console={q.console}"] if q.console else [])])


def card_cmdline(spec: BootSpec, tmp: Path) -> str:
    """The command line the board's firmware would read from the card as it is now (QEMU's
    copy-on-write overlay included), made fit for the emulated machine."""
    assert spec.cmdline_card is not None and spec.qemu.cmdline_file is not None
    start, size = spec.cmdline_card
    where = f"{spec.image}@@{start}"
    if spec.image.suffix == ".qcow2":  # mtools reads raw images: the partition, taken out
        fat = tmp / "firmware-partition.img"
        bs = 1 << 20 if start % (1 << 20) == size % (1 << 20) == 0 else 512
        run.run([run.require("qemu-img"), "dd", "-f", "qcow2", "-O", "raw", f"bs={bs}",
                 f"skip={start // bs}", f"count={size // bs}", f"if={spec.image}",
                 f"of={fat}"])  # fmt: skip
        where = str(fat)
    name = spec.qemu.cmdline_file
    proc = run.run(["mtype", "-i", where, f"::/{name}"], capture=True, capture_stderr=True,
                   check=False, env={"MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        raise GuestCheckError(
            f"cannot boot {spec.image.name}: its first FAT partition has no {name}, where the "
            "board's firmware reads the kernel command line",
            hint="build the image again (tuoba build), or put the file back on the card",
        )
    return emulated_cmdline(" ".join(proc.stdout.split()), spec.qemu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n different free loopback ports (the kernel may hand the same free port out twice)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# A second forwarded port, to the guest's PROBE_GUEST_PORT: a check reaches a guest service
# from the host through it (the firewall's checks: a port the rules drop must not answer).
PROBE_GUEST_PORT = 7777


def qemu_command(
    spec: BootSpec,
    ssh_port: int | None,
    serial: str,
    writable: bool,
    probe_port: int | None = None,
    forwards: dict[int, int] | None = None,
) -> list[str]:
    """`forwards`: guest port -> the loopback port of the host that reaches it."""
    q = spec.qemu
    snapshot = "off" if writable or spec.scratch_card else "on"
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
        for guest_port, host_port in (forwards or {}).items():
            fwd += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
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
        # appended to: after a reboot the console log goes on where the last boot left it
        path = serial.replace(",", ",,")
        cmd += ["-display", "none", "-monitor", "none",
                "-chardev", f"file,id=console,path={path},append=on",
                "-serial", "chardev:console"]  # fmt: skip
    return cmd


@contextlib.contextmanager
def emulated(spec: BootSpec, writable: bool = False) -> Iterator[BootSpec]:
    """The spec QEMU runs: its machine checked against the installed QEMU, the image as a larger
    card if asked, and the device tree the board's dtb_edits describe (an edited copy; the image
    keeps the board's own). A board whose firmware reads its command line from the card gets
    it from there, on a card of its own (an overlay: what a boot writes, the next one reads)."""
    for path in (spec.kernel, *(p for p in (spec.initrd, spec.dtb) if p)):
        if not path.is_file():
            raise InputError(f"cannot boot: {path} does not exist", hint="run 'tuoba build' first")
    device = is_block_device(spec.image)
    if not (device or spec.image.is_file()):
        raise InputError(
            f"cannot boot: {spec.image} does not exist", hint="run 'tuoba build' first"
        )
    if device and writable:
        raise InputError(
            f"{spec.image} is a block device: QEMU only reads a card, through an overlay",
            hint="boot it without --writable; its changes are thrown away",
        )
    host.require_qemu_machine(spec.arch, spec.qemu.machine_type)
    with tempfile.TemporaryDirectory(prefix="tuoba-qemu-") as tmp:
        if spec.card_size is None and (device or (spec.cmdline_card is not None and not writable)):
            spec = dataclasses.replace(spec, card_size=card_size_for(spec))
        if spec.card_size is not None:
            card = _larger_card(spec, Path(tmp))
            spec = dataclasses.replace(spec, image=card, scratch_card=True)
        if spec.cmdline_card is not None:
            spec = dataclasses.replace(spec, cmdline=card_cmdline(spec, Path(tmp)))
        if spec.dtb is not None and spec.qemu.dtb_edits:
            spec = dataclasses.replace(spec, dtb=_edited_dtb(spec, Path(tmp)))
        yield spec


def is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def disk_size(path: Path) -> int:
    """The size of an image file, or of a block device (a card, a loop device)."""
    if not is_block_device(path):
        return path.stat().st_size
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise InputError(
            f"cannot read {path}: {e.strerror}", hint="reading a card needs root (or its group)"
        ) from e
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def card_size_for(spec: BootSpec) -> int:
    """The card QEMU attaches when none was asked for: the image's or the device's size. QEMU's
    SD cards are a power of two in size; a real card rarely is (an "8 GB" one holds 7.4 GiB), so
    on an SD drive a card (or a copy of one) is rounded up, the room after its end reading as
    zeros. (Built images already are a power of two.)"""
    size = disk_size(spec.image)
    if spec.qemu.drive == "sd" and size & (size - 1):
        rounded = 1 << size.bit_length()
        ui.info(
            f"emulation: {spec.image} ({size >> 20} MiB) is attached as a {rounded >> 20} MiB "
            "card: QEMU's SD cards are a power of two in size"
        )
        return rounded
    return size


def _larger_card(spec: BootSpec, tmp: Path) -> Path:
    """A qcow2 overlay of the raw image with a larger virtual size: the guest sees a card with
    free space after the image (as when a small image is written to a large card); the image
    itself is only read."""
    assert spec.card_size is not None
    image_size = disk_size(spec.image)
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
    run.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", str(spec.image.resolve()), "-F",
             "raw", str(overlay), str(spec.card_size)])  # fmt: skip
    if spec.card_size != image_size:
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
    forwards: dict[int, int] = dataclasses.field(default_factory=dict)  # guest port -> host's


@contextlib.contextmanager
def booted(
    spec: BootSpec, console_log: Path, timeout: float = 180.0, keep_card: Path | None = None
) -> Iterator[Guest]:
    """Boot the image, wait until it is up (ssh answers; without a network: the serial console
    shows a login prompt), yield the guest; QEMU is always stopped afterwards, also on failure,
    Ctrl-C or SIGTERM. `keep_card`: where to keep the card the guest wrote to (its overlay)."""
    if keep_card is not None and spec.card_size is None:  # (a card of its own, to keep)
        spec = dataclasses.replace(spec, card_size=card_size_for(spec))
    with emulated(spec) as run_spec:
        try:
            yield from _run_until_up(run_spec, console_log, timeout)
        finally:
            if keep_card is not None and run_spec.scratch_card:
                keep_card.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(run_spec.image, keep_card)
                ui.info(
                    f"the card as the guest left it (qcow2 over {spec.image.name}): {keep_card}"
                )


# A board whose firmware reads its command line from the card may reboot on the way up (the
# first boot of a card Raspberry Pi Imager customised runs its script, then reboots): QEMU
# (-no-reboot) then exits, and the board is booted again, its command line read again.
MAX_BOOTS = 3
# QEMU exits with 0 when the guest resets (a reboot) or powers off; the console tells them
# apart, when the last lines reach it (the kernel's own may not, cut short by the reset).
POWERED_OFF = (b"reboot: Power down", b"Reached target poweroff.target")
REBOOT_MARK = "tuoba: the guest rebooted"  # written to the console log between two boots


def _run_until_up(spec: BootSpec, console_log: Path, timeout: float) -> Iterator[Guest]:
    port, probe, *others = free_ports(2 + len(spec.ports))
    forwards = dict(zip(spec.ports, others, strict=True))
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.write_text("")
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    proc: subprocess.Popen[bytes] | None = None
    try:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="tuoba-boot-") as tmp:
            for boot in range(1, MAX_BOOTS + 1):
                offset = console_log.stat().st_size
                if boot > 1:
                    assert spec.cmdline_card is not None
                    spec = dataclasses.replace(spec, cmdline=card_cmdline(spec, Path(tmp)))
                    file = spec.qemu.cmdline_file
                    with console_log.open("a") as f:
                        f.write(f"\n{REBOOT_MARK}; boot {boot}, the kernel command line from "
                                f"the card's {file}: {spec.cmdline}\n")  # fmt: skip
                    ui.info(f"emulation: the guest rebooted; booting it again (boot {boot}), "
                            f"the command line read from the card's {file}")  # fmt: skip
                proc = run.spawn(qemu_command(spec, port, str(console_log), writable=False,
                                              probe_port=probe, forwards=forwards))  # fmt: skip
                what, ready = _readiness(spec, port, console_log, offset)
                if _wait_up(spec, proc, ready, what, console_log, offset, start, timeout):
                    guest = Guest(port, probe, console_log, proc, time.monotonic() - start,
                                  forwards)  # fmt: skip
                    ui.info(f"  guest up ({what}) after {guest.boot_seconds:.1f} s")
                    for guest_port, host_port in forwards.items():
                        ui.info(f"  the guest's port {guest_port}: 127.0.0.1:{host_port}")
                    yield guest
                    return
            raise GuestCheckError(
                f"the guest rebooted {MAX_BOOTS} times without finishing a boot",
                hint=_console_tail(console_log),
            )
    finally:
        if proc is not None:
            run.stop(proc)
        signal.signal(signal.SIGTERM, previous)


def _readiness(spec: BootSpec, port: int, console_log: Path, offset: int
               ) -> tuple[str, Callable[[], bool]]:  # fmt: skip
    if spec.qemu.network:
        return f"an ssh answer on 127.0.0.1:{port}", functools.partial(ssh_banner, port)
    what = (
        "the serial console to show a finished boot ("
        + ", ".join(repr(p) for p in spec.console_ready)
        + f", then {CONSOLE_QUIET:.0f} s without output)"
    )
    return what, ConsoleWatch(console_log, spec.console_ready, offset)


def _wait_up(spec: BootSpec, proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str,
             console_log: Path, offset: int, start: float, timeout: float) -> bool:  # fmt: skip
    """True once the guest is up; False when it rebooted and the board is to be booted again
    (its firmware reads the command line from the card); raises otherwise."""
    while not ready():
        if proc.poll() is not None:
            with console_log.open("rb") as f:
                f.seek(offset)
                said = f.read()
            rebooted = not any(p in said for p in POWERED_OFF)
            if proc.returncode == 0 and rebooted and spec.cmdline_card is not None:
                return False
            raise GuestCheckError(
                f"QEMU exited with code {proc.returncode} before {what}",
                hint=_console_tail(console_log),
            )
        if time.monotonic() > start + timeout:
            raise GuestCheckError(
                f"gave up waiting for {what} after {timeout:.0f} s",
                hint=_console_tail(console_log),
            )
        time.sleep(0.5)
    return True


CONSOLE_QUIET = 5.0  # seconds without console output that count as a settled boot
CONSOLE_SETTLE_MAX = 30.0  # a console that never goes quiet: ready this long after the patterns


class ConsoleWatch:
    """Ready once the console log shows every pattern and then stays quiet for CONSOLE_QUIET
    seconds: a login prompt alone races units that finish after getty (ssh, first-boot growth)
    on a slower machine, and the checks read a console that must hold the whole boot."""

    def __init__(self, log: Path, patterns: tuple[str, ...], offset: int = 0) -> None:
        self.log = log
        self.offset = offset  # where this boot's output starts
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
            with self.log.open("rb") as f:
                f.seek(self.offset)
                text = f.read().decode(errors="replace")
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
    with emulated(spec, writable) as run_spec:
        port, *others = free_ports(1 + len(spec.ports))
        forwards = dict(zip(spec.ports, others, strict=True))
        if spec.qemu.network:
            ui.info(f"ssh: forwarded on 127.0.0.1:{port}")
            for guest_port, host_port in forwards.items():
                ui.info(f"the guest's port {guest_port}: forwarded on 127.0.0.1:{host_port}")
        ui.info("quit QEMU with Ctrl-A X")
        proc = run.spawn(qemu_command(run_spec, port, "stdio", writable, forwards=forwards),
                         stdin=None)  # fmt: skip
        try:
            return proc.wait()
        finally:
            run.stop(proc)
