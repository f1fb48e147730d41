"""Stage 2: a userland compiled here by clang/lld against musl, from pinned sources.

No GCC output and no glibc reach the image. The toolchain is the host's clang and lld plus a
sysroot this module builds for the board's architecture:

    kernel UAPI headers (from the pinned kernel source)
    musl headers
    compiler-rt builtins + crtbegin/crtend (from the LLVM release's source: no libgcc)
    musl itself, built by that clang (not the distribution's GCC-built copy)

Packages (`userland/<name>/package.yaml`) are then built with it by one of the BUILDERS and
installed into a merged-/usr tree. Each is a cache entry (kinds ``toolchain`` and ``package``)
keyed by a digest of its inputs (sources, data files, clang version and this module's own
code).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuoba import arch as arches
from tuoba import kbuild, run, sources, ui
from tuoba.cache import Store
from tuoba.config import (
    Doc,
    Field,
    PathPart,
    load_yaml,
    mapping_of,
    parse_mapping,
    path_list,
    relative_path,
    string,
)
from tuoba.config import string_list as strings
from tuoba.digest import digest
from tuoba.errors import BuildError, InputError
from tuoba.kernel import load_fragment, parse_config

CODE = Path(__file__).read_text()  # a change to how things are built rebuilds them
# The date programs built here carry (busybox's banner, a configure script's build date),
# as the kernel's and U-Boot's builds do: a fixed one, so the same inputs give the same bytes.
BUILD_ENV = {"SOURCE_DATE_EPOCH": "1767225600"}  # 2026-01-01


def target(arch: str) -> tuple[str, str, str]:
    """(clang target triple, compiler-rt arch name, musl's dynamic linker name)."""
    m = arches.musl(arch)
    return m.triple, m.compiler_rt, m.loader


# --- data ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    description: str
    version: str
    source: sources.Source | None  # None: the package's own files are the source
    strip_prefix: str
    build: str
    directory: Path
    options: dict[str, Any]  # builder-specific fields, validated by the builder's field table

    def files_digest(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.directory)): sources.sha256_file(p)
            for p in sorted(self.directory.rglob("*"))
            if p.is_file()
        }


def _source(doc: Doc, path: tuple[PathPart, ...], value: Any) -> sources.Source:
    return sources.parse_source(doc, path, value)[0]


COMMON_FIELDS = [
    Field("description", string, help="one line about the package"),
    Field("version", string, help="the upstream release"),
    Field("source", _source, None, help="url + sha256 (+ mirrors, origin) of the tarball"),
    Field("strip_prefix", string, "", help="top directory inside the tarball"),
    Field("build", string, help="how it is built: one of the builders"),
]


def package_names(data_dir: Path) -> list[str]:
    root = data_dir / "userland"
    return sorted(p.parent.name for p in root.glob("*/package.yaml"))


