"""TuobaOS's own eBPF programs (`bpf/<name>/`), and building them for one image.

    bpf/<name>/program.yaml   what it is: description, loader (the command it installs),
                              kernel_features it needs, kernel_symbols it attaches to, arch
    bpf/<name>/<name>.bpf.c   the BPF side, CO-RE: it includes vmlinux.h, which is made for
                              each build from that build's kernel BTF, never checked in
    bpf/<name>/<loader>.c     the user-space side: includes <name>.skel.h (bpftool's skeleton)
    bpf/<name>/*.h            headers both sides share

For an image the bpf step makes, per program: vmlinux.h (`bpftool btf dump`), the object
(`clang -target bpf`), the skeleton (`bpftool gen skeleton`) and the loader, cross-compiled by
clang with the stage-1 root tree as its sysroot, so it links against the image's own libbpf
(Debian's; the recipe brings libbpf-dev). The results are cached by the kernel's BTF, the
programs' files, the compilers and the tree's libbpf.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tuoba import arch as arches
from tuoba import run, sources, ui
from tuoba.cache import Store
from tuoba.config import Field, load_yaml, matching, name_list, parse_mapping, string
from tuoba.digest import digest
from tuoba.errors import BuildError, InputError
from tuoba.kernel import feature_names

INSTALL_DIR = "/usr/bin"  # loaders
OBJECT_DIR = "/usr/lib/tuoba/bpf"  # the BPF objects, for bpftool and for reading
LIBBPF_HEADER = "usr/include/bpf/libbpf.h"  # in the sysroot: libbpf-dev is in the image
BPF_TOOLS = ("clang", "ld.lld", "bpftool", "llvm-strip")


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    directory: Path
    description: str
    loader: str  # the command the image gets, /usr/bin/<loader>
    kernel_features: tuple[str, ...]
    kernel_symbols: tuple[str, ...]  # kernel functions it attaches to (System.map has them)
    arch: tuple[str, ...]  # the architectures it runs on (empty: every one)

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

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
        ],
    )
    for i, a in enumerate(v["arch"]):
        if a not in arches.ARCHES:
            raise doc.error(("arch", i), f"unknown arch '{a}' (known: {', '.join(arches.ARCHES)})")
    known = feature_names(data_dir)
    for i, f in enumerate(v["kernel_features"]):
        if f not in known:
            raise doc.error(("kernel_features", i), f"unknown feature '{f}'",
                            hint=f"known: {', '.join(known) or 'none'}")  # fmt: skip
    prog = Program(name=name, directory=directory, **v)
    for need in (f"{name}.bpf.c", f"{prog.loader}.c"):
        if not (directory / need).is_file():
            raise doc.error((), f"bpf/{name}/ has no {need}",
                            hint=f"a program is {name}.bpf.c (BPF side) and {prog.loader}.c "
                            "(its loader)")  # fmt: skip
    return prog


# --- building --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Built:
    loader: Path
    object: Path


def _tool_ids() -> dict[str, str]:
    return {
        "clang": run.output(["clang", "--version"]).splitlines()[0],
        "bpftool": run.output(["bpftool", "version"]).splitlines()[0],
    }


def build(
    programs: tuple[Program, ...],
    *,
    kernel_dir: Path,
    btf_file: str,
    tree: Path,
    arch: str,
    store: Store,
    log: Path,
) -> dict[str, Built]:
    """Each program built against the kernel in `kernel_dir` (its raw BTF and System.map) and
    the root tree `tree` (the sysroot of its loader); from the cache when nothing changed."""
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
    libbpf = tree / LIBBPF_HEADER
    if not libbpf.is_file():
        raise BuildError(
            f"the root filesystem has no /{LIBBPF_HEADER}: the loaders link against the image's "
            "libbpf",
            hint="add libbpf-dev to the packages of the recipe that asks for the program",
        )
    so = sorted((tree / "usr/lib").glob("*/libbpf.so.*.*"))
    inputs = {
        "arch": arch,
        "btf": sources.sha256_file(btf),
        "tools": _tool_ids(),
        "libbpf": [p.name for p in so] + [sources.sha256_file(libbpf)],
        "programs": {p.name: {f.name: sources.sha256_file(f) for f in p.files()} for p in programs},
    }
    key = digest(inputs)
    if (entry := store.get("bpf", key)) is None:
        what = f"eBPF programs {', '.join(p.name for p in programs)} ({arch})"
        with store.make("bpf", key, what=what, inputs=inputs) as tmp:
            _check_symbols(programs, kernel_dir / "System.map")
            with ui.step("Generating vmlinux.h from the kernel's BTF"):
                header = tmp / "vmlinux.h"
                with header.open("wb") as f:
                    run.run(["bpftool", "btf", "dump", "file", str(btf), "format", "c"],
                            stdout_file=f)  # fmt: skip
            for p in programs:
                with ui.step(f"Compiling bpf/{p.name} and its loader {p.loader}"):
                    _build_one(p, tmp, tree, arch, log)
        entry = store.get("bpf", key)
        assert entry is not None  # (just made)
    else:
        ui.info(f"  reusing eBPF programs built for these inputs: {entry.data}")
    return {
        p.name: Built(loader=entry.data / p.loader, object=entry.data / f"{p.name}.bpf.o")
        for p in programs
    }


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


def _build_one(p: Program, out: Path, tree: Path, arch: str, log: Path) -> None:
    a = arches.of(arch)
    obj = out / f"{p.name}.bpf.o"
    run.run(
        ["clang", "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{a.kernel}",
         "-I", str(out), "-I", str(p.directory), "-idirafter", str(tree / "usr/include"),
         "-Wall", "-Werror", "-c", str(p.directory / f"{p.name}.bpf.c"), "-o", str(obj)],
        log=log,
    )  # fmt: skip
    # no DWARF in the object the image carries (BTF, which CO-RE needs, stays)
    run.run(["llvm-strip", "-g", str(obj)], log=log)
    skel = out / f"{p.name}.skel.h"
    with skel.open("wb") as f:
        run.run(["bpftool", "gen", "skeleton", str(obj), "name", f"{p.name}_bpf"], stdout_file=f)
    run.run(
        ["clang", f"--target={a.clang_target}", f"--sysroot={tree}", "--gcc-toolchain=/usr",
         "-fuse-ld=lld", "-O2", "-Wall", "-Werror", "-I", str(out), "-I", str(p.directory),
         "-o", str(out / p.loader), str(p.directory / f"{p.loader}.c"), "-lbpf"],
        log=log,
    )  # fmt: skip
