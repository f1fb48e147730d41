"""Where the matrix's images are made: here, one after the other (local), or on the workers
of a Ray cluster (ray). Either way a cell is the same two commands, `tuoba build` and, with
--test, `tuoba test`, run as processes with their output in OUT/matrix/CELL.PHASE.log; cells
exchange what they share through the cache (the remote cache, between machines)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuoba import publish, ui
from tuoba.errors import InputError
from tuoba.matrix import Cell, Job, Outcome, Planned, not_built
from tuoba.remote import safe_url

PR_SET_PDEATHSIG = 1
ATTEMPT = "=== tuoba matrix: attempt on "  # the line each attempt starts its log with


def phase_command(cell: Cell, phase: str, job: Job) -> list[str]:
    """The tuoba command of one phase of a cell, run by this machine's (or worker's) Python."""
    cmd = [sys.executable, "-m", "tuoba", "--data-dir", job.data_dir, "--out",
           str(job.cell_out(cell))]  # fmt: skip
    if job.cache_dir:
        cmd += ["--cache-dir", job.cache_dir]
    if job.cache_url:
        cmd += ["--cache-url", job.cache_url]
    cmd += [phase, "--board", cell.board, "--stage", str(cell.stage)]
    if phase == "build":
        cmd += [a for r in job.recipes for a in ("-r", r)]
        cmd += [a for f, p in job.supplies for a in ("--supply", f"{f}={p}")]
        if job.offline:
            cmd.append("--offline")
    else:
        cmd += ["--junit", str(job.junit_of(cell))]
    return cmd


_LIBC = ctypes.CDLL(None, use_errno=True)  # (loaded here: a forked child must not dlopen)


def _die_with(parent: int) -> Callable[[], None]:
    """In the child, before exec: SIGTERM when the process that started it dies (a Ray
    worker killed mid-build; tuoba ends its own children on SIGTERM and leaves no entry
    half-made), and an exit at once if it died already."""

    def preexec() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(130)

    return preexec


def last_line(log: Path) -> str:
    """The last line a log said (what a failure reports; what progress shows)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    said = [ln for ln in lines if ln and not ln.startswith(ATTEMPT)]
    return said[-1][:200] if said else ""


def run_phase(cell: Cell, phase: str, job: Job) -> Outcome:
    """Run one phase of a cell to its end; its log gains a line per attempt."""
    log = job.log_of(cell, phase)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = phase_command(cell, phase, job)
    node = socket.gethostname()
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"{ATTEMPT}{job.run} on {node}, pid {os.getpid()}: "
                  f"{' '.join(safe_url(a) if '://' in a else a for a in cmd)}\n")  # fmt: skip
        out.flush()
        env = {**os.environ, "NO_COLOR": "1"}
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=env, preexec_fn=_die_with(os.getpid()), check=False)  # fmt: skip
    this_run = f"{ATTEMPT}{job.run} on "
    attempts = sum(1 for ln in log.read_text(errors="replace").splitlines()
                   if ln.startswith(this_run))  # fmt: skip
    ok = proc.returncode == 0
    message = "" if ok else f"exit {proc.returncode}: {last_line(log)}"
    return Outcome(cell, phase, ok, time.monotonic() - start, str(log), message, node, attempts)


def run_cell(planned: Planned, job: Job) -> list[Outcome]:
    """Build a cell and, with job.test, boot and check it (not when the build failed, nor a
    board QEMU cannot boot: reported as not run, with the reason)."""
    cell = planned.cell
    built = run_phase(cell, "build", job)
    if not job.test:
        return [built]
    if not built.ok:
        return [built, Outcome(cell, "test", False, 0.0, "", skipped="its build failed")]
    if planned.untested:
        return [built, Outcome(cell, "test", False, 0.0, "", skipped=planned.untested)]
    return [built, run_phase(cell, "test", job)]


def ray_cell(planned: Planned, job: Job) -> tuple[list[Outcome], dict[str, bytes]]:
    """run_cell as a Ray task: each outcome names the Ray node too (machines may share a name;
    on one machine, every node does); with them, the logs and JUnit file the cell wrote on the
    worker's disk, for the machine that runs the matrix (keep_files)."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    outcomes = [dataclasses.replace(o, node=f"{o.node}/{node}") if o.node else o
                for o in run_cell(planned, job)]  # fmt: skip
    return outcomes, cell_files(planned.cell, job)


def cell_files(cell: Cell, job: Job) -> dict[str, bytes]:
    """What a cell leaves in the matrix's log directory: its phases' logs, its JUnit file."""
    found = {}
    for path in (job.log_of(cell, "build"), job.log_of(cell, "test"), job.junit_of(cell)):
        with contextlib.suppress(FileNotFoundError):
            found[path.name] = path.read_bytes()
    return found


def keep_files(job: Job, files: dict[str, bytes]) -> None:
    """On the machine that runs the matrix: a cell's logs and JUnit file as its worker wrote
    them, where they are not already (a worker on another machine wrote them to its own
    disk), so that the table and junit.xml name files here. (The images stay on the worker
    that built them; what they are made of is in the shared cache.)"""
    for name, data in files.items():
        dest = job.log_dir / name
        with contextlib.suppress(FileNotFoundError):
            if dest.stat().st_size == len(data) and dest.read_bytes() == data:
                continue  # (the same machine, or a shared disk)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with publish.atomic(dest) as tmp:
            tmp.write_bytes(data)


class Local:
    """One cell at a time, in the matrix's order, on this machine."""

    name = "local"

    def run(self, planned: Sequence[Planned], job: Job) -> list[Outcome]:
        outcomes: list[Outcome] = []
        todo = [p for p in planned if not p.skipped]
        for n, p in enumerate(todo, 1):
            ui.info(
                f"[{n}/{len(todo)}] {p.cell.name}: {p.image}"
                + (f" (after {', '.join(c.name for c in p.after)})" if p.after else "")
            )
            stop = threading.Event()
            watcher = threading.Thread(
                target=ui.watch,
                args=(f"{p.cell.name}", lambda c=p.cell: _progress(job, c), stop), daemon=True,
            )  # fmt: skip
            watcher.start()
            try:
                done = run_cell(p, job)
            finally:
                stop.set()
                watcher.join()
            outcomes += done
        return [*outcomes, *(not_built(p) for p in planned if p.skipped)]


