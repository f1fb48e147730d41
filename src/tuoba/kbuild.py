"""Building the TuobaOS kernel with LLVM: source, configuration, build, config assertion.

In the cache (see cache.py):
  kernel-src/<tarball sha256>           the unpacked, verified source (read-only use)
  kernel/<inputs digest>                finished outputs (Image, modules, dtbs, config,
                                        System.map, kernel.json); a no-change build reuses it
  work/kernel-build-<flavour>/          out-of-tree build dir, reused so a fragment change
                                        rebuilds incrementally
  work/ccache/                          the compiler cache
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuoba import arch as arches
from tuoba import run, sources, ui
from tuoba.cache import Store
from tuoba.config import Field, load_yaml, parse_mapping, read_text, string
from tuoba.digest import digest
from tuoba.errors import BuildError, HostToolError, InputError
from tuoba.kernel import Feature, Option, describe_missing, missing_options, parse_config

# pahole: without it Kconfig silently drops DEBUG_INFO_BTF; the others build host programs.
BUILD_TOOLS = ("make", "clang", "ld.lld", "llvm-objcopy", "pahole", "flex", "bison", "bc", "patch")
BTF_FILE = "vmlinux.btf"  # in a kernel's cache entry: its raw BTF (CONFIG_DEBUG_INFO_BTF)
DEBUG_FILE = "vmlinux.debug"  # … and its vmlinux, debug sections compressed (for drgn, perf)
# What a kernel entry holds, as part of its key: 2 added DEBUG_FILE (an entry made before
# lacks it, so it is not reused; the kept build directory makes the rebuild incremental).
ENTRY_LAYOUT = 2
MIN_CLANG = 14  # Linux 6.1 supports clang >= 11; 14 is what this project is tested with


@dataclasses.dataclass(frozen=True)
class Patch:
    """A patch TuobaOS carries on the pinned source (`kernel/patches/NNNN-*.patch`, applied in
    name order), its text before the diff saying why."""

    name: str
    path: Path
    sha256: str
    files: tuple[str, ...] = ()  # the source files it changes

    @property
    def touches_uapi(self) -> bool:
        return any(re.match(r"(arch/[^/]+/)?include/uapi/", f) for f in self.files)


@dataclasses.dataclass(frozen=True)
class KernelSource:
    version: str
    source: sources.Source
    strip_prefix: str
    patches: tuple[Patch, ...] = ()

    @property
    def id(self) -> str:
        """The source in build inputs: version, tarball hash and the patches' hashes (not where
        it is unpacked)."""
        base = f"{self.version}-{self.source.sha256[:12]}"
        return f"{base}-p{self.patches_digest[:12]}" if self.patches else base

    @property
    def headers_id(self) -> str:
        """The user-space API headers' identity (what `make headers_install` gives, for the
        stage-2 toolchain): the patches that touch no uapi header leave it as unpatched."""
        uapi = [p for p in self.patches if p.touches_uapi]
        base = f"{self.version}-{self.source.sha256[:12]}"
        return f"{base}-p{digest([[p.name, p.sha256] for p in uapi])[:12]}" if uapi else base

    @property
    def patches_digest(self) -> str:
        return digest([[p.name, p.sha256] for p in self.patches])

    @property
    def tree_key(self) -> str:
        """The unpacked (and patched) tree's cache key; the tarball's hash when unpatched, as
        before patches existed."""
        if not self.patches:
            return self.source.sha256
        return digest({"tarball": self.source.sha256, "patches": self.patches_digest})


PATCH_START = re.compile(r"^(diff |--- |Index: )", re.M)


def patches_dir(data_dir: Path) -> Path:
    return data_dir / "kernel" / "patches"


def load_patches(data_dir: Path) -> tuple[Patch, ...]:
    """`kernel/patches/*.patch` in name order; each must say before its diff why it is carried
    (a mail header and message, as `git format-patch` writes)."""
    found = []
    for path in sorted(patches_dir(data_dir).glob("*.patch")):
        display = f"kernel/patches/{path.name}"
        text = read_text(path, display)
        start = PATCH_START.search(text)
        if start is None:
            raise InputError(
                f"{display}:1: holds no diff",
                hint="write it with 'git format-patch' or 'diff -u' (a unified diff)",
            )
        header = [ln for ln in text[: start.start()].splitlines()
                  if ln.strip() and ln.strip() != "---" and not ln.startswith("From ")]  # fmt: skip
        if len(header) < 2:
            raise InputError(
                f"{display}:1: no header saying why TuobaOS carries the patch",
                hint="start the file with a Subject: line and a paragraph on why, before the diff",
            )
        files = tuple(sorted(set(re.findall(r"^\+\+\+ [^/\s]+/(\S+)", text, re.M))))
        found.append(Patch(path.name, path, sources.sha256_file(path), files))
    return tuple(found)


def load_source(data_dir: Path) -> KernelSource:
    doc = load_yaml(data_dir / "kernel" / "sources.yaml", display="kernel/sources.yaml")
    v = parse_mapping(
        doc,
        (),
        doc.data,
        [
            Field("version", string, help="the kernel release"),
            Field("tarball", lambda d, p, x: x, help="the source tarball"),
        ],
    )
    src, t = sources.parse_source(
        doc, ("tarball",), v["tarball"], [Field("strip_prefix", string, help="top directory")]
    )
    return KernelSource(
        version=v["version"],
        source=src,
        strip_prefix=t["strip_prefix"],
        patches=load_patches(data_dir),
    )


def clang_version() -> tuple[int, str]:
    """(major, full version line) of the host clang; fails if missing or too old."""
    text = run.output(["clang", "--version"]).splitlines()[0]
    m = re.search(r"clang version (\d+)\.", text)
    major = int(m.group(1)) if m else 0
    if major < MIN_CLANG:
        raise HostToolError(
            f"clang {major or '?'} found ('{text}'), the kernel build needs clang >= {MIN_CLANG}",
            hint="install a newer clang (Debian: clang, lld, llvm) or run 'tuoba doctor --fix'",
        )
    return major, text


def toolchain_id() -> str:
    """The LLVM toolchain's identity, for build signatures ('' when clang is missing: the
    kernel step itself then reports the missing tool)."""
    if shutil.which("clang") is None or shutil.which("ld.lld") is None:
        return ""
    return (
        run.output(["clang", "--version"]).splitlines()[0]
        + " / "
        + run.output(["ld.lld", "--version"])
    )


def unpack_source(ks: KernelSource, tarball: Path, store: Store) -> Path:
    """The pinned source, unpacked and patched (in the cache; read-only use)."""
    key = ks.tree_key
    with store.making("kernel-src", key) as entry:
        if entry is not None:
            return entry.data
        what = f"Linux {ks.version} source tree" + (
            f" with {len(ks.patches)} TuobaOS patch(es)" if ks.patches else ""
        )
        inputs = {"tarball": ks.source.name, "patches": {p.name: p.sha256 for p in ks.patches}}
        with (
            ui.step(f"Unpacking Linux {ks.version}"),
            store.make("kernel-src", key, what=what, inputs=inputs) as tmp,
        ):
            run.run(["tar", "-xf", str(tarball), "-C", str(tmp), "--strip-components=1"])
            for patch in ks.patches:
                apply_patch(ks, patch, tmp)
        made = store.get("kernel-src", key)
        assert made is not None  # (just made)
        return made.data


def apply_patch(ks: KernelSource, patch: Patch, tree: Path) -> None:
    """Apply one patch (all of it or nothing: a dry run first), naming it when it does not."""
    for dry in (True, False):
        proc = run.run(
            ["patch", "-p1", "--forward", "--batch", "-d", str(tree), "-i", str(patch.path),
             *(["--dry-run"] if dry else [])],
            capture=True, capture_stderr=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            raise BuildError(
                f"kernel/patches/{patch.name} does not apply to Linux {ks.version}: "
                + "; ".join(said[-3:]),
                hint="refresh the patch against this source (quilt or git, then "
                "'git format-patch'), or remove it from kernel/patches/",
            )
    ui.info(f"  applied kernel/patches/{patch.name}")


def merged_fragment(fragments: list[tuple[str, list[Option]]]) -> tuple[str, dict[str, Option]]:
    """One KCONFIG_ALLCONFIG text from ordered fragments; two fragments that set one option to
    different values are an error naming both."""
    chosen: dict[str, Option] = {}
    for _, options in fragments:
        for opt in options:
            prev = chosen.get(opt.name)
            if prev is not None and prev.value != opt.value:
                raise BuildError(
                    f"{opt.name} is {prev.value} in {prev.feature} (line {prev.line}) but "
                    f"{opt.value} in {opt.feature} (line {opt.line})",
                    hint="make the fragments agree, or drop one of them",
                )
            chosen[opt.name] = opt
    lines = [
        f"# {o.name} is not set" if o.value == "n" else f"{o.name}={o.value}"
        for o in chosen.values()
    ]
    return "\n".join(lines) + "\n", chosen


def explain_missing(src: Path, build: Path, arch: str, missing: list[Option]) -> str:
    """Why Kconfig dropped each option: its unmet dependency, evaluated by kconfiglib."""
    try:
        import kconfiglib
    except ImportError:
        return ""
    env = {
        "srctree": str(src),
        "ARCH": arches.of(arch).kernel,
        "SRCARCH": arches.of(arch).kernel,
        "CC": "clang",
        "LD": "ld.lld",
        "HOSTCC": "clang",
        "KERNELVERSION": "6",
        "LLVM": "1",
        "CLANG_FLAGS": f"--target={arches.of(arch).clang_target} -fintegrated-as",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(src)
        kconf = _modern_kconfig(kconfiglib)("Kconfig", warn=False)
        kconf.load_config(str(build / ".config"), replace=True)
        out = []
        for opt in missing:
            sym = kconf.syms.get(opt.name.removeprefix("CONFIG_"))
            if sym is None or not sym.nodes:
                out.append(f"{opt.name}: no such option in this kernel")
                continue
            dep = sym.direct_dep
            if kconfiglib.expr_value(dep) == 0:
                unmet = sorted(
                    f"{s.name}={s.str_value or 'n'}"
                    for s in kconfiglib.expr_items(dep)
                    if isinstance(s, kconfiglib.Symbol)
                    and s.tri_value == 0
                    and not s.is_constant
                    and s.name != "COMPILE_TEST"  # the build-test switch, never the answer
                )
                out.append(
                    f"{opt.name}: depends on {kconfiglib.expr_str(dep)}; unmet: {', '.join(unmet)}"
                )
            else:
                out.append(f"{opt.name}: dependencies met; check 'choice' or 'select' conflicts")
        return "\n  ".join(out)
    except Exception as e:  # kconfiglib cannot parse every kernel's Kconfig; say so, keep going
        return f"(kconfiglib could not evaluate the dependencies: {e})"
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _modern_kconfig(kconfiglib: Any) -> Any:
    """kconfiglib 14 predates the bare `modules` keyword (Linux 5.13 replaced `option modules`
    with it); translate it while reading."""

    class Kconfig(kconfiglib.Kconfig):  # type: ignore[misc]
        def _open(self, filename: str, mode: str) -> Any:
            f = super()._open(filename, mode)
            if mode != "r":
                return f
            with f:
                text = f.read()
            return io.StringIO(re.sub(r"(?m)^(\s+)modules\s*$", r"\1option modules", text))

    return Kconfig


class ObjectCount:
    """How far a kernel build is: objects compiled so far (CC/LD/AR lines of its log, read
    incrementally), against the count of the last complete build of the same build directory
    when there was one."""

    def __init__(self, log: Path, total_file: Path) -> None:
        self.log, self.total_file = log, total_file
        self.offset, self.done, self.last = 0, 0, ""
        try:
            self.total = int(total_file.read_text())
        except (OSError, ValueError):
            self.total = 0

    def __call__(self) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return f"{self.done} objects"
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest is read next time
        self.offset += end
        for ln in chunk[:end].decode(errors="replace").splitlines():
            if ln.lstrip().startswith(("CC ", "LD ", "AR ")):
                self.done += 1
                self.last = ln.strip()[:60]
        of = f"/{max(self.total, self.done)}" if self.total else ""
        return f"{self.done}{of} objects built — {self.last}"

    def finished(self) -> None:
        # the largest count seen: an incremental build compiles fewer
        self.total_file.write_text(f"{max(self.total, self.done)}\n")


def make(
    src: Path,
    build: Path,
    arch: str,
    targets: list[str],
    log: Path,
    ccache_dir: Path | None = None,
    heartbeat: bool = True,
    **extra: str,
) -> None:
    env = {
        "KBUILD_BUILD_USER": "tuoba",
        "KBUILD_BUILD_HOST": "tuoba",
        "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2026",
    }
    cc = []
    if ccache_dir is not None and shutil.which("ccache"):
        cc = ["CC=ccache clang"]
        # ccache's store lives with the rest of tuoba's cache (one place to size and clear)
        env |= {"CCACHE_DIR": str(ccache_dir), "CCACHE_BASEDIR": str(src.parent)}
    cmd = [
        "make",
        "-C",
        str(src),
        f"O={build}",
        f"ARCH={arches.of(arch).kernel}",
        "LLVM=1",
        *cc,
        f"-j{(os.cpu_count() or 1) + 1}",
        *[f"{k}={v}" for k, v in extra.items()],
        *targets,
    ]
    run.run(cmd, env=env, log=log, heartbeat=heartbeat)


def kernel_inputs(
    source_id: str, arch: str, config: str, dtbs: tuple[str, ...], board_dts: tuple[Path, ...]
) -> dict[str, Any]:
    """What a kernel is built from, but the compiler: with clang's version, its cache key.
    Boards whose plans give the same inputs share one kernel (`tuoba matrix` builds it once)."""
    inputs: dict[str, Any] = {"src": source_id, "arch": arch, "config": config, "dtbs": dtbs,
                              "entry": ENTRY_LAYOUT}  # fmt: skip
    if board_dts:  # (absent from the key when there are none: earlier builds stay valid)
        inputs["board_dts"] = {p.name: sources.sha256_file(p) for p in board_dts}
    return inputs


def build_kernel(
    *,
    unpack: Callable[[], Path],
    source_id: str,
    store: Store,
    arch: str,
    flavour: str,
    fragments: list[tuple[str, list[Option]]],
    dtbs: tuple[str, ...],
    log: Path,
    board_dts: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Configure, assert, build and collect the kernel (or find it in the cache); returns its
    record. `unpack` gives the tree of the source `source_id` names (KernelSource.id), called
    only when the kernel is built. `board_dts` are the
    device trees of `dtbs` that boards ship themselves (compiled against this source's
    includes); the rest are Linux's own."""
    for tool in BUILD_TOOLS:
        run.require(tool)
    _, clang = clang_version()
    text, requested = merged_fragment(fragments)
    inputs = {**kernel_inputs(source_id, arch, text, dtbs, board_dts), "clang": clang}
    key = digest(inputs)
    with store.making("kernel", key) as entry:
        if entry is not None:
            ui.info(f"  reusing kernel built for these inputs: {entry.data}")
            return _record(entry.data)
        src = unpack()
        with store.using(f"kernel-build-{flavour}") as build:
            return _make_kernel(
                store, key, inputs, requested, src, build, arch=arch, flavour=flavour,
                dtbs=dtbs, board_dts=board_dts, log=log,
            )  # fmt: skip


