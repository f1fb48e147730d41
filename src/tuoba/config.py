"""Reading data files (YAML) with locations, and one table-driven validator.

Every value keeps where it came from, so an error reads
`boards/qemu-aarch64/board.yaml:9 -> kernel -> features[1]: unknown feature 'kvmm' (known: bpf)`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tuoba.errors import InputError

PathPart = str | int


@dataclasses.dataclass(frozen=True)
class Doc:
    """A parsed YAML file plus the line of every node, keyed by its path from the root."""

    file: str
    data: Any
    lines: dict[tuple[PathPart, ...], int]

    def where(self, path: Sequence[PathPart]) -> str:
        key = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        line = self.lines.get(key)
        loc = f"{self.file}:{line}" if line else self.file
        if path:
            loc += " -> " + " -> ".join(_fmt_part(p) for p in path).replace(" -> [", "[")
        return loc

    def error(self, path: Sequence[PathPart], message: str, hint: str | None = None) -> InputError:
        return InputError(f"{self.where(path)}: {message}", hint=hint)


def _fmt_part(p: PathPart) -> str:
    return f"[{p}]" if isinstance(p, int) else p


def _walk(
    node: yaml.Node, path: tuple[PathPart, ...], lines: dict[tuple[PathPart, ...], int]
) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                _walk(value, (*path, str(key.value)), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


def load_yaml(path: Path, display: str | None = None) -> Doc:
    """Parse a YAML file; a syntax error names file:line and what the parser expected."""
    name = display or str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{name}: cannot read: {e.strerror}") from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(
            f"{name}{line}: malformed YAML: {e.problem or e.context}",
            hint="check indentation and quoting around that line",
        ) from e
    lines: dict[tuple[PathPart, ...], int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Doc(name, data, lines)


# --- the validator -----------------------------------------------------------------------------

REQUIRED: Any = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its key, expected type, default and help. Drives validation and docs."""

    key: str
    type: Callable[[Doc, tuple[PathPart, ...], Any], Any]
    default: Any = REQUIRED
    help: str = ""


def parse_mapping(
    doc: Doc, path: tuple[PathPart, ...], value: Any, fields: Sequence[Field]
) -> dict[str, Any]:
    """Validate a mapping against a field table; unknown keys are errors (typos never pass)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {_kind(value)}")
    known = {f.key for f in fields}
    for key in value:
        if key not in known:
            raise doc.error(
                (*path, str(key)),
                f"unknown key '{key}'",
                hint=f"known keys here: {', '.join(sorted(known))}",
            )
    out: dict[str, Any] = {}
    for f in fields:
        if f.key in value:
            out[f.key] = f.type(doc, (*path, f.key), value[f.key])
        elif f.default is REQUIRED:
            raise doc.error(path, f"missing required key '{f.key}' ({f.help})")
        else:
            out[f.key] = f.default
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def string(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"expected a string, got {_kind(value)}")
    return value


def integer(doc: Doc, path: tuple[PathPart, ...], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise doc.error(path, f"expected a whole number, got {_kind(value)}")
    return value


def boolean(doc: Doc, path: tuple[PathPart, ...], value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(path, f"expected true or false, got {_kind(value)}")
    return value


def string_list(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list, got {_kind(value)}")
    return tuple(string(doc, (*path, i), v) for i, v in enumerate(value))


def one_of(*choices: str) -> Callable[[Doc, tuple[PathPart, ...], Any], str]:
    def check(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
        s = string(doc, path, value)
        if s not in choices:
            raise doc.error(path, f"'{s}' is not one of: {', '.join(choices)}")
        return s

    return check


_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int | None:
    """Bytes in a size like 512M or 2G (binary units), None if it is not one."""
    m = _SIZE.match(text.strip())
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[(m.group(2) or "").upper()[:1]]


def size(doc: Doc, path: tuple[PathPart, ...], value: Any) -> int:
    """A byte size like 512M or 2G (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    n = parse_size(value) if isinstance(value, str) else None
    if n is None:
        raise doc.error(path, f"expected a size like 512M or 2G, got {value!r}")
    return n


def name(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    s = string(doc, path, value)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", s):
        raise doc.error(path, f"'{s}' is not a valid name (lower-case letters, digits, . _ -)")
    return s


def name_list(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list, got {_kind(value)}")
    return tuple(name(doc, (*path, i), v) for i, v in enumerate(value))


def mapping_of(
    doc: Doc,
    path: tuple[PathPart, ...],
    value: Any,
    item: Callable[[Doc, tuple[PathPart, ...], Any], Any],
) -> dict[str, Any]:
    """A mapping with free-form string keys, each value checked by `item`."""
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {_kind(value)}")
    return {str(k): item(doc, (*path, str(k)), v) for k, v in value.items()}
