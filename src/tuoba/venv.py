"""A recipe's Python virtual environment, made for the image on the build host: the image's
own Python is never run (it is another architecture). The venv is what `python3 -m venv
--without-pip` would make in the image — `pyvenv.cfg`, `bin/python*` pointing at the image's
interpreter, `bin/activate`, `lib/pythonX.Y/site-packages` — and the pinned wheels are
unpacked into it by `installer` (PyPA's wheel installer: the scripts' `#!` line names the
venv's interpreter as the image sees it), then byte-compiled by the host's Python when it is
the image's version (the same bytecode), hash-checked (`unchecked-hash`: no build date in the
.pyc files). Each venv is a cache entry (kind ``venv``) keyed by the wheels, the path, the
Python and this module's code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from tuoba import run, ui
from tuoba.cache import Store
from tuoba.digest import digest
from tuoba.errors import BuildError, InputError
from tuoba.wheels import Venv, Wheel

CODE = Path(__file__).read_text()

ACTIVATE = """\
# source this file from sh or bash: the venv's Python comes first in PATH
# (made by tuoba, like `python3 -m venv`'s own; `deactivate` undoes it)
deactivate () {{
    if [ -n "${{_OLD_VIRTUAL_PATH:-}}" ]; then
        PATH="$_OLD_VIRTUAL_PATH"; export PATH; unset _OLD_VIRTUAL_PATH
    fi
    unset VIRTUAL_ENV VIRTUAL_ENV_PROMPT
    hash -r 2>/dev/null
    [ "${{1:-}}" = nondestructive ] || unset -f deactivate
}}
deactivate nondestructive
VIRTUAL_ENV={path}
VIRTUAL_ENV_PROMPT={name}
export VIRTUAL_ENV VIRTUAL_ENV_PROMPT
_OLD_VIRTUAL_PATH="$PATH"
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
hash -r 2>/dev/null
"""


def build_venv(
    venv: Venv, wheels: dict[str, Path], root_tree: Path, store: Store, log: Path
) -> Path:
    """The venv's tree (its files at their paths in the image), made or reused; `wheels`:
    each pinned wheel's file name -> the cached file."""
    python = f"python{venv.python}"
    if not (root_tree / "usr/bin" / python).exists():
        raise InputError(
            f"{venv.where}: the venv is for Python {venv.python}, and the image has no "
            f"/usr/bin/{python}",
            hint="give the recipe Debian's python3 of the image's release (bookworm: 3.11), "
            "and pin wheels built for it",
        )
    key = digest(
        {
            "path": venv.path,
            "python": venv.python,
            "wheels": sorted(w.sha256 for w in venv.wheels),
            "code": CODE,
        }
    )
    with store.making("venv", key) as entry:
        if entry is None:
            what = f"Python venv {venv.path} ({len(venv.wheels)} wheels)"
            inputs = {"path": venv.path, "wheels": [w.file for w in venv.wheels]}
            with store.make("venv", key, what=what, inputs=inputs) as data:
                with ui.step(what):
                    _make(venv, wheels, data / "tree", log)
                (data / "wheels.json").write_text(json.dumps(listing(venv), indent=2) + "\n")
            entry = store.get("venv", key)
            assert entry is not None  # (just made)
    return entry.data / "tree"


def listing(venv: Venv) -> list[dict[str, str]]:
    """What the venv holds, for the manifest: each distribution with its version and wheel."""
    return [
        {"name": w.name, "version": w.version, "file": w.file, "sha256": w.sha256}
        for w in sorted(venv.wheels, key=lambda w: w.name)
    ]


def _make(venv: Venv, wheels: dict[str, Path], tree: Path, log: Path) -> None:
    python = f"python{venv.python}"
    home = tree / venv.path.lstrip("/")
    site = f"{venv.path}/lib/{python}/site-packages"
    (tree / site.lstrip("/")).mkdir(parents=True)
    (home / "lib64").symlink_to("lib")
    (home / "bin").mkdir()
    (home / "bin" / python).symlink_to(f"/usr/bin/{python}")
    for alias in ("python3", "python"):
        (home / "bin" / alias).symlink_to(python)
    (home / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {venv.python}\n"
        f"executable = /usr/bin/{python}\ncommand = /usr/bin/{python} -m venv {venv.path}\n"
    )
    (home / "bin" / "activate").write_text(
        ACTIVATE.format(path=venv.path, name=Path(venv.path).name)
    )
    destination = SchemeDictionaryDestination(
        {
            "purelib": site,
            "platlib": site,
            "headers": f"{venv.path}/include/site/{python}",
            "scripts": f"{venv.path}/bin",
            "data": venv.path,
        },
        interpreter=f"{venv.path}/bin/{python}",
        script_kind="posix",
        destdir=str(tree),
    )
    for w in venv.wheels:
        install_wheel(w, wheels[w.file], destination)
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    if host != venv.python:
        ui.warn(
            f"{venv.path}: not byte-compiled (this host's Python is {host}, the image's "
            f"{venv.python}): its first imports in the image compile what they use"
        )
        return
    # The image's Python reads these: same version, same bytecode. Some wheels carry files
    # that are no Python of this version (templates, tests of other versions): compileall
    # says so and goes on; they are compiled at import if ever imported.
    run.run(
        [sys.executable, "-m", "compileall", "-q", "-q", "-j", "0", "--invalidation-mode",
         "unchecked-hash", "-s", str(tree), "-p", "/", str(tree / site.lstrip("/"))],
        log=log, check=False,
    )  # fmt: skip


def install_wheel(wheel: Wheel, path: Path, destination: SchemeDictionaryDestination) -> None:
    try:
        with WheelFile.open(path) as source:
            install(source, destination, additional_metadata={"INSTALLER": b"tuoba\n"})
    except Exception as e:  # installer raises plain exceptions for a wheel it cannot take
        raise BuildError(
            f"{wheel.where}: {wheel.file} could not be installed: {e}",
            hint="a file installed twice means two wheels ship it: drop one of them",
        ) from e
