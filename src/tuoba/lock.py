"""Exclusive use of a directory by one build at a time (the cache, an output directory).

Two builds into the same out/ or cache would write the same entries and build directories
(the kernel's out-of-tree directory, staging trees): the second one waits for the first,
saying whom it waits for. The lock is an flock on a file inside the directory, released by
the kernel when its holder exits, even after kill -9: no stale lock survives a crash."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tuoba import ui

LOCK_NAME = ".tuoba.lock"


@contextlib.contextmanager
def exclusive(directory: Path, what: str, holder: str = "tuoba build") -> Iterator[int]:
    """Hold the directory's lock for the block; yields the lock's file descriptor (a child
    given it with pass_fds holds the lock as long as it lives). `holder` is what a waiting
    process is told holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.info(f"waiting: {what} {directory} is in use by {_holder(fd)}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        # Written before the old text is cut off, so the file is never empty while held.
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
        current = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if current:
            return current
        time.sleep(0.05)
    return "another process"
