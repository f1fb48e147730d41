"""The architectures boards have, and every name each one goes by: one table, so a new
architecture is one entry here (and a kernel flavour), not a dict in seven modules."""

from __future__ import annotations

import dataclasses

from tuoba.errors import InputError


@dataclasses.dataclass(frozen=True)
class Musl:
    """What stage 2's clang + musl toolchain calls the architecture."""

    triple: str  # clang's target triple
    compiler_rt: str  # compiler-rt's name for it
    loader: str  # musl's dynamic linker


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str  # Debian's (boards say `arch:` with it)
    kernel: str  # Linux's ARCH=
    clang_target: str  # the kernel's clang --target
    kernel_image: str  # the boot image make builds
    qemu: str  # qemu-system-<qemu>, and binfmt's qemu-<qemu>
    mkosi: str  # mkosi's Architecture=
    elf_machine: str  # e_machine of its binaries (pyelftools' name)
    musl: Musl | None  # None: stage 2 does not build for it yet
    oci: tuple[str, str]  # an OCI image's architecture and variant ('' : none)

    @property
    def qemu_system(self) -> str:
        return f"qemu-system-{self.qemu}"


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("arm64", "arm64", "aarch64-linux-gnu", "Image", "aarch64", "arm64", "EM_AARCH64",
             Musl("aarch64-linux-musl", "aarch64", "ld-musl-aarch64.so.1"), ("arm64", "")),
        Arch("armhf", "arm", "arm-linux-gnueabi", "zImage", "arm", "arm", "EM_ARM", None,
             ("arm", "v7")),
    )
}  # fmt: skip
NAMES = tuple(ARCHES)


def of(name: str) -> Arch:
    return ARCHES[name]  # (board.yaml's validation admits only NAMES)


def musl(name: str) -> Musl:
    """The stage-2 toolchain's names for the arch; an arch it does not build for is an error."""
    m = ARCHES[name].musl
    if m is None:
        raise InputError(
            f"stage 2 is not available for {name} boards yet",
            hint=f"stage 2 builds for: {', '.join(a for a in NAMES if ARCHES[a].musl)}; "
            "use --stage 1",
        )
    return m
