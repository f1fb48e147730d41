"""The stage-2 ELF audit: every ELF file in the image must be for the board's architecture
(or, a bpf/ program's object, for the kernel's BPF machine), linked statically or against
musl's loader, and carry no mark of GCC or glibc.

The table (file, type, linker, compiler, size) goes into the image's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from elftools.elf.segments import InterpSegment

from tuoba import arch as arches
from tuoba.errors import BuildError

GLIBC_LIBS = ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "ld-linux")
GCC_MARKS = ("GCC: (", "libgcc_s")


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def inspect(path: Path) -> dict[str, Any]:
    """What the audit knows of one ELF file."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        interp = None
        needed: list[str] = []
        versions: list[str] = []
        for seg in elf.iter_segments():
            if isinstance(seg, InterpSegment):
                interp = seg.get_interp_name()
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                needed += [
                    getattr(t, "needed", "")
                    for t in sec.iter_tags()
                    if t.entry.d_tag == "DT_NEEDED"
                ]
            elif isinstance(sec, GNUVerNeedSection):
                for _verneed, auxs in sec.iter_versions():
                    versions += [str(aux.name) for aux in auxs]
        comment_sec = elf.get_section_by_name(".comment")
        comments = []
        if comment_sec is not None:
            comments = [c.decode(errors="replace") for c in comment_sec.data().split(b"\0") if c]
        return {
            "type": elf["e_type"],
            "machine": elf["e_machine"],
            "interp": interp,
            "needed": needed,
            "versions": versions,
            "comment": comments,
        }


def problems(info: dict[str, Any], arch: str, musl_loader: str) -> list[str]:
    found = []
    machine = arches.of(arch).elf_machine
    if info["machine"] == "EM_BPF" and info["type"] == "ET_REL":
        pass  # a bpf/ program's object: the kernel's BPF machine is its target, on every board
    elif info["machine"] != machine:
        found.append(f"built for {info['machine']}, the board is {arch} ({machine})")
    if info["interp"] not in (None, f"/lib/{musl_loader}"):
        found.append(f"loader {info['interp']} (only static or /lib/{musl_loader})")
    glibc = [n for n in info["needed"] if n.startswith(GLIBC_LIBS)]
    glibc += [v for v in info["versions"] if v.startswith("GLIBC_")]
    if glibc:
        found.append(f"linked against glibc ({', '.join(glibc)})")
    gcc = [c for c in info["comment"] if any(m in c for m in GCC_MARKS)]
    if gcc:
        found.append(f"GCC output (.comment: {'; '.join(gcc)})")
    return found


def audit_tree(root: Path, arch: str, musl_loader: str) -> list[dict[str, Any]]:
    """Audit every ELF file under root; fail the build on the first offenders."""
    table: list[dict[str, Any]] = []
    bad: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or not is_elf(path):
            continue
        rel = str(path.relative_to(root))
        try:
            info = inspect(path)
        except ELFError as e:
            bad.append(f"/{rel}: unreadable ELF ({e})")
            continue
        bad += [f"/{rel}: {p}" for p in problems(info, arch, musl_loader)]
        table.append(
            {
                "file": rel,
                "type": info["type"].removeprefix("ET_"),
                "linker": info["interp"]
                or ("relocatable" if info["type"] == "ET_REL" else "static"),
                "compiler": next(
                    (c for c in info["comment"] if "clang" in c or "GCC" in c), "(none)"
                ),
                "size": path.stat().st_size,
            }
        )
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise BuildError(
            "the stage-2 ELF audit failed: " + "; ".join(bad[:5]) + more,
            hint="stage 2 takes only programs built here by clang against musl; "
            "find which package or overlay put the file there",
        )
    return table