def _make_kernel(
    store: Store,
    key: str,
    inputs: dict[str, Any],
    requested: dict[str, Option],
    src: Path,
    build: Path,
    *,
    arch: str,
    flavour: str,
    dtbs: tuple[str, ...],
    board_dts: tuple[Path, ...],
    log: Path,
) -> dict[str, Any]:
    """Configure, assert, compile and publish the kernel `key` in the working tree `build`."""
    text: str = inputs["config"]
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    allconfig = build / "tuoba.allconfig"
    allconfig.write_text(text)
    ccache = store.work("ccache")
    make(src, build, arch, ["allnoconfig"], log, ccache, KCONFIG_ALLCONFIG=str(allconfig))

    final = parse_config((build / ".config").read_text())
    missing = missing_options(final, [_as_feature(requested)])
    if missing:
        why = explain_missing(src, build, arch, missing)
        listing = describe_missing(final, missing)
        raise BuildError(
            f"Kconfig dropped {len(missing)} requested option(s): {listing}",
            hint=(why + "\n" if why else "")
            + "add the missing dependency to the fragment, or drop the option",
        )

    image_target = arches.of(arch).kernel_image
    own = {p.stem: p for p in board_dts}
    targets = [image_target, "modules", *(f"{d}.dtb" for d in dtbs if d not in own)]
    stop = threading.Event()
    count = ObjectCount(log, build / "tuoba-objects.count")
    t = threading.Thread(target=ui.watch, args=("Compiling the kernel", count, stop), daemon=True)
    start = time.monotonic()
    t.start()
    try:
        make(src, build, arch, targets, log, ccache, heartbeat=False)  # (count reports)
        count()
        if count.done:
            count.finished()  # the next cold build of this directory shows done/total
    finally:
        stop.set()
        t.join()
    seconds = time.monotonic() - start

    release = run.output(
        ["make", "-s", "-C", str(src), f"O={build}", f"ARCH={arches.of(arch).kernel}", "LLVM=1",
         "kernelrelease"]
    )  # fmt: skip
    summary = {k: v for k, v in inputs.items() if k != "config"} | {"config": digest(text)}
    what = f"Linux {release} {arch} kernel ({flavour})"
    with store.make("kernel", key, what=what, inputs=summary) as tmp:
        _collect(src, build, arch, release, dtbs, own, log, ccache, tmp)
        config = parse_config((build / ".config").read_text())
        rec = {
            "source": "tuoba",
            "version": release,
            "compiler": config.get("CONFIG_CC_VERSION_TEXT", "").strip('"'),
            "linker": linker(config),
            "config_sha256": sources.sha256_file(tmp / "config"),
            "config_digest": key,
            "image": image_target,
            "dtbs": [f"{Path(d).name}.dtb" for d in dtbs],
            "build_seconds": round(seconds, 1),
        }
        (tmp / "kernel.json").write_text(json.dumps(rec, indent=2))
    entry = store.get("kernel", key)
    assert entry is not None  # (just made)
    return _record(entry.data)


