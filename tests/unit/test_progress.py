"""Long commands: progress reaches a log that is not a terminal (CI, `tuoba build > log`),
and an interrupted tuoba ends everything its commands started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuoba import run, ui
from tuoba.kbuild import ObjectCount


def test_a_long_command_logged_to_a_file_says_it_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ui, "LOG_EVERY", 0.2)
    log = tmp_path / "step.log"
    run.run(["sh", "-c", "echo compiling foo.c; sleep 1.1"], log=log)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "still running" in ln]
    assert len(lines) >= 3, lines
    assert "sh still running: compiling foo.c" in lines[-1] and "s elapsed" in lines[-1]


def test_no_heartbeat_when_the_caller_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ui, "LOG_EVERY", 0.1)
    run.run(["sleep", "0.5"], log=tmp_path / "step.log", heartbeat=False)
    assert "still running" not in capsys.readouterr().err


def test_kernel_object_count_reads_the_log_as_it_grows(tmp_path: Path) -> None:
    log, total = tmp_path / "kernel.log", tmp_path / "objects.count"
    count = ObjectCount(log, total)
    log.write_text("  CC      init/main.o\n  CC      kernel/fork.o\n  LD  ")
    assert count().startswith("2 objects built — CC      kernel/fork.o")
    with log.open("a") as f:
        f.write("     vmlinux.o\n  AR      lib/lib.a\n")
    assert count().startswith("4 objects built")
    count.finished()
    again = ObjectCount(log, total)  # the next build of this directory knows the total
    assert again().startswith("4/4 objects built")


INTERRUPTED = """
import sys
from pathlib import Path
from tuoba import run
from tuoba.cli import _terminate
import signal
signal.signal(signal.SIGTERM, _terminate)
run.run(["sh", "-c", "sleep 300 & echo $! > " + sys.argv[1] + "; wait"], own_group=True)
"""


def test_interrupted_tuoba_ends_what_its_commands_started(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) to tuoba while a step runs: the step's whole process group ends
    (here a shell's background child, as make's compilers or mkosi's helpers would be)."""
    pid_file = tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(pid_file)])
    deadline = time.monotonic() + 30
    while not pid_file.is_file() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not alive(grandchild), "the step's child outlived tuoba"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it has ended)."""
    for _ in range(20):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True
