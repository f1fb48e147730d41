"""The build steps, declared once each in STEPS: a name, what it reads (files, plan values and
the records of the steps it comes after), what it writes, and its function. SConstruct loops
over STEPS and holds no per-step code; only step functions write to disk.

    fetch -> rootfs -> kernel -> overlay -> image

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
    image,
    kbuild,
    overlay,
    publish,
    rootfs,
    run,
    sources,
    stages,
    ui,
)
from tuoba.digest import digest
from tuoba.errors import BuildError, TuobaError
from tuoba.kernel import assert_config, parse_config
from tuoba.manifest import Manifest
from tuoba.plan import Plan, render_context


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


def read_record(plan: Plan, step: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record_path(plan, step).read_text())
    return data


def write_record(plan: Plan, step: str, data: dict[str, Any]) -> None:
    """The step's record, with the cache entries its paths point into (a build whose entries
    were pruned since runs the step again: see forget_pruned). Entries used only to make the
    step's results (a tool, an unpacked source) are not among them: the results do not need
    them once made."""
    data = data | {"cache": sorted(_refs(plan, data))}
    with publish.atomic(record_path(plan, step)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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
        fetched[src.name] = {"sha256": src.sha256, "path": str(path), "origin": src.origin}
    stages.of(plan).prepare_tools()
    write_record(plan, "fetch", {"sources": fetched})


def build_root(plan: Plan) -> None:
    fetched = {name: Path(v["path"]) for name, v in read_record(plan, "fetch")["sources"].items()}
    record = stages.of(plan).build_root(log_path(plan, "rootfs"), fetched)
    write_record(plan, "rootfs", record)


BOOT_SUFFIXES = (".Image", ".zImage", ".vmlinuz", ".initrd")


def kernel(plan: Plan) -> None:
    # A board that switched kernel source must not keep the other source's boot files around.
    for suffix in BOOT_SUFFIXES:
        (plan.out_dir / f"{plan.image_name}{suffix}").unlink(missing_ok=True)
    KERNEL_SOURCES[plan.board.kernel.source](plan)


def kernel_tuoba(plan: Plan) -> None:
    """The TuobaOS kernel: built here by clang/LLVM from the pinned source."""
    ks = kbuild.load_source(plan.data_dir)
    tarball = Path(read_record(plan, "fetch")["sources"][ks.source.name]["path"])
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
        "kernel",
        {
            **rec,
            # (entries cached before the linker was read from the config said "0")
            "linker": kbuild.linker(parse_config((built / "config").read_text())),
            "source_tarball": ks.source.name,
            "requested": {o.name: o.value for f in plan.fragments for o in f.options},
            "features": {f.name: [o.name for o in f.options] for f in plan.features},
            "kernel": out_kernel.name,
            "board_dtbs": [f"{plan.image_name}.{d}" for d in board_dtbs],
            "initrd": None,
            "kernel_sha256": sources.sha256_file(out_kernel),
            "modules": str(built / "modules" / "lib" / "modules" / rec["version"]),
        },
    )


def kernel_distro(plan: Plan) -> None:
    """Distro kernel: take it from the rootfs and prove its config has every requested option."""
    tree = Path(read_record(plan, "rootfs")["tree"])
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
        "kernel",
        {
            "source": plan.board.kernel.source,
            "package": plan.board.kernel.package,
            "version": version,
            "compiler": config.get("CONFIG_CC_VERSION_TEXT", "").strip('"'),
            "config_sha256": sources.sha256_file(config_file),
            "features": {f.name: [o.name for o in f.options] for f in plan.features},
            "kernel": out_kernel.name,
            "initrd": out_initrd.name,
            "kernel_sha256": sources.sha256_file(out_kernel),
            "initrd_sha256": sources.sha256_file(out_initrd),
        },
    )


KERNEL_SOURCES: dict[str, Callable[[Plan], None]] = {
    "distro": kernel_distro,
    "tuoba": kernel_tuoba,
}


def render(plan: Plan) -> None:
    key = plan.ssh_key.read_text().strip()
    dest = plan.build_dir / "overlay"
    files = overlay.render_overlays(plan.overlays, render_context(plan, key), dest)
    write_record(
        plan,
        "overlay",
        {
            "files": {
                f: f"-> {(dest / f).readlink()}"
                if (dest / f).is_symlink()
                else sources.sha256_file(dest / f)
                for f in sorted(files)
            }
        },
    )


def build_image(plan: Plan) -> None:
    """Compose the image; on failure its scratch (the staging tree, the partition images) goes
    too: after a full disk nothing of it keeps the space."""
    try:
        _build_image(plan)
    except BaseException:
        shutil.rmtree(plan.build_dir / "staging", ignore_errors=True)
        for scratch in plan.build_dir.glob("part-*"):
            if scratch.is_dir():
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                scratch.unlink(missing_ok=True)
        raise


def _build_image(plan: Plan) -> None:
    rootfs_rec = read_record(plan, "rootfs")
    kernel_rec = read_record(plan, "kernel")
    log = log_path(plan, "image")
    log.unlink(missing_ok=True)
    out = plan.out_dir
    name = plan.image_name
    img, xz, bmap = out / f"{name}.img", out / f"{name}.img.xz", out / f"{name}.img.bmap"
    manifest_file = out / f"{name}.manifest.json"
    for old in (manifest_file, img, xz, bmap):  # no stale set may look finished
        old.unlink(missing_ok=True)

    seed = digest({"image": plan.image_inputs(), "rootfs": rootfs_rec["digest"]})
    parts = image.layout(plan.board.image, seed)
    root = next(p for p in parts if p.mountpoint == "/")
    cmdline = " ".join(
        [
            f"root=PARTUUID={root.uuid}",
            "rootwait",
            f"console={plan.board.console}",
            *plan.board.kernel.cmdline,
        ]
    )

    with ui.step("Staging the root tree (rootfs + overlays + services)"):
        staging = plan.build_dir / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        # hard links when out/ shares the cache's filesystem; a copy when it does not
        same_fs = Path(rootfs_rec["tree"]).stat().st_dev == plan.build_dir.stat().st_dev
        run.run(["cp", "-al" if same_fs else "-a", rootfs_rec["tree"], str(staging)], log=log)
        if kernel_rec.get("modules"):
            shutil.copytree(
                kernel_rec["modules"],
                staging / "usr/lib/modules" / kernel_rec["version"],
                symlinks=True,
            )
        overlay.apply_overlay(plan.build_dir / "overlay", staging)
        write_fstab(staging, parts, stages.of(plan))
        loader = bootloader.for_board(
            plan.board, plan.store, {s.file: s.path for s in plan.supplied}
        )
        loader.root_tree(staging, kernel_rec, cmdline)
        if plan.services:
            run.run(["systemctl", f"--root={staging}", "enable", *plan.services], log=log)
        if (staging / "etc/shadow").is_file():
            (staging / "etc/shadow").chmod(0o640)  # git keeps no modes but the exec bit

    audit = stages.of(plan).audit(staging)

    spec = plan.board.image
    with ui.step(f"Writing {img.name} ({spec.size >> 20} MiB, {spec.table})"):
        filesystems = []
        boot_done = False
        for part in parts:
            fs_file = plan.build_dir / f"part-{part.name}.{part.fs}"
            if part.mountpoint == "/":
                image.make_ext4(staging, fs_file, part.size, part.name, part.fs_uuid, log)
            elif part.fs == "vfat":
                tree = plan.build_dir / f"part-{part.name}"
                shutil.rmtree(tree, ignore_errors=True)
                tree.mkdir()
                if not boot_done:  # the first FAT partition is where firmware looks
                    loader.boot_partition(tree, kernel_rec, cmdline)
                    boot_done = True
                image.make_vfat(tree, fs_file, part.size, part.name, part.fs_uuid, log)
                shutil.rmtree(tree)
            else:
                raise BuildError(f"partition '{part.name}': no way to fill a {part.fs} filesystem")
            filesystems.append((part, fs_file))
        shutil.rmtree(staging)
        raw = loader.raw_writes(log)
        check_raw_writes(raw, parts, plan.board.image.table, plan.board.name)
        with publish.atomic(img) as tmp:
            with tmp.open("wb") as f:
                f.truncate(plan.board.image.size)
            run.run(
                ["sfdisk", "--no-reread", "--no-tell-kernel", str(tmp)],
                input=image.sfdisk_script(plan.board.image.table, parts, seed),
                log=log,
            )
            for part, fs_file in filesystems:
                image.copy_sparse(fs_file, tmp, part.start)
                fs_file.unlink()
            for offset, blob in raw:
                image.copy_sparse(blob, tmp, offset)
            with publish.atomic(bmap) as tmp_bmap:
                image.write_bmap(tmp, tmp_bmap)
            with publish.atomic(xz) as tmp_xz:
                image.compress_xz(tmp, tmp_xz)

    boot_files = [out / kernel_rec[k] for k in ("kernel", "initrd") if kernel_rec.get(k)]
    boot_files += [out / d for d in kernel_rec.get("board_dtbs", [])]
    loaders = []
    for offset, blob in raw:  # beside the image too: what was written where
        exported = out / f"{name}.{blob.name}"
        with publish.atomic(exported) as tmp:
            shutil.copyfile(blob, tmp)
        boot_files.append(exported)
        loaders.append({"file": exported.name, "offset": offset, "size": blob.stat().st_size})
    manifest = Manifest(
        name=name,
        version=plan.version,
        board=plan.board.name,
        arch=plan.board.arch,
        stage=plan.stage,
        recipes=[r.name for r in plan.recipes],
        tests=list(plan.tests),
        hostname=plan.board.hostname,
        inputs_digest=seed,
        kernel={k: v for k, v in kernel_rec.items() if k not in HOST_ONLY},
        boot={
            "kernel": kernel_rec["kernel"],
            "initrd": kernel_rec["initrd"],
            "cmdline": cmdline,
            "qemu": None if plan.board.qemu is None else vars(plan.board.qemu),
            "loaders": loaders,
            "supplied": [
                {"file": s.file, "sha256": s.sha256, "from": s.path.name} for s in plan.supplied
            ],
        },
        partitions=[vars(p) for p in parts],
        sources={
            n: {k: v for k, v in src.items() if k not in HOST_ONLY}
            for n, src in read_record(plan, "fetch")["sources"].items()
        },
        rootfs={
            "digest": rootfs_rec["digest"],
            **{k: rootfs_rec[k] for k in ("mkosi", "toolchain") if k in rootfs_rec},
        },
        packages=rootfs_rec["packages"],
        files={f.name: sources.sha256_file(f) for f in (img, xz, bmap, *boot_files)},
        audit=audit,
    )
    with publish.atomic(manifest_file) as tmp:
        tmp.write_text(manifest.to_json())
    image.sha256sums(out, [img, xz, bmap, manifest_file, *boot_files])
    write_record(plan, "image", {"image": str(img), "manifest": str(manifest_file)})


# Build-record keys about the build host (cache entries and where they are): the records need them,
# the manifest that travels with the image does not (the kernel is named by config_digest).
HOST_ONLY = frozenset({"dir", "modules", "path", "cache"})

GPT_END = 34 * 512  # protective MBR, GPT header and a 128-entry table (the backup is at the end)


def check_raw_writes(
    raw: list[tuple[int, Path]], parts: list[image.PlacedPartition], table: str, board: str
) -> None:
    """A loader written outside the partitions must not overlap the table or a partition. On
    an MBR disk the boot code area before the disk signature (bytes 0-439) is a loader's."""
    table_end = GPT_END if table == "gpt" else 512
    for offset, blob in raw:
        end = offset + blob.stat().st_size
        clash = [p.name for p in parts if offset < p.start + p.size and p.start < end]
        boot_code = table == "mbr" and end <= image.MBR_BOOT_CODE
        if (offset < table_end and not boot_code) or clash:
            what = f"partition '{clash[0]}'" if clash else "the partition table"
            raise BuildError(
                f"{blob.name} ({blob.stat().st_size} bytes at byte {offset}) overlaps {what}",
                hint=f"move the first partition (image -> first_partition) in boards/{board}/"
                "board.yaml past the loader's end",
            )