def _progress(job: Job, cell: Cell) -> str:
    logs = sorted(job.log_dir.glob(f"{cell.name}.*.log"), key=lambda p: p.stat().st_mtime)
    return last_line(logs[-1])[:100] if logs else "starting"


class Ray:
    """Each cell a Ray task on the cluster at `address` (`ray start --head` on one machine,
    `ray start --address HEAD:6379` on the others), started once the cells it waits for have
    finished, however they did (a cell whose kernel's builder failed makes the kernel itself).
    A task whose worker dies is run again by a new worker (on another machine when one is
    free), up to `retries` times. Workers need tuoba installed, the project at the same path,
    and the same --cache-url to share what they build."""

    name = "ray"

    def __init__(self, address: str | None, retries: int = 2) -> None:
        self.address = address
        self.retries = retries

    def run(self, planned: Sequence[Planned], job: Job) -> list[Outcome]:
        ray = _import_ray()
        address = self.address or os.environ.get("RAY_ADDRESS") or "auto"
        hint = "start one (ray start --head) or give its address: --address HOST:6379"
        if address == "local":
            raise InputError("--address local would start a Ray cluster of this process alone",
                             hint=hint)  # fmt: skip
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                     configure_logging=True)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError, OSError) as e:
            said = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"no Ray cluster answers at {address}: {said}", hint=hint) from e
        try:
            return self._run(ray, planned, job)
        finally:
            ray.shutdown()

    def _run(self, ray: Any, planned: Sequence[Planned], job: Job) -> list[Outcome]:
        task = ray.remote(max_retries=self.retries, retry_exceptions=False, num_cpus=1)(ray_cell)
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        waiting = [p for p in planned if not p.skipped]
        total = len(waiting)
        ui.info(f"Ray cluster at {ray.get_runtime_context().gcs_address}: {nodes} node(s); "
                f"{total} images")  # fmt: skip
        finished: set[Cell] = set()
        running: dict[Any, Planned] = {}
        outcomes: list[Outcome] = []
        while waiting or running:
            for p in [p for p in waiting if all(c in finished for c in p.after)]:
                waiting.remove(p)
                running[task.remote(p, job)] = p
                ui.info(f"  {p.cell.name}: started ({p.image})")
            (ready,), _ = ray.wait(list(running), num_returns=1)
            p = running.pop(ready)
            try:
                done, files = ray.get(ready)
                keep_files(job, files)
            except ray.exceptions.RayTaskError as e:  # run_cell itself raised: not retried
                said = str(e.cause or e).splitlines()[0]
                done = [Outcome(p.cell, "build", False, 0.0, "", f"the task failed: {said}")]
            except ray.exceptions.RayError as e:  # its worker (or node) died, every attempt
                said = f"its worker died {self.retries + 1} times: {str(e).splitlines()[0]}"
                done = [Outcome(p.cell, "build", False, 0.0, "", said, attempts=self.retries + 1)]
            finished.add(p.cell)
            ui.info(f"[{len(finished)}/{total}] {p.cell.name}: " + ", ".join(
                f"{o.phase} {'ok' if o.ok else 'FAILED'} in {o.seconds:.0f} s"
                + (f" on {o.node}" if o.node else "")
                + (f" (attempt {o.attempts})" if o.attempts > 1 else "")
                for o in done if o.skipped is None))  # fmt: skip
            outcomes += done
        return [*outcomes, *(not_built(p) for p in planned if p.skipped)]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise InputError(
            "the ray executor needs Ray, which is not installed for this tuoba",
            hint="pip install 'ray>=2.9' into tuoba's environment (./dev test installs it)",
        ) from e
    return ray


def executor(name: str, address: str | None, retries: int) -> Local | Ray:
    if name == "local":
        if address:
            raise InputError("--address is the Ray cluster's: it needs --executor ray",
                             hint="add --executor ray, or drop --address")  # fmt: skip
        return Local()
    return Ray(address, retries)
