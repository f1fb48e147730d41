"""Python wheels a recipe pins (`recipes/<name>/wheels.yaml`): each by its file name (which says
the distribution, version and the interpreters and platforms it is built for) and sha256.

They are fetched with pip, Python's ordinary package client, from the index the user's pip
configuration names (no registry host is written in the project), one file at a time with its
hash required (`pip download --require-hashes`: pip takes no other file), and kept in the
cache by that hash (kind ``source``, as every pinned download). `offline` uses the cache or
fails naming what is missing. The venv step (`tuoba.venv`) installs them into the image.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tuoba import run, ui
from tuoba.cache import Store
from tuoba.config import (
    Doc,
    Field,
    PathPart,
    list_of,
    load_yaml,
    matching,
    parse_mapping,
    string,
)
from tuoba.errors import BuildError, InputError
from tuoba.sources import cached, cached_or_offline, sha256_file

# The wheel file name (PEP 427, with PEP 491's build tag): distribution, version, [build],
# python tags, abi tags, platform tags (each a '.'-separated set).
_WHEEL = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(-(?P<build>\d[A-Za-z0-9_]*))?"
    r"-(?P<python>[a-z0-9_.]+)-(?P<abi>[a-z0-9_.]+)-(?P<platform>[a-z0-9_.]+)\.whl$"
)
# The platform tags of wheels that run on an architecture (Linux, glibc or any).
PLATFORM_ARCH = {"aarch64": "arm64", "armv7l": "armhf", "x86_64": "amd64"}


@dataclasses.dataclass(frozen=True)
class Wheel:
    file: str  # its file name, as the index serves it
    sha256: str
    origin: str = ""  # where the pinned hash comes from, for people reading the data
    where: str = ""  # its place in wheels.yaml, for messages

    def _part(self, part: str) -> str:
        m = _WHEEL.match(self.file)
        assert m is not None  # (checked when read)
        return m[part]

    @property
    def name(self) -> str:
        """The distribution's normalised name (PEP 503), as pip asks for it."""
        return re.sub(r"[-_.]+", "-", self._part("name")).lower()

    @property
    def version(self) -> str:
        return self._part("version")

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(self._part("platform").split("."))

    @property
    def abis(self) -> tuple[str, ...]:
        return tuple(self._part("abi").split("."))

    @property
    def arches(self) -> tuple[str, ...]:
        """The Debian architectures it runs on; empty: every one (a pure-Python wheel)."""
        found = {a for p in self.platforms for tag, a in PLATFORM_ARCH.items() if p.endswith(tag)}
        return tuple(sorted(found))


@dataclasses.dataclass(frozen=True)
class Venv:
    """A virtual environment a recipe puts into the image: its path and pinned wheels."""

    path: str  # absolute, in the image
    python: str  # the image's Python, major.minor ("3.11")
    wheels: tuple[Wheel, ...]
    where: str = ""  # the file, for messages

    @property
    def arches(self) -> tuple[str, ...]:
        """The architectures its wheels are built for; empty: pure Python, every one."""
        return tuple(sorted({a for w in self.wheels for a in w.arches}))

    def for_arch(self, arch: str) -> Venv:
        """Its wheels for `arch` (pure ones and those built for it); a venv none of whose
        built wheels is for `arch` keeps them all, for the plan to refuse (check_arch)."""
        if self.arches and arch not in self.arches:
            return self
        return dataclasses.replace(
            self, wheels=tuple(w for w in self.wheels if not w.arches or arch in w.arches)
        )

    def check_arch(self, arch: str, recipe: str) -> None:
        if self.arches and arch not in self.arches:
            raise InputError(
                f"{self.where}: recipe '{recipe}' pins wheels built for "
                f"{', '.join(self.arches)} only, and this board is {arch}",
                hint=f"build '{recipe}' for an {' or '.join(self.arches)} board",
            )


