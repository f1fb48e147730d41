"""Boards: `boards/<name>/board.yaml` loaded into frozen dataclasses, validated with locations."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tuoba import arch as arches
from tuoba.config import (
    Doc,
    Field,
    PathPart,
    boolean,
    integer,
    list_of,
    load_yaml,
    matching,
    merge_docs,
    name,
    name_list,
    one_of,
    parse_mapping,
    path_list,
    relative_path,
    size,
    string,
    string_list,
)
from tuoba.errors import InputError
from tuoba.sources import Source, parse_source

ARCHES = arches.NAMES
# Partition type names -> (GPT type GUID per the Discoverable Partitions Specification,
# MBR type byte).
PARTITION_TYPES = {
    "root-arm64": ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "83"),
    "root-arm": ("69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "83"),
    "esp": ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef"),
    "fat32": ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "c"),
    "linux": ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "83"),
}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    source: str  # distro: the distribution's package; tuoba: built here by LLVM
    package: str
    flavour: str  # boards with the same flavour share one out-of-tree build directory
    features: tuple[str, ...]
    dtbs: tuple[str, ...]
    cmdline: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    type: str
    fs: str
    size: int | None  # None: the rest of the disk
    mountpoint: str | None


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    table: str
    size: int
    partitions: tuple[Partition, ...]
    first_partition: int = 1 << 20  # where the first partition starts (room for a loader)

    @property
    def root(self) -> Partition:
        return next(p for p in self.partitions if p.mountpoint == "/")


@dataclasses.dataclass(frozen=True)
class QemuSpec:
    machine: str
    cpu: str | None  # None: the machine's own (raspi machines fix theirs)
    smp: int | None
    memory: int  # MiB
    drive: str = "virtio"  # how the image is attached: virtio or sd
    dtb: str | None = None  # device tree passed to QEMU (from this build)
    console: str | None = None  # console= for emulation when it differs from the board's
    network: bool = True  # False: no usable NIC, guest checks run on the serial console
    nic: str = "virtio"  # virtio: a virtio-net-pci card is added; board: the machine's own NIC
    cmdline: tuple[str, ...] = ()  # extra kernel words under emulation
    # Edits to the device tree QEMU gets (never the image's own), each "delete-node PATH" or
    # "delete-property PATH NAME": where the emulated machine wires a device differently.
    dtb_edits: tuple[str, ...] = ()
    # The file on the first FAT partition the board's firmware reads the kernel command line
    # from (the Pi's cmdline.txt): QEMU, which loads the kernel itself, gets it from the card
    # at every boot too, so an edit on the card (Raspberry Pi Imager's) takes effect as on the
    # board. None: the command line the build wrote (the manifest's).
    cmdline_file: str | None = None

    @property
    def machine_type(self) -> str:
        """The machine's name, without the options `machine` may carry after a comma."""
        return self.machine.split(",")[0]


@dataclasses.dataclass(frozen=True)
class BootSpec:
    """How the board's boot ROM / firmware finds the kernel (a bootloader variant's data)."""

    method: str  # a registered bootloader variant (see tuoba.bootloader)
    firmware: Source | None  # a package with the boot firmware
    firmware_dir: str  # where in that package the files are
    firmware_files: tuple[str, ...]
    config: tuple[str, ...]  # lines of the firmware's config file (config.txt)
    needs: tuple[Need, ...] = ()  # what the board needs that cannot be had here
    u_boot: UBootSpec | None = None  # a U-Boot built here, for method u-boot
    hardware: str = ""  # what must already be on the board itself (not on the card)


@dataclasses.dataclass(frozen=True)
class UBootSpec:
    """U-Boot built from its release source for a board no distribution packages a loader for,
    with the SoC's ARM Trusted Firmware BL31 from a package; written at the boot ROM's offset."""

    source: Source  # the U-Boot release tarball
    strip_prefix: str  # its top directory
    defconfig: str
    bl31: Source  # a package holding BL31
    bl31_path: str  # BL31's path inside that package
    output: str  # the file U-Boot's build (binman) makes for the card
    offset: int  # byte offset on the card where the boot ROM looks
    cross_compile: str  # toolchain prefix (U-Boot 2023.01 does not build with clang for arm64)


