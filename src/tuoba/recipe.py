"""Recipes: what a stack puts into an image, per stage. A recipe is a directory:

    recipes/<name>/recipe.yaml       what it installs (the fields below)
    recipes/<name>/checks/test_*.py  its guest checks (testinfra), named in `tests:`
    recipes/<name>/overlay/          its own files for stage 1 (optional)
    recipes/<name>/overlay-s2/       … for stage 2 (optional)
    recipes/<name>/sources.yaml      pinned files that are no Debian package (optional)

    stage1: Debian packages, shared overlays (overlays/), systemd services, guest checks
    stage2: packages built from source by LLVM against musl (userland/), overlays, checks

Each section is one `Section`; the plan asks a recipe for the section of the stage it builds.
A recipe without a `stage2` section has no stage-2 form: asking for it with --stage 2 is an
error naming the recipe, never a silent omission.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tuoba.board import ARCHES
from tuoba.config import (
    Doc,
    Field,
    PathPart,
    boolean,
    integer,
    list_of,
    load_yaml,
    mapping_of,
    matching,
    name_list,
    parse_mapping,
    string,
    string_list,
)
from tuoba.errors import InputError
from tuoba.oci import OciImage
from tuoba.sources import Source, parse_source
from tuoba.wheels import Venv, load_venv


@dataclasses.dataclass(frozen=True)
class Section:
    """What a recipe puts into one stage's image (each stage accepts its own fields: see
    SECTION_FIELDS)."""

    packages: tuple[str, ...] = ()  # Debian packages (stage 1)
    builds: tuple[str, ...] = ()  # userland/ packages built by LLVM against musl (stage 2)
    overlays: tuple[str, ...] = ()
    services: tuple[str, ...] = ()  # systemd units (stage 1)
    ports: tuple[int, ...] = ()  # TCP ports its services listen on (stage 1; see PORTS)
    tests: tuple[str, ...] = ()
    oci_images: tuple[OciImage, ...] = ()  # container images made of its packages (stage 1)
    bpf: tuple[str, ...] = ()  # eBPF programs under bpf/
    # Debian packages from another suite of the image's release (stage 1), e.g.
    # {bookworm-backports: [suricata]}: (suite, packages)
    suites: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Files of the kernel tuoba builds that the image keeps (stage 1): KERNEL_FILES' names
    kernel_files: tuple[str, ...] = ()
    # Debian archive components beyond main its packages come from (stage 1): COMPONENTS
    components: tuple[str, ...] = ()
    # Per-arch replacements of the fields above (`arch: {armhf: {packages: [...]}}`), for what
    # Debian does not build for every architecture.
    arch: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()

    def for_arch(self, arch: str) -> Section:
        fields: dict[str, Any] = dict(dict(self.arch).get(arch, ()))
        return dataclasses.replace(self, **fields)


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A pinned file that is no Debian package (a release binary, an image tarball), fetched
    like every source (url + sha256 + mirrors, into the cache) and installed into the image."""

    source: Source
    install: str  # its absolute path in the image
    mode: int
    arch: tuple[str, ...]  # the architectures it is for (empty: every one)
    stages: tuple[int, ...] = (1,)  # the stages whose images get it
    version: str = ""  # the release it belongs to, for people (and error messages)
    # Not downloaded by tuoba (no archive this project reaches has it): the user hands it
    # over, `--supply NAME=PATH`, and its hash is checked before the build starts.
    supplied: bool = False
    optional: bool = False  # a supplied file the recipe works without
    given: str | None = None  # (in a plan) the path of the file the user supplied
    where: str = ""  # its place in sources.yaml, for messages


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path  # recipes/<name>
    description: str
    kernel_features: tuple[str, ...]
    sections: tuple[tuple[int, Section], ...]  # (stage, what it puts in); a stage absent: none
    artifacts: tuple[Artifact, ...] = ()  # from its sources.yaml
    includes: tuple[str, ...] = ()  # other recipes it brings in (an umbrella recipe)
    venv: Venv | None = None  # its Python venv of pinned wheels (wheels.yaml; stage 1)

    def section(self, stage: int) -> Section | None:
        """What the recipe puts into a stage's image; None: it has no form for that stage."""
        return dict(self.sections).get(stage)

    def for_arch(self, arch: str) -> Recipe:
        """This recipe as built for `arch`: its arch replacements applied, its artifacts for
        other architectures left out."""
        return dataclasses.replace(
            self,
            sections=tuple((n, s.for_arch(arch)) for n, s in self.sections),
            artifacts=tuple(a for a in self.artifacts if not a.arch or arch in a.arch),
            venv=None if self.venv is None else self.venv.for_arch(arch),
        )

    def check_file(self, test: str) -> Path:
        """The module of one of its guest checks."""
        return self.directory / "checks" / f"test_{test}.py"

    def own_overlay(self, stage: int) -> tuple[str, Path] | None:
        """Its own overlay tree for the stage, if it has one: (overlay name, directory)."""
        suffix = OWN_OVERLAY_SUFFIX.get(stage, f"-s{stage}")
        d = self.directory / f"overlay{suffix}"
        return (f"{self.name}{suffix}", d) if d.is_dir() else None


