"""The build steps, declared once each in STEPS: a name, what it reads (files, plan values and
the records of the steps it comes after), what it writes, and its function. SConstruct loops
over STEPS and holds no per-step code; only step functions write to disk.

    fetch -> artifacts -> rootfs -> kernel -> bpf -> overlay -> image

Each step writes a small JSON record as its SCons target, last, so an interrupted step leaves
no target and runs again on the next build. Adding a step: its function (here or in a module
of its own) and one Step in STEPS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuoba import (
    bootloader,
    bpf,
    image,
    kbuild,
    overlay,
    publish,
    records,
    rootfs,
    sources,
    stages,
    ui,
    userland,
    venv,
    wheels,
)
from tuoba.digest import digest
from tuoba.errors import BuildError, TuobaError
from tuoba.kernel import assert_config, parse_config
from tuoba.plan import Plan, render_context
from tuoba.records import RecordT


def code_digest() -> str:
    """A digest of tuoba's own code: a new tuoba re-runs the steps (their results are cached
    where they are expensive, so only the cheap ones really run again)."""
    package = Path(__file__).parent
    return digest(
        {str(p.relative_to(package)): p.read_text() for p in sorted(package.rglob("*.py"))}
    )


def save_plan(plan: Plan) -> tuple[Path, str]:
    """The resolved Plan, for the SCons process of this build: (file, sha256). Pickled: the
    same tuoba writes and reads it (the code digest is in every step's signature), and SCons
    loads it only when its hash matches the one tuoba passes on the command line."""
    path = plan.build_dir / "plan.pickle"
    data = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
    with publish.atomic(path) as tmp:
        tmp.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def load_plan(path: str, sha256: str) -> Plan:
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BuildError(f"{path} changed after tuoba wrote it", hint="run the build again")
    plan = pickle.loads(data)
    assert isinstance(plan, Plan)
    return plan


def record_path(plan: Plan, step: str) -> Path:
    return plan.build_dir / f"{step}.json"


def read_record(plan: Plan, kind: type[RecordT]) -> RecordT:
    """The record a step before this one wrote."""
    return records.read(kind, record_path(plan, kind.step))


def write_record(plan: Plan, record: records.Record) -> None:
    """The step's record, with the cache entries its paths point into (a build whose entries
    were pruned since runs the step again: see forget_pruned). Entries used only to make the
    step's results (a tool, an unpacked source) are not among them: the results do not need
    them once made."""
    text = records.to_json(record, sorted(_refs(plan, record.to_dict())))
    with publish.atomic(record_path(plan, record.step)) as tmp:
        tmp.write_text(text)


def _refs(plan: Plan, value: Any) -> set[str]:
    if isinstance(value, dict):
        return {r for v in value.values() for r in _refs(plan, v)}
    if isinstance(value, list | tuple):
        return {r for v in value for r in _refs(plan, v)}
    ref = plan.store.ref_of(value) if isinstance(value, str) else None
    return {ref} if ref else set()


def forget_pruned(plan: Plan) -> list[str]:
    """Remove the records of steps whose cache entries are gone (pruned, or removed by hand),
    so SCons runs them again instead of trusting a result that points at nothing; the entries
    that are there count as used by this build (their age is since this build). Returns the
    steps forgotten."""
    forgotten = []
    for step in STEP_NAMES:
        path = record_path(plan, step)
        try:
            refs = json.loads(path.read_text()).get("cache", [])
        except (OSError, ValueError, AttributeError):
            continue
        if not all([plan.store.touch(ref) for ref in refs]):  # (a list: every one touched)
            path.unlink()
            forgotten.append(step)
    return forgotten


def log_path(plan: Plan, step: str) -> Path:
    return plan.build_dir / "logs" / f"{step}.log"


# --- steps -------------------------------------------------------------------------------------


def plan_sources(plan: Plan) -> list[sources.Source]:
    srcs = stages.of(plan).sources()
    if plan.board.kernel.source == "tuoba":
        srcs.append(kbuild.load_source(plan.data_dir).source)
    srcs += bootloader.for_board(plan.board, plan.store).sources()
    return srcs


def fetch(plan: Plan) -> None:
    fetched = {}
    for src in plan_sources(plan):
        path = sources.fetch(
            src, plan.store, debian_mirrors=plan.mirrors, offline=plan.request.offline
        )
        fetched[src.name] = records.FetchedSource(src.sha256, str(path), src.origin)
    stages.of(plan).prepare_tools()
    write_record(plan, records.FetchRecord(sources=fetched))


def fetch_artifacts(plan: Plan) -> None:
    """The recipes' pinned files (sources.yaml), in a record of their own: only the image
    step reads it, so a new artifact re-runs nothing before the image."""
    fetched = {}
    for a in plan.artifacts:
        if a.given is not None:  # (supplied by the user, its hash checked by the plan)
            path = sources.adopt(a.source, Path(a.given), plan.store)
        else:
            path = sources.fetch(
                a.source, plan.store, debian_mirrors=plan.mirrors, offline=plan.request.offline
            )
        fetched[a.install] = records.FetchedSource(a.source.sha256, str(path), a.source.origin)
    write_record(plan, records.ArtifactsRecord(files=fetched))


def build_root(plan: Plan) -> None:
    fetched = read_record(plan, records.FetchRecord)
    write_record(plan, stages.of(plan).build_root(log_path(plan, "rootfs"), fetched.paths))


BOOT_SUFFIXES = (".Image", ".zImage", ".vmlinuz", ".initrd")


def kernel(plan: Plan) -> None:
    # A board that switched kernel source must not keep the other source's boot files around.
    for suffix in BOOT_SUFFIXES:
        (plan.out_dir / f"{plan.image_name}{suffix}").unlink(missing_ok=True)
    KERNEL_SOURCES[plan.board.kernel.source](plan)


def kernel_tuoba(plan: Plan) -> None:
    """The TuobaOS kernel: built here by clang/LLVM from the pinned source."""
    ks = kbuild.load_source(plan.data_dir)
    tarball = read_record(plan, records.FetchRecord).path(ks.source.name)
    rec = kbuild.build_kernel(
        unpack=lambda: kbuild.unpack_source(ks, tarball, plan.store),
        source_id=ks.id,
        store=plan.store,
        arch=plan.board.arch,
        flavour=plan.board.kernel.flavour or plan.board.arch,
        fragments=[(f.name, list(f.options)) for f in plan.fragments],
        dtbs=plan.kernel_dtbs,
        board_dts=plan.board_dts,
        log=log_path(plan, "kernel"),
    )
    built = Path(rec["dir"])
    out_kernel = plan.out_dir / f"{plan.image_name}.{rec['image']}"
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    with publish.atomic(out_kernel) as tmp:
        shutil.copyfile(built / rec["image"], tmp)
    board_dtbs = [f"{Path(d).name}.dtb" for d in plan.board.kernel.dtbs]
    for dtb in board_dtbs:  # beside the image, for emulators that take the device tree
        with publish.atomic(plan.out_dir / f"{plan.image_name}.{dtb}") as tmp:
            shutil.copyfile(built / "dtbs" / dtb, tmp)
    write_record(
        plan,
        records.KernelRecord(
            source="tuoba",
            version=rec["version"],
            compiler=rec["compiler"],
            config_sha256=rec["config_sha256"],
            config_digest=rec["config_digest"],
            image=rec["image"],
            dtbs=rec["dtbs"],
            build_seconds=rec["build_seconds"],
            dir=str(built),
            # (entries cached before the linker was read from the config said "0")
            linker=kbuild.linker(parse_config((built / "config").read_text())),
            source_tarball=ks.source.name,
            patches=[
                {"name": p.name, "sha256": p.sha256, "files": list(p.files)} for p in ks.patches
            ],
            requested={o.name: o.value for f in plan.fragments for o in f.options},
            features={f.name: [o.name for o in f.options] for f in plan.features},
            kernel=out_kernel.name,
            board_dtbs=[f"{plan.image_name}.{d}" for d in board_dtbs],
            kernel_sha256=sources.sha256_file(out_kernel),
            modules=str(built / "modules" / "lib" / "modules" / rec["version"]),
        ),
    )


def kernel_distro(plan: Plan) -> None:
    """Distro kernel: take it from the rootfs and prove its config has every requested option."""
    tree = Path(read_record(plan, records.RootfsRecord).tree)
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(
            f"expected one kernel in the rootfs /boot, found {len(kernels)}",
            hint=f"board kernel package: {plan.board.kernel.package}",
        )
    version = kernels[0].name.removeprefix("vmlinuz-")
    config_file = tree / "boot" / f"config-{version}"
    initrd = tree / "boot" / f"initrd.img-{version}"
    config_text = config_file.read_text()
    config = parse_config(config_text)
    assert_config(config, plan.features, f"{plan.board.kernel.package} {version}")
    out_kernel = plan.out_dir / f"{plan.image_name}.vmlinuz"
    out_initrd = plan.out_dir / f"{plan.image_name}.initrd"
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    for src, dest in ((kernels[0], out_kernel), (initrd, out_initrd)):
        with publish.atomic(dest) as tmp:
            shutil.copyfile(src, tmp)
    write_record(
        plan,
        records.KernelRecord(
            source=plan.board.kernel.source,
            package=plan.board.kernel.package,
            version=version,
            compiler=config.get("CONFIG_CC_VERSION_TEXT", "").strip('"'),
            config_sha256=sources.sha256_file(config_file),
            features={f.name: [o.name for o in f.options] for f in plan.features},
            kernel=out_kernel.name,
            initrd=out_initrd.name,
            kernel_sha256=sources.sha256_file(out_kernel),
            initrd_sha256=sources.sha256_file(out_initrd),
        ),
    )


KERNEL_SOURCES: dict[str, Callable[[Plan], None]] = {
    "distro": kernel_distro,
    "tuoba": kernel_tuoba,
}


def build_bpf(plan: Plan) -> None:
    """The bpf/ programs the recipes ask for, compiled against this image's kernel (its BTF)
    and root tree (the loaders' libbpf headers: light skeletons, no libbpf at run time)."""
    if not plan.bpf_programs:
        write_record(plan, records.BpfRecord(programs={}))
        return
    kernel_rec = read_record(plan, records.KernelRecord)
    root = read_record(plan, records.RootfsRecord)
    log = log_path(plan, "bpf")
    log.unlink(missing_ok=True)
    if root.toolchain:  # stage 2: the loaders built like its userland, by clang against musl
        tc = userland.cached_toolchain(plan.store, root.toolchain)
        pkg = userland.load_package(plan.data_dir, userland.LIBBPF)
        assert pkg.source is not None  # (a pinned source: the package's data says so)
        tarball = read_record(plan, records.FetchRecord).path(pkg.source.name)
        headers = userland.build_package(pkg, tc, tarball, plan.store, log)
        target = bpf.musl_target(plan.board.arch, tc.cc, tc.sysroot, headers / "usr/include")
    else:  # stage 1: the image's own root tree is the sysroot
        target = bpf.image_target(plan.board.arch, Path(root.tree))
    built = bpf.build(
        plan.bpf_programs,
        kernel_dir=kernel_rec.built,
        btf_file=kbuild.BTF_FILE,
        target=target,
        tree_digest=root.digest,
        arch=plan.board.arch,
        store=plan.store,
        log=log,
    )
    write_record(
        plan,
        records.BpfRecord(
            programs={
                p.name: records.BuiltProgram(
                    loader=str(built[p.name].loader),
                    object=str(built[p.name].object),
                    install=p.install,
                    object_install=p.object_install,
                    loader_sha256=sources.sha256_file(built[p.name].loader),
                    object_sha256=sources.sha256_file(built[p.name].object),
                )
                for p in plan.bpf_programs
            },
            btf_sha256=sources.sha256_file(kernel_rec.built / kbuild.BTF_FILE),
        ),
    )


def build_venvs(plan: Plan) -> None:
    """The recipes' Python venvs: their wheels fetched (pip, into the cache by hash) and
    installed into a tree the image step copies in."""
    root = read_record(plan, records.RootfsRecord)
    built = {}
    for v in plan.venvs:
        files = {
            w.file: wheels.fetch(w, v.python, plan.store, offline=plan.request.offline)
            for w in v.wheels
        }
        tree = venv.build_venv(v, files, Path(root.tree), plan.store, log_path(plan, "venv"))
        built[v.path] = records.BuiltVenv(str(tree), v.python, venv.listing(v))
    write_record(plan, records.VenvRecord(venvs=built))


def render(plan: Plan) -> None:
    key = plan.ssh_key.read_text().strip()
    dest = plan.build_dir / "overlay"
    files = overlay.render_overlays(plan.overlays, render_context(plan, key), dest)
    write_record(
        plan,
        records.OverlayRecord(
            files={
                f: f"-> {(dest / f).readlink()}"
                if (dest / f).is_symlink()
                else sources.sha256_file(dest / f)
                for f in sorted(files)
            },
            tree=str(dest),
        ),
    )


def build_image(plan: Plan) -> None:
    stage = stages.of(plan)
    made = image.Made(
        fetched=read_record(plan, records.FetchRecord),
        artifacts=read_record(plan, records.ArtifactsRecord),
        root=read_record(plan, records.RootfsRecord),
        kernel=read_record(plan, records.KernelRecord),
        overlays=read_record(plan, records.OverlayRecord),
        bpf=read_record(plan, records.BpfRecord),
        venvs=read_record(plan, records.VenvRecord),
    )
    record = image.compose(
        plan, made, audit=stage.audit, fstab_line=stage.fstab_line, log=log_path(plan, "image")
    )
    write_record(plan, record)


# --- the registry ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a step's result depends on, for SCons's content signatures."""

    after: tuple[str, ...] = ()  # steps whose records it reads
    files: tuple[Path, ...] = ()  # hashed by content
    values: tuple[Any, ...] = ()  # hashed by their JSON rendering


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    title: str  # the progress line; {how} is what builds the stage's root filesystem
    run: Callable[[Plan], None]  # does the work; writes the record last (write_record)
    inputs: Callable[[Plan], Inputs]
    outputs: Callable[[Plan], tuple[Path, ...]] = lambda plan: ()  # files besides the record


def _fetch_inputs(plan: Plan) -> Inputs:
    data = plan.data_dir
    return Inputs(
        files=(data / "host" / "tools.yaml", data / "kernel" / "sources.yaml",
               *stages.of(plan).input_files()),
        values=(plan.board.kernel.source,),
    )  # fmt: skip


def _rootfs_inputs(plan: Plan) -> Inputs:
    return Inputs(
        after=("fetch",),
        files=(*rootfs.files_under(rootfs.skeleton_dir(plan)), *stages.of(plan).input_files()),
        values=(stages.of(plan).root_inputs(),),
    )


def _kernel_inputs(plan: Plan) -> Inputs:
    if plan.board.kernel.source == "distro":  # the distribution's kernel comes out of the rootfs
        return Inputs(
            after=("fetch", "rootfs"),
            files=tuple(f.path for f in plan.fragments),
            values=(plan.board.kernel,),
        )
    return Inputs(
        after=("fetch",),
        files=(
            *(f.path for f in plan.fragments),
            plan.data_dir / "kernel" / "sources.yaml",
            *sorted(kbuild.patches_dir(plan.data_dir).glob("*.patch")),
        ),
        values=(plan.board.kernel, kbuild.toolchain_id()),  # a new clang/lld rebuilds it
    )


def _bpf_inputs(plan: Plan) -> Inputs:
    if not plan.bpf_programs:
        return Inputs()
    return Inputs(
        after=("fetch", "rootfs", "kernel"),  # (stage 2: libbpf's source, from the fetch step)
        files=tuple(f for p in plan.bpf_programs for f in p.files()),
        values=([p.name for p in plan.bpf_programs],),
    )


def _overlay_inputs(plan: Plan) -> Inputs:
    return Inputs(
        files=(plan.ssh_key, *(f for o in plan.overlays for f in rootfs.files_under(o.path))),
        values=(plan.overlay_inputs(),),
    )


def _image_outputs(plan: Plan) -> tuple[Path, ...]:
    return tuple(plan.out_dir / f"{plan.image_name}{ext}" for ext in image.SUFFIXES)


STEPS = (
    Step("fetch", "Fetching sources", fetch, _fetch_inputs),
    Step(
        "artifacts",
        "Fetching the recipes' pinned files",
        fetch_artifacts,
        lambda plan: Inputs(values=([dataclasses.asdict(a) for a in plan.artifacts],)),
    ),
    Step("rootfs", "Building the root filesystem ({how})", build_root, _rootfs_inputs),
    Step("kernel", "Preparing the kernel and checking its config", kernel, _kernel_inputs),
    Step("bpf", "Building the eBPF programs (bpf/)", build_bpf, _bpf_inputs),
    Step(
        "venv",
        "Making the recipes' Python venvs",
        build_venvs,
        lambda plan: Inputs(
            after=("rootfs",) if plan.venvs else (),
            values=([dataclasses.asdict(v) for v in plan.venvs],),
        ),
    ),
    Step("overlay", "Rendering overlays", render, _overlay_inputs),
    Step(
        "image",
        "Composing the disk image",
        build_image,
        lambda plan: Inputs(
            after=("fetch", "artifacts", "rootfs", "kernel", "bpf", "venv", "overlay"),
            values=(plan.image_inputs(), plan.source_date_epoch),
        ),
        _image_outputs,
    ),
)
STEP_NAMES = tuple(s.name for s in STEPS)
BY_NAME = {s.name: s for s in STEPS}


def error_path(plan: Plan) -> Path:
    return plan.build_dir / "error.pickle"


def run_step(plan: Plan, name: str) -> int:
    """Run one step for SCons. Its error is kept (pickled, so `tuoba build` raises the same
    type with the same message and hint), not raised into SCons."""
    step = BY_NAME[name]
    with (plan.build_dir / "ran.txt").open("a") as f:
        f.write(name + "\n")
    # The old record goes first: a step that fails or is interrupted leaves none, so the next
    # build runs it again whatever its inputs are then (SCons keeps the targets of a failed
    # action, all of them Precious: steps replace their outputs themselves).
    record_path(plan, name).unlink(missing_ok=True)
    try:
        with ui.step(step.title.format(how=stages.of(plan).describe())):
            step.run(plan)
    except BaseException as e:
        error: TuobaError = (
            e
            if isinstance(e, TuobaError)
            else BuildError(
                f"step '{name}' failed: {type(e).__name__}: {e}",
                hint="".join(traceback.format_exception(e)),
            )
        )
        error_path(plan).write_bytes(pickle.dumps(error))
        return 1
    return 0