@dataclasses.dataclass(frozen=True)
class Need:
    """A boot component no reachable archive provides (a vendor blob, an unpackaged loader)."""

    what: str
    why: str
    where: str  # where a user gets it
    file: str | None = None  # a single file a user may supply: `tuoba build --supply FILE=PATH`
    format: str | None = None  # what a supplied file is checked to be (SUPPLY_FORMATS)


@dataclasses.dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str
    soc: str
    hostname: str
    console: str
    kernel: KernelSpec
    image: ImageSpec
    qemu: QemuSpec | None
    boot: BootSpec
    packages: tuple[str, ...]  # board-specific stage-1 packages
    recipes: tuple[str, ...]  # always built into this board's images, after base
    proven: str  # what the test suite proves about the board (shown by `tuoba boards`)
    directory: Path
    # Raspberry Pi Imager's device tags the board's images are for (its os_list `devices`):
    # a board without any is not listed in a release's Imager catalog.
    imager_devices: tuple[str, ...] = ()


def _kernel(doc: Doc, path: tuple[PathPart, ...], value: Any) -> KernelSpec:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("source", one_of("distro", "tuoba"), help="where the kernel comes from"),
            Field("package", string, "", help="distribution package for source=distro"),
            Field("flavour", name, "", help="shared build directory name [default: arch]"),
            Field("features", name_list, (), help="kernel feature fragments required"),
            Field("dtbs", path_list, (), help="device trees to build, e.g. broadcom/x"),
            Field("cmdline", string_list, (), help="extra kernel command line words"),
        ],
    )
    if v["source"] == "distro" and not v["package"]:
        raise doc.error(path, "source 'distro' needs a 'package' (e.g. linux-image-arm64)")
    return KernelSpec(**v)


def _partition(doc: Doc, path: tuple[PathPart, ...], value: Any) -> Partition:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("name", name, help="partition label"),
            Field("type", one_of(*PARTITION_TYPES), help="partition type"),
            Field("fs", one_of("ext4", "vfat"), help="filesystem"),
            Field("size", size, None, help="size; omitted on the last means the rest"),
            Field("mountpoint", string, None, help="where it is mounted"),
        ],
    )
    return Partition(**v)


def _image(doc: Doc, path: tuple[PathPart, ...], value: Any) -> ImageSpec:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("table", one_of("gpt", "mbr"), help="partition table"),
            Field("size", size, help="whole image size"),
            Field("partitions", lambda d, p, x: x, help="partition list"),
            Field("first_partition", size, 1 << 20, help="start of the first partition"),
        ],
    )
    if v["first_partition"] % (1 << 20) or v["first_partition"] <= 0:
        raise doc.error((*path, "first_partition"), "expected a whole number of MiB, e.g. 16M")
    raw = v["partitions"]
    ppath = (*path, "partitions")
    if not isinstance(raw, list) or not raw:
        raise doc.error(ppath, "expected a non-empty list of partitions")
    parts = tuple(_partition(doc, (*ppath, i), p) for i, p in enumerate(raw))
    for i, p in enumerate(parts[:-1]):
        if p.size is None:
            raise doc.error((*ppath, i), "only the last partition may omit its size")
    if sum(1 for p in parts if p.mountpoint == "/") != 1:
        raise doc.error(ppath, "exactly one partition must have mountpoint '/'")
    _check_fit(doc, path, v["size"], v["first_partition"], parts)
    return ImageSpec(v["table"], v["size"], parts, v["first_partition"])


MIB = 1 << 20
MIN_IMAGE, MAX_IMAGE = 64 * MIB, 256 << 30
MIN_PARTITION = {"vfat": 32 * MIB, "ext4": 64 * MIB}  # FAT32's cluster minimum; room for a root


