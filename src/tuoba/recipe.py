"""Recipes: what a stack puts into an image, per stage. A recipe is a directory:

    recipes/<name>/recipe.yaml       what it installs (the fields below)
    recipes/<name>/checks/test_*.py  its guest checks (testinfra), named in `tests:`
    recipes/<name>/overlay/          its own files for stage 1 (optional)
    recipes/<name>/overlay-s2/       … for stage 2 (optional)

    stage1: Debian packages, shared overlays (overlays/), systemd services, guest checks
    stage2: packages built from source by LLVM against musl (userland/), overlays, checks

A recipe without a `stage2` section has no stage-2 form: asking for it with --stage 2 is an
error naming the recipe, never a silent omission.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tuoba.board import ARCHES
from tuoba.config import Doc, Field, PathPart, load_yaml, name_list, parse_mapping, string
from tuoba.errors import InputError


@dataclasses.dataclass(frozen=True)
class Stage1:
    packages: tuple[str, ...] = ()
    overlays: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    # Per-arch replacements of the fields above (`arch: {armhf: {packages: [...]}}`), for what
    # Debian does not build for every architecture.
    arch: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class Stage2:
    builds: tuple[str, ...] = ()
    overlays: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path  # recipes/<name>
    description: str
    kernel_features: tuple[str, ...]
    stage1: Stage1
    stage2: Stage2 | None  # None: no stage-2 form

    def for_arch(self, arch: str) -> Recipe:
        """This recipe as built for `arch`: its stage-1 arch replacements applied."""
        fields: dict[str, Any] = dict(dict(self.stage1.arch).get(arch, ()))
        return dataclasses.replace(self, stage1=dataclasses.replace(self.stage1, **fields))

    def overlays(self, stage: int) -> tuple[str, ...]:
        s = self.stage1 if stage == 1 else self.stage2
        return s.overlays if s is not None else ()

    def tests(self, stage: int) -> tuple[str, ...]:
        s = self.stage1 if stage == 1 else self.stage2
        return s.tests if s is not None else ()

    def check_file(self, test: str) -> Path:
        """The module of one of its guest checks."""
        return self.directory / "checks" / f"test_{test}.py"

    def own_overlay(self, stage: int) -> Path | None:
        """Its own overlay tree for the stage, if it has one."""
        d = self.directory / ("overlay" if stage == 1 else f"overlay-s{stage}")
        return d if d.is_dir() else None


STAGE1_FIELDS = [
    Field("packages", name_list, (), help="Debian packages"),
    Field("overlays", name_list, (), help="shared overlay trees under overlays/"),
    Field("services", name_list, (), help="systemd units to enable"),
    Field("tests", name_list, (), help="guest checks: NAME is checks/test_NAME.py beside it"),
]
STAGE2_FIELDS = [
    Field("builds", name_list, (), help="packages under userland/ built by LLVM against musl"),
    Field("overlays", name_list, (), help="shared overlay trees under overlays/"),
    Field("tests", name_list, (), help="guest checks: NAME is checks/test_NAME.py beside it"),
]


def _stage1(doc: Doc, path: tuple[PathPart, ...], value: Any) -> Stage1:
    fields = [*STAGE1_FIELDS, Field("arch", _arch, (), help="per-arch replacements")]
    return Stage1(**parse_mapping(doc, path, value, fields))


def _arch(
    doc: Doc, path: tuple[PathPart, ...], value: Any
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
            [dataclasses.replace(f, default=None) for f in STAGE1_FIELDS],
        )
        out.append((arch, tuple((k, v) for k, v in given.items() if v is not None)))
    return tuple(out)


def _stage2(doc: Doc, path: tuple[PathPart, ...], value: Any) -> Stage2:
    return Stage2(**parse_mapping(doc, path, value, STAGE2_FIELDS))


RECIPE_FIELDS = [
    Field("description", string, help="one line about the stack"),
    Field("kernel_features", name_list, (), help="kernel feature fragments the stack needs"),
    Field("stage1", _stage1, Stage1(), help="what the stack installs in stage 1"),
    Field("stage2", _stage2, None, help="what the stack builds in stage 2 (absent: none)"),
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
    return Recipe(name=recipe, directory=directory, **v), doc
