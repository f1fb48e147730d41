"""Two builds at once into one cache or out/: the second waits, saying for whom."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuoba import lock

HOLD = """
import sys, time
from pathlib import Path
from tuoba import lock
with lock.exclusive(Path(sys.argv[1]), "the cache"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_second_user_waits_until_the_first_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1.5"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    start = time.monotonic()
    with lock.exclusive(tmp_path, "the cache"):
        waited = time.monotonic() - start
        assert holder.wait(timeout=10) == 0  # it let go on leaving its block, then exited
    assert waited > 0.5
    said = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"waiting: the cache {tmp_path} is in use by tuoba build (pid {holder.pid})" in said


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "60"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()  # kill -9: the kernel drops its flock
    holder.wait()
    start = time.monotonic()
    with lock.exclusive(tmp_path, "the cache"):
        assert time.monotonic() - start < 5


def test_a_holder_that_has_not_written_yet_is_asked_again(tmp_path: Path) -> None:
    """A waiting build reads who holds the lock; the holder may have just taken it and not yet
    written its name: the reader asks again instead of saying 'another process'."""
    import os
    import threading
    import time

    path = tmp_path / lock.LOCK_NAME
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        late = threading.Timer(0.3, lambda: path.write_text("tuoba build (pid 42)\n"))
        late.start()
        start = time.monotonic()
        assert lock._holder(fd) == "tuoba build (pid 42)"
        assert time.monotonic() - start < 2
        late.join()
    finally:
        os.close(fd)