def _check_fit(
    doc: Doc, path: tuple[PathPart, ...], total: int, first: int, parts: tuple[Partition, ...]
) -> None:
    """The layout the image step will make, checked before any side effect: whole MiB, every
    partition big enough for its filesystem, all of them inside the image (its last MiB holds
    GPT's backup table)."""
    fmt = f"{total >> 20} MiB"
    if total % MIB or not MIN_IMAGE <= total <= MAX_IMAGE:
        raise doc.error(
            (*path, "size"),
            f"image size {total} bytes is not a whole number of MiB from "
            f"{MIN_IMAGE >> 20} MiB to {MAX_IMAGE >> 30} GiB",
            hint="write it like 2G or 512M",
        )
    offset, end = first, total - MIB
    for i, p in enumerate(parts):
        ppath = (*path, "partitions", i, "size")
        room = end - offset
        size = p.size if p.size is not None else room
        if size < MIN_PARTITION[p.fs]:
            left = f"the {max(room, 0) >> 20} MiB left"
            what = f"{size >> 20} MiB" if p.size is not None else left
            raise doc.error(
                ppath if p.size is not None else (*path, "partitions", i),
                f"partition '{p.name}' gets {what}; {p.fs} needs at least "
                f"{MIN_PARTITION[p.fs] >> 20} MiB",
                hint=f"make the image (size: {fmt}) larger or the partitions before it smaller",
            )
        if size > room:
            raise doc.error(
                ppath,
                f"partition '{p.name}' ({size >> 20} MiB from MiB {offset >> 20}) does not fit "
                f"in the {fmt} image ({room >> 20} MiB left before its last MiB)",
                hint="make the partition smaller or the image larger",
            )
        offset += -(-size // MIB) * MIB


def _qemu(doc: Doc, path: tuple[PathPart, ...], value: Any) -> QemuSpec:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("machine", string, help="qemu -M"),
            Field("cpu", string, None, help="qemu -cpu"),
            Field("smp", integer, None, help="virtual CPUs"),
            Field("memory", integer, 1024, help="memory in MiB"),
            Field("drive", one_of("virtio", "sd"), "virtio", help="how the image is attached"),
            Field("dtb", relative_path, None, help="device tree file name from this build"),
            Field("console", string, None, help="console= under emulation"),
            Field("network", boolean, True, help="whether the emulated board has a NIC"),
            Field("nic", one_of("virtio", "board"), "virtio", help="which NIC the network uses"),
            Field("cmdline", string_list, (), help="extra kernel words under emulation"),
            Field("dtb_edits", _dtb_edits, (), help="edits to the device tree QEMU gets"),
            Field(
                "cmdline_file",
                string,
                None,
                help="file on the first FAT partition the command line is read from",
            ),
        ],
    )
    if v["dtb_edits"] and v["dtb"] is None:
        raise doc.error((*path, "dtb_edits"), "dtb_edits need a 'dtb' to edit")
    return QemuSpec(**v)


DTB_EDIT_ARGS = {"delete-node": 1, "delete-property": 2}


