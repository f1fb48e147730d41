"""Progress on long steps reaches a log that is not a terminal (CI, `tuoba build > log`)."""

from __future__ import annotations

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
