"""TuobaOS's own eBPF programs (`bpf/<name>/`), and building them for one image.

    bpf/<name>/program.yaml     what it is: description, loader (the command it installs),
                                kernel_features it needs, kernel_symbols it attaches to, arch,
                                objects (its BPF objects; default: one, <name>)
    bpf/<name>/<object>.bpf.c   the BPF side, CO-RE: it includes vmlinux.h, which is made for
                                each build from that build's kernel BTF, never checked in
    bpf/<name>/<loader>.c       the user-space side: includes <object>.lskel.h, the object's
                                light skeleton, for each object it loads
    bpf/<name>/*.h              headers both sides share
    bpf/common/*.h              headers every loader may include (tuoba_skel.h: the bpf() and
                                perf_event_open() calls the light skeletons do not make)

A light skeleton (`bpftool gen skeleton -L`) carries the object's maps, programs and CO-RE
relocations as a loader program (BPF_PROG_TYPE_SYSCALL) that the kernel runs, so the loader
makes raw bpf() calls and needs only libbpf's headers (<bpf/skel_internal.h>): no libbpf and
no libelf at run time. It loads every program of its object: a loader that chooses between
programs has an object for each (`objects:`).

For an image the bpf step makes, per program: vmlinux.h (`bpftool btf dump`), each object
(`clang -target bpf`) and its light skeleton, and the loader, cross-compiled by clang with the
stage-1 root tree as its sysroot (its C library, and libbpf's headers from the image's
libbpf-dev). The image's `<name>.bpf.o`, for bpftool and for reading, is the object, or the
objects linked into one (`bpftool gen object`). The results are cached by the kernel's BTF,
the programs' files, the tools (bpftool whole: its libbpf writes the loader program), the root
tree's inputs digest (the sysroot of both sides) and the headers named below.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from tuoba import arch as arches
from tuoba import run, sources, ui
from tuoba.cache import Store
from tuoba.config import Field, list_of, load_yaml, matching, name_list, parse_mapping, string
from tuoba.digest import digest
from tuoba.errors import BuildError, InputError
from tuoba.kernel import feature_names

INSTALL_DIR = "/usr/bin"  # loaders
OBJECT_DIR = "/usr/lib/tuoba/bpf"  # the BPF objects, for bpftool and for reading
COMMON = "common"  # bpf/common/: headers for every loader
# In the sysroot (libbpf-dev is in the image): what a light skeleton includes
SKEL_HEADER = "usr/include/bpf/skel_internal.h"
# The headers the programs and loaders are built with, besides their own and the C library's:
# libbpf's (both sides: the BPF side takes them from the sysroot with -isystem, ahead of the
# host's /usr/include) and the uapi ones defining the bpf() and perf_event_open() calls. The
# cache key covers them by content, besides the tree's digest (the loaders link against
# nothing but the C library).
HEADERS = (
    "usr/include/bpf",
    "usr/include/linux/bpf.h",
    "usr/include/linux/bpf_common.h",
    "usr/include/linux/perf_event.h",
)
BPF_TOOLS = ("clang", "ld.lld", "bpftool", "llvm-strip")
SOURCE_NAME = "/usr/src/tuoba/bpf"  # what the objects' line info calls bpf/


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    directory: Path
    description: str
    loader: str  # the command the image gets, /usr/bin/<loader>
    kernel_features: tuple[str, ...]
    kernel_symbols: tuple[str, ...]  # kernel functions it attaches to (System.map has them)
    arch: tuple[str, ...]  # the architectures it runs on (empty: every one)
    objects: tuple[str, ...]  # its BPF objects: <object>.bpf.c, each with a light skeleton

    def files(self) -> list[Path]:
        """What it is built from: its own directory's files and bpf/common/'s."""
        dirs = (self.directory, self.directory.parent / COMMON)
        return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())

    @property
    def install(self) -> str:
        return f"{INSTALL_DIR}/{self.loader}"

    @property
    def object_install(self) -> str:
        return f"{OBJECT_DIR}/{self.name}.bpf.o"


def program_dir(data_dir: Path) -> Path:
    return data_dir / "bpf"


def program_names(data_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in program_dir(data_dir).glob("*/program.yaml"))


_loader = matching(
    r"[a-z][a-z0-9-]{0,39}",
    "a command name",
    hint="lower-case letters, digits and -, like tuoba-fr",
)
# (its light skeleton is the C struct <object>_bpf)
_object = matching(
    r"[a-z][a-z0-9_]{0,39}",
    "an object name",
    hint="lower-case letters, digits and _ (a C name), like fr_skip",
)


def load_program(data_dir: Path, name: str) -> Program:
    directory = program_dir(data_dir) / name
    display = f"bpf/{name}/program.yaml"
    if not (directory / "program.yaml").is_file():
        raise InputError(
            f"no eBPF program bpf/{name}/ (no {display})",
            hint=f"known: {', '.join(program_names(data_dir)) or 'none'}",
        )
    doc = load_yaml(directory / "program.yaml", display=display)
    v = parse_mapping(
        doc,
        (),
        doc.data,
        [
            Field("description", string, help="one line: what it does"),
            Field("loader", _loader, help="the command it installs in /usr/bin"),
            Field("kernel_features", name_list, (), help="kernel features it needs"),
            Field("kernel_symbols", name_list, (), help="kernel functions it attaches to"),
            Field("arch", name_list, (), help="the architectures it runs on (default: all)"),
            Field("objects", list_of(_object), (),
                  help="its BPF objects, each <object>.bpf.c (default: one, the program's name)"),
        ],
    )  # fmt: skip
    for i, a in enumerate(v["arch"]):
        if a not in arches.ARCHES:
            raise doc.error(("arch", i), f"unknown arch '{a}' (known: {', '.join(arches.ARCHES)})")
    known = feature_names(data_dir)
    for i, f in enumerate(v["kernel_features"]):
        if f not in known:
            raise doc.error(("kernel_features", i), f"unknown feature '{f}'",
                            hint=f"known: {', '.join(known) or 'none'}")  # fmt: skip
    for i, o in enumerate(v["objects"]):
        if o in v["objects"][:i]:
            raise doc.error(("objects", i), f"the object '{o}' is named twice")
        if not (directory / f"{o}.bpf.c").is_file():
            raise doc.error(("objects", i), f"bpf/{name}/ has no {o}.bpf.c",
                            hint="each object is built from its own <object>.bpf.c")  # fmt: skip
        if o == name and len(v["objects"]) > 1:
            raise doc.error(("objects", i), f"the object '{o}' is named like the program",
                            hint=f"the image's {name}.bpf.o is its objects linked into one: "
                            "name them otherwise")  # fmt: skip
    prog = Program(name=name, directory=directory, **(v | {"objects": v["objects"] or (name,)}))
    if not v["objects"] and not (directory / f"{name}.bpf.c").is_file():
        raise doc.error((), f"bpf/{name}/ has no {name}.bpf.c",
                        hint=f"a program is {name}.bpf.c (BPF side) and {prog.loader}.c (its "
                        "loader), or objects: [...] each with its <object>.bpf.c")  # fmt: skip
    if not (directory / f"{prog.loader}.c").is_file():
        raise doc.error((), f"bpf/{name}/ has no {prog.loader}.c",
                        hint=f"its loader {prog.loader} is built from {prog.loader}.c")  # fmt: skip
    return prog


# --- building --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Built:
    loader: Path
    object: Path  # for the image: the program's object, or its objects linked into one


@dataclasses.dataclass(frozen=True)
class Target:
    """What a program is compiled for: the kernel's name of the architecture (the BPF side's
    __TARGET_ARCH_, for PT_REGS_*) and the loader's clang --target and --sysroot (None: the
    build host's own compiler target and root). `cc`, when given, is the loader's whole
    compiler command instead (stage 2: the musl toolchain's clang, linking statically), and
    `libbpf` the directory holding libbpf's headers (bpf/*.h) when the sysroot has none."""

    kernel_arch: str
    clang_target: str | None = None
    sysroot: Path | None = None
    cc: tuple[str, ...] = ()
    libbpf: Path | None = None

    @property
    def include(self) -> Path:
        return (self.sysroot or Path("/")) / "usr/include"

    @property
    def includes(self) -> tuple[Path, ...]:
        """Where both sides find the headers beside their own: libbpf's, then the C library's
        and the kernel's uapi ones."""
        return (*(p for p in (self.libbpf,) if p), self.include)

    def loader_cc(self) -> list[str]:
        if self.cc:
            return list(self.cc)
        cross = [f"--target={self.clang_target}"] if self.clang_target else []
        if self.sysroot:
            cross += [f"--sysroot={self.sysroot}", "--gcc-toolchain=/usr"]
        return ["clang", *cross, "-fuse-ld=lld"]


def image_target(arch: str, tree: Path) -> Target:
    """Stage 1: the image's root tree is the sysroot (glibc, and libbpf-dev's headers)."""
    a = arches.of(arch)
    return Target(kernel_arch=a.kernel, clang_target=a.clang_target, sysroot=tree)


def musl_target(arch: str, cc: list[str], sysroot: Path, libbpf: Path) -> Target:
    """Stage 2: the loaders built by the stage-2 toolchain's clang (`cc`: musl, compiler-rt),
    statically; libbpf's headers from its pinned source (userland/libbpf)."""
    a = arches.of(arch)
    return Target(
        kernel_arch=a.kernel, clang_target=a.clang_target, sysroot=sysroot,
        cc=(*cc, "-static"), libbpf=libbpf,
    )  # fmt: skip


# the kernel's names of the build host's architectures (os.uname().machine)
HOST_KERNEL_ARCH = {"x86_64": "x86", "aarch64": "arm64", "armv7l": "arm", "armv8l": "arm"}


def host_target() -> Target:
    """The build host itself (the test suite runs the loaders on the host's kernel)."""
    machine = os.uname().machine
    if machine not in HOST_KERNEL_ARCH:
        raise BuildError(f"no BPF target for this host's architecture {machine}",
                         hint=f"known: {', '.join(HOST_KERNEL_ARCH)}")  # fmt: skip
    return Target(kernel_arch=HOST_KERNEL_ARCH[machine])


# bump when compile_program's commands change (its flags are not otherwise in the key)
BUILD_REV = 4


def _tool_ids() -> dict[str, str]:
    """What builds the programs: clang, lld and llvm-strip by version, and bpftool whole (its
    libbpf writes the light skeleton's loader program: `bpftool version` names both)."""
    return {
        "clang": run.output(["clang", "--version"]).splitlines()[0],
        "ld.lld": run.output(["ld.lld", "--version"]).splitlines()[0],
        "llvm-strip": run.output(["llvm-strip", "--version"]).strip(),
        "bpftool": run.output(["bpftool", "version"]).strip(),
    }


def header_ids(root: Path) -> dict[str, str]:
    """sha256 of each of the HEADERS in the tree `root` (a missing one is absent)."""
    files: list[Path] = []
    for name in HEADERS:
        path = root / name
        files += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(root)): sources.sha256_file(f) for f in files if f.is_file()}