def _dtb_edits(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[str, ...]:
    edits = string_list(doc, path, value)
    for i, edit in enumerate(edits):
        verb, *args = edit.split()
        if verb not in DTB_EDIT_ARGS:
            raise doc.error(
                (*path, i), f"unknown edit '{verb}' (known: {', '.join(DTB_EDIT_ARGS)})"
            )
        if len(args) != DTB_EDIT_ARGS[verb] or not args[0].startswith("/"):
            form = "PATH" if DTB_EDIT_ARGS[verb] == 1 else "PATH PROPERTY"
            raise doc.error((*path, i), f"expected '{verb} {form}' with an absolute node path")
    return edits


BOOT_METHODS = ("direct", "rpi-firmware", "u-boot", "zynq", "extlinux", "amlogic-fip")


# What a supplied file can be checked to be (bootloader.check_supplied knows each).
SUPPLY_FORMATS = ("zynq-boot-image", "amlogic-sd-fip")

NEED_FIELDS = [
    Field("what", string, help="the component, by name"),
    Field("why", string, help="why it cannot be had here"),
    Field("where", string, help="where a user gets it"),
    Field("file", string, None, help="file name a user supplies with --supply FILE=PATH"),
    Field("format", one_of(*SUPPLY_FORMATS), None, help="what a supplied file must be"),
]


def _needs(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[Need, ...]:
    if not isinstance(value, list):
        raise doc.error(path, "expected a list of {what, why, where}")
    return tuple(
        Need(**parse_mapping(doc, (*path, i), item, NEED_FIELDS)) for i, item in enumerate(value)
    )


def _boot(doc: Doc, path: tuple[PathPart, ...], value: Any) -> BootSpec:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("method", one_of(*BOOT_METHODS), help="how the board boots"),
            Field("firmware", lambda d, p, x: x, None, help="firmware package source"),
            Field("config", string_list, (), help="firmware config file lines"),
            Field("needs", _needs, (), help="boot components that cannot be had here"),
            Field("u_boot", lambda d, p, x: x, None, help="U-Boot built from source"),
            Field("hardware", string, "", help="what must already be on the board (not the card)"),
        ],
    )
    u_boot = None if v["u_boot"] is None else _u_boot(doc, (*path, "u_boot"), v["u_boot"])
    if v["method"] == "u-boot" and u_boot is None and not v["needs"]:
        raise doc.error(
            path, "method 'u-boot' needs a 'u_boot' section (or 'needs' saying what is missing)"
        )
    firmware, fw_dir, fw_files = None, "", ()
    if v["firmware"] is not None:
        fpath = (*path, "firmware")
        firmware, extra = parse_source(
            doc,
            fpath,
            v["firmware"],
            [
                Field("dir", string, help="directory of the files inside the package"),
                Field("files", string_list, help="firmware files copied to the boot partition"),
            ],
        )
        fw_dir, fw_files = extra["dir"], extra["files"]
    if v["method"] == "amlogic-fip" and not any(
        n.file and n.format == "amlogic-sd-fip" for n in v["needs"]
    ):
        raise doc.error(
            path,
            "method 'amlogic-fip' needs a 'needs' entry with a 'file' of format 'amlogic-sd-fip' "
            "(the signed boot image the user supplies)",
        )
    if v["method"] == "rpi-firmware" and firmware is None:
        raise doc.error(path, "method 'rpi-firmware' needs a 'firmware' package")
    return BootSpec(
        v["method"], firmware, fw_dir, fw_files, v["config"], v["needs"], u_boot, v["hardware"]
    )


def _u_boot(doc: Doc, path: tuple[PathPart, ...], value: Any) -> UBootSpec:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("source", lambda d, p, x: x, help="U-Boot release tarball (url, sha256, …)"),
            Field("defconfig", string, help="U-Boot's configs/<name>"),
            Field("bl31", lambda d, p, x: x, help="package with ARM Trusted Firmware's BL31"),
            Field("output", string, help="the file the build makes for the card"),
            Field("offset", size, help="byte offset on the card (the boot ROM's)"),
            Field("cross_compile", string, "aarch64-linux-gnu-", help="toolchain prefix"),
        ],
    )
    source, extra = parse_source(
        doc, (*path, "source"), v["source"],
        [Field("strip_prefix", string, help="top directory inside the tarball")],
    )  # fmt: skip
    bl31, bl31_extra = parse_source(
        doc, (*path, "bl31"), v["bl31"], [Field("path", string, help="BL31's path in the package")]
    )
    return UBootSpec(
        source=source,
        strip_prefix=extra["strip_prefix"],
        defconfig=v["defconfig"],
        bl31=bl31,
        bl31_path=bl31_extra["path"].lstrip("/"),
        output=v["output"],
        offset=v["offset"],
        cross_compile=v["cross_compile"],
    )


