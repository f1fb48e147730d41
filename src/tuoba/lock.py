"""Who may use a directory, or make a thing, at a time.

- An output directory: one build at a time (two would write the same artifacts and staging
  trees); the second waits, saying whom it waits for.
- The cache: builds share it (`shared`): its entries are published with one rename, and what
  two builds would both write is locked on its own (`Store.making`, `Store.using`: an entry
  being made, a working directory such as the kernel's out-of-tree build). What changes the
  cache under running builds (`tuoba cache rm`, `prune`, `push`, `pull`, `doctor --fix`)
  takes it alone (`exclusive`): it waits for the builds running (flock prefers no one: a build
  that starts meanwhile may go first), and a build started while it runs waits for it.

A lock is an flock on a file, released by the kernel when its holder exits, even after kill -9:
no stale lock survives a crash."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from tuoba import ui

LOCK_NAME = ".tuoba.lock"


def exclusive(
    directory: Path, what: str, holder: str = "tuoba build"
) -> contextlib.AbstractContextManager[int]:
    """Hold the directory's lock alone for the block; yields the lock's file descriptor (a child
    given it with pass_fds holds the lock as long as it lives). `holder` is what a waiting
    process is told holds it."""
    return held(_lock_file(directory), f"{what} {directory}", holder)


def shared(
    directory: Path, what: str, holder: str = "tuoba build"
) -> contextlib.AbstractContextManager[int]:
    """Hold the directory's lock with any other shared holders (builds), while no exclusive
    holder has it."""
    return held(_lock_file(directory), f"{what} {directory}", holder, shared=True)


def _lock_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / LOCK_NAME


@contextlib.contextmanager
def held(
    path: Path, what: str, holder: str, shared: bool = False, doing: str = "is in use by"
) -> Iterator[int]:
    """The flock of the file at `path` (made if need be), exclusive unless `shared`; a process
    that must wait says so once: "waiting: WHAT DOING HOLDER"."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.info(f"waiting: {what} {doing} {_holder(fd)}")
            fcntl.flock(fd, mode)
        # Written before the old text is cut off, so the file is never empty while held. A shared
        # holder writes itself only in place of one that is gone: a waiter is told one of them.
        if not shared or _named_pid(os.pread(fd, 64, 0)) is None:
            text = f"{holder} (pid {os.getpid()})\n".encode()
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it; a holder that has just taken the lock may
    not have written yet (or, by a lock file of an older tuoba, have emptied it): ask again
    for a moment."""
    for _ in range(40):
        current = os.pread(fd, 64, 0).decode(errors="replace").strip("\0 \n")
        if current:
            return current
        time.sleep(0.05)
    return "another process"


def _named_pid(text: bytes) -> int | None:
    """The pid a lock file names, if that process is still running."""
    m = re.search(rb"\(pid (\d+)\)", text)
    if m is None:
        return None
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return int(m.group(1))