def load_package(data_dir: Path, pkg: str) -> Package:
    path = data_dir / "userland" / pkg / "package.yaml"
    if not path.is_file():
        known = ", ".join(package_names(data_dir)) or "none"
        raise InputError(f"no stage-2 package named '{pkg}'", hint=f"known: {known}")
    doc = load_yaml(path, display=f"userland/{pkg}/package.yaml")
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping", hint="see another userland/*/package.yaml")
    kind = doc.data.get("build")
    if not isinstance(kind, str) or kind not in BUILDERS:
        raise doc.error(
            ("build",), f"unknown builder {kind!r}", hint=f"builders: {', '.join(BUILDERS)}"
        )
    fields, _ = BUILDERS[kind]
    v = parse_mapping(doc, (), doc.data, [*COMMON_FIELDS, *fields])
    common = {f.key for f in COMMON_FIELDS}
    pkg_dir = path.parent
    for i, f in enumerate(v.get("files", ())):
        if not (pkg_dir / f).is_file():
            raise doc.error(("files", i), f"no file userland/{pkg}/{f}")
    if v.get("config") and not (pkg_dir / v["config"]).is_file():
        raise doc.error(("config",), f"no file userland/{pkg}/{v['config']}")
    return Package(
        name=pkg,
        description=v["description"],
        version=v["version"],
        source=v["source"],
        strip_prefix=v["strip_prefix"],
        build=kind,
        directory=pkg_dir,
        options={k: val for k, val in v.items() if k not in common},
    )


@dataclasses.dataclass(frozen=True)
class ToolchainSpec:
    musl: Package
    compiler_rt: Package


def load_toolchain(data_dir: Path) -> ToolchainSpec:
    return ToolchainSpec(
        musl=load_package(data_dir, "musl"), compiler_rt=load_package(data_dir, "compiler-rt")
    )


def all_sources(data_dir: Path, packages: tuple[str, ...]) -> list[sources.Source]:
    spec = load_toolchain(data_dir)
    pkgs = [spec.musl, spec.compiler_rt, *(load_package(data_dir, p) for p in packages)]
    return [p.source for p in pkgs if p.source is not None]


# --- the toolchain -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Toolchain:
    triple: str
    sysroot: Path
    resource_dir: Path
    digest: str
    clang: str  # the host clang's version line (it builds everything)

    @property
    def cc(self) -> list[str]:
        """clang for the target: our sysroot (musl + kernel headers), our compiler-rt."""
        return [
            "clang",
            f"--target={self.triple}",
            f"--sysroot={self.sysroot}",
            f"-resource-dir={self.resource_dir}",
            "--rtlib=compiler-rt",
            "--unwindlib=none",
            "-fuse-ld=lld",
            "-Qunused-arguments",
        ]

    @property
    def tools(self) -> dict[str, str]:
        return {
            "CC": " ".join(self.cc),
            "AR": "llvm-ar",
            "RANLIB": "llvm-ranlib",
            "NM": "llvm-nm",
            "STRIP": "llvm-strip",
            "OBJCOPY": "llvm-objcopy",
            "OBJDUMP": "llvm-objdump",
            "LD": "ld.lld",
        }


def cached_toolchain(store: Store, made: dict[str, Any]) -> Toolchain:
    """The toolchain the stage-2 root step made (its record's `toolchain`: triple, digest,
    clang), from the cache."""
    entry = store.get("toolchain", made["digest"])
    if entry is None:
        raise BuildError(
            f"the stage-2 toolchain {made['digest'][:12]}… is no longer in the cache",
            hint="build again: the root step makes it again",
        )
    return Toolchain(made["triple"], entry.data / "sysroot", entry.data / "resource",
                     made["digest"], made["clang"])  # fmt: skip


# libbpf's headers (userland/libbpf): what the bpf step compiles stage 2's bpf/ programs with
LIBBPF = "libbpf"


def jobs() -> str:
    return f"-j{(os.cpu_count() or 1) + 1}"


def unpack(pkg: Package, tarball: Path, dest: Path, members: list[str] | None = None) -> Path:
    """Unpack a package's tarball into dest (only `members` patterns, when given)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd = ["tar", "-xf", str(tarball), "-C", str(dest)]
    if members:
        cmd += ["--wildcards", *members]
    run.run(cmd)
    top = dest / pkg.strip_prefix if pkg.strip_prefix else dest
    if not top.is_dir():
        raise BuildError(
            f"{tarball.name} has no top directory '{pkg.strip_prefix}'",
            hint=f"fix strip_prefix in userland/{pkg.name}/package.yaml",
        )
    return top


def _tarball(pkg: Package, tarballs: dict[str, Path]) -> Path:
    if pkg.source is None or pkg.source.name not in tarballs:
        raise BuildError(f"no fetched source for '{pkg.name}'", hint="the fetch step gets it")
    return tarballs[pkg.source.name]


@contextlib.contextmanager
def _scratch(store: Store, name: str) -> Iterator[Path]:
    """An empty directory for a build's intermediate files, removed afterwards."""
    work = store.work("stage2") / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy a header tree, leaving out kbuild's dot-files."""
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))


def cmake_list(text: str, var: str) -> list[str]:
    """The entries of `set(VAR ...)` in a CMakeLists.txt (its first, unconditional form)."""
    m = re.search(rf"^set\({var}\n(.*?)^\)", text, re.S | re.M)
    if not m:
        raise BuildError(f"compiler-rt's CMakeLists.txt has no set({var} ...)")
    words = " ".join(line.split("#", 1)[0] for line in m.group(1).splitlines()).split()
    return [w for w in words if not w.startswith("$")]


# compiler-rt's CMakeLists adds these to GENERIC_SOURCES on Linux (not Fuchsia, not bare
# metal); atomic.c stays out (COMPILER_RT_EXCLUDE_ATOMIC_BUILTIN defaults to on) and so does
# gcc_personality_v0.c (C++/unwinding only: the stage-2 userland is C without an unwinder).
LINUX_EXTRA_BUILTINS = ["emutls.c", "enable_execute_stack.c", "eprintf.c", "clear_cache.c"]
BUILTIN_CFLAGS = [
    "-O2",
    "-fPIC",
    "-fno-builtin",
    "-fvisibility=hidden",
    "-fomit-frame-pointer",
    "-std=c11",
]
# aarch64: the outline-atomics helpers clang calls by default come from lse.S, assembled once
# per (operation, size, memory model) exactly as compiler-rt's CMake does.
LSE_HELPERS = [
    (op, size, model)
    for op in ("cas", "swp", "ldadd", "ldclr", "ldeor", "ldset")
    for size in (1, 2, 4, 8, 16)
    for model in (1, 2, 3, 4)
    if op == "cas" or size != 16
]


def build_toolchain(
    spec: ToolchainSpec,
    arch: str,
    kernel_id: str,
    kernel_src: Callable[[], Path],
    tarballs: dict[str, Path],
    store: Store,
    log: Path,
) -> Toolchain:
    """The clang + musl toolchain for arch (or the cached one): kernel UAPI headers from the
    tree of source `kernel_id` (kernel_src unpacks it, called only when the toolchain is
    built), musl, compiler-rt's builtins."""
    triple = target(arch)[0]
    for tool in ("clang", "ld.lld", "llvm-ar", "llvm-ranlib", "llvm-strip", "make", "tar"):
        run.require(tool)
    _, clang = kbuild.clang_version()
    key = digest(
        {
            "arch": arch,
            "clang": clang,
            "kernel": kernel_id,
            "musl": [spec.musl.source, spec.musl.files_digest()],
            "compiler-rt": [spec.compiler_rt.source, spec.compiler_rt.files_digest()],
            "code": CODE,
        }
    )
    with store.making("toolchain", key) as entry:
        if entry is None:
            what = f"clang + musl {spec.musl.version} toolchain for {triple}"
            inputs = {"arch": arch, "clang": clang, "kernel": kernel_id}
            with (
                store.make("toolchain", key, what=what, inputs=inputs) as out,
                _scratch(store, key[:16]) as work,
            ):
                _make_toolchain(spec, arch, key, clang, kernel_src(), tarballs, out, work, log)
            entry = store.get("toolchain", key)
            assert entry is not None  # (just made)
    return Toolchain(triple, entry.data / "sysroot", entry.data / "resource", key, clang)


def _make_toolchain(
    spec: ToolchainSpec,
    arch: str,
    key: str,
    clang: str,
    kernel_src: Path,
    tarballs: dict[str, Path],
    out: Path,
    work: Path,
    log: Path,
) -> None:
    triple, rt_arch, _ = target(arch)
    sysroot, resource = out / "sysroot", out / "resource"
    (sysroot / "usr").mkdir(parents=True)
    (resource / "lib" / "linux").mkdir(parents=True)
    host_resource = Path(run.output(["clang", "-print-resource-dir"]).strip())
    (resource / "include").symlink_to(host_resource / "include")  # stddef.h, arm_neon.h, …
    tc = Toolchain(triple, sysroot, resource, key, clang)

    with ui.step(f"Kernel UAPI headers for {triple}"):
        hdr = work / "headers"
        kbuild.make(kernel_src, hdr, arch, ["headers"], log)
        _copy_tree(hdr / "usr" / "include", sysroot / "usr" / "include")

    with ui.step(f"musl {spec.musl.version} headers"):
        musl_src = unpack(spec.musl, _tarball(spec.musl, tarballs), work / "musl")
        run.run(
            ["make", "install-headers", f"ARCH={rt_arch}", "prefix=/usr", f"DESTDIR={sysroot}"],
            cwd=musl_src,
            log=log,
        )

    with ui.step(f"compiler-rt {spec.compiler_rt.version} builtins for {rt_arch}"):
        rt = unpack(
            spec.compiler_rt,
            _tarball(spec.compiler_rt, tarballs),
            work / "compiler-rt",
            ["*/compiler-rt/lib/builtins/*", "*/compiler-rt/lib/crt/*"],
        )
        _build_builtins(tc, rt / "compiler-rt" / "lib", rt_arch, work / "rt-obj", log)

    with ui.step(f"musl {spec.musl.version} (clang)"):
        builtins = resource / "lib" / "linux" / f"libclang_rt.builtins-{rt_arch}.a"
        run.run(
            [
                "sh",
                "./configure",
                f"--target={triple}",
                "--prefix=/usr",
                "--syslibdir=/lib",
                "--disable-shared",
                f"CC=clang --target={triple} -resource-dir={resource}",
                "AR=llvm-ar",
                "RANLIB=llvm-ranlib",
                f"LIBCC={builtins}",
            ],
            cwd=musl_src,
            log=log,
        )
        run.run(["make", jobs()], cwd=musl_src, log=log)
        run.run(["make", "install", f"DESTDIR={sysroot}"], cwd=musl_src, log=log)

    record = {
        "triple": triple,
        "clang": clang,
        "digest": key,
        "musl": spec.musl.version,
        "compiler-rt": spec.compiler_rt.version,
    }
    (out / "toolchain.json").write_text(json.dumps(record, indent=2))


def _build_builtins(tc: Toolchain, lib: Path, rt_arch: str, obj: Path, log: Path) -> None:
    builtins = lib / "builtins"
    cmake = (builtins / "CMakeLists.txt").read_text()
    srcs = [
        *cmake_list(cmake, "GENERIC_TF_SOURCES"),
        *cmake_list(cmake, "GENERIC_SOURCES"),
        *LINUX_EXTRA_BUILTINS,
    ]
    if rt_arch == "aarch64":
        srcs += ["cpu_model.c", "aarch64/fp_mode.c"]
    obj.mkdir(parents=True, exist_ok=True)
    cc = [
        *tc.cc,
        "-nostdinc",
        "-isystem",
        str(tc.sysroot / "usr" / "include"),
        "-isystem",
        str(tc.resource_dir / "include"),
        *BUILTIN_CFLAGS,
    ]
    objects = []
    for src in dict.fromkeys(srcs):
        o = obj / (src.replace("/", "_").removesuffix(".c") + ".o")
        run.run([*cc, "-c", str(builtins / src), "-o", str(o)], log=log)
        objects.append(o)
    if rt_arch == "aarch64":
        for op, size, model in LSE_HELPERS:
            o = obj / f"outline_atomic_{op}{size}_{model}.o"
            run.run(
                [
                    *cc,
                    f"-DL_{op}",
                    f"-DSIZE={size}",
                    f"-DMODEL={model}",
                    f"-I{builtins}",
                    "-c",
                    str(builtins / "aarch64" / "lse.S"),
                    "-o",
                    str(o),
                ],
                log=log,
            )
            objects.append(o)
    out = tc.resource_dir / "lib" / "linux"
    run.run(["llvm-ar", "rcsD", str(out / f"libclang_rt.builtins-{rt_arch}.a"), *map(str, objects)])
    for part in ("crtbegin", "crtend"):
        run.run(
            [
                *cc,
                "-DCRT_HAS_INITFINI_ARRAY",
                "-c",
                str(lib / "crt" / f"{part}.c"),
                "-o",
                str(out / f"clang_rt.{part}-{rt_arch}.o"),
            ],
            log=log,
        )


# --- packages ------------------------------------------------------------------------------


Builder = Callable[[Package, Path, Toolchain, Path, Path], None]


def _install(built: Path, dest: Path) -> None:
    """Install a program stripped of symbols, keeping .comment (the audit reads the compiler
    from it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    run.run(["llvm-strip", "--strip-all", "--keep-section=.comment", str(built), "-o", str(dest)])
    dest.chmod(0o755)


def _link(dest_root: Path, link: str, target_rel: str) -> None:
    path = dest_root / link
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.symlink_to(target_rel)


def merged_usr(path: str) -> str:
    """/bin/x -> usr/bin/x, /sbin/x -> usr/sbin/x (the stage-2 tree is merged-/usr)."""
    p = path.lstrip("/")
    for top in ("bin/", "sbin/", "lib/"):
        if p.startswith(top):
            return "usr/" + p
    return p


def _relative(link: str, target_path: str) -> str:
    return os.path.relpath(target_path, os.path.dirname(link))


def _links(pkg: Package, dest: Path) -> None:
    for link, tgt in pkg.options.get("links", {}).items():
        _link(dest, merged_usr(link), _relative(merged_usr(link), merged_usr(tgt)))


def build_busybox(pkg: Package, src: Path, tc: Toolchain, dest: Path, log: Path) -> None:
    """allnoconfig + the package's fragment, resolved by oldconfig, then checked: an option
    Kconfig dropped fails the build naming it (as for the kernel)."""
    frag_file = pkg.directory / pkg.options["config"]
    display = f"userland/{pkg.name}/{pkg.options['config']}"
    wanted = load_fragment(frag_file, pkg.name, display).options
    make = ["make", "HOSTCC=clang", *(f"{k}={v}" for k, v in tc.tools.items())]
    run.run([*make, "allnoconfig"], cwd=src, log=log, env=BUILD_ENV)
    config = src / ".config"
    names = {o.name for o in wanted}
    kept = [ln for ln in config.read_text().splitlines() if _config_name(ln) not in names]
    lines = [f"# {o.name} is not set" if o.value == "n" else f"{o.name}={o.value}" for o in wanted]
    config.write_text("\n".join([*kept, *lines]) + "\n")
    run.run([*make, "oldconfig"], cwd=src, log=log, input="\n" * 4000, env=BUILD_ENV)
    got = parse_config(config.read_text())
    dropped = [o for o in wanted if got.get(o.name, "n") != o.value]
    if dropped:
        o = dropped[0]
        raise BuildError(
            f"{display}:{o.line}: {o.name}={o.value} was dropped by busybox's Kconfig "
            f"(got {got.get(o.name, 'n')})",
            hint="the option may be renamed in this busybox release, or depend on one not set",
        )
    run.run([*make, jobs()], cwd=src, log=log, env=BUILD_ENV)
    run.run([*make, "busybox.links"], cwd=src, log=log, env=BUILD_ENV)
    _install(src / "busybox_unstripped", dest / "usr/bin/busybox")
    for applet in (src / "busybox.links").read_text().split():
        link = merged_usr(applet)
        _link(dest, link, _relative(link, "usr/bin/busybox"))


def _config_name(line: str) -> str | None:
    m = re.match(r"^(?:# )?(CONFIG_\w+)[= ]", line)
    return m.group(1) if m else None


def build_autotools(pkg: Package, src: Path, tc: Toolchain, dest: Path, log: Path) -> None:
    for f in pkg.options["files"]:
        shutil.copyfile(pkg.directory / f, src / Path(f).name)
    run.run(
        [
            "sh",
            "./configure",
            f"--host={tc.triple}",
            *pkg.options["configure"],
            *(f"{k}={v}" for k, v in tc.tools.items()),
        ],
        cwd=src,
        log=log,
        env=BUILD_ENV,
    )
    run.run(["make", jobs(), *pkg.options["make"]], cwd=src, log=log, env=BUILD_ENV)
    for built, installed in pkg.options["install"].items():
        _install(src / built, dest / merged_usr(installed))
    _links(pkg, dest)


def build_c(pkg: Package, src: Path, tc: Toolchain, dest: Path, log: Path) -> None:
    """A small program of the package's own C files, linked statically."""
    out = src / pkg.name
    run.run(
        [
            *tc.cc,
            "-static",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(out),
            *(str(pkg.directory / f) for f in pkg.options["files"]),
        ],
        log=log,
    )
    _install(out, dest / merged_usr(pkg.options["program"]))
    _links(pkg, dest)


def build_headers(pkg: Package, src: Path, tc: Toolchain, dest: Path, log: Path) -> None:
    """Headers other builds compile against (not an image's: nothing here is installed by a
    recipe's `builds`), copied from the source tree as its own `make install_headers` would."""
    into = dest / merged_usr(pkg.options["into"]).lstrip("/")
    into.mkdir(parents=True)
    for header in pkg.options["headers"]:
        if not (src / header).is_file():
            raise BuildError(
                f"{pkg.name} {pkg.version}'s source has no {header}",
                hint=f"fix headers: in userland/{pkg.name}/package.yaml",
            )
        shutil.copyfile(src / header, into / Path(header).name)


def _absolute(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    s = string(doc, path, value)
    if not s.startswith("/") or ".." in s.split("/"):
        raise doc.error(path, f"'{s}' is not an absolute path", hint="like /usr/include/bpf")
    return s


def _links_field(doc: Doc, path: tuple[PathPart, ...], value: Any) -> dict[str, str]:
    return mapping_of(doc, path, value, string)


BUILDERS: dict[str, tuple[list[Field], Builder | None]] = {
    # the toolchain's own parts: built by build_toolchain, not installed as packages
    "musl": ([], None),
    "compiler-rt": ([], None),
    "busybox": (
        [Field("config", relative_path, help="Kconfig fragment applied on allnoconfig")],
        build_busybox,
    ),
    "autotools": (
        [
            Field("files", path_list, (), help="files copied into the source tree first"),
            Field("configure", strings, (), help="extra ./configure arguments"),
            Field("make", strings, (), help="extra make arguments"),
            Field("install", _links_field, help="built file -> path in the image"),
            Field("links", _links_field, {}, help="symlink -> what it points to"),
        ],
        build_autotools,
    ),
    "headers": (
        [
            Field("headers", path_list, help="header files of the source tree"),
            Field("into", _absolute, help="the directory they are copied to"),
        ],
        build_headers,
    ),
    "c": (
        [
            Field("files", path_list, help="the C sources, in the package directory"),
            Field("program", string, help="path of the program in the image"),
            Field("links", _links_field, {}, help="symlink -> what it points to"),
        ],
        build_c,
    ),
}


def build_package(
    pkg: Package, tc: Toolchain, tarball: Path | None, store: Store, log: Path
) -> Path:
    """Build one package (or reuse it); returns its install tree."""
    builder = BUILDERS[pkg.build][1]
    if builder is None:
        raise InputError(f"'{pkg.name}' is part of the stage-2 toolchain, not a package")
    key = digest(
        {"toolchain": tc.digest, "source": pkg.source, "files": pkg.files_digest(), "code": CODE}
    )
    with store.making("package", key) as entry:
        if entry is None:
            what = f"{pkg.name} {pkg.version} for {tc.triple} (clang, musl)"
            inputs = {"name": pkg.name, "version": pkg.version, "toolchain": tc.digest}
            with (
                store.make("package", key, what=what, inputs=inputs) as out,
                _scratch(store, key[:16]) as work,
            ):
                if tarball is not None:
                    src = unpack(pkg, tarball, work / "src")
                else:
                    src = work / "src"
                    src.mkdir(parents=True)
                dest = out / "dest"
                dest.mkdir()
                with ui.step(f"{pkg.name} {pkg.version} (clang, {tc.triple})"):
                    builder(pkg, src, tc, dest, log)
                (out / "package.json").write_text(json.dumps(inputs, indent=2))
            entry = store.get("package", key)
            assert entry is not None  # (just made)
    return entry.data / "dest"


# The directories every stage-2 tree has; /bin, /sbin and /lib point into /usr.
SKELETON_DIRS = [
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "root",
    "etc",
    "var/log",
    "mnt",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/share",
]
SKELETON_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "var/run": "../run"}


def assemble(trees: list[Path], dest: Path) -> None:
    """Merge package install trees into a root tree (later packages win)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for d in SKELETON_DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "root").chmod(0o700)
    (dest / "tmp").chmod(0o1777)
    for link, tgt in SKELETON_LINKS.items():
        (dest / link).symlink_to(tgt)
    for tree in trees:
        shutil.copytree(tree, dest, symlinks=True, dirs_exist_ok=True)
