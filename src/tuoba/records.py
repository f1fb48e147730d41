"""What each build step hands the steps after it: one typed record per step, written by the
step as JSON, last (`OUT/.build/BOARD-sSTAGE/<step>.json`: its SCons target), and read back
by the steps after it through `load`.

Paths in records are places on the build host (cache entries, the build directory); the
manifest that travels with the image takes the records' other fields (`public`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tuoba.errors import BuildError


@dataclasses.dataclass(frozen=True)
class Record:
    step: ClassVar[str]
    # Fields naming places on this host: the steps need them, the manifest leaves them out.
    host_only: ClassVar[frozenset[str]] = frozenset()
    # Fields the manifest keeps even when they are None (a reader tells "none" from "unknown").
    always_public: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public(self) -> dict[str, Any]:
        """The fields for the manifest: no host paths, nothing that does not apply (None)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in self.host_only and (v is not None or k in self.always_public)
        }


@dataclasses.dataclass(frozen=True)
class FetchedSource:
    sha256: str
    path: str  # in the cache
    origin: str  # the URL it came from

    def public(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "origin": self.origin}


@dataclasses.dataclass(frozen=True)
class FetchRecord(Record):
    step = "fetch"
    sources: dict[str, FetchedSource]

    def path(self, name: str) -> Path:
        return Path(self.sources[name].path)

    @property
    def paths(self) -> dict[str, Path]:
        return {name: Path(s.path) for name, s in self.sources.items()}


@dataclasses.dataclass(frozen=True)
class ArtifactsRecord(Record):
    """The recipes' pinned files (sources.yaml), fetched: install path -> the cached file."""

    step = "artifacts"
    files: dict[str, FetchedSource]


@dataclasses.dataclass(frozen=True)
class RootfsRecord(Record):
    step = "rootfs"
    host_only = frozenset({"tree"})
    digest: str  # of everything the tree was made from
    tree: str  # the root tree (a cache entry, or the build directory for stage 2)
    packages: list[dict[str, Any]]  # what it holds: name, version (and how it was built)
    mkosi: str | None = None  # stage 1: the mkosi that built it
    toolchain: dict[str, Any] | None = None  # stage 2: triple, digest, clang


@dataclasses.dataclass(frozen=True)
class KernelRecord(Record):
    """A kernel made for the image: TuobaOS's own clang build (`source: tuoba`) or the
    distribution's, taken from the root filesystem (`source: distro`)."""

    step = "kernel"
    host_only = frozenset({"dir", "modules"})
    always_public = frozenset({"initrd"})
    source: str
    version: str  # its release string (uname -r)
    compiler: str
    config_sha256: str
    features: dict[str, list[str]]  # feature fragment -> the options it asked for
    kernel: str  # the boot image beside the disk image in out/
    kernel_sha256: str
    initrd: str | None = None  # … and its initrd there, if it has one
    initrd_sha256: str | None = None
    package: str | None = None  # distro: the Debian package
    # tuoba: the cached build
    linker: str | None = None
    config_digest: str | None = None  # its cache key
    image: str | None = None  # the boot image's file name in the build (Image, zImage)
    dtbs: list[str] = dataclasses.field(default_factory=list)  # in the build's dtbs/
    board_dtbs: list[str] = dataclasses.field(default_factory=list)  # beside the image in out/
    build_seconds: float | None = None
    source_tarball: str | None = None
    # kernel/patches applied to the source: name, sha256, the files each changes
    patches: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    requested: dict[str, str] | None = None  # option -> value, every fragment's
    dir: str | None = None  # the cache entry
    modules: str | None = None  # lib/modules/<version> in it

    @property
    def built(self) -> Path:
        """The cached build (tuoba's kernel)."""
        if self.dir is None:
            raise BuildError(f"the {self.source} kernel {self.version} has no build directory")
        return Path(self.dir)

    @property
    def boot_image(self) -> str:
        """The boot image's file name in the build (tuoba's kernel)."""
        if self.image is None:
            raise BuildError(f"the {self.source} kernel {self.version} has no built image")
        return self.image


