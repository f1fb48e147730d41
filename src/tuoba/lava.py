"""`tuoba export lava`: a LAVA v2 job for a built image, for a lab whose boards (and QEMU) run
under LAVA (docs.lavasoftware.org). The job is made from the image's manifest and the board's
data only: the artifacts it names are the files `tuoba release` serves, checked by the sha256
the manifest recorded.

- A board QEMU boots directly (boot method `direct`: qemu-aarch64) is deployed `to: tmpfs`,
  the kernel and the disk image, and booted `method: qemu` with the board's machine, CPU and
  memory as the job's context (LAVA's `qemu` device type).
- A board that boots its SD card (every other board) is deployed `to: flasher` (the device
  dictionary's `flasher_deploy_commands` write `{IMAGE}` to the card, e.g. through an SD mux),
  then booted `method: minimal`: power on, the board's own firmware boots the card.

Then a test action with an inline test definition: the in-guest subset of the image's guest
checks (the running kernel is the built one, root is ext4 and writable, the hostname, the
recipes' services, no failed unit, BTF). The image's full checks are pytest-testinfra files
that `tuoba test` runs from a host over ssh; they are not run here.

A TuobaOS image has no console login (recipes/base: root has no password, `*`, and ssh takes
keys only; stage 1 shows a systemd getty, stage 2 busybox's getty), and a LAVA test shell
needs a shell on the serial console. So the job adds to its own copy of the image, through
LAVA's deploy overlays (applied to the root partition on the worker before the card is
written or QEMU starts): LAVA's overlay (its test scripts) and a small tar written beside the
job, `NAME.lava-console.tar`, that gives root a shell on the console: a systemd drop-in
(`agetty --autologin root`) on stage 1, the image's inittab with its console getty replaced by
a root login shell on stage 2. The released image itself is never changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import shlex
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tuoba import arch as arches
from tuoba import manifest, publish
from tuoba.board import Board, load_board
from tuoba.errors import InputError
from tuoba.plan import image_name, overlay_trees
from tuoba.qemu import emulated_cmdline
from tuoba.recipe import load_recipe

JOB_SUFFIX = ".lava.yaml"
CONSOLE_SUFFIX = ".lava-console.tar"
DEFINITION = "tuoba-guest-checks"  # the inline test definition's name (LAVA: [-_a-zA-Z0-9.]+)

# The systemd drop-in that puts root on every serial console getty (the kernel's console=
# gets one from systemd-getty-generator) without a password, for the test run only.
GETTY_DROP_IN = "etc/systemd/system/serial-getty@.service.d/tuoba-lava.conf"
GETTY_AUTOLOGIN = """\
# Added by the LAVA job (tuoba export lava) to its copy of the image, not part of the image:
# root's shell on the serial console for LAVA's test shell (the image has no console login).
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
"""
CONSOLE_SHELL = "console::respawn:-/bin/sh"  # busybox init: '-' a login shell, with a ctty


@dataclasses.dataclass(frozen=True)
class Case:
    """One LAVA test case: a shell command that passes when it exits 0."""

    name: str
    command: str
    what: str  # for people: what passing it shows
    service: bool = False  # one of the recipes' services (described together)

    def step(self) -> str:
        # lava-test-case evals what follows --shell (`eval "$*"`): quoted, so that run.sh
        # does not expand its $(…) first
        return f"lava-test-case {self.name} --shell {shlex.quote(self.command)}"


@dataclasses.dataclass(frozen=True)
class Deploy:
    """How a kind of board is deployed, booted and timed under LAVA (minutes)."""

    to: str  # LAVA's deploy method
    boot: str  # LAVA's boot method
    deploy_minutes: int
    boot_minutes: int
    test_minutes: int
    job_minutes: int


# QEMU: download (~0.5 GB xz), unxz to the image's size, overlays; boot under TCG is minutes.
QEMU = Deploy("tmpfs", "qemu", deploy_minutes=20, boot_minutes=15, test_minutes=10,
              job_minutes=60)  # fmt: skip
# A card: the same, then writing several GB to an SD card; a first boot grows the root into
# the whole card, and slow boards (rpi3) take minutes to a shell.
CARD = Deploy("flasher", "minimal", deploy_minutes=45, boot_minutes=20, test_minutes=15,
              job_minutes=120)  # fmt: skip


def deploy_kind(board: Board) -> Deploy:
    """QEMU for a board QEMU boots itself (boot method `direct`), the card for the others."""
    return QEMU if board.boot.method == "direct" else CARD


@dataclasses.dataclass(frozen=True)
class Exported:
    job: Path
    console: Path
    manifest: manifest.Manifest
    device_type: str
    deploy: Deploy
    cases: tuple[Case, ...]


def export(
    data_dir: Path,
    out_dir: Path,
    board_name: str,
    stage: int,
    artifacts_url: str,
    device_type: str | None = None,
) -> Exported:
    """Write OUT/NAME.lava.yaml and OUT/NAME.lava-console.tar for the image of the board and
    stage built in out_dir; everything is checked before the first file is written."""
    base = artifacts_base(artifacts_url)
    board, _ = load_board(data_dir, board_name)
    m = find_built(out_dir, board.name, stage)
    kind = deploy_kind(board)
    dtype = device_type if device_type is not None else default_device_type(board)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", dtype):
        raise InputError(
            f"--device-type {dtype!r} is not a LAVA device type name",
            hint="letters, digits, . _ - (as the lab's device types are named)",
        )
    cases = tuple(guest_cases(m, enabled_services(data_dir, m)))
    console = console_overlay(data_dir, m)
    job = make_job(m, board, kind, cases, base, console, dtype)
    text = render(job, m, kind)
    job_file = out_dir / f"{m.name}{JOB_SUFFIX}"
    console_file = out_dir / f"{m.name}{CONSOLE_SUFFIX}"
    with publish.atomic(console_file) as tmp:
        tmp.write_bytes(console)
    with publish.atomic(job_file) as tmp:
        tmp.write_text(text)
    return Exported(job_file, console_file, m, dtype, kind, cases)


def artifacts_base(url: str) -> str:
    """The address a release directory is served at, without its trailing slash."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InputError(
            f"--artifacts-url {url!r} is not an http(s) URL of a directory",
            hint="give the address a release directory (tuoba release) is served at, like "
            "https://dl.example.org/tuoba/0.1.0",
        )
    return url.rstrip("/")


