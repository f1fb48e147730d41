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
    """A parsed YAML file plus the line of every node, keyed by its path from the root. A Doc
    merged from several files (merge_docs) also knows which file each node came from."""

    file: str
    data: Any
    lines: dict[tuple[PathPart, ...], int]
    files: dict[tuple[PathPart, ...], str] = dataclasses.field(default_factory=dict)

    def file_of(self, path: tuple[PathPart, ...]) -> str:
        """The file that wrote the node at path (or its nearest written ancestor)."""
        while path and path not in self.files:
            path = path[:-1]
        return self.files.get(path, self.file)

    def where(self, path: Sequence[PathPart]) -> str:
        key = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        loc = f"{self.file_of(key)}:{self.lines.get(key, 1)}"  # (an empty file: its first line)
        return f"{loc} -> {format_path(path)}" if path else loc

    def error(self, path: Sequence[PathPart], message: str, hint: str | None = None) -> InputError:
        return InputError(f"{self.where(path)}: {message}", hint=hint or self.default_hint(path))

    def default_hint(self, path: Sequence[PathPart]) -> str:
        """For a message that names no remedy of its own: where the expected form is seen."""
        key = next((p for p in reversed(path) if isinstance(p, str)), None)
        what = f"'{key}'" if key else "this file"
        parts = self.file_of(tuple(path)).split("/")
        if len(parts) == 3 and parts[1] == "common":  # boards/common/<name>.yaml
            parts[2] = "*.yaml"
        elif len(parts) == 3:
            parts[1] = "*"
        elif len(parts) == 2:
            parts[1] = "*" + Path(parts[1]).suffix
        return f"compare {what} with the other {'/'.join(parts)} files"


def merge_docs(base: Doc, over: Doc) -> Doc:
    """`over` on top of `base`: mappings merge key by key, any other value of `over` replaces
    base's whole (a list is not appended to). Every node keeps its own file and line."""
    lines: dict[tuple[PathPart, ...], int] = {}
    files: dict[tuple[PathPart, ...], str] = {}

    def take(doc: Doc, path: tuple[PathPart, ...]) -> None:
        for p, line in doc.lines.items():
            if p[: len(path)] == path:
                lines[p], files[p] = line, doc.file_of(p)

    def merge(b: Any, o: Any, path: tuple[PathPart, ...]) -> Any:
        if not (isinstance(b, dict) and isinstance(o, dict)):
            take(over, path)
            return o
        lines[path], files[path] = over.lines.get(path, 1), over.file_of(path)
        out = {}
        for k in [*o, *(k for k in b if k not in o)]:  # (the including file's order first)
            sub = (*path, str(k))
            if k in o and k in b:
                out[k] = merge(b[k], o[k], sub)
            else:
                take(over if k in o else base, sub)
                out[k] = o[k] if k in o else b[k]
        return out

    data = merge(base.data, over.data, ())
    return Doc(over.file, data, lines, files)


def flatten(doc: Doc) -> list[tuple[tuple[PathPart, ...], Any, str]]:
    """Every value of the document with where it was written: (path, value, "file:line").
    A list of plain values is one value; a list of mappings is walked item by item."""
    out: list[tuple[tuple[PathPart, ...], Any, str]] = []

    def walk(value: Any, path: tuple[PathPart, ...]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, str(k)))
        elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
            for i, v in enumerate(value):
                walk(v, (*path, i))
        else:
            out.append((path, value, f"{doc.file_of(path)}:{doc.lines.get(path, 1)}"))

    walk(doc.data, ())
    return out


def format_path(path: Sequence[PathPart]) -> str:
    """A path into a document as errors write it: `kernel -> features[1]`."""
    return " -> ".join(_fmt_part(p) for p in path).replace(" -> [", "[")


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


MAX_FILE_BYTES = 1 << 20  # data files are small; a larger one is a mistake, not data
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_DEPTH = 32  # the deepest data tuoba reads is 5 levels; 32 leaves room and stops a bomb


