"""The build host: which tools it has, binfmt for foreign-arch chroots, pinned tools we fetch.

`tuoba doctor` reports on all of it; `--fix` installs what is missing through apt.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from tuoba import apt, lock, run, sources, ui
from tuoba import arch as arches
from tuoba import board as boards
from tuoba.cache import Store
from tuoba.config import Field, load_yaml, string
from tuoba.errors import HostToolError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Where a newer QEMU comes from when the host release's lacks a board's machine (raspi4b needs
# QEMU >= 9; Debian 12 has 7.2, its backports 10). The archive URI is the host's own.
BACKPORTS_LIST = Path("/etc/apt/sources.list.d/tuoba-backports.sources")
QEMU_PACKAGES = ("qemu-system-arm", "qemu-user-static")  # one QEMU version on the host


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: Callable[[], None] | None = None


# Host commands every stage-1 build needs, with the Debian package that provides them.
HOST_TOOLS = (
    "qemu-system-aarch64",
    "qemu-system-arm",
    "qemu-aarch64-static",
    "qemu-arm-static",
    "update-binfmts",
    "sfdisk",
    "mkfs.ext4",
    "debugfs",
    "mkfs.vfat",
    "mcopy",
    "depmod",
    "lsblk",
    "losetup",
    "xz",
    "zstd",
    "diffoscope",  # names what differs when `tuoba build --check-reproducible` finds a difference
    "ssh-keygen",
    "ssh",
    "apt-get",
    "dpkg-deb",
    "systemctl",
    "cpio",
    "clang",
    "ld.lld",
    "llvm-objcopy",
    "pahole",
    "flex",
    "bison",
    "bc",
    "make",
    "ccache",
    "tar",
    "fdtput",
    "qemu-img",
    # U-Boot for boards that need one built (GCC: U-Boot 2023.01's arm64 build needs it)
    "aarch64-linux-gnu-gcc",
    "swig",
    # boards' own device trees; mkimage: the test suite makes a Zynq boot image with it
    "mkimage",
    "dtc",
    # the kernel's own patches (kernel/patches/); bpf/: vmlinux.h from the kernel's BTF and
    # the programs' skeletons
    "patch",
    "bpftool",
)
# Headers the kernel build's host programs compile against: {header: Debian package}.
# U-Boot's host tools and binman (run by the system python3) need the rest.
HOST_HEADERS = {
    "/usr/include/libelf.h": "libelf-dev",
    "/usr/include/openssl/ssl.h": "libssl-dev",
    "/usr/include/gnutls/gnutls.h": "libgnutls28-dev",
    "/usr/include/uuid/uuid.h": "uuid-dev",
    "/usr/include/python3.*/Python.h": "python3-dev",
    "/usr/lib/python3/dist-packages/elftools/__init__.py": "python3-pyelftools",
    "/usr/lib/python3/dist-packages/setuptools/__init__.py": "python3-setuptools",
    # the test suite builds bpf/fr's loader for the host too (a kernel without its hook)
    "/usr/include/bpf/libbpf.h": "libbpf-dev",
}


def apt_install(packages: list[str], release: str | None = None) -> None:
    if not packages:
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    target = ["-t", release] if release else []
    run.run(["apt-get", "update", "-q"], env=env)
    run.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *target, *packages], env=env
    )


# --- QEMU machines ------------------------------------------------------------------------------


@functools.cache
def qemu_machines(binary: str) -> tuple[str, frozenset[str]]:
    """(version, machine names) of an installed qemu-system binary."""
    version = run.run([binary, "--version"], capture=True).stdout.split("\n")[0]
    found = re.search(r"version (\S+)", version)
    listing = run.run([binary, "-M", "help"], capture=True).stdout
    names = {ln.split()[0] for ln in listing.splitlines()[1:] if ln.strip()}
    return (found.group(1) if found else version), frozenset(names)


def require_qemu_machine(arch: str, machine: str) -> None:
    """machine: a machine name, as `qemu -M help` lists it."""
    binary = run.require(arches.of(arch).qemu_system)
    version, names = qemu_machines(binary)
    if machine not in names:
        raise HostToolError(
            f"QEMU {version} ({binary}) has no machine '{machine}'",
            hint=f"{host_release()}-backports carries a QEMU that has it: "
            "run 'tuoba doctor --fix' (installs it from there)",
        )


def host_release() -> str:
    """The host's Debian codename (VERSION_CODENAME in /etc/os-release)."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    found = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return found.group(1) if found else "bookworm"