def write_fstab(root: Path, parts: list[image.PlacedPartition], stage: stages.Stage) -> None:
    """Mount every partition that has a mountpoint: the root by PARTUUID (stable across card
    readers; stage 2's line is for `mount -o remount,rw /`, which needs no lookup), the others
    as the stage's mount can find them."""
    lines = ["# written by tuoba: <partition> <mountpoint> <type> <options> <dump> <pass>"]
    for p in parts:
        if p.mountpoint is None:
            continue
        if p.mountpoint == "/":
            lines.append(f"PARTUUID={p.uuid} / {p.fs} rw,errors=remount-ro 0 1")
        else:
            (root / p.mountpoint.lstrip("/")).mkdir(parents=True, exist_ok=True)
            lines.append(stage.fstab_line(p))
    fstab = root / "etc/fstab"
    fstab.unlink(missing_ok=True)  # hard-linked from the rootfs cache: replace, never write into
    fstab.write_text("\n".join(lines) + "\n")


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
        files=(*(f.path for f in plan.fragments), plan.data_dir / "kernel" / "sources.yaml"),
        values=(plan.board.kernel, kbuild.toolchain_id()),  # a new clang/lld rebuilds it
    )


def _overlay_inputs(plan: Plan) -> Inputs:
    return Inputs(
        files=(plan.ssh_key, *(f for o in plan.overlays for f in rootfs.files_under(o.path))),
        values=(plan.overlay_inputs(),),
    )


def _image_outputs(plan: Plan) -> tuple[Path, ...]:
    name = plan.image_name
    return tuple(plan.out_dir / f"{name}{ext}" for ext in IMAGE_SUFFIXES)


IMAGE_SUFFIXES = (".img", ".img.xz", ".img.bmap", ".manifest.json")

STEPS = (
    Step("fetch", "Fetching sources", fetch, _fetch_inputs),
    Step("rootfs", "Building the root filesystem ({how})", build_root, _rootfs_inputs),
    Step("kernel", "Preparing the kernel and checking its config", kernel, _kernel_inputs),
    Step("overlay", "Rendering overlays", render, _overlay_inputs),
    Step(
        "image",
        "Composing the disk image",
        build_image,
        lambda plan: Inputs(after=("rootfs", "kernel", "overlay"), values=(plan.image_inputs(),)),
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