@dataclasses.dataclass(frozen=True)
class BuiltProgram:
    """One bpf/ program built for the image: its loader and BPF object (in the cache), where
    the image gets them, and their hashes."""

    loader: str
    object: str
    install: str  # the loader's path in the image
    object_install: str
    loader_sha256: str
    object_sha256: str

    def public(self) -> dict[str, Any]:
        return {
            "install": self.install,
            "sha256": self.loader_sha256,
            "object": self.object_install,
            "object_sha256": self.object_sha256,
        }


@dataclasses.dataclass(frozen=True)
class BpfRecord(Record):
    """The image's eBPF programs (bpf/), built against its kernel's BTF and its root tree."""

    step = "bpf"
    programs: dict[str, BuiltProgram]
    btf_sha256: str | None = None  # the kernel BTF they were compiled against (CO-RE base)


@dataclasses.dataclass(frozen=True)
class BuiltVenv:
    """One recipe's Python venv made for the image: its tree (a cache entry) and what it holds."""

    tree: str  # the venv's files at their paths in the image, under this directory
    python: str
    wheels: list[dict[str, str]]  # name, version, file, sha256

    def public(self) -> dict[str, Any]:
        return {"python": self.python, "wheels": self.wheels}


@dataclasses.dataclass(frozen=True)
class VenvRecord(Record):
    """The recipes' Python venvs (wheels.yaml), by their path in the image."""

    step = "venv"
    venvs: dict[str, BuiltVenv]


@dataclasses.dataclass(frozen=True)
class OverlayRecord(Record):
    step = "overlay"
    files: dict[str, str]  # path in the image -> sha256, or "-> target" for a symlink
    tree: str  # where they were rendered


@dataclasses.dataclass(frozen=True)
class ImageRecord(Record):
    step = "image"
    image: str
    manifest: str


R = TypeVar("R")


def from_dict(cls: type[R], data: Any, where: str) -> R:
    """A record from its JSON form; a record of another form (an older tuoba's, or damaged)
    is an error naming it, never half-read."""
    if not isinstance(data, dict):
        raise _unreadable(where, "not a JSON object")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(typing.cast(Any, cls)):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _unreadable(where, f"no '{f.name}'")
            continue
        values[f.name] = _value(hints[f.name], data[f.name], f"{where} -> {f.name}")
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(typing.cast(Any, hint), value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise _unreadable(where, "not a JSON object")
        return {k: _value(args[1], v, f"{where} -> {k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _unreadable(where, "not a JSON list")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and hint is not Any and not isinstance(value, hint):
        raise _unreadable(where, f"expected {hint.__name__}, found {type(value).__name__}")
    return value


def _unreadable(where: str, what: str) -> BuildError:
    return BuildError(
        f"{where}: not a step record this tuoba reads ({what})",
        hint="run the build again: the step writes a new record",
    )


def to_json(record: Record, cache_refs: list[str]) -> str:
    """The JSON text of a record, with the cache entries its paths point into."""
    data = record.to_dict() | {"cache": cache_refs}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


RecordT = TypeVar("RecordT", bound=Record)


def read(cls: type[RecordT], path: Path) -> RecordT:
    """A step's record; one of another form is removed (so the next build runs its step
    again) and reported."""
    try:
        return from_dict(cls, json.loads(path.read_text()), str(path))
    except FileNotFoundError as e:
        raise BuildError(
            f"step '{cls.step}' has no record ({path})",
            hint="run the build again: the step runs when its record is missing",
        ) from e
    except ValueError as e:
        path.unlink(missing_ok=True)
        raise _unreadable(str(path), f"not JSON: {e}") from e
    except BuildError:
        path.unlink(missing_ok=True)
        raise