def target_ids(target: Target) -> dict[str, object]:
    """What the key knows of a target: its compiler command (without the places of this
    machine's cache), and the headers it reads by content (the sysroot's, and libbpf's when
    they come from elsewhere)."""
    cc = target.loader_cc()
    if target.sysroot is not None:  # (where the cache is on this machine is no input: the
        # sysroot's own digest, tree_digest, stands for it)
        cc = [a.replace(str(target.sysroot.parent), "SYSROOT_DIR") for a in cc]
    ids: dict[str, object] = {"cc": cc, "headers": header_ids(target.sysroot or Path("/"))}
    if target.libbpf is not None:
        ids["libbpf"] = sources.tree_sha256(target.libbpf)
    return ids


def build(
    programs: tuple[Program, ...],
    *,
    kernel_dir: Path,
    btf_file: str,
    target: Target,
    tree_digest: str,
    arch: str,
    store: Store,
    log: Path,
) -> dict[str, Built]:
    """Each program built against the kernel in `kernel_dir` (its raw BTF and System.map) for
    `target` (image_target: the stage-1 root tree as the sysroot of both sides, its C library
    and libbpf's headers; musl_target: stage 2's), the digest `tree_digest` of what made the
    sysroot standing for all of it in the key; from the cache when nothing changed."""
    if not programs:
        return {}
    for tool in BPF_TOOLS:
        run.require(tool)
    btf = kernel_dir / btf_file
    if not btf.is_file():
        raise BuildError(
            f"the kernel in {kernel_dir} has no {btf_file} (built by an older tuoba)",
            hint="remove it so that it is built again: "
            f"tuoba cache rm kernel/{kernel_dir.parent.name}",
        )
    if not any((d / SKEL_HEADER.removeprefix("usr/include/")).is_file() for d in target.includes):
        raise BuildError(
            f"the root filesystem has no /{SKEL_HEADER}: the loaders are built with the "
            "image's libbpf headers",
            hint="add libbpf-dev to the packages of the recipe that asks for the program"
            if target.libbpf is None
            else f"{target.libbpf} should hold libbpf's headers (userland/libbpf)",
        )
    data_dir = programs[0].directory.parent
    inputs = {
        "arch": arch,
        "rev": BUILD_REV,
        "btf": sources.sha256_file(btf),
        "tools": _tool_ids(),
        "sysroot": tree_digest,
        "target": target_ids(target),
        "programs": {
            p.name: {str(f.relative_to(data_dir)): sources.sha256_file(f) for f in p.files()}
            for p in programs
        },
    }
    key = digest(inputs)
    if (entry := store.get("bpf", key)) is None:
        what = f"eBPF programs {', '.join(p.name for p in programs)} ({arch})"
        with store.make("bpf", key, what=what, inputs=inputs) as tmp:
            _check_symbols(programs, kernel_dir / "System.map")
            with ui.step("Generating vmlinux.h from the kernel's BTF"):
                make_vmlinux_h(btf, tmp)
            for p in programs:
                with ui.step(f"Compiling bpf/{p.name} and its loader {p.loader}"):
                    compile_program(p, tmp, target, log=log)
        entry = store.get("bpf", key)
        assert entry is not None  # (just made)
    else:
        ui.info(f"  reusing eBPF programs built for these inputs: {entry.data}")
    return {p.name: _built(p, entry.data) for p in programs}


