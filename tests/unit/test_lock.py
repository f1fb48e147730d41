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


SHARE = """
import sys
from pathlib import Path
from tuoba import lock
with lock.shared(Path(sys.argv[1]), "the cache"):
    print("held", flush=True)
    sys.stdin.readline()  # until told to let go
"""


def test_builds_share_the_cache_and_maintenance_waits_for_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Builds hold the cache shared: a second build does not wait for the first; what changes
    the cache under builds (tuoba cache rm, prune) holds it alone, so it waits for them."""
    import threading

    holder = subprocess.Popen([sys.executable, "-c", SHARE, str(tmp_path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with lock.shared(tmp_path, "the cache"):  # (held by the other build meanwhile)
        pass
    assert "waiting" not in capsys.readouterr().err

    def let_go() -> None:
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()

    timer = threading.Timer(0.5, let_go)
    timer.start()
    with lock.exclusive(tmp_path, "the cache", holder="tuoba cache prune"):
        assert holder.wait(timeout=10) == 0  # it had to let go first
    timer.join()
    said = " ".join(capsys.readouterr().err.split())
    assert f"waiting: the cache {tmp_path} is in use by tuoba build (pid {holder.pid})" in said