def _record(data: Path) -> dict[str, Any]:
    """A cached kernel's record, with where its files are on this machine."""
    rec: dict[str, Any] = json.loads((data / "kernel.json").read_text())
    return rec | {"dir": str(data)}


def _collect(
    src: Path,
    build: Path,
    arch: str,
    release: str,
    dtbs: tuple[str, ...],
    own: dict[str, Path],
    log: Path,
    ccache: Path,
    tmp: Path,
) -> None:
    """Install what the image needs from the build directory into the entry being made."""
    image_target = arches.of(arch).kernel_image
    (tmp / "modules").mkdir(parents=True)
    make(src, build, arch, ["modules_install"], log, ccache,
         INSTALL_MOD_PATH=str(tmp / "modules"), INSTALL_MOD_STRIP="1")  # fmt: skip
    for stale in (tmp / "modules" / "lib" / "modules" / release).glob("build"):
        stale.unlink()  # a link back into the build dir; meaningless in the image
    boot = build / "arch" / arches.of(arch).kernel / "boot"
    shutil.copyfile(boot / image_target, tmp / image_target)
    shutil.copyfile(build / ".config", tmp / "config")
    shutil.copyfile(build / "System.map", tmp / "System.map")
    # The kernel's BTF on its own (what /sys/kernel/btf/vmlinux gives in the guest): bpf/'s
    # programs are compiled against a vmlinux.h made of it.
    run.run(["llvm-objcopy", "-O", "binary", "--only-section=.BTF", str(build / "vmlinux"),
             str(tmp / BTF_FILE)], log=log)  # fmt: skip
    # The whole vmlinux with its DWARF, compressed (drgn and perf read zlib sections): the
    # image keeps it where debuggers look when a recipe asks (kernel_files: [debug-info]).
    run.run(["llvm-objcopy", "--compress-debug-sections=zlib", str(build / "vmlinux"),
             str(tmp / DEBUG_FILE)], log=log)  # fmt: skip
    dtb_dir = tmp / "dtbs"
    dtb_dir.mkdir()
    for d in dtbs:
        if d in own:
            compile_dts(src, arch, own[d], dtb_dir / f"{d}.dtb", log)
            continue
        shutil.copyfile(build / "arch" / arches.of(arch).kernel / "boot" / "dts" / f"{d}.dtb",
                        dtb_dir / f"{Path(d).name}.dtb")  # fmt: skip