def _built(p: Program, out: Path) -> Built:
    return Built(loader=out / p.loader, object=out / f"{p.name}.bpf.o")


def _check_symbols(programs: tuple[Program, ...], system_map: Path) -> None:
    text = system_map.read_text()
    for p in programs:
        for sym in p.kernel_symbols:
            if not re.search(rf"^[0-9a-f]+ [tT] {re.escape(sym)}$", text, re.M):
                raise BuildError(
                    f"bpf/{p.name} attaches to the kernel function {sym}, which this kernel "
                    "does not have as a symbol of its own",
                    hint="kernel/patches/ keeps it out of line; check that the patch applied "
                    "and the program's kernel_features are on",
                )


def make_vmlinux_h(btf: Path, out: Path) -> Path:
    """vmlinux.h in `out`, every type of the kernel whose BTF is `btf` (raw, or an ELF file;
    /sys/kernel/btf/vmlinux is the running kernel's)."""
    header = out / "vmlinux.h"
    with header.open("wb") as f:
        run.run(["bpftool", "btf", "dump", "file", str(btf), "format", "c"], stdout_file=f)
    return header


def compile_program(p: Program, out: Path, target: Target, *, log: Path | None = None) -> Built:
    """The program's objects, their light skeletons and its loader, in `out` (which has the
    vmlinux.h of the kernel it is for)."""
    include = ["-I", str(out), "-I", str(p.directory), "-I", str(p.directory.parent / COMMON)]
    # The BTF line info (and any __FILE__) names the sources as /usr/src/tuoba/bpf/<name>/…,
    # the generated headers as …/bpf/build/ and the system's as /usr/include: no place on the
    # build host goes into the image, and a build from another checkout or cache gives the same
    # bytes. (Absolute: a relative name would be joined to the compiler's working directory.)
    include += [f"-ffile-prefix-map={p.directory.parent}={SOURCE_NAME}",
                f"-ffile-prefix-map={out}={SOURCE_NAME}/build",
                *(f"-ffile-prefix-map={d}=/usr/include" for d in target.includes)]  # fmt: skip
    objects = []
    for name in p.objects:
        obj = out / f"{name}.bpf.o"
        run.run(
            ["clang", "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{target.kernel_arch}",
             *include, *(a for d in target.includes for a in ("-isystem", str(d))),
             "-Wall", "-Werror",
             "-c", str(p.directory / f"{name}.bpf.c"), "-o", str(obj)],
            log=log,
        )  # fmt: skip
        # no DWARF in the object (BTF, which CO-RE needs, stays)
        run.run(["llvm-strip", "-g", str(obj)], log=log)
        with (out / f"{name}.lskel.h").open("wb") as f:
            run.run(["bpftool", "gen", "skeleton", "-L", str(obj), "name", f"{name}_bpf"],
                    stdout_file=f)  # fmt: skip
        objects.append(obj)
    result = _built(p, out)
    if objects != [result.object]:
        # the image's one object: the program's objects linked by libbpf's static linker
        run.run(["bpftool", "gen", "object", str(result.object), *map(str, objects)], log=log)
    # the light skeletons include libbpf's headers only: the loader links against nothing but
    # the C library
    libbpf = ["-isystem", str(target.libbpf)] if target.libbpf else []
    run.run(
        [*target.loader_cc(), "-O2", "-Wall", "-Werror", *include, *libbpf,
         "-o", str(result.loader), str(p.directory / f"{p.loader}.c")],
        log=log,
    )  # fmt: skip
    return result