def find_built(out_dir: Path, board: str, stage: int) -> manifest.Manifest:
    """The manifest of the board's image of that stage in out_dir (a build's out/, or a
    release directory: both hold the manifests); this tuoba's version first."""
    found = []
    for m_file in sorted(out_dir.glob("tuoba-*.manifest.json")):
        m = manifest.Manifest.from_json(m_file.read_text(), str(m_file))
        if (m.board, m.stage) == (board, stage):
            found.append(m)
    if not found:
        raise InputError(
            f"no built image of board '{board}' stage {stage} in {out_dir}",
            hint=f"build it first: tuoba build --board {board} --stage {stage} "
            "(or give --out the directory that holds it)",
        )
    current = [m for m in found if m.name == image_name(board, stage)]
    if current:
        return current[0]
    if len(found) > 1:
        raise InputError(
            f"several built images of board '{board}' stage {stage} in {out_dir} "
            f"({', '.join(m.name for m in found)}), none of this tuoba's version",
            hint="build it with this tuoba, or give --out a directory with one of them",
        )
    return found[0]


def default_device_type(board: Board) -> str:
    """LAVA's name for the board's device type: `qemu` for QEMU; for a board, its device tree's
    name, as LAVA's own device types are named (bcm2711-rpi-4-b), else the board's name."""
    if deploy_kind(board) is QEMU:
        return "qemu"
    return board.kernel.dtbs[0].rsplit("/", 1)[-1] if board.kernel.dtbs else board.name


# --- what is checked in the guest -----------------------------------------------------------


def enabled_services(data_dir: Path, m: manifest.Manifest) -> tuple[str, ...]:
    """The systemd services the image's recipes enable (a stage without systemd has none)."""
    names: dict[str, None] = {}
    for name in m.recipes:
        recipe, _ = load_recipe(data_dir, name)
        section = recipe.for_arch(m.arch).section(m.stage)
        for s in section.services if section is not None else ():
            names.setdefault(s)
    return tuple(names)


def _has_package(m: manifest.Manifest, name: str) -> bool:
    return any(isinstance(p, dict) and p.get("name") == name for p in m.packages)


def _dq(text: str) -> str:
    """A shell double-quoted word for a literal value."""
    return '"' + re.sub(r'(["$`\\])', r"\\\1", text) + '"'


def _wait_for_boot(m: manifest.Manifest) -> list[str]:
    """Stage 1's console autologin shell comes up before the boot is done (serial-getty waits
    only for systemd-user-sessions), so the steps first wait for it, as `tuoba test` waits for
    "Startup finished". Not a case of its own: `|| true`, since a degraded system is the
    failed-units case's to report, and lava-test-runner runs the steps under `sh -e`."""
    if not _has_package(m, "systemd"):
        return []  # stage 2: busybox init has started everything before the console's shell
    return ["systemctl is-system-running --wait >/dev/null || true"]


