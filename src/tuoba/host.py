"""The build host: which tools it has, binfmt for foreign-arch chroots, pinned tools we fetch.

`tuoba doctor` reports on all of it; `--fix` installs what is missing through apt.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tuoba import apt, run, sources, ui
from tuoba.config import Field, load_yaml, string
from tuoba.errors import HostToolError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_ARCH = {"arm64": "aarch64", "armhf": "arm"}


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: Callable[[], None] | None = None


# Host commands every stage-1 build needs, with the Debian package that provides them.
HOST_TOOLS = (
    "qemu-system-aarch64",
    "qemu-aarch64-static",
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
)
# Headers the kernel build's host programs compile against: {header: Debian package}.
HOST_HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


def apt_install(packages: list[str]) -> None:
    if not packages:
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run.run(["apt-get", "update", "-q"], env=env)
    run.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)


def binfmt_check(arch: str) -> Check:
    name = QEMU_ARCH[arch]
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
        ok = Path(header).is_file()
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


def mkosi_dir(data_dir: Path, cache_dir: Path, offline: bool = False) -> Path:
    """Unpack the pinned mkosi into the cache (once) and return its site-packages dir."""
    src, version = pinned_tool(data_dir, "mkosi")
    dest = cache_dir / "tools" / f"mkosi-{version}-{src.sha256[:12]}"
    site = dest / "usr" / "lib" / "python3" / "dist-packages"
    if (site / "mkosi" / "__init__.py").is_file():
        return site
    deb = sources.fetch(
        src, cache_dir, debian_mirrors=apt.debian_mirrors("bookworm"), offline=offline
    )
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run.run(["dpkg-deb", "-x", str(deb), str(tmp)])
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    ui.debug(f"mkosi {version} unpacked into {dest}")
    return site


def _unpack_mkosi(data_dir: Path, cache_dir: Path) -> None:
    mkosi_dir(data_dir, cache_dir)


def mkosi_check(data_dir: Path, cache_dir: Path) -> Check:
    _, version = pinned_tool(data_dir, "mkosi")
    found = list((cache_dir / "tools").glob(f"mkosi-{version}-*/usr/lib/python3/dist-packages"))
    if found:
        return Check("mkosi", True, f"{version} in {found[0].parents[3]}")
    return Check(
        "mkosi",
        False,
        f"pinned mkosi {version} not unpacked yet",
        lambda: _unpack_mkosi(data_dir, cache_dir),
    )


def all_checks(data_dir: Path, cache_dir: Path) -> list[Check]:
    return [*tool_checks(), binfmt_check("arm64"), mkosi_check(data_dir, cache_dir)]


def is_root() -> bool:
    return os.geteuid() == 0
