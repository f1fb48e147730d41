"""The image manifest: what went into an image, written beside it (`<image>.manifest.json`)
and read back by `tuoba test`, `tuoba boot` and whatever ships or describes images. It travels
with the image, so it names no place on the build host. Its `schema` says which form it has;
a manifest of a newer schema than this tuoba knows is refused, not misread."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tuoba.errors import InputError

# Bump when a field changes meaning or goes (adding one does not need it). 2: `tests` names
# check files by path (recipes/<name>/checks/…), not by module name.
SCHEMA = 2


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str  # the image's file name without .img
    version: str  # tuoba's
    board: str
    arch: str
    stage: int
    recipes: list[str]
    tests: list[str]  # the guest check files (relative to the project) `tuoba test` runs
    hostname: str
    inputs_digest: str
    kernel: dict[str, Any]  # version, compiler, linker, config digest, requested options …
    boot: dict[str, Any]  # kernel and initrd files, cmdline, qemu, loaders, supplied files
    partitions: list[dict[str, Any]]
    sources: dict[str, dict[str, Any]]  # name -> sha256, origin
    rootfs: dict[str, Any]
    packages: list[Any]
    files: dict[str, str]  # artifact name -> sha256
    # bpf/ programs built for it: name -> loader path and sha256, object, the BTF they were
    # compiled against
    bpf: dict[str, Any] = dataclasses.field(default_factory=dict)
    # guest checks of recipes this image was built without (a file not supplied): check file
    # -> why; `tuoba test` reports them as not run, with the reason
    not_run: dict[str, str] = dataclasses.field(default_factory=dict)
    # the recipes' Python venvs: path -> the Python and each wheel (name, version, file, sha256)
    python: dict[str, Any] = dataclasses.field(default_factory=dict)
    # TCP ports the recipes' services listen on: `tuoba boot` and `tuoba test` forward each
    ports: list[int] = dataclasses.field(default_factory=list)
    audit: list[dict[str, Any]] | None = None  # stage 2: the ELF audit
    # the time every file in the image is dated (SOURCE_DATE_EPOCH; tuoba.plan)
    source_date_epoch: int | None = None
    schema: int = SCHEMA

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if data["audit"] is None:
            del data["audit"]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise InputError(f"{where}: not a manifest (not JSON: {e})", hint=REBUILD) from e
        if not isinstance(raw, dict):
            raise InputError(f"{where}: not a manifest (not a JSON object)", hint=REBUILD)
        schema = raw.get("schema", 1)  # (written from 2 on; before, the form of 1)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise InputError(
                f"{where}: manifest schema {schema!r}, this tuoba reads up to {SCHEMA}",
                hint="use the tuoba that built the image, or a newer one",
            )
        if schema < SCHEMA:
            raise InputError(
                f"{where}: manifest schema {schema} (an older tuoba's: its guest checks are "
                f"named the old way), this tuoba reads {SCHEMA}",
                hint=REBUILD,
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - raw.keys() if n not in OPTIONAL)
        if missing:
            raise InputError(f"{where}: manifest lacks {', '.join(missing)}", hint=REBUILD)
        return cls(**{k: v for k, v in raw.items() if k in names})


# fields an image built before they came has not written (their defaults stand in)
OPTIONAL = ("audit", "schema", "bpf", "not_run", "source_date_epoch", "python", "ports")
REBUILD = "images are used with the manifest their build wrote; rebuild the image"


def path_for(image: Path) -> Path:
    """The manifest beside an image: NAME.img, or the NAME.img.xz a release carries."""
    return image.with_name(image.name.removesuffix(".xz").removesuffix(".img") + ".manifest.json")


def load(image: Path) -> Manifest:
    """The manifest of a built image."""
    manifest_file = path_for(image)
    if not image.is_file():
        raise InputError(f"no image at {image}", hint="build it first: tuoba build --board …")
    if not manifest_file.is_file():
        raise InputError(f"{image} has no manifest beside it ({manifest_file.name})", hint=REBUILD)
    return Manifest.from_json(manifest_file.read_text(), str(manifest_file))
