"""Driving a build: write the request, let SCons run the stale steps, report the result."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import shutil
import sys
import time
from pathlib import Path

from tuoba import errors, lock, publish, run, ui
from tuoba.plan import Plan, default_ssh_key
from tuoba.steps import STEP_NAMES, error_path, forget_pruned, save_plan


@dataclasses.dataclass(frozen=True)
class BuildResult:
    image: Path
    manifest: Path
    ran: tuple[str, ...]
    seconds: float


def ensure_ssh_key(plan: Plan) -> None:
    """Generate the per-output-dir key pair unless the user gave a key."""
    if plan.request.ssh_key:
        return
    key = default_ssh_key(plan.out_dir)
    if key.is_file() and key.with_suffix(".pub").is_file():
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    for f in (key, key.with_suffix(".pub")):
        f.unlink(missing_ok=True)
    run.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tuoba", "-f", str(key)])
    ui.info(f"generated ssh key for root login: {key} (public: {key}.pub)")


def build(plan: Plan, explain: bool = False) -> BuildResult:
    """One build at a time per output directory (a second one waits); builds share the cache,
    taking turns only for an entry both would make or a working tree both would use (lock.py)."""
    with contextlib.ExitStack() as locks:
        if plan.out_dir.resolve() == plan.cache_dir.resolve():  # (one lock file: held alone)
            fds = [locks.enter_context(lock.exclusive(plan.cache_dir, "the cache and output"))]
        else:
            fds = [locks.enter_context(lock.shared(plan.cache_dir, "the cache")),
                   locks.enter_context(lock.exclusive(plan.out_dir, "the output"))]  # fmt: skip
        return _build(plan, explain, tuple(fds))


NO_SPACE = "No space left on device"


def _disk_full(plan: Plan, what: str) -> errors.BuildError:
    free = shutil.disk_usage(plan.out_dir).free >> 20
    return errors.BuildError(
        f"the disk filled up: no space left on the filesystem of {plan.out_dir} "
        f"({free} MiB free now) — {what.splitlines()[0]}",
        hint=f"free space there (df -h {plan.out_dir}) or build with --out on a larger "
        "filesystem; nothing was published under a final name, the next build starts clean",
    )


def _build(plan: Plan, explain: bool, lock_fds: tuple[int, ...]) -> BuildResult:
    start = time.monotonic()
    ensure_ssh_key(plan)
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    request = plan.build_dir / "request.json"
    with publish.atomic(request) as tmp:
        tmp.write_text(plan.request.to_json())
    ran_file = plan.build_dir / "ran.txt"
    error_file = error_path(plan)
    ran_file.write_text("")
    error_file.unlink(missing_ok=True)
    plan_file, plan_sha256 = save_plan(plan)
    for step in forget_pruned(plan):
        ui.info(f"  the cache no longer holds what step '{step}' made: it runs again")
    cmd = [
        sys.executable, "-m", "SCons",
        "-Q",
        "-C", str(plan.data_dir),
        "-f", "SConstruct",
        f"plan={plan_file}",
        f"plan_sha256={plan_sha256}",
    ]  # fmt: skip
    if explain:
        cmd.append("--debug=explain")
    # SCons and every step's commands in a group of their own, ended as one on Ctrl-C or SIGTERM
    # SCons holds the locks too: were tuoba killed alone, its build goes on locked to its end.
    proc = run.run(cmd, check=False, own_group=True, pass_fds=lock_fds)
    ran = tuple(s for s in ran_file.read_text().split() if s in STEP_NAMES)
    if proc.returncode != 0:
        if error_file.exists():
            err = pickle.loads(error_file.read_bytes())  # (the step's own exception)
            if NO_SPACE in f"{err.message} {err.hint}":
                raise _disk_full(plan, err.message)
            raise err
        if shutil.disk_usage(plan.out_dir).free < 1 << 20:  # (not even the error fitted)
            raise _disk_full(plan, f"scons failed with exit code {proc.returncode}")
        raise errors.BuildError(f"scons failed with exit code {proc.returncode}")
    name = plan.image_name
    return BuildResult(
        image=plan.out_dir / f"{name}.img",
        manifest=plan.out_dir / f"{name}.manifest.json",
        ran=ran,
        seconds=time.monotonic() - start,
    )
