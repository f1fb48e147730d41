"""The one gateway for external commands. Nothing else in tuoba calls subprocess.

Every command is logged with its exact command line; a failure raises with that line and the
tail of the command's output, so the user sees what ran and why it failed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tuoba import ui
from tuoba.errors import BuildError, HostToolError, TuobaError

Cmd = Sequence[str | os.PathLike[str]]

# Which Debian package provides each host tool: used in "missing tool" errors and by doctor.
TOOL_PACKAGES: dict[str, str] = {
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "depmod": "kmod",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "xz": "xz-utils",
    "zstd": "zstd",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "systemctl": "systemd",
    "clang": "clang",
    "ld.lld": "lld",
    "llvm-objcopy": "llvm",
    "pahole": "dwarves",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "make": "make",
    "ccache": "ccache",
    "tar": "tar",
    "cpio": "cpio",
    "losetup": "mount",
    "lsblk": "util-linux",
    "blockdev": "util-linux",
    "fdtput": "device-tree-compiler",
    "qemu-img": "qemu-utils",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "swig": "swig",
    "mkimage": "u-boot-tools",
    "dtc": "device-tree-compiler",
    "qemu-system-arm": "qemu-system-arm",
    "qemu-arm-static": "qemu-user-static",
    "diffoscope": "diffoscope-minimal",
}


def _fmt(cmd: Cmd) -> str:
    return shlex.join(os.fspath(c) for c in cmd)


def require(tool: str) -> str:
    """Return the path of a host tool or fail naming the package that provides it."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        package = TOOL_PACKAGES.get(tool, tool)
        raise HostToolError(
            f"host tool '{tool}' is missing (Debian package '{package}')",
            hint="run 'tuoba doctor --fix' to install the host tools",
        )
    return path


def run(
    cmd: Cmd,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
    capture_stderr: bool = False,
    log: Path | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
    stdout_file: IO[bytes] | None = None,
    heartbeat: bool = True,
    own_group: bool = False,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion.

    capture: return stdout (stderr goes to the log or our stderr).
    capture_stderr: return stderr too (proc.stderr) instead of letting it reach the terminal:
      for commands whose complaints tuoba words itself.
    log: append stdout+stderr to this file instead of the terminal; when tuoba's own output is
      not a terminal either, a line every ui.LOG_EVERY seconds says the command still runs
      (heartbeat=False: the caller reports progress itself).
    own_group: run it in a process group of its own, and end that whole group (SIGTERM, then
      SIGKILL) when tuoba is interrupted or times out: what it started (make, mkosi, QEMU)
      never outlives tuoba.
    stdout_file: binary stdout goes to this open file (e.g. a compressor's output).
    """
    ui.debug(f"+ {_fmt(cmd)}")
    require(os.fspath(cmd[0]))
    full_env = {**os.environ, **env} if env is not None else None
    out: int | IO[str] | IO[bytes] | None
    log_fh: IO[str] | None = None
    if log is not None and not capture:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_fh = log.open("a")
        log_fh.write(f"\n+ {_fmt(cmd)}\n")
        log_fh.flush()
        out = log_fh
    elif stdout_file is not None:
        out = stdout_file
    else:
        out = subprocess.PIPE if capture else None
    stop = threading.Event()
    if log is not None and heartbeat and not ui.console.is_terminal:
        name = Path(os.fspath(cmd[0])).name
        threading.Thread(
            target=ui.watch, args=(f"{name} still running", functools.partial(_last_line, log),
                                   stop), daemon=True,
        ).start()  # fmt: skip
    try:
        popen = subprocess.Popen(
            [os.fspath(c) for c in cmd],
            env=full_env,
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT
            if log_fh is not None
            else (subprocess.PIPE if capture_stderr else None),
            text=stdout_file is None,
            start_new_session=own_group,
            pass_fds=pass_fds,
        )
        try:
            stdout, stderr = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            _end(popen, own_group)
            raise BuildError(f"command timed out after {timeout:.0f} s: {_fmt(cmd)}") from e
        except BaseException:  # Ctrl-C, SIGTERM (the CLI turns it into KeyboardInterrupt)
            _end(popen, own_group)
            raise
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    finally:
        stop.set()
        if log_fh is not None:
            log_fh.close()
    if check and proc.returncode != 0:
        raise BuildError(
            f"command failed with exit code {proc.returncode}: {_fmt(cmd)}",
            hint=_tail_hint(log),
        )
    return proc


TAIL_BYTES = 1 << 16  # enough for the last lines of any log, however long its lines


def _tail(log: Path, lines: int) -> list[str]:
    """The last lines of a log, read from its end (logs grow large; progress reads them often)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - TAIL_BYTES))
            return f.read().decode(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return []


def _last_line(log: Path) -> str:
    """The log's last line, for progress lines."""
    last = _tail(log, 1)
    return f"{last[0].strip()[:80] if last else ''} (log: {log})"


def _tail_hint(log: Path | None) -> str | None:
    if log is None or not log.exists():
        return None
    return f"last lines of {log}:\n  " + "\n  ".join(_tail(log, 15))


def spawn(
    cmd: Cmd,
    *,
    stdout: IO[str] | IO[bytes] | int | None = None,
    stdin: int | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running command (QEMU) and return its handle; the caller stops it."""
    ui.debug(f"+ {_fmt(cmd)} &")
    require(os.fspath(cmd[0]))
    full_env = {**os.environ, **env} if env is not None else None
    return subprocess.Popen(
        [os.fspath(c) for c in cmd],
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        stdin=stdin,
        env=full_env,
        start_new_session=True,
    )


LEADER_GRACE = 3.0  # SCons finishes its running Python step before it exits: it gets this long
GROUP_GRACE = 30.0  # what the group's commands get to clean up (mkosi unmounts, make deletes)


def _end(proc: subprocess.Popen[Any], group: bool) -> None:
    """End an interrupted command: its whole process group when it has one of its own. Every
    member gets SIGTERM; the leader is killed after LEADER_GRACE (so no step goes on to publish
    anything), the rest after GROUP_GRACE if they are still there."""
    if not group:
        proc.kill()
        proc.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(LEADER_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + GROUP_GRACE
    while time.monotonic() < deadline:
        if not _group_running(proc.pid):
            return  # the whole group has gone (zombies waiting to be reaped have ended)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _group_running(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop a spawned process: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def output(cmd: Cmd, **kwargs: object) -> str:
    """Run a command and return its stdout, stripped."""
    return run(cmd, capture=True, **kwargs).stdout.strip()  # type: ignore[arg-type]


__all__ = ["TuobaError", "output", "require", "run", "spawn", "stop"]