def _wheel_file(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    s = string(doc, path, value)
    if not _WHEEL.match(s):
        raise doc.error(
            path,
            f"'{s[:80]}' is not a wheel's file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)",
            hint="copy the file name the index lists, e.g. numpy-2.4.6-cp311-cp311-"
            "manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
        )
    return s


_SHA256 = matching(r"[0-9a-f]{64}", "a sha256", hint="64 lower-case hex digits", shown=80)
_PYTHON = matching(r"3\.[0-9]+", "a Python version", hint="major.minor, like 3.11", shown=20)


def _venv_path(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    s = string(doc, path, value)
    if not s.startswith("/") or ".." in s.split("/") or s.rstrip("/") in ("", "/usr", "/etc"):
        raise doc.error(path, f"'{s}' is no place for a venv", hint="an absolute path like /opt/x")
    return s.rstrip("/")


def _wheel(doc: Doc, path: tuple[PathPart, ...], value: Any) -> Wheel:
    v = parse_mapping(
        doc,
        path,
        value,
        [
            Field("file", _wheel_file, help="the wheel's file name, as the index serves it"),
            Field("sha256", _SHA256, help="its pinned hash"),
            Field("origin", string, "", help="where the hash comes from"),
        ],
    )
    return Wheel(v["file"], v["sha256"], v["origin"], where=doc.where(path))


WHEELS_FIELDS = [
    Field("venv", _venv_path, help="where the venv goes in the image (absolute)"),
    Field("python", _PYTHON, help="the image's Python, major.minor: the wheels' interpreter"),
    Field("wheels", list_of(_wheel), help="every wheel (dependencies too), file and sha256"),
]


def load_venv(directory: Path, display: str) -> Venv:
    """A recipe's wheels.yaml."""
    doc = load_yaml(directory / "wheels.yaml", display=f"{display}/wheels.yaml")
    v = parse_mapping(doc, (), doc.data, WHEELS_FIELDS)
    return Venv(v["venv"], v["python"], _each_once(doc, v["wheels"]), where=doc.where(()))


def load_host_wheels(path: Path, display: str) -> Venv:
    """Wheels for the build host's own Python (a recipe's host/wheels.yaml): the fields of a
    venv's but its place, which the cache gives."""
    doc = load_yaml(path, display=display)
    v = parse_mapping(doc, (), doc.data, WHEELS_FIELDS[1:])
    return Venv("", v["python"], _each_once(doc, v["wheels"]), where=doc.where(()))


def _each_once(doc: Doc, wheels: tuple[Wheel, ...]) -> tuple[Wheel, ...]:
    seen: dict[str, Wheel] = {}
    for i, w in enumerate(wheels):
        other = seen.get(f"{w.name} {'.'.join(w.arches)}")
        if other is not None:
            raise doc.error(
                ("wheels", i, "file"),
                f"{w.name} is pinned twice (also {other.file}, {other.where})",
                hint="pin one version of each distribution per architecture",
            )
        seen[f"{w.name} {'.'.join(w.arches)}"] = w
    return wheels


def fetch(wheel: Wheel, python: str, store: Store, *, offline: bool = False) -> Path:
    """The cached, verified wheel, downloaded with pip if the cache lacks it."""
    found = cached_or_offline(store, wheel.sha256, f"wheel {wheel.file}", offline)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="tuoba-wheel-") as tmp:
        work = Path(tmp)
        (work / "requirements.txt").write_text(
            f"{wheel.name}=={wheel.version} --hash=sha256:{wheel.sha256}\n"
        )
        platforms = [a for p in wheel.platforms if p != "any" for a in ("--platform", p)]
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--python-version", python, "--implementation", "cp",
            *(a for abi in wheel.abis for a in ("--abi", abi)),
            *(platforms or ["--platform", "any"]),
            "--dest", str(work / "got"), "--require-hashes", "-r", str(work / "requirements.txt"),
        ]  # fmt: skip
        with ui.step(f"wheel {wheel.name} {wheel.version} (pip download)"):
            proc = run.run(cmd, capture=True, capture_stderr=True, check=False)
        got = sorted((work / "got").glob("*.whl")) if (work / "got").is_dir() else []
        if proc.returncode != 0 or len(got) != 1:
            said = [ln for ln in (proc.stderr or "").splitlines() if ln.startswith("ERROR")]
            raise BuildError(
                f"pip could not download {wheel.file} ({wheel.where}): "
                + (" ".join(said[-1].split()) if said else f"pip exited with {proc.returncode}"),
                hint="check the index in your pip configuration (pip config list) and that it "
                "still serves this file; a mismatching hash means it serves other bytes",
            )
        if got[0].name != wheel.file or (sha := sha256_file(got[0])) != wheel.sha256:
            raise BuildError(
                f"pip downloaded {got[0].name} for {wheel.file} ({wheel.where}), which is not "
                f"the pinned file (sha256 {sha256_file(got[0])[:16]}…)",
                hint="the index serves other bytes for this pin; refusing to use them",
            )
        with store.make("source", sha, what=wheel.file, inputs={"pip": wheel.file}) as data:
            shutil.move(got[0], data / wheel.file)
    path = cached(store, wheel.sha256)
    assert path is not None  # (just published)
    return path