# A reference both podman and containerd name an image by (podman would put localhost/ before
# a name without a registry part, containerd would not): registry/path:tag, the registry
# being localhost or a host name with a dot or a port, as both engines tell it from a path.
_oci_name = matching(
    r"(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+|[a-z0-9-]+:[0-9]+)(:[0-9]+)?"
    r"/[a-z0-9]+([._/-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
    "a full image reference",
    hint="write registry/path:tag, like localhost/tuoba/busybox:latest",
    shown=80,
    longest=255,
)


def _container_path(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    return _absolute_path(doc, path, value, "in the container", "/bin/sh")


def _links(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[tuple[str, str], ...]:
    links = mapping_of(doc, path, value, string)
    for p, target in links.items():
        _container_path(doc, (*path, p), p)
        if not target:
            raise doc.error((*path, p), "a link needs a target", hint="like /bin/sh: busybox")
    return tuple(sorted(links.items()))


def _oci_image(doc: Doc, path: tuple[PathPart, ...], value: Any) -> OciImage:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("name", _oci_name, help="image reference, like localhost/tuoba/busybox:latest"),
            Field("packages", name_list, help="image packages whose files make its layer"),
            Field("links", _links, (), help="symbolic links to add: {path: target}"),
            Field("cmd", string_list, (), help="the command it runs by default"),
        ],
    )
    if not v["packages"]:
        raise doc.error((*path, "packages"), "an image needs at least one package")
    return OciImage(**v)


_suite = matching(
    r"[a-z]+-[a-z-]+",
    "a suite of a Debian release",
    hint="like bookworm-backports (the release, a dash and the suite)",
    shown=60,
    longest=64,
)


# The kernel's own files a recipe can ask the image to keep, and where they go ({release} is
# the kernel's release, uname -r): its boot image (a nested guest's kernel, kexec) and its
# vmlinux with the debug info (compressed), where drgn, perf and crash look for it.
KERNEL_FILES = {
    "image": "/boot/vmlinuz-{release}",
    "debug-info": "/usr/lib/debug/lib/modules/{release}/vmlinux",
}


