"""Recipes: `recipes/<stack>.yaml`, a stack's packages, overlays, services, features and checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tuoba.config import Doc, Field, PathPart, load_yaml, name_list, parse_mapping, string
from tuoba.errors import InputError


@dataclasses.dataclass(frozen=True)
class Stage1:
    packages: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stage1: Stage1
    kernel_features: tuple[str, ...]
    overlays: tuple[str, ...]
    services: tuple[str, ...]
    tests: tuple[str, ...]


def _package(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[str, ...]:
    return name_list(doc, path, value)


def _stage1(doc: Doc, path: tuple[PathPart, ...], value: Any) -> Stage1:
    v = parse_mapping(doc, path, value, [Field("packages", _package, (), help="Debian packages")])
    return Stage1(**v)


RECIPE_FIELDS = [
    Field("description", string, help="one line about the stack"),
    Field("stage1", _stage1, Stage1(()), help="what the stack installs in stage 1"),
    Field("kernel_features", name_list, (), help="kernel feature fragments the stack needs"),
    Field("overlays", name_list, (), help="overlay trees under overlays/"),
    Field("services", name_list, (), help="systemd units to enable"),
    Field("tests", name_list, (), help="guest check modules under tests/image/"),
]


def recipe_names(data_dir: Path) -> list[str]:
    return sorted(p.stem for p in (data_dir / "recipes").glob("*.yaml"))


def load_recipe(data_dir: Path, recipe: str) -> tuple[Recipe, Doc]:
    path = data_dir / "recipes" / f"{recipe}.yaml"
    if not path.is_file():
        known = ", ".join(recipe_names(data_dir)) or "none"
        raise InputError(f"no recipe named '{recipe}'", hint=f"known recipes: {known}")
    doc = load_yaml(path, display=f"recipes/{recipe}.yaml")
    v = parse_mapping(doc, (), doc.data, RECIPE_FIELDS)
    return Recipe(name=recipe, **v), doc
