"""Composing a board's disk image from what the steps before made: the root tree (rootfs +
kernel modules + rendered overlays + fstab + enabled services + the boot method's files),
its filesystems, the partition table and the loader outside it; then the block map, the xz
copy, the manifest and SHA256SUMS. The disk-level helpers are in `tuoba.disk`.

Every artifact is written under a temporary name and renamed when complete; on failure the
scratch (staging tree, partition images) goes too, so a full disk keeps nothing of it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuoba import bootloader, disk, kbuild, oci, overlay, publish, run, sbom, sources, ui
from tuoba.board import ImageSpec
from tuoba.digest import digest
from tuoba.errors import BuildError, InputError
from tuoba.manifest import Manifest
from tuoba.plan import Plan
from tuoba.recipe import KERNEL_FILES, Artifact
from tuoba.records import (
    ArtifactsRecord,
    BpfRecord,
    FetchRecord,
    ImageRecord,
    KernelRecord,
    OverlayRecord,
    RootfsRecord,
    VenvRecord,
)

SUFFIXES = (".img", ".img.xz", ".img.bmap", ".manifest.json")
GPT_END = 34 * 512  # protective MBR, GPT header and a 128-entry table (the backup is at the end)

# What differs between stages, asked of the plan's stage by the caller.
Audit = Callable[[Path], list[dict[str, Any]] | None]
FstabLine = Callable[[disk.PlacedPartition], str]


@dataclasses.dataclass(frozen=True)
class Made:
    """What the steps before the image made: their records."""

    fetched: FetchRecord
    artifacts: ArtifactsRecord
    root: RootfsRecord
    kernel: KernelRecord
    overlays: OverlayRecord
    bpf: BpfRecord
    venvs: VenvRecord


def compose(
    plan: Plan, made: Made, *, audit: Audit, fstab_line: FstabLine, log: Path
) -> ImageRecord:
    """Make the image and everything beside it; on failure remove its scratch and raise."""
    try:
        return _compose(plan, made, audit, fstab_line, log)
    except BaseException:
        shutil.rmtree(plan.build_dir / "staging", ignore_errors=True)
        for scratch in plan.build_dir.glob("part-*"):
            if scratch.is_dir():
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                scratch.unlink(missing_ok=True)
        raise


def _compose(plan: Plan, made: Made, audit: Audit, fstab_line: FstabLine, log: Path) -> ImageRecord:
    fetched, artifacts, root, kernel = made.fetched, made.artifacts, made.root, made.kernel
    log.unlink(missing_ok=True)
    out = plan.out_dir
    name = plan.image_name
    img, xz, bmap = out / f"{name}.img", out / f"{name}.img.xz", out / f"{name}.img.bmap"
    manifest_file = out / f"{name}.manifest.json"
    for old in (manifest_file, img, xz, bmap):  # no stale set may look finished
        old.unlink(missing_ok=True)

    seed = digest({"image": plan.image_inputs(), "rootfs": root.digest})
    parts = disk.layout(plan.board.image, seed)
    root_part = next(p for p in parts if p.mountpoint == "/")
    cmdline = " ".join(
        [
            f"root=PARTUUID={root_part.uuid}",
            "rootwait",
            f"console={plan.board.console}",
            *plan.board.kernel.cmdline,
        ]
    )
    loader = bootloader.for_board(plan.board, plan.store, {s.file: s.path for s in plan.supplied})

    with ui.step("Staging the root tree (rootfs + overlays + services)"):
        staging = stage_tree(plan, made, loader, cmdline, parts, fstab_line, log)
    audited = audit(staging)
    licences = sbom.debian_licences(staging)  # (for the SBOMs: the copyright files are here)

    spec, parts = fit_root(plan, staging, parts, seed)
    with ui.step(f"Writing {img.name} ({spec.size >> 20} MiB, {spec.table})"):
        with ui.step(f"Making its filesystems ({', '.join(p.fs for p in parts)})"):
            filesystems = make_filesystems(plan, staging, parts, loader, kernel, cmdline, log)
        shutil.rmtree(staging)
        raw = loader.raw_writes(log)
        check_raw_writes(raw, parts, spec.table, plan.board.name)
        with publish.atomic(img) as tmp:
            with tmp.open("wb") as f:
                f.truncate(spec.size)
            run.run(
                ["sfdisk", "--no-reread", "--no-tell-kernel", str(tmp)],
                input=disk.sfdisk_script(spec.table, parts, seed),
                log=log,
            )
            for part, fs_file in filesystems:
                disk.copy_sparse(fs_file, tmp, part.start)
                fs_file.unlink()
            for offset, blob in raw:
                disk.copy_sparse(blob, tmp, offset)
            with publish.atomic(bmap) as tmp_bmap:
                disk.write_bmap(tmp, tmp_bmap)
            compressing = ui.step(f"Compressing it: {xz.name} (xz -{disk.XZ_PRESET})")
            with compressing, publish.atomic(xz) as tmp_xz:
                disk.compress_xz(tmp, tmp_xz)

    boot_files = [out / f for f in (kernel.kernel, kernel.initrd) if f]
    boot_files += [out / d for d in kernel.board_dtbs]
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
        not_run=dict(plan.not_run),
        ports=list(plan.ports),
        hostname=plan.board.hostname,
        inputs_digest=seed,
        kernel=kernel.public(),
        boot={
            "kernel": kernel.kernel,
            "initrd": kernel.initrd,
            "cmdline": cmdline,
            "qemu": None if plan.board.qemu is None else vars(plan.board.qemu),
            "loaders": loaders,
            "supplied": [
                {"file": s.file, "sha256": s.sha256, "from": s.path.name} for s in plan.supplied
            ],
        },
        partitions=[vars(p) for p in parts],
        sources={
            **{n: src.public() for n, src in fetched.sources.items()},
            **{a.source.name: artifacts.files[a.install].public() for a in plan.artifacts},
        },
        rootfs={k: v for k, v in root.public().items() if k != "packages"},
        packages=[
            p | {"license": licences[p["name"]]} if p["name"] in licences else p
            for p in root.packages
        ],
        files={f.name: sources.sha256_file(f) for f in (img, xz, bmap, *boot_files)},
        bpf={
            n: p.public() | {"btf_sha256": made.bpf.btf_sha256}
            for n, p in made.bpf.programs.items()
        },
        python={path: v.public() for path, v in made.venvs.venvs.items()},
        audit=audited,
        source_date_epoch=plan.source_date_epoch,
    )
    with publish.atomic(manifest_file) as tmp:
        tmp.write_text(manifest.to_json())
    disk.sha256sums(out, [img, xz, bmap, manifest_file, *boot_files], known=manifest.files)
    return ImageRecord(image=str(img), manifest=str(manifest_file))


def stage_tree(
    plan: Plan,
    made: Made,
    loader: bootloader.Bootloader,
    cmdline: str,
    parts: list[disk.PlacedPartition],
    fstab_line: FstabLine,
    log: Path,
) -> Path:
    """The image's root tree, in the build directory: a copy of the root filesystem (hard
    links when out/ shares the cache's filesystem) with everything the image adds: the
    kernel's modules, the recipes' pinned files, the rendered overlays, the container images,
    fstab, the boot
    method's files, the enabled services."""
    root, kernel = made.root, made.kernel
    staging = plan.build_dir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    same_fs = Path(root.tree).stat().st_dev == plan.build_dir.stat().st_dev
    run.run(["cp", "-al" if same_fs else "-a", root.tree, str(staging)], log=log)
    if kernel.modules:
        shutil.copytree(kernel.modules, staging / "usr/lib/modules" / kernel.version,
                        symlinks=True, ignore=_build_links(Path(kernel.modules)))  # fmt: skip
    install_artifacts(staging, plan.artifacts, made.artifacts, made.overlays)
    install_programs(staging, made.bpf, made.overlays)
    install_kernel_files(staging, plan.kernel_files, kernel, made.overlays)
    install_venvs(staging, made.venvs, made.overlays, log)
    overlay.apply_overlay(Path(made.overlays.tree), staging)
    write_oci_images(plan, staging, made.overlays)
    write_fstab(staging, parts, fstab_line)
    loader.root_tree(staging, kernel, cmdline)
    if plan.services:
        run.run(["systemctl", f"--root={staging}", "enable", *plan.services], log=log)
    if (staging / "etc/shadow").is_file():
        (staging / "etc/shadow").chmod(0o640)  # git keeps no modes but the exec bit
    scrub_build_dates(staging, plan.source_date_epoch)
    date_tree(staging, plan.source_date_epoch)
    return staging