def _names_of(
    known: Iterable[str], unknown: str, hint: str
) -> Callable[[Doc, tuple[PathPart, ...], Any], tuple[str, ...]]:
    """A parser of a list of names each of which must be one of `known`; `unknown` (with
    {name}) is the error at the first that is not."""
    allowed = tuple(known)

    def parse(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[str, ...]:
        names = name_list(doc, path, value)
        for i, name in enumerate(names):
            if name not in allowed:
                raise doc.error((*path, i), unknown.format(name=name), hint=hint)
        return names

    return parse


_kernel_files = _names_of(
    KERNEL_FILES, "unknown kernel file '{name}'", f"known: {', '.join(KERNEL_FILES)}"
)


# The components of Debian's archive besides main that a recipe may take packages from (the
# image's apt sources then list them, for every suite): firmware, and what is not free.
COMPONENTS = ("contrib", "non-free", "non-free-firmware")


_components = _names_of(
    COMPONENTS,
    "'{name}' is no component of Debian's archive a recipe can add",
    f"main is always there; the others: {', '.join(COMPONENTS)}",
)


def _suites(
    doc: Doc, path: tuple[PathPart, ...], value: Any
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    suites = mapping_of(doc, path, value, name_list)
    for suite, packages in suites.items():
        _suite(doc, (*path, suite), suite)
        if not packages:
            raise doc.error((*path, suite), f"no packages listed for {suite}")
    return tuple(suites.items())


# A recipe's own files: overlay/ for stage 1 (the default stage), overlay-s<N>/ for stage N.
OWN_OVERLAY_SUFFIX = {1: ""}


def _port(doc: Doc, path: tuple[PathPart, ...], value: Any) -> int:
    port = integer(doc, path, value)
    if not 0 < port < 65536 or port == 22:
        raise doc.error(path, f"{port} is not a TCP port a recipe's service can claim "
                        "(1-65535, and not 22: ssh is forwarded already)")  # fmt: skip
    return port


# The ports a recipe's services listen on: `tuoba boot` and `tuoba test` forward each to a port
# of the host's loopback (the manifest lists them). Listing one does not open it in the image's
# firewall: a recipe whose service is for other machines adds its rule in its overlay
# (etc/nftables.d/<recipe>.nft), and says so.
PORTS = Field("ports", list_of(_port), (), help="TCP ports its services listen on (forwarded "
              "by `tuoba boot` and `tuoba test`)")  # fmt: skip
OVERLAYS = Field("overlays", name_list, (), help="shared overlay trees under overlays/")
TESTS = Field("tests", name_list, (), help="guest checks: NAME is checks/test_NAME.py beside it")
# The fields each stage's section takes.
SECTION_FIELDS: dict[int, list[Field]] = {
    1: [
        Field("packages", name_list, (), help="Debian packages"),
        OVERLAYS,
        Field("services", name_list, (), help="systemd units to enable"),
        PORTS,
        TESTS,
        Field("oci_images", list_of(_oci_image), (), help="container images made of packages"),
        Field("bpf", name_list, (), help="eBPF programs under bpf/ built for the image"),
        Field("suites", _suites, (), help="packages from another suite: {SUITE: [packages]}"),
        Field("kernel_files", _kernel_files, (), help="the kernel's files the image keeps"),
        Field("components", _components, (), help="archive components besides main"),
    ],
    2: [
        Field("builds", name_list, (), help="packages under userland/ built by LLVM against musl"),
        OVERLAYS,
        TESTS,
        Field("bpf", name_list, (), help="eBPF programs under bpf/, loaders built against musl"),
    ],
}
ARCH_FIELDS = {1, 2}  # the stages whose sections take per-arch replacements


def _section(stage: int) -> Callable[[Doc, tuple[PathPart, ...], Any], Section]:
    def parse(doc: Doc, path: tuple[PathPart, ...], value: Any) -> Section:
        fields = list(SECTION_FIELDS[stage])
        if stage in ARCH_FIELDS:
            arch = functools.partial(_arch, SECTION_FIELDS[stage])
            fields.append(Field("arch", arch, (), help="per-arch replacements"))
        return Section(**parse_mapping(doc, path, value, fields))

    return parse


def _arch(
    section_fields: list[Field], doc: Doc, path: tuple[PathPart, ...], value: Any
) -> tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...]:
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping of arch ({', '.join(ARCHES)}) to fields")
    out = []
    for arch, fields in value.items():
        if arch not in ARCHES:
            raise doc.error((*path, arch), f"unknown arch '{arch}' (known: {', '.join(ARCHES)})")
        given = parse_mapping(
            doc,
            (*path, arch),
            fields,
            [dataclasses.replace(f, default=None) for f in section_fields],
        )
        out.append((arch, tuple((k, v) for k, v in given.items() if v is not None)))
    return tuple(out)


RECIPE_FIELDS = [
    Field("description", string, help="one line about the stack"),
    Field("kernel_features", name_list, (), help="kernel feature fragments the stack needs"),
    Field("includes", name_list, (), help="other recipes it brings in, in order"),
    # stage 1 is Debian: a recipe without the section installs nothing there but is usable;
    # a recipe without a stage2 section has no stage-2 form at all
    Field("stage1", _section(1), Section(), help="what the stack installs in stage 1"),
    Field("stage2", _section(2), None, help="what the stack builds in stage 2 (absent: none)"),
]


def _install_path(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    return _absolute_path(doc, path, value, "in the image", "/usr/local/bin/k3s")


def _absolute_path(
    doc: Doc, path: tuple[PathPart, ...], value: Any, where: str, example: str
) -> str:
    """An absolute path of a file (no '.' or '..' part, no trailing /)."""
    s = string(doc, path, value)
    parts = s.split("/")[1:]
    if not s.startswith("/") or not parts or any(p in ("", ".", "..") for p in parts):
        raise doc.error(
            path,
            f"'{s[:80]}' is not an absolute path of a file {where}",
            hint=f"write it like {example} (no '..', no trailing /)",
        )
    return s


def _mode(doc: Doc, path: tuple[PathPart, ...], value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise doc.error(
            path,
            f"mode {value} is a number, not an octal string",
            hint='quote it, like "0755" (YAML reads 0755 unquoted as the number 493)',
        )
    s = string(doc, path, value)
    if not re.fullmatch(r"0?[0-7]{3}", s):
        raise doc.error(
            path, f"'{s[:20]}' is not a file mode", hint='an octal string like "0755" (quoted)'
        )
    return int(s, 8)


def _arches(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[str, ...]:
    names = name_list(doc, path, value)
    for i, a in enumerate(names):
        if a not in ARCHES:
            raise doc.error((*path, i), f"unknown arch '{a}' (known: {', '.join(ARCHES)})")
    return names


def _stages(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise doc.error(path, "expected a list of stages, like [1] or [1, 2]")
    for i, n in enumerate(value):
        if isinstance(n, bool) or not isinstance(n, int) or n not in SECTION_FIELDS:
            raise doc.error(
                (*path, i),
                f"{n!r} is not a stage",
                hint=f"stages are {', '.join(map(str, SECTION_FIELDS))}",
            )
    return tuple(value)


ARTIFACT_FIELDS = [
    Field("install", _install_path, help="where the file goes in the image (absolute path)"),
    Field("mode", _mode, 0o644, help="its file mode, an octal string"),
    Field("arch", _arches, (), help="the architectures it is for (absent: every one)"),
    # Stage 2's ELF audit refuses what clang and musl did not build: a release binary is for
    # stage 1 unless it says otherwise.
    Field("stages", _stages, (1,), help="the stages whose images get it (default [1])"),
    Field("version", string, "", help="the release it belongs to (shown in messages)"),
    Field("supplied", boolean, False, help="the user supplies it: --supply NAME=PATH"),
    Field("optional", boolean, False, help="a supplied file the recipe works without"),
]


def _artifacts(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[Artifact, ...]:
    if not isinstance(value, list):
        raise doc.error(path, "expected a list of artifacts (url, sha256, install …)")
    out: list[Artifact] = []
    for i, item in enumerate(value):
        src, v = parse_source(doc, (*path, i), item, ARTIFACT_FIELDS)
        for earlier in out:
            if earlier.install == v["install"] and set(earlier.arch or ARCHES) & set(
                v["arch"] or ARCHES
            ):
                raise doc.error((*path, i, "install"), f"{v['install']} is installed twice")
        if v["optional"] and not v["supplied"]:
            raise doc.error((*path, i, "optional"), "only a supplied file can be optional",
                            hint="add supplied: true, or drop optional")  # fmt: skip
        out.append(Artifact(src, v["install"], v["mode"], v["arch"], v["stages"], v["version"],
                            v["supplied"], v["optional"], where=doc.where((*path, i))))  # fmt: skip
    return tuple(out)


def load_artifacts(directory: Path, display: str) -> tuple[Artifact, ...]:
    """A recipe's sources.yaml: its pinned files that are no Debian package."""
    doc = load_yaml(directory / "sources.yaml", display=f"{display}/sources.yaml")
    v = parse_mapping(
        doc, (), doc.data, [Field("artifacts", _artifacts, (), help="pinned files to install")]
    )
    artifacts: tuple[Artifact, ...] = v["artifacts"]
    return artifacts


def recipe_names(data_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in (data_dir / "recipes").glob("*/recipe.yaml"))


def load_recipe(data_dir: Path, recipe: str) -> tuple[Recipe, Doc]:
    directory = data_dir / "recipes" / recipe
    path = directory / "recipe.yaml"
    if not path.is_file():
        known = ", ".join(recipe_names(data_dir)) or "none"
        raise InputError(f"no recipe named '{recipe}'", hint=f"known recipes: {known}")
    doc = load_yaml(path, display=f"recipes/{recipe}/recipe.yaml")
    v = parse_mapping(doc, (), doc.data, RECIPE_FIELDS)
    given = {n: v.pop(f"stage{n}") for n in SECTION_FIELDS}
    sections = tuple((n, s) for n, s in given.items() if s is not None)
    if (directory / "sources.yaml").is_file():
        v["artifacts"] = load_artifacts(directory, f"recipes/{recipe}")
    if (directory / "wheels.yaml").is_file():
        v["venv"] = load_venv(directory, f"recipes/{recipe}")
    return Recipe(name=recipe, directory=directory, sections=sections, **v), doc