def linker(config: dict[str, str]) -> str:
    """The linker that linked the kernel, as its .config records it: Kconfig's LLD_VERSION and
    LD_VERSION are both major*10000 + minor*100 + patch (scripts/ld-version.sh); LD_VERSION is
    0 for lld."""
    lld = config.get("CONFIG_LD_IS_LLD") == "y"
    n = int(config.get("CONFIG_LLD_VERSION" if lld else "CONFIG_LD_VERSION", "0") or 0)
    return (
        f"{'LLD' if lld else 'GNU ld'} {n // 10000}.{n // 100 % 100}.{n % 100}" if n else "unknown"
    )


def compile_dts(src: Path, arch: str, dts: Path, dtb: Path, log: Path) -> None:
    """A board's own .dts, preprocessed like Linux's (its #includes resolve to this source's
    SoC .dtsi files and dt-bindings headers) and compiled by dtc."""
    pre = dtb.with_suffix(".dts.tmp")
    run.run(
        ["clang", "-E", "-nostdinc", "-undef", "-D__DTS__", "-x", "assembler-with-cpp", "-P",
         "-I", str(src / "scripts" / "dtc" / "include-prefixes"),
         "-I", str(src / "arch" / arches.of(arch).kernel / "boot" / "dts"),
         "-I", str(src / "include"), "-o", str(pre), str(dts)],
        log=log,
    )  # fmt: skip
    run.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dtb), str(pre)], log=log)
    pre.unlink()


def _as_feature(requested: dict[str, Option]) -> Feature:
    return Feature("requested", tuple(requested.values()), Path("."))