def guest_cases(m: manifest.Manifest, enabled: tuple[str, ...]) -> list[Case]:
    """The guest checks a shell on the console can make, from what the manifest says the
    image is (the subset of its testinfra checks that needs no host and no ssh)."""
    version = str(m.kernel.get("version") or "")
    if not version:
        raise InputError(f"the manifest of {m.name} names no kernel version",
                         hint=manifest.REBUILD)  # fmt: skip
    cases = [
        Case("kernel-release", f'test "$(uname -r)" = {_dq(version)}',
             f"the running kernel is the one built ({version})"),
        Case("root-ext4-rw", 'grep -Eq "^[^ ]+ / ext4 rw[ ,]" /proc/mounts',
             "/ is the ext4 root partition, mounted read-write"),
        Case("hostname", f'test "$(hostname)" = {_dq(m.hostname)}',
             f"the board's hostname ({m.hostname})"),
    ]  # fmt: skip
    systemd = _has_package(m, "systemd")
    if systemd:
        for s in enabled:
            q = shlex.quote(s)
            cases.append(Case(
                f"service-{s}",
                f"systemctl is-enabled --quiet {q} && {{ systemctl is-active --quiet {q} || "
                f'{{ test "$(systemctl show -P Result {q})" = success && '
                f'test "$(systemctl show -P ExecMainStatus {q})" = 0 && '
                f'test "$(systemctl show -P ExecMainExitTimestampMonotonic {q})" != 0; }}; }}',
                f"service {s}",
                service=True,
            ))  # fmt: skip
        cases.append(Case(
            "no-failed-units",
            "systemctl list-units --failed --no-legend --plain; "
            'test -z "$(systemctl list-units --failed --no-legend --plain)"',
            "no systemd unit failed",
        ))  # fmt: skip
    elif _has_package(m, "dropbear"):
        cases.append(Case("ssh-server-running", "pidof dropbear",
                          "the ssh server (dropbear, started by init) runs"))  # fmt: skip
    requested = m.kernel.get("requested") or {}
    if isinstance(requested, dict) and requested.get("CONFIG_DEBUG_INFO_BTF") == "y":
        cases.append(Case("btf", "test -s /sys/kernel/btf/vmlinux",
                          "the kernel's BTF is there (/sys/kernel/btf/vmlinux), for CO-RE "
                          "eBPF programs"))  # fmt: skip
    return cases


# --- the console shell LAVA needs -------------------------------------------------------------


def console_overlay(data_dir: Path, m: manifest.Manifest) -> bytes:
    """A tar (extracted at / of the image's root partition by LAVA) that gives root a shell
    on the serial console; byte-for-byte a function of the image and the project's data."""
    prompt_ps1 = f"PS1='root@{m.hostname}:# '\n"
    if _has_package(m, "systemd"):
        files = {GETTY_DROP_IN: GETTY_AUTOLOGIN}
    else:
        inittab = overlay_file(data_dir, m, "etc/inittab")
        if inittab is None:
            raise InputError(
                f"{m.name} has no systemd and no /etc/inittab in its recipes' overlays: there "
                "is no console for LAVA's shell",
                hint="an image's init must be systemd or busybox init (recipes/base)",
            )
        profile = overlay_file(data_dir, m, "etc/profile") or ""
        files = {
            "etc/inittab": console_inittab(inittab, m.name),
            "etc/profile": profile
            + "# tuoba export lava: the prompt the LAVA job waits for\n"
            + prompt_ps1,
        }
    buf = io.BytesIO()
    mtime = m.source_date_epoch or 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def overlay_file(data_dir: Path, m: manifest.Manifest, rel: str) -> str | None:
    """A file as the image's overlays leave it (the plan's overlay trees: the last one that
    has it wins), or None."""
    board, _ = load_board(data_dir, m.board)
    recipes = []
    for name in m.recipes:
        recipe, _ = load_recipe(data_dir, name)
        if (section := recipe.for_arch(m.arch).section(m.stage)) is not None:
            recipes.append((recipe, section))
    for tree in reversed(overlay_trees(data_dir, board, recipes, m.stage)):
        if (tree.path / rel).is_file():
            return (tree.path / rel).read_text()
    return None


