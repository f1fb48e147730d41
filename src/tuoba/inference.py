"""Running a model on a board with TVM from the build host (`tuoba ai run-remote`), the way TVM
users work with an edge board: the model is compiled here by TVM for the board's CPU and linked
by the host's clang and lld, uploaded to the TVM RPC server the `ai` recipe runs on the board
(the `tvm-rpc` service), run and timed there, and its outputs compared with ONNX's reference
implementation (numpy) here.

The host side needs TVM and ONNX for this machine: the `ai` recipe pins them
(recipes/ai/host/wheels.yaml), fetched by pip into the cache by hash like the image's wheels
and unpacked into a cache entry (kind ``venv``). tuoba's own interpreter runs the recipe's
driver (recipes/ai/host/run_remote.py) with that entry on its path and without its own
site-packages (`-S`): nothing of it is installed into tuoba's environment.

The board is a running one (`rpc`: HOST:PORT), or a built image booted in QEMU for the run
(its manifest's ports forwarded to loopback, QEMU stopped afterwards).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import Any

from installer.destinations import SchemeDictionaryDestination

from tuoba import manifest as manifests
from tuoba import qemu, run, ui, wheels
from tuoba.cache import Store
from tuoba.digest import digest
from tuoba.errors import BuildError, GuestCheckError, HostToolError, InputError, TuobaError
from tuoba.guest import boot_spec
from tuoba.recipe import load_recipe
from tuoba.venv import install_wheel

RECIPE = "ai"
HOST_WHEELS = Path("recipes/ai/host/wheels.yaml")
DRIVER = Path("recipes/ai/host/run_remote.py")
# The driver's exit statuses (see its docstring) -> what tuoba raises
ERRORS: dict[int, type[TuobaError]] = {2: InputError, 3: GuestCheckError, 4: BuildError,
                                       5: GuestCheckError}  # fmt: skip
# -S: not tuoba's site-packages; the host wheels' directory goes first on the path
BOOTSTRAP = (
    "import runpy, sys; sys.path[:1] = [sys.argv[1]]; sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclasses.dataclass(frozen=True)
class Run:
    model: Path
    inputs: tuple[tuple[str, Path], ...] = ()  # the model's input name -> its .npy file
    runs: int = 10
    mtriple: str = "aarch64-linux-gnu"
    mcpu: str = "cortex-a72"  # the Raspberry Pi 4's (and QEMU's qemu-aarch64 CPU)
    wait: float = 30.0  # seconds to wait for the RPC server to answer
    timeout: float = 1800.0  # for the whole run (TCG is slow)


def host_packages(data_dir: Path, store: Store, offline: bool = False) -> Path:
    """The directory of the recipe's host wheels, unpacked (made once, then from the cache)."""
    pins = wheels.load_host_wheels(data_dir / HOST_WHEELS, str(HOST_WHEELS))
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != pins.python:
        raise HostToolError(
            f"{HOST_WHEELS} pins wheels for Python {pins.python}, and tuoba runs on {here}",
            hint=f"install tuoba with Python {pins.python} (Debian 12's python3)",
        )
    machine = wheels.PLATFORM_ARCH.get(platform.machine(), platform.machine())
    if pins.arches and machine not in pins.arches:
        raise HostToolError(
            f"{HOST_WHEELS} pins wheels for {', '.join(pins.arches)} hosts, and this one is "
            f"{machine}",
            hint="pin the same versions' wheels for this machine in that file",
        )
    key = digest({"host": machine, "python": pins.python,
                  "wheels": sorted(w.sha256 for w in pins.wheels)})  # fmt: skip
    with store.making("venv", key) as entry:
        if entry is None:
            files = {w.file: wheels.fetch(w, pins.python, store, offline=offline)
                     for w in pins.wheels}  # fmt: skip
            what = f"the ai recipe's host packages ({len(pins.wheels)} wheels, {machine})"
            inputs = {"wheels": [w.file for w in pins.wheels]}
            with store.make("venv", key, what=what, inputs=inputs) as data, ui.step(what):
                site = data / "site-packages"
                destination = SchemeDictionaryDestination(
                    {"purelib": str(site), "platlib": str(site), "scripts": str(data / "bin"),
                     "headers": str(data / "include"), "data": str(data)},
                    interpreter=sys.executable, script_kind="posix",
                )  # fmt: skip
                for w in pins.wheels:
                    install_wheel(w, files[w.file], destination)
            entry = store.get("venv", key)
            assert entry is not None  # (just made)
    return entry.data / "site-packages"


