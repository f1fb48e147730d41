"""The two ways TuobaOS makes an image's root filesystem, as registered variants (like the boot
methods): the build steps ask the plan's Stage, never which stage number it is.

    1  Debian for the board's architecture, installed by mkosi
    2  a userland compiled here by clang/lld against musl, from pinned sources, audited
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tuoba import disk, elfaudit, host, kbuild, rootfs, sources, ui, userland
from tuoba.digest import digest
from tuoba.plan import Plan
from tuoba.records import RootfsRecord


class Stage:
    number: ClassVar[int]
    registry: ClassVar[dict[int, type[Stage]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Stage.registry[cls.number] = cls

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def describe(self) -> str:
        """What builds the root filesystem, for the progress line."""
        raise NotImplementedError

    def sources(self) -> list[sources.Source]:
        """Pinned downloads the stage needs (besides the kernel's and the boot method's)."""
        return []

    def prepare_tools(self) -> None:
        """Make the stage's own tools ready (in the fetch step: --offline can still refuse)."""

    def input_files(self) -> tuple[Path, ...]:
        """Data files the root filesystem is made from, besides the plan's values."""
        return ()

    def root_inputs(self) -> dict[str, Any]:
        """The plan's values the root filesystem depends on."""
        raise NotImplementedError

    def build_root(self, log: Path, fetched: dict[str, Path]) -> RootfsRecord:
        """Build (or reuse) the root tree; returns the rootfs step's record."""
        raise NotImplementedError

    def audit(self, staging: Path) -> list[dict[str, Any]] | None:
        """Check the staged tree before it becomes the image; None: no audit for this stage."""
        return None

    def fstab_line(self, p: disk.PlacedPartition) -> str:
        """The fstab line of a partition other than the root."""
        return f"PARTUUID={p.uuid} {p.mountpoint} {p.fs} defaults,nofail 0 2"


def of(plan: Plan) -> Stage:
    return Stage.registry[plan.stage](plan)


class Debian(Stage):
    number = 1

    def describe(self) -> str:
        return f"mkosi, Debian {self.plan.release} {self.plan.board.arch}"

    def sources(self) -> list[sources.Source]:
        return [host.pinned_tool(self.plan.data_dir, "mkosi")[0]]

    def prepare_tools(self) -> None:
        host.mkosi_dir(self.plan.data_dir, self.plan.store, offline=self.plan.request.offline)

    def root_inputs(self) -> dict[str, Any]:
        return rootfs.inputs(self.plan)

    def build_root(self, log: Path, fetched: dict[str, Path]) -> RootfsRecord:
        return rootfs.build_rootfs(self.plan, log)


class Llvm(Stage):
    number = 2

    def describe(self) -> str:
        return f"stage 2: clang + musl for {self.plan.board.arch}, from source"

    def sources(self) -> list[sources.Source]:
        # (libbpf's headers for the bpf step: its programs are built like the userland)
        headers = (userland.LIBBPF,) if self.plan.bpf_programs else ()
        return userland.all_sources(self.plan.data_dir, (*self.plan.builds, *headers))

    def input_files(self) -> tuple[Path, ...]:
        """Its userland is built from the package data under userland/ (sources, configs)."""
        return rootfs.files_under(self.plan.data_dir / "userland")

    def root_inputs(self) -> dict[str, Any]:
        return {"stage": 2, "arch": self.plan.board.arch, "builds": list(self.plan.builds)}

    def build_root(self, log: Path, fetched: dict[str, Path]) -> RootfsRecord:
        """The LLVM + musl toolchain, then each package the recipes build, merged into one
        tree."""
        plan = self.plan
        log.unlink(missing_ok=True)
        ks = kbuild.load_source(plan.data_dir)
        spec = userland.load_toolchain(plan.data_dir)
        tc = userland.build_toolchain(
            spec, plan.board.arch, ks.headers_id,
            lambda: kbuild.unpack_source(ks, fetched[ks.source.name], plan.store),
            fetched, plan.store, log,
        )  # fmt: skip

        def entry(pkg: userland.Package, role: str) -> dict[str, Any]:
            return {
                "name": pkg.name,
                "version": pkg.version,
                "role": role,
                "source_sha256": pkg.source.sha256 if pkg.source else None,
                "built_by": tc.clang,
                "target": tc.triple,
            }

        packages = [entry(spec.musl, "toolchain"), entry(spec.compiler_rt, "toolchain")]
        trees = []
        for name in plan.builds:
            pkg = userland.load_package(plan.data_dir, name)
            tarball = fetched[pkg.source.name] if pkg.source else None
            trees.append(userland.build_package(pkg, tc, tarball, plan.store, log))
            packages.append(entry(pkg, "package"))
        tree = plan.build_dir / "userland"
        userland.assemble(trees, tree)
        return RootfsRecord(
            # the packages' cache entries by key: the same for a build in another cache dir
            digest=digest(
                {
                    "toolchain": tc.digest,
                    "trees": [plan.store.ref_of(str(t)) or t.name for t in trees],
                }
            ),
            tree=str(tree),
            packages=packages,
            toolchain={"triple": tc.triple, "digest": tc.digest, "clang": tc.clang},
        )

    def audit(self, staging: Path) -> list[dict[str, Any]] | None:
        with ui.step("Auditing every ELF file (clang + musl only, no GCC, no glibc)"):
            musl_loader = userland.target(self.plan.board.arch)[2]
            return elfaudit.audit_tree(staging, self.plan.board.arch, musl_loader)

    def fstab_line(self, p: disk.PlacedPartition) -> str:
        """busybox's mount resolves no PARTUUID= (only UUID= and LABEL=, through its
        volume_id) and has no `nofail`: other partitions are named by filesystem UUID."""
        return f"UUID={disk.fs_uuid_as_seen(p)} {p.mountpoint} {p.fs} defaults 0 2"