def console_inittab(inittab: str, image: str) -> str:
    """busybox init's table with its console getty (root has no password) replaced by a root
    login shell."""
    out, replaced = [], False
    for line in inittab.splitlines():
        fields = line.split(":", 3)
        if not line.startswith("#") and len(fields) == 4 and fields[0] == "console" \
                and fields[2] in ("respawn", "askfirst"):  # fmt: skip
            out += ["# tuoba export lava: root's shell on the console for LAVA's test shell "
                    f"(the image: {fields[3]})", CONSOLE_SHELL]  # fmt: skip
            replaced = True
        else:
            out.append(line)
    if not replaced:
        raise InputError(
            f"the inittab of {image} has no console entry to give LAVA a shell on",
            hint="busybox init's console line is like console::respawn:/sbin/getty … "
            "(recipes/base/overlay-s2/etc/inittab)",
        )
    return "\n".join(out) + "\n"


# --- the job ---------------------------------------------------------------------------------


def _file(m: manifest.Manifest, name: str, what: str) -> str:
    """The sha256 the manifest recorded for one of its files."""
    if name not in m.files:
        raise InputError(f"the manifest of {m.name} lists no {what} ({name})",
                         hint=manifest.REBUILD)  # fmt: skip
    return m.files[name]


def root_partition(m: manifest.Manifest) -> int:
    """The root's index among the image's partitions (LAVA's `partition:` counts from 0)."""
    parts = sorted(m.partitions, key=lambda p: int(p.get("start", 0)))
    for i, p in enumerate(parts):
        if p.get("mountpoint") == "/":
            if p.get("fs") != "ext4":
                raise InputError(f"the root of {m.name} is {p.get('fs')}, not ext4",
                                 hint="LAVA adds its overlays to ext4 root partitions")  # fmt: skip
            return i
    raise InputError(f"the manifest of {m.name} lists no root partition", hint=manifest.REBUILD)


def _prompt(hostname: str) -> str:
    """LAVA's prompt (a regular expression) for root's shell: Debian's bash shows
    root@HOST:~#, stage 2's our PS1 root@HOST:#."""
    return "root@" + re.sub(r"([.^$*+?()[{|])", r"\\\1", hostname) + ":"


def make_job(
    m: manifest.Manifest,
    board: Board,
    kind: Deploy,
    cases: tuple[Case, ...],
    base: str,
    console: bytes,
    device_type: str,
) -> dict[str, Any]:
    xz = f"{m.name}.img.xz"
    overlays: dict[str, Any] = {
        "lava": True,
        "console": {
            "url": f"{base}/{m.name}{CONSOLE_SUFFIX}",
            "sha256sum": hashlib.sha256(console).hexdigest(),
            "format": "tar",
            "path": "/",
        },
    }
    disk: dict[str, Any] = {
        "url": f"{base}/{xz}",
        "compression": "xz",
        "sha256sum": _file(m, xz, "compressed image"),
        "format": "ext4",
        "partition": root_partition(m),
        "overlays": overlays,
    }
    job: dict[str, Any] = {
        "job_name": f"TuobaOS {m.name}: {board.name} stage {m.stage}, boot and in-guest checks",
        "device_type": device_type,
        "priority": "medium",
        "visibility": "public",
        "timeouts": {"job": {"minutes": kind.job_minutes}},
        "metadata": {
            "tuoba.image": m.name,
            "tuoba.board": board.name,
            "tuoba.stage": m.stage,
            "tuoba.version": m.version,
            "tuoba.inputs_digest": m.inputs_digest,
            "tuoba.kernel": str(m.kernel.get("version")),
            "tuoba.checks": "the in-guest subset of the image's guest checks; the full checks "
            "are pytest-testinfra files run from a host over ssh (tuoba test)",
        },
    }
    if kind is QEMU:
        q = board.qemu
        if q is None:
            raise InputError(f"board '{board.name}' boots directly but has no qemu: section",
                             hint=f"boards/{board.name}/board.yaml")  # fmt: skip
        kernel = str(m.boot.get("kernel") or "")
        cmdline = emulated_cmdline(str(m.boot.get("cmdline") or ""), q)
        images: dict[str, Any] = {
            "kernel": {
                "url": f"{base}/{kernel}",
                "sha256sum": _file(m, kernel, "kernel"),
                "image_arg": f"-kernel {{kernel}} -append {shlex.quote(cmdline)}",
            },
        }
        if initrd := m.boot.get("initrd"):
            images["initrd"] = {"url": f"{base}/{initrd}",
                                "sha256sum": _file(m, str(initrd), "initrd"),
                                "image_arg": "-initrd {initrd}"}  # fmt: skip
        if q.dtb:
            dtb = next((f for f in m.files if f.endswith(f".{q.dtb}") or f == q.dtb), q.dtb)
            images["dtb"] = {"url": f"{base}/{dtb}", "sha256sum": _file(m, dtb, "device tree"),
                             "image_arg": "-dtb {dtb}"}  # fmt: skip
        images["rootfs"] = disk | {"image_arg": f"-drive format=raw,if={q.drive},file={{rootfs}}"}
        job["context"] = {
            "arch": arches.of(m.arch).kernel,  # LAVA's qemu names: arm64, arm
            "machine": q.machine,
            **({"cpu": q.cpu} if q.cpu else {}),
            "memory": q.memory,
            **({"extra_options": [f"-smp {q.smp}"]} if q.smp else {}),
        }
        deploy: dict[str, Any] = {"to": kind.to, "images": images}
        boot: dict[str, Any] = {"method": kind.boot, "media": "tmpfs"}
    else:
        # {IMAGE} in the device dictionary's flasher_deploy_commands: the decompressed image
        deploy = {"to": kind.to, "images": {"image": disk}}
        boot = {"method": kind.boot}
    deploy["timeout"] = {"minutes": kind.deploy_minutes}
    boot |= {"prompts": [_prompt(m.hostname)], "timeout": {"minutes": kind.boot_minutes},
             # LAVA first waits for the kernel's banner ("Linux version …"), which the image's
             # `quiet` command line keeps off the console: an empty message skips that wait
             "parameters": {"kernel-start-message": ""}}  # fmt: skip
    definition = {
        "metadata": {
            "format": "Lava-Test Test Definition 1.0",
            "name": DEFINITION,
            "description": describe(m, cases),
            "scope": ["functional"],
        },
        "run": {"steps": [*_wait_for_boot(m), *(c.step() for c in cases)]},
    }
    test = {
        "timeout": {"minutes": kind.test_minutes},
        "definitions": [{
            "from": "inline",
            "name": DEFINITION,
            "path": f"inline/{DEFINITION}.yaml",
            "repository": definition,
        }],
    }  # fmt: skip
    job["actions"] = [{"deploy": deploy}, {"boot": boot}, {"test": test}]
    return job


