"""Recipes: what a stack puts into an image, per stage. A recipe is a directory:

    recipes/<name>/recipe.yaml       what it installs (the fields below)
    recipes/<name>/checks/test_*.py  its guest checks (testinfra), named in `tests:`
    recipes/<name>/overlay/          its own files for stage 1 (optional)
    recipes/<name>/overlay-s2/       … for stage 2 (optional)

    stage1: Debian packages, shared overlays (overlays/), systemd services, guest checks
    stage2: packages built from source by LLVM against musl (userland/), overlays, checks

Each section is one `Section`; the plan asks a recipe for the section of the stage it builds.
A recipe without a `stage2` section has no stage-2 form: asking for it with --stage 2 is an
error naming the recipe, never a silent omission.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuoba.board import ARCHES
from tuoba.config import Doc, Field, PathPart, load_yaml, name_list, parse_mapping, string
from tuoba.errors import InputError


@dataclasses.dataclass(frozen=True)
class Section:
    """What a recipe puts into one stage's image (each stage accepts its own fields: see
    SECTION_FIELDS)."""

    packages: tuple[str, ...] = ()  # Debian packages (stage 1)
    builds: tuple[str, ...] = ()  # userland/ packages built by LLVM against musl (stage 2)
    overlays: tuple[str, ...] = ()
    services: tuple[str, ...] = ()  # systemd units (stage 1)
    tests: tuple[str, ...] = ()
    # Per-arch replacements of the fields above (`arch: {armhf: {packages: [...]}}`), for what
    # Debian does not build for every architecture.
    arch: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()

    def for_arch(self, arch: str) -> Section:
        fields: dict[str, Any] = dict(dict(self.arch).get(arch, ()))
        return dataclasses.replace(self, **fields)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path  # recipes/<name>
    description: str
    kernel_features: tuple[str, ...]
    sections: tuple[tuple[int, Section], ...]  # (stage, what it puts in); a stage absent: none

    def section(self, stage: int) -> Section | None:
        """What the recipe puts into a stage's image; None: it has no form for that stage."""
        return dict(self.sections).get(stage)

    def for_arch(self, arch: str) -> Recipe:
        """This recipe as built for `arch`: its arch replacements applied."""
        return dataclasses.replace(
            self, sections=tuple((n, s.for_arch(arch)) for n, s in self.sections)
        )

    def check_file(self, test: str) -> Path:
        """The module of one of its guest checks."""
        return self.directory / "checks" / f"test_{test}.py"

    def own_overlay(self, stage: int) -> tuple[str, Path] | None:
        """Its own overlay tree for the stage, if it has one: (overlay name, directory)."""
        suffix = OWN_OVERLAY_SUFFIX.get(stage, f"-s{stage}")
        d = self.directory / f"overlay{suffix}"
        return (f"{self.name}{suffix}", d) if d.is_dir() else None


# A recipe's own files: overlay/ for stage 1 (the default stage), overlay-s<N>/ for stage N.
OWN_OVERLAY_SUFFIX = {1: ""}

OVERLAYS = Field("overlays", name_list, (), help="shared overlay trees under overlays/")
TESTS = Field("tests", name_list, (), help="guest checks: NAME is checks/test_NAME.py beside it")
# The fields each stage's section takes.
SECTION_FIELDS: dict[int, list[Field]] = {
    1: [
        Field("packages", name_list, (), help="Debian packages"),
        OVERLAYS,
        Field("services", name_list, (), help="systemd units to enable"),
        TESTS,
    ],
    2: [
        Field("builds", name_list, (), help="packages under userland/ built by LLVM against musl"),
        OVERLAYS,
        TESTS,
    ],
}
ARCH_FIELDS = {1}  # the stages whose sections take per-arch replacements


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
    # stage 1 is Debian: a recipe without the section installs nothing there but is usable;
    # a recipe without a stage2 section has no stage-2 form at all
    Field("stage1", _section(1), Section(), help="what the stack installs in stage 1"),
    Field("stage2", _section(2), None, help="what the stack builds in stage 2 (absent: none)"),
]


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
    return Recipe(name=recipe, directory=directory, sections=sections, **v), doc