def rpc_port(data_dir: Path) -> int:
    """The port the recipe's TVM RPC server listens on: the first of its ports."""
    recipe, _ = load_recipe(data_dir, RECIPE)
    section = recipe.section(1)
    if section is None or not section.ports:
        raise InputError(
            f"recipes/{RECIPE}/recipe.yaml lists no port for its TVM RPC server",
            hint="give stage1 ports: [9090] (the tvm-rpc service's)",
        )
    return section.ports[0]


def run_on(rpc: str, job: Run, data_dir: Path, store: Store, offline: bool = False
           ) -> dict[str, Any]:  # fmt: skip
    """Compile, upload, run and check the model on the TVM RPC server at HOST:PORT; the
    driver's report. Raises with its sentence when it fails."""
    if not job.model.is_file():
        raise InputError(f"no model at {job.model}", hint="give the path of an .onnx file")
    for name, file in job.inputs:
        if not file.is_file():
            raise InputError(f"--input {name}: no file at {file}", hint="save it with numpy.save")
    site = host_packages(data_dir, store, offline)
    for tool in ("clang", "ld.lld"):  # the cross link (the driver names clang; clang, lld)
        run.require(tool)
    cmd = [
        sys.executable, "-S", "-c", BOOTSTRAP, str(site), str(data_dir / DRIVER),
        "--model", str(job.model), "--rpc", rpc, "--runs", str(job.runs),
        "--mtriple", job.mtriple, "--mcpu", job.mcpu, "--wait", str(job.wait),
        *(a for name, file in job.inputs for a in ("--input", f"{name}={file}")),
    ]  # fmt: skip
    with ui.step(f"TVM: {job.model.name} for {job.mtriple} ({job.mcpu}), run on {rpc}"):
        proc = run.run(cmd, capture=True, capture_stderr=True, check=False, timeout=job.timeout)
        lines = [ln for ln in (proc.stdout or "").splitlines() if ln.startswith("{")]
        report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        if proc.returncode == 0 and "error" not in report:
            return report
        if "error" in report:
            error = ERRORS.get(proc.returncode, BuildError)
            raise error(report["error"], hint=report.get("hint"))
        said = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        raise BuildError(
            f"the TVM driver ({DRIVER}) failed with exit code {proc.returncode}: "
            + (said[-1].strip() if said else "no message"),
            hint="run with --debug to see its whole output" if said else None,
        )


def run_booted(image: Path, job: Run, data_dir: Path, store: Store, timeout: float,
               offline: bool = False) -> dict[str, Any]:  # fmt: skip
    """Boot a built image in QEMU, its RPC port forwarded to loopback, and run the model there."""
    manifest = manifests.load(image)
    if RECIPE not in manifest.recipes:
        raise InputError(
            f"{image.name} was built without the {RECIPE} recipe: it runs no TVM RPC server",
            hint=f"build it with -r {RECIPE} (tuoba build --board {manifest.board} -r {RECIPE})",
        )
    port = rpc_port(data_dir)
    if port not in manifest.ports:
        raise InputError(
            f"{image.name}'s manifest forwards no port {port} (its ports: "
            f"{', '.join(map(str, manifest.ports)) or 'none'})",
            hint="build the image again with this tuoba",
        )
    host_packages(data_dir, store, offline)  # (before the boot: a download can take a while)
    spec = boot_spec(image, manifest)
    console = image.with_name(f"{image.stem}.run-remote.console.log")
    with qemu.booted(spec, console, timeout=timeout) as guest:
        return run_on(f"127.0.0.1:{guest.forwards[port]}", job, data_dir, store, offline)