def describe(m: manifest.Manifest, cases: tuple[Case, ...]) -> str:
    """The test definition's description: what its cases show, and what they leave out."""
    said = [c.what for c in cases if not c.service]
    if enabled := [c.name.removeprefix("service-") for c in cases if c.service]:
        said.insert(
            3,
            "the recipes' services are enabled and active, or ran and exited 0 (a first-boot "
            f"job, a daemon that ends when idle): {', '.join(enabled)}",
        )
    return (
        f"{m.name}: the in-guest subset of its guest checks, run on the serial console: "
        + "; ".join(said)
        + ". The image's full guest checks are pytest-testinfra files run from a host over ssh "
        f"by `tuoba test` ({', '.join(m.tests) or 'none listed'}); they are not run here."
    )


def render(job: dict[str, Any], m: manifest.Manifest, kind: Deploy) -> str:
    """The job as YAML, with a header saying what it does and what it leaves out."""
    how = (
        "QEMU (LAVA device type qemu): deploy to tmpfs, the kernel and the disk image"
        if kind is QEMU
        else "the board's SD card: deploy to flasher (the device dictionary's "
        "flasher_deploy_commands write {IMAGE}), boot minimal (power on; the board boots "
        "its card)"
    )
    header = [
        f"LAVA v2 job for the TuobaOS image {m.name}, written by `tuoba export lava`",
        f"({m.board}, stage {m.stage}, tuoba {m.version}, inputs {m.inputs_digest[:12]}).",
        f"How: {how}.",
        "Test: the in-guest subset of the image's guest checks (kernel release, root ext4",
        "read-write, hostname, the recipes' services and no failed unit where there is",
        "systemd, BTF). The full checks are pytest-testinfra files run from a host over",
        "ssh (`tuoba test`); they are not part of this job.",
        "The image has no console login (root has no password, ssh takes keys only), so",
        "this job adds to its copy of the image, on the root partition: LAVA's overlay and",
        f"{m.name}{CONSOLE_SUFFIX} (root's shell on the serial console). Serve that",
        "file beside the release's files. The released image is not changed.",
        "Submit: lavacli jobs submit " + f"{m.name}{JOB_SUFFIX}",
    ]
    body = yaml.safe_dump(job, sort_keys=False, default_flow_style=False, width=4096,
                          allow_unicode=True)  # fmt: skip
    return "".join(f"# {line}\n" for line in header) + body