def install_backports_qemu() -> None:
    """Install QEMU from the host release's backports (see enable_backports)."""
    apt_install(list(QEMU_PACKAGES), release=enable_backports("a QEMU that has raspi4b"))
    qemu_machines.cache_clear()


def enable_backports(why: str) -> str:
    """Enable the host release's backports suite (on the host's own Debian mirror); its name."""
    release = host_release()
    suite = f"{release}-backports"
    if not any(suite in s.suites for s in apt.host_sources()):
        mirrors = apt.debian_mirrors(release)
        if not mirrors:
            raise HostToolError(
                f"no apt source for Debian {release} to take the {suite} mirror from",
                hint=f"add {suite} to /etc/apt/sources.list.d by hand, then rerun",
            )
        BACKPORTS_LIST.write_text(
            f"# written by tuoba doctor --fix: newer tools than {release}'s ({why})\n"
            f"Types: deb\nURIs: {mirrors[0]}\nSuites: {suite}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        ui.info(f"enabled {suite} from {mirrors[0]} in {BACKPORTS_LIST}")
    return suite


# --- e2fsprogs: reproducible ext4 ---------------------------------------------------------------

# mke2fs -d sets every inode's times from SOURCE_DATE_EPOCH from 1.47.1 on; before it, the
# change times of the files it copies (the moment of this build's staging) go into the image.
E2FSPROGS_REPRODUCIBLE = (1, 47, 1)


@functools.cache
def e2fsprogs_version() -> tuple[int, ...]:
    text = run.run(["mkfs.ext4", "-V"], capture=True, capture_stderr=True)
    found = re.search(r"mke2fs (\d+)\.(\d+)(?:\.(\d+))?", text.stdout + text.stderr)
    return tuple(int(x or 0) for x in found.groups()) if found else (0,)


def e2fsprogs_check() -> Check:
    if (
        shutil.which("mkfs.ext4") is None
        and shutil.which("mkfs.ext4", path="/usr/sbin:/sbin") is None
    ):
        return Check("reproducible ext4", False, "mkfs.ext4 is missing (package e2fsprogs)")
    have = e2fsprogs_version()
    shown = ".".join(map(str, have))
    if have >= E2FSPROGS_REPRODUCIBLE:
        return Check("reproducible ext4", True, f"e2fsprogs {shown} honours SOURCE_DATE_EPOCH")

    def fix() -> None:
        apt_install(["e2fsprogs"], release=enable_backports("an e2fsprogs for reproducible ext4"))
        e2fsprogs_version.cache_clear()

    return Check(
        "reproducible ext4", False,
        f"e2fsprogs {shown} writes build-time inode times (1.47.1 or later honours "
        f"SOURCE_DATE_EPOCH; {host_release()}-backports has it)", fix,
    )  # fmt: skip


def require_reproducible_ext4() -> None:
    c = e2fsprogs_check()
    if not c.ok:
        raise HostToolError(
            f"this host's ext4 images are not reproducible: {c.detail}",
            hint="run 'tuoba doctor --fix' (installs e2fsprogs from backports)",
        )


def qemu_machine_check(data_dir: Path) -> Check:
    """Every machine a board's qemu section names exists in the installed QEMU."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for name in boards.board_names(data_dir):
        b, _ = boards.load_board(data_dir, name)
        if b.qemu is not None:
            wanted.setdefault((b.arch, b.qemu.machine_type), []).append(name)
    missing = []
    for (arch, machine), names in sorted(wanted.items()):
        binary = shutil.which(arches.of(arch).qemu_system)
        if binary is None or machine not in qemu_machines(binary)[1]:
            missing.append(f"{machine} ({', '.join(names)})")
    machines = sorted({m for _, m in wanted})
    if not missing:
        return Check("qemu machines", True, ", ".join(machines))
    return Check("qemu machines", False, "missing " + ", ".join(missing), install_backports_qemu)


def binfmt_check(arch: str) -> Check:
    name = arches.of(arch).qemu
    entry = BINFMT / f"qemu-{name}"

    def fix() -> None:
        if not (BINFMT / "register").exists():
            run.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        run.run(["update-binfmts", "--enable", f"qemu-{name}"])

    if not (BINFMT / "register").exists():
        return Check(f"binfmt {name}", False, f"{BINFMT} is not mounted", fix)
    if not entry.exists():
        return Check(f"binfmt {name}", False, f"qemu-{name} is not registered", fix)
    text = entry.read_text()
    if not text.startswith("enabled"):
        return Check(f"binfmt {name}", False, f"qemu-{name} is registered but disabled", fix)
    flags = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:
        return Check(f"binfmt {name}", False, "registered without the F (fix-binary) flag", fix)
    return Check(f"binfmt {name}", True, "registered with F flag")


def require_binfmt(arch: str) -> None:
    c = binfmt_check(arch)
    if not c.ok:
        raise HostToolError(
            f"foreign-arch chroots for {arch} need binfmt: {c.detail}",
            hint="run 'tuoba doctor --fix' (mounts binfmt_misc, enables qemu-user-static)",
        )


def tool_checks() -> list[Check]:
    checks = []
    missing_pkgs: list[str] = []
    for tool in HOST_TOOLS:
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        pkg = run.TOOL_PACKAGES.get(tool, tool)
        if path is None:
            missing_pkgs.append(pkg)
        checks.append(Check(tool, path is not None, path or f"missing (package {pkg})"))
    for header, pkg in HOST_HEADERS.items():
        ok = any(Path(p).is_file() for p in glob.glob(header))
        if not ok:
            missing_pkgs.append(pkg)
        checks.append(Check(pkg, ok, header if ok else f"missing {header} (package {pkg})"))
    fix_all = (lambda: apt_install(sorted(set(missing_pkgs)))) if missing_pkgs else None
    return [dataclasses.replace(c, fix=None if c.ok else fix_all) for c in checks]


# --- pinned tools fetched by tuoba -------------------------------------------------------------


def pinned_tool(data_dir: Path, name: str) -> tuple[sources.Source, str]:
    doc = load_yaml(data_dir / "host" / "tools.yaml", display="host/tools.yaml")
    if not isinstance(doc.data, dict) or name not in doc.data:
        raise doc.error((), f"no pinned tool '{name}'")
    src, v = sources.parse_source(
        doc, (name,), doc.data[name], [Field("version", string, help="the tool's version")]
    )
    return src, v["version"]


MKOSI_SITE = ("usr", "lib", "python3", "dist-packages")


def mkosi_dir(data_dir: Path, store: Store, offline: bool = False) -> Path:
    """Unpack the pinned mkosi into the cache (once) and return its site-packages dir."""
    src, version = pinned_tool(data_dir, "mkosi")
    if (entry := store.get("tool", src.sha256)) is None:
        deb = sources.fetch(
            src, store, debian_mirrors=apt.debian_mirrors("bookworm"), offline=offline
        )
        with store.make(
            "tool", src.sha256, what=f"mkosi {version} unpacked", inputs={"deb": src.name}
        ) as tmp:
            run.run(["dpkg-deb", "-x", str(deb), str(tmp)])
        entry = store.get("tool", src.sha256)
        assert entry is not None  # (just made)
        ui.debug(f"mkosi {version} unpacked into {entry.data}")
    return entry.data.joinpath(*MKOSI_SITE)


def mkosi_check(data_dir: Path, store: Store) -> Check:
    src, version = pinned_tool(data_dir, "mkosi")
    if (entry := store.backend.get("tool", src.sha256)) is not None:
        return Check("mkosi", True, f"{version} in {entry.data}")
    return Check(
        "mkosi",
        False,
        f"pinned mkosi {version} not unpacked yet",
        lambda: _unpack_mkosi(data_dir, store),
    )


def _unpack_mkosi(data_dir: Path, store: Store) -> None:
    with lock.exclusive(store.root, "the cache", holder="tuoba doctor --fix"):
        mkosi_dir(data_dir, store)


def all_checks(data_dir: Path, cache_dir: Path) -> list[Check]:
    return [
        *tool_checks(),
        *(binfmt_check(a) for a in arches.NAMES),  # every arch a board may have
        mkosi_check(data_dir, Store(cache_dir)),
        qemu_machine_check(data_dir),
        e2fsprogs_check(),
    ]


def is_root() -> bool:
    return os.geteuid() == 0