_imager_tag = matching(
    r"pi[0-9a-z]+-(32|64)bit",
    "a Raspberry Pi Imager device tag",
    hint="Imager's tags are like pi4-64bit, pi3-64bit, pi5-64bit",
    shown=40,
)


BOARD_FIELDS = [
    Field("description", string, help="one line about the board"),
    Field("arch", one_of(*ARCHES), help="Debian architecture"),
    Field("soc", string, help="system on chip"),
    Field("hostname", name, help="the image's hostname"),
    Field("console", string, help="serial console device"),
    Field("kernel", _kernel, help="kernel source and features"),
    Field("image", _image, help="disk layout"),
    Field("qemu", lambda d, p, v: _qemu(d, p, v), None, help="how to emulate the board"),
    Field("recipes", name_list, (), help="recipes every image of this board has"),
    Field("packages", name_list, (), help="board-specific stage-1 packages"),
    Field("proven", string, "untested", help="what the test suite proves about this board"),
    Field(
        "imager_devices",
        list_of(_imager_tag),
        (),
        help="Raspberry Pi Imager device tags, like pi4-64bit (absent: not in Imager's list)",
    ),
    Field(
        "boot",
        _boot,
        BootSpec("direct", None, "", (), ()),
        help="boot method; direct: QEMU loads the kernel itself",
    ),
]


def board_names(data_dir: Path) -> list[str]:
    boards = data_dir / "boards"
    return sorted(p.parent.name for p in boards.glob("*/board.yaml"))


INCLUDES = "common"  # boards/common/<name>.yaml: defaults boards share (`include: [name]`)


def include_names(data_dir: Path) -> list[str]:
    return sorted(p.stem for p in (data_dir / "boards" / INCLUDES).glob("*.yaml"))


def board_doc(data_dir: Path, board: str) -> Doc:
    """The board's data file with the shared files it includes merged under it (each
    `include:` in order, then the board's own values on top), every value still located in
    the file that wrote it."""
    path = data_dir / "boards" / board / "board.yaml"
    if not path.is_file():
        known = ", ".join(board_names(data_dir)) or "none"
        raise InputError(f"no board named '{board}'", hint=f"known boards: {known}")
    doc = load_yaml(path, display=f"boards/{board}/board.yaml")
    if not isinstance(doc.data, dict) or "include" not in doc.data:
        return doc
    names = name_list(doc, ("include",), doc.data["include"])
    merged: Doc | None = None
    for i, inc in enumerate(names):
        inc_path = data_dir / "boards" / INCLUDES / f"{inc}.yaml"
        if not inc_path.is_file():
            raise doc.error(
                ("include", i),
                f"no shared board file boards/{INCLUDES}/{inc}.yaml",
                hint=f"known: {', '.join(include_names(data_dir)) or 'none'}",
            )
        part = load_yaml(inc_path, display=f"boards/{INCLUDES}/{inc}.yaml")
        if not isinstance(part.data, dict):
            raise part.error((), "expected a mapping of board fields")
        if "include" in part.data:
            raise part.error(("include",), "a shared board file cannot include others",
                             hint="list them all in the board's own include")  # fmt: skip
        merged = part if merged is None else merge_docs(merged, part)
    own = dataclasses.replace(doc, data={k: v for k, v in doc.data.items() if k != "include"})
    return merge_docs(merged, own) if merged is not None else own


def load_board(data_dir: Path, board: str) -> tuple[Board, Doc]:
    doc = board_doc(data_dir, board)
    v = parse_mapping(doc, (), doc.data, BOARD_FIELDS)
    u_boot = v["boot"].u_boot
    if u_boot is not None and u_boot.offset >= v["image"].first_partition:
        raise doc.error(
            ("boot", "u_boot", "offset"),
            f"the loader's offset ({u_boot.offset} bytes) is not before the first partition "
            f"({v['image'].first_partition >> 20} MiB)",
            hint="move image -> first_partition past the loader's end",
        )
    return Board(name=board, directory=data_dir / "boards" / board, **v), doc
