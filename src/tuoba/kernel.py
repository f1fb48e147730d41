"""Kernel feature fragments (`kernel/features/<name>.config`) and checking a kernel's config."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

from tuoba.config import read_text
from tuoba.errors import BuildError, InputError

_LINE = re.compile(r'^(CONFIG_[A-Za-z0-9_]+)=(y|m|n|"[^"]*"|-?\d+|0x[0-9a-fA-F]+)$')
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    value: str  # y, m, n, a quoted string or a number
    feature: str  # the fragment that set it
    line: int


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    options: tuple[Option, ...]
    path: Path


def feature_names(data_dir: Path) -> list[str]:
    """The features there are (`<name>.config`; `<name>.<arch>.config` is a part of one)."""
    return sorted(
        p.stem for p in (data_dir / "kernel" / "features").glob("*.config") if "." not in p.stem
    )


def load_feature(data_dir: Path, feature: str, arch: str | None = None) -> Feature:
    """A feature's fragment, followed by its `<feature>.<arch>.config` part for `arch` if there
    is one (options that exist on one architecture only)."""
    path = data_dir / "kernel" / "features" / f"{feature}.config"
    if "." in feature or not path.is_file():
        raise InputError(
            f"unknown kernel feature '{feature}'",
            hint=f"known features: {', '.join(feature_names(data_dir)) or 'none'}",
        )
    common = load_fragment(path, feature, f"kernel/features/{feature}.config")
    part = path.with_name(f"{feature}.{arch}.config")
    if arch is None or not part.is_file():
        return common
    extra = load_fragment(part, feature, f"kernel/features/{feature}.{arch}.config")
    return Feature(feature, common.options + extra.options, path)


def load_fragment(path: Path, name: str, display: str) -> Feature:
    """A fragment file: `CONFIG_X=y|m|n|"value"|number` or `# CONFIG_X is not set` lines."""
    feature = display
    options = []
    for n, raw in enumerate(read_text(path, display).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if m := _NOT_SET.match(line):
            options.append(Option(m.group(1), "n", feature, n))
            continue
        if line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise InputError(
                f"{display}:{n}: '{line}' is not a kernel option line",
                hint='write CONFIG_NAME=y, =m, =n, ="value" or a number',
            )
        options.append(Option(m.group(1), m.group(2), feature, n))
    return Feature(name, tuple(options), path)


def parse_config(text: str) -> dict[str, str]:
    """A kernel .config as {CONFIG_X: value}; `# CONFIG_X is not set` reads as 'n'."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if m := _NOT_SET.match(line.strip()):
            values[m.group(1)] = "n"
        elif "=" in line and line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def missing_options(config: dict[str, str], features: Iterable[Feature]) -> list[Option]:
    """Options a fragment asked for that the final config does not have."""
    missing = []
    for feature in features:
        for opt in feature.options:
            have = config.get(opt.name, "n")
            if have != opt.value:
                missing.append(opt)
    return missing


def describe_missing(config: dict[str, str], missing: Iterable[Option]) -> str:
    """`CONFIG_X=y (fragment:line, have n), …` for an error message."""
    return ", ".join(
        f"{o.name}={o.value} ({o.feature}:{o.line}, have {config.get(o.name, 'unset')})"
        for o in missing
    )


def assert_config(config: dict[str, str], features: Iterable[Feature], where: str) -> None:
    missing = missing_options(config, features)
    if missing:
        listing = describe_missing(config, missing)
        raise BuildError(
            f"kernel config of {where} lacks {len(missing)} requested option(s): {listing}",
            hint="drop the feature from the board/recipe or use a kernel that has these options",
        )