def scrub_build_dates(root: Path, epoch: int) -> None:
    """What the root tree's making wrote of its own day, set to `epoch` or left out: the day
    passwords last changed in /etc/shadow (as useradd writes it under SOURCE_DATE_EPOCH), the
    logs of package installation, ldconfig's cache of file times (it is made again when
    missing). Each file is replaced, not edited: it may be a hard link into the cache."""
    day = str(epoch // 86400)
    for name in ("etc/shadow", "etc/shadow-"):
        f = root / name
        if f.is_file() and not f.is_symlink():
            lines = []
            for line in f.read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2]:
                    fields[2] = day
                lines.append(":".join(fields))
            st = f.stat()
            f.unlink()
            f.write_text("".join(ln + "\n" for ln in lines))
            os.chown(f, st.st_uid, st.st_gid)
            f.chmod(st.st_mode & 0o7777)
    (root / "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)
    logs = root / "var/log"
    for log in sorted(logs.rglob("*.log")) if logs.is_dir() else []:
        if log.is_file() and not log.is_symlink() and log.stat().st_size:
            st = log.stat()
            log.unlink()
            log.touch()
            os.chown(log, st.st_uid, st.st_gid)
            log.chmod(st.st_mode & 0o7777)


def date_tree(root: Path, epoch: int) -> None:
    """Every file of the image dated `epoch` (SOURCE_DATE_EPOCH): what it was built or copied
    at is this build's clock, not its input. (mke2fs clamps later dates to it, but keeps
    earlier ones: a cached package made before the commit would keep its own.) The files the
    tree shares with the cache's root tree by hard link get that date there too: only their
    dates, which no step reads."""
    for d, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(os.path.join(d, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def _build_links(modules: Path) -> Callable[[str, list[str]], list[str]]:
    """modules_install's `build` and `source` links point into the build host's kernel tree
    (in the cache): no use in the image, and a host path in it."""
    return lambda d, names: [n for n in names if n in ("build", "source") and Path(d) == modules]


def place_file(
    root: Path, install: str, src: Path, mode: int, what: str, overlays: OverlayRecord, hint: str
) -> None:
    """Copy `src` to `install` in the image's tree, as `what` (for messages). An overlay file at
    the same path would silently replace it: that is refused (`hint` says how to settle it), as
    is a path through a symbolic link (it could lead out of the image's tree) and a directory
    in the way."""
    rel = install.lstrip("/")
    if rel in overlays.files:
        raise BuildError(f"{install} is both {what} and an overlay file", hint=hint)
    if (parent := linked_parent(root, rel)) is not None:
        raise BuildError(
            f"{install}: /{parent} is a symbolic link in the image "
            f"(-> {(root / parent).readlink()}), so {what} is not put there",
            hint=f"put it at the path the link points to (an overlay must not replace /{parent} "
            "with a link)",
        )
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir() and not dest.is_symlink():
        raise BuildError(
            f"{install} is a directory in the image: {what} cannot go there",
            hint="give the file's own path, not its directory's",
        )
    dest.unlink(missing_ok=True)  # hard-linked from the rootfs cache: replace, never write
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def install_artifacts(
    root: Path, artifacts: tuple[Artifact, ...], fetched: ArtifactsRecord, overlays: OverlayRecord
) -> None:
    """The recipes' pinned files (sources.yaml), copied from the cache to their paths."""
    for a in artifacts:
        place_file(
            root, a.install, Path(fetched.files[a.install].path), a.mode,
            f"a pinned file ({a.source.name})", overlays,
            "drop one of them: the recipe's sources.yaml or the overlay's file",
        )  # fmt: skip


def install_programs(root: Path, built: BpfRecord, overlays: OverlayRecord) -> None:
    """The bpf/ programs' loaders (in /usr/bin) and objects."""
    for name, p in built.programs.items():
        for src, install, mode in (
            (p.loader, p.install, 0o755),
            (p.object, p.object_install, 0o644),
        ):
            place_file(
                root, install, Path(src), mode, f"bpf/{name}'s file", overlays,
                "drop the overlay's file or rename the program's loader",
            )  # fmt: skip


def install_venvs(root: Path, built: VenvRecord, overlays: OverlayRecord, log: Path) -> None:
    """The recipes' Python venvs, at their paths (hard links when the cache shares the
    filesystem). An overlay cannot put files inside one: the venv is the wheels' alone."""
    for path, v in built.venvs.items():
        inside = path.lstrip("/") + "/"
        clash = next((f for f in overlays.files if f.startswith(inside)), None)
        if clash is not None:
            raise InputError(
                f"an overlay puts /{clash} inside the Python venv {path}",
                hint="pin a wheel for it in the recipe's wheels.yaml instead",
            )
        dest = root / path.lstrip("/")
        if dest.exists() or dest.is_symlink():
            raise InputError(
                f"the Python venv {path} would replace what the root filesystem has there",
                hint="give the venv a path of its own (wheels.yaml: venv)",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tree = Path(v.tree) / path.lstrip("/")
        same_fs = tree.stat().st_dev == root.stat().st_dev
        run.run(["cp", "-al" if same_fs else "-a", str(tree), str(dest)], log=log)


def install_kernel_files(
    root: Path, names: tuple[str, ...], kernel: KernelRecord, overlays: OverlayRecord
) -> None:
    """The built kernel's files the recipes keep (recipe.KERNEL_FILES), from its cache entry."""
    for name in names:
        kept = kernel.boot_image if name == "image" else kbuild.DEBUG_FILE
        src = kernel.built / kept
        if not src.is_file():
            ref = f"kernel/{(kernel.config_digest or '')[:12]}"
            raise BuildError(
                f"the cached kernel {kernel.dir} has no {kept}",
                hint=f"remove the entry (tuoba cache rm {ref}) so the kernel is built again",
            )
        install = KERNEL_FILES[name].format(release=kernel.version)
        place_file(root, install, src, 0o644, f"the kernel's {name}", overlays,
                   "drop the overlay's file")  # fmt: skip


def linked_parent(root: Path, rel: str) -> Path | None:
    """The first directory on the way to `rel` (relative to root) that is a symbolic link in
    the tree, if one is: writing through it could leave the image's tree."""
    return next((p for p in reversed(Path(rel).parents[:-1]) if (root / p).is_symlink()), None)


def write_oci_images(plan: Plan, root: Path, overlays: OverlayRecord) -> None:
    """The recipes' container images, made of files of the tree's packages (an overlay file at
    an archive's path is refused, as for pinned files)."""
    for image in plan.oci_images:
        rel = f"{oci.ARCHIVE_DIR}/{image.archive}"
        if rel in overlays.files:
            raise BuildError(
                f"/{rel} is both the OCI image {image.name} and an overlay file",
                hint="drop the overlay's file or rename the image",
            )
    parent = linked_parent(root, f"{oci.ARCHIVE_DIR}/x") if plan.oci_images else None
    if parent is not None:
        raise BuildError(
            f"/{parent} is a symbolic link in the image (-> {(root / parent).readlink()}), "
            "so the OCI images are not written there",
            hint=f"an overlay must not replace /{parent} with a link",
        )
    oci.write_images(root, plan.oci_images, plan.board.arch)


def fit_root(
    plan: Plan, staging: Path, parts: list[disk.PlacedPartition], seed: str
) -> tuple[ImageSpec, list[disk.PlacedPartition]]:
    """The image's layout, grown when the staged root tree does not fit the board's size:
    image.size is the smallest image made, and a root partition that takes the rest of the
    disk grows with it (doubling, as cards come). Partition and filesystem UUIDs stay the
    same (they come from the seed), so the command line and fstab already written hold."""
    spec = plan.board.image
    root = next(p for p in parts if p.mountpoint == "/")
    tree = disk.tree_bytes(staging)
    room = disk.ext4_room(tree)
    if root.size >= room:
        return spec, parts
    where = f"boards/{plan.board.name}/board.yaml"
    if spec.root.size is not None or spec.partitions[-1] != spec.root:
        raise BuildError(
            f"the root tree takes {tree >> 20} MiB, and board {plan.board.name}'s root "
            f"partition of {root.size >> 20} MiB cannot hold it with room to spare "
            f"({room >> 20} MiB)",
            hint=f"give the root partition more (image: partitions: in {where}), or make it "
            "the last one, without a size, so it grows with the image",
        )
    grown = dataclasses.replace(spec, size=disk.grown_size(spec, root, room))
    ui.info(
        f"  the root tree takes {tree >> 20} MiB: the image is {grown.size >> 20} MiB, not "
        f"{spec.size >> 20} (image: size: in {where} is the smallest it is made)"
    )
    return grown, disk.layout(grown, seed)


def make_filesystems(
    plan: Plan,
    staging: Path,
    parts: list[disk.PlacedPartition],
    loader: bootloader.Bootloader,
    kernel: KernelRecord,
    cmdline: str,
    log: Path,
) -> list[tuple[disk.PlacedPartition, Path]]:
    """One filesystem image per partition: the staged tree for the root, the boot method's
    files for the first FAT partition (where firmware looks)."""
    filesystems = []
    boot_done = False
    for part in parts:
        fs_file = plan.build_dir / f"part-{part.name}.{part.fs}"
        if part.mountpoint == "/":
            disk.make_ext4(staging, fs_file, part.size, part.name, part.fs_uuid, log,
                           epoch=plan.source_date_epoch)  # fmt: skip
        elif part.fs == "vfat":
            tree = plan.build_dir / f"part-{part.name}"
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir()
            if not boot_done:
                loader.boot_partition(tree, kernel, cmdline)
                boot_done = True
            date_tree(tree, plan.source_date_epoch)  # (mcopy -m keeps the files' own)
            disk.make_vfat(tree, fs_file, part.size, part.name, part.fs_uuid, log,
                           epoch=plan.source_date_epoch)  # fmt: skip
            shutil.rmtree(tree)
        else:
            raise BuildError(f"partition '{part.name}': no way to fill a {part.fs} filesystem")
        filesystems.append((part, fs_file))
    return filesystems


def check_raw_writes(
    raw: list[tuple[int, Path]], parts: list[disk.PlacedPartition], table: str, board: str
) -> None:
    """A loader written outside the partitions must not overlap the table or a partition. On
    an MBR disk the boot code area before the disk signature (bytes 0-439) is a loader's."""
    table_end = GPT_END if table == "gpt" else 512
    for offset, blob in raw:
        end = offset + blob.stat().st_size
        clash = [p.name for p in parts if offset < p.start + p.size and p.start < end]
        boot_code = table == "mbr" and end <= disk.MBR_BOOT_CODE
        if (offset < table_end and not boot_code) or clash:
            what = f"partition '{clash[0]}'" if clash else "the partition table"
            raise BuildError(
                f"{blob.name} ({blob.stat().st_size} bytes at byte {offset}) overlaps {what}",
                hint=f"move the first partition (image -> first_partition) in boards/{board}/"
                "board.yaml past the loader's end",
            )


def write_fstab(root: Path, parts: list[disk.PlacedPartition], fstab_line: FstabLine) -> None:
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
            lines.append(fstab_line(p))
    fstab = root / "etc/fstab"
    fstab.unlink(missing_ok=True)  # hard-linked from the rootfs cache: replace, never write into
    fstab.write_text("\n".join(lines) + "\n")