def read_text(path: Path, display: str | None = None) -> str:
    """The text of a data file (YAML, kernel fragment): the one way tuoba reads its input.
    Refuses, naming the file and place, what no data file should be: unreadable, larger than
    MAX_FILE_BYTES, not UTF-8, or holding control characters."""
    name = display or str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise InputError(
            f"{name}: cannot read: {e.strerror}", hint="check the file's permissions"
        ) from e
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(
            f"{name}: larger than {MAX_FILE_BYTES >> 10} KiB, too large for a data file",
            hint="data files hold settings; is this the file you meant?",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(
            f"{name}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
            hint="data files are UTF-8 text; re-save the file as UTF-8",
        ) from e
    if m := _CONTROL.search(text):
        line = text.count("\n", 0, m.start()) + 1
        raise InputError(
            f"{name}:{line}: control character {m.group()!r} in the text",
            hint="data files are plain text; remove it",
        )
    return text


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader for tuoba's data: no aliases (the data never needs them, and an alias bomb
    expands exponentially), bounded nesting (the composer recurses), no duplicate keys (YAML
    would silently keep the last one)."""

    def __init__(self, stream: str, name: str) -> None:
        super().__init__(stream)
        self.display = name
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        where = f"{self.display}:{event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent):
            raise InputError(
                f"{where}: YAML aliases (*name) are not allowed here",
                hint="write the value out in full",
            )
        if getattr(event, "anchor", None) is not None:
            raise InputError(
                f"{where}: YAML anchors (&name) are not allowed here",
                hint="write the value out in full where it is used",
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InputError(
                f"{where}: nested deeper than {MAX_DEPTH} levels",
                hint="tuoba's data files are a few levels deep; check the brackets",
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                # Keys compare as the mapping will hold them: `1` and `"1"` differ (an int and
                # a string); `1` and `0x1` are one key, and so are `1` and `true` (one dict
                # key in Python: the second would silently replace the first).
                value = self.construct_object(key)
                if value in seen:
                    raise InputError(
                        f"{self.display}:{key.start_mark.line + 1}: key '{key.value}' given "
                        "twice in one mapping",
                        hint="keep one of them",
                    )
                seen.add(value)
        return node


def load_yaml(path: Path, display: str | None = None) -> Doc:
    """Parse a YAML data file through read_text and a strict loader; every problem names
    file:line (a syntax error also what the parser expected)."""
    name = display or str(path)
    text = read_text(path, name)
    loader = _StrictLoader(text, name)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(
            f"{name}{line}: malformed YAML: {e.problem or e.context}",
            hint="check indentation and quoting around that line",
        ) from e
    except yaml.YAMLError as e:  # the reader's own errors (e.g. a character YAML forbids)
        raise InputError(f"{name}: malformed YAML: {e}", hint="check the file's text") from e
    except RecursionError as e:  # a backstop: the depth limit stops it first
        raise InputError(f"{name}: nested too deeply", hint="check the brackets") from e
    finally:
        loader.dispose()
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
    known = {f.key for f in fields}
    if not isinstance(value, dict):
        raise doc.error(
            path,
            f"expected a mapping, got {_kind(value)}",
            hint=f"a mapping of: {', '.join(sorted(known))}",
        )
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
            try:
                out[f.key] = f.type(doc, (*path, f.key), value[f.key])
            except InputError as e:
                if e.hint is None:  # the innermost field says what the value is for
                    e.hint = f"'{f.key}' is the {f.help}" if f.help else None
                raise
        elif f.default is REQUIRED:
            raise doc.error(
                path, f"missing required key '{f.key}' ({f.help})", hint=f"add '{f.key}:' here"
            )
        else:
            out[f.key] = f.default
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


MAX_STRING = 4096  # the longest value in the tree is a one-line description


def string(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"expected a string, got {_kind(value)}")
    if len(value) > MAX_STRING:
        raise doc.error(
            path, f"{len(value)} characters, longer than {MAX_STRING}", hint="shorten the value"
        )
    return value


def relative_path(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    """A path inside the project or a source tree: relative, no '..', each part a file name."""
    s = string(doc, path, value)
    parts = s.split("/")
    if not s or s.startswith("/") or any(p in ("", ".", "..") or len(p) > 255 for p in parts):
        raise doc.error(
            path,
            f"'{s[:80]}' is not a relative path of file names",
            hint="write it like broadcom/bcm2711-rpi-4-b (no leading /, no '..')",
        )
    return s


def integer(doc: Doc, path: tuple[PathPart, ...], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise doc.error(path, f"expected a whole number, got {_kind(value)}")
    return value


def boolean(doc: Doc, path: tuple[PathPart, ...], value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(path, f"expected true or false, got {_kind(value)}")
    return value


Check = Callable[[Doc, tuple[PathPart, ...], Any], Any]


def list_of(item: Check) -> Callable[[Doc, tuple[PathPart, ...], Any], tuple[Any, ...]]:
    """A list whose every item `item` checks, located by its index."""

    def check(doc: Doc, path: tuple[PathPart, ...], value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise doc.error(path, f"expected a list, got {_kind(value)}")
        return tuple(item(doc, (*path, i), v) for i, v in enumerate(value))

    return check


string_list = list_of(string)


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


def matching(
    pattern: str, what: str, hint: str, shown: int | None = None, longest: int = MAX_STRING
) -> Check:
    """A string that matches `pattern` whole (and is at most `longest` long); otherwise
    "'VALUE' is not WHAT" (the value cut to `shown` characters) with the hint."""
    regex = re.compile(pattern)

    def check(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
        s = string(doc, path, value)
        if len(s) > longest or not regex.fullmatch(s):
            raise doc.error(path, f"'{s[:shown]}' is not {what}", hint=hint)
        return s

    return check


name = matching(
    r"[a-z0-9][a-z0-9._-]{0,63}",
    "a valid name (lower-case letters, digits, . _ -)",
    hint="at most 64 characters, starting with a letter or digit",
)
name_list = list_of(name)
path_list = list_of(relative_path)


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
