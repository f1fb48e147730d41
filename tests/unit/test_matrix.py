"""The board × stage matrix: what it holds and shares, in which order, run by the local
executor (commands stand in for `tuoba build` and `tuoba test` here; the integration tier runs
the real ones on a real Ray cluster), and its table and JUnit file."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT, zynq_boot_image
from tuoba import executors, matrix
from tuoba.errors import InputError
from tuoba.matrix import Cell, Job


def job(tmp_path: Path, test: bool = False, run: str = "run-1", **kw: object) -> Job:
    return Job(**{"data_dir": str(ROOT), "out_dir": str(tmp_path / "out"),  # type: ignore[arg-type]
                  "cache_dir": str(tmp_path / "c"), "cache_url": None, "recipes": (),
                  "supplies": (), "test": test, "run": run, **kw})  # fmt: skip


def test_the_shared_kernel_and_userland_are_made_first_and_waited_for(tmp_path: Path) -> None:
    boards = matrix.parse_boards(None, ROOT)
    assert boards[0] == "qemu-aarch64"  # the default board leads: most likely made already
    planned = {p.cell.name: p for p in matrix.plan_cells(job(tmp_path), boards, (1, 2))}
    s1, s2 = planned["qemu-aarch64-s1"], planned["qemu-aarch64-s2"]
    assert s1.after == () and s1.shares[0].startswith("kernel ")
    assert s2.after == (s1.cell,) and "stage-2 userland arm64" in s2.shares
    # one arm64 kernel serves the arm64 boards: each waits for the first, and nothing else
    for board in ("rpi3", "rpi4", "jetson-nano", "roc-rk3328-cc"):
        assert planned[f"{board}-s1"].shares == s1.shares
        assert planned[f"{board}-s1"].after == (s1.cell,)
        assert planned[f"{board}-s2"].after == (s1.cell, s2.cell)
    # what cannot be built here is kept, with the reason
    assert "BOOT.BIN" in (planned["pynq-z2-s1"].skipped or "")
    assert "armhf" in (planned["pynq-z2-s2"].skipped or "")
    assert "u-boot.bin.sd.bin" in (planned["vim3-s1"].skipped or "")
    # a board without an emulator is built but not booted, and says why
    assert "no QEMU machine" in (planned["jetson-nano-s1"].untested or "")
    assert planned["rpi4-s1"].untested is None


def test_a_board_of_its_own_kernel_waits_for_nobody(tmp_path: Path) -> None:
    planned = matrix.plan_cells(job(tmp_path), ("rpi4",), (1,))
    assert [(p.cell, p.after) for p in planned] == [(Cell("rpi4", 1), ())]


def fake_phases(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Each phase runs `script` with the board, stage and phase as arguments."""

    def command(cell: Cell, phase: str, job: Job) -> list[str]:
        return [sys.executable, "-c", script, cell.board, str(cell.stage), phase]

    monkeypatch.setattr(executors, "phase_command", command)


FAKE = """
import sys
board, stage, phase = sys.argv[1:]
print(f"{phase} of {board} stage {stage}: step 1")
if board == "rpi3" and phase == "build":
    print("error: the kernel did not build (a stand-in failure)")
    sys.exit(4)
print("done")
"""


def test_local_runs_each_cell_and_reports_failures_with_their_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_phases(monkeypatch, FAKE)
    j = job(tmp_path, test=True)
    planned = matrix.plan_cells(j, ("rpi4", "rpi3", "jetson-nano", "pynq-z2"), (1,))
    outcomes = executors.Local().run(planned, j)
    got = {(o.cell.name, o.phase): o for o in outcomes}
    assert got["rpi4-s1", "build"].ok and got["rpi4-s1", "test"].ok
    assert got["rpi4-s1", "build"].attempts == 1
    failed = got["rpi3-s1", "build"]
    assert not failed.ok
    assert failed.message == "exit 4: error: the kernel did not build (a stand-in failure)"
    assert got["rpi3-s1", "test"].skipped == "its build failed"
    assert got["jetson-nano-s1", "build"].ok
    assert "no QEMU machine" in (got["jetson-nano-s1", "test"].skipped or "")
    assert "BOOT.BIN" in (got["pynq-z2-s1", "build"].skipped or "")
    log = Path(got["rpi4-s1", "build"].log).read_text()
    assert (
        log.startswith(f"{executors.ATTEMPT}run-1 on ")
        and "build of rpi4 stage 1: step 1\ndone\n" in log
    )

    junit = tmp_path / "m.xml"
    matrix.write_junit(outcomes, junit, 1.0)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("7", "1", "3")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    bad = cases["tuoba.matrix.rpi3", "stage 1 build"].find("failure")
    assert bad is not None and "did not build" in (bad.get("message") or "")
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(matrix.MatrixFailed, match=r"1 of the matrix's steps failed: rpi3-s1 "
                                                   r"\(build\)") as e:  # fmt: skip
        matrix.verdict(outcomes, junit)
    assert e.value.exit_code == 4


def test_a_retried_cell_counts_its_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:  # fmt: skip
    """A Ray task run again after its worker died appends to the same log: the outcome says
    which attempt finished it."""
    fake_phases(monkeypatch, FAKE)
    j = job(tmp_path)
    (p,) = matrix.plan_cells(j, ("rpi4",), (1,))
    first = executors.run_cell(p, j)
    again = executors.run_cell(p, j)
    assert (first[0].attempts, again[0].attempts) == (1, 2)
    assert matrix.table_rows(again)[0][3] == "ok (attempt 2)"
    # a later run into the same output directory starts counting again
    later = executors.run_cell(p, job(tmp_path, run="run-2"))
    assert later[0].attempts == 1 and matrix.table_rows(later)[0][3] == "ok"


def test_supplies_go_to_their_board_and_mistakes_stop_the_matrix(tmp_path: Path) -> None:
    """A vendor file supplied for one board does not make the others refuse it; a recipe that
    does not exist is a mistake, not a reason to skip every cell."""
    boot = tmp_path / "BOOT.BIN"
    zynq_boot_image(boot)
    given = job(tmp_path, supplies=(("BOOT.BIN", str(boot)),))
    planned = {p.cell.name: p for p in matrix.plan_cells(given, ("rpi4", "pynq-z2"), (1, 2))}
    assert planned["rpi4-s1"].skipped is None and planned["pynq-z2-s1"].skipped is None
    assert "armhf" in (planned["pynq-z2-s2"].skipped or "")
    with pytest.raises(InputError, match="no-such-stack"):
        matrix.plan_cells(job(tmp_path, recipes=("no-such-stack",)), ("rpi4", "pynq-z2"), (2,))
    with pytest.raises(InputError, match=r"BOOT\.BIN"):  # supplied, but not a file
        matrix.plan_cells(job(tmp_path, supplies=(("BOOT.BIN", str(tmp_path / "nope")),)),
                          ("pynq-z2",), (1,))  # fmt: skip


def test_phase_commands_carry_the_job(tmp_path: Path) -> None:
    j = Job(data_dir="/p", out_dir="/o", cache_dir=None, cache_url="s3://b/t", recipes=("bpf",),
            supplies=(("BOOT.BIN", "/s/BOOT.BIN"),), test=True, offline=True)  # fmt: skip
    build = executors.phase_command(Cell("rpi4", 2), "build", j)
    assert build[1:] == ["-m", "tuoba", "--data-dir", "/p", "--out", "/o/rpi4-s2", "--cache-url",
                         "s3://b/t", "build", "--board", "rpi4", "--stage", "2", "-r", "bpf",
                         "--supply", "BOOT.BIN=/s/BOOT.BIN", "--offline"]  # fmt: skip
    test = executors.phase_command(Cell("rpi4", 2), "test", j)
    assert test[-2:] == ["--junit", "/o/matrix/rpi4-s2.test.xml"]


def test_a_workers_logs_and_junit_file_are_kept_where_the_matrix_runs(tmp_path: Path) -> None:
    """A Ray worker on another machine writes a cell's logs and JUnit file to its own disk;
    its task returns them, and the matrix's machine keeps them under the same names (not
    rewritten where they are already: one machine, or a shared disk)."""
    cell = Cell("rpi4", 1)
    on_worker = job(tmp_path / "worker", test=True)
    on_worker.log_dir.mkdir(parents=True)
    (on_worker.log_dir / "rpi4-s1.build.log").write_text("=== attempt\nbuilt\n")
    (on_worker.log_dir / "rpi4-s1.test.xml").write_text("<testsuites/>\n")
    (on_worker.log_dir / "rpi3-s1.build.log").write_text("another cell's\n")
    files = executors.cell_files(cell, on_worker)
    assert sorted(files) == ["rpi4-s1.build.log", "rpi4-s1.test.xml"]

    here = job(tmp_path / "head", test=True)
    executors.keep_files(here, files)
    assert (here.log_dir / "rpi4-s1.build.log").read_text() == "=== attempt\nbuilt\n"
    assert (here.log_dir / "rpi4-s1.test.xml").read_text() == "<testsuites/>\n"
    assert not (here.log_dir / "rpi3-s1.build.log").exists()
    kept = (here.log_dir / "rpi4-s1.build.log").stat().st_mtime_ns
    executors.keep_files(here, files)  # (already here, the same bytes: left alone)
    assert (here.log_dir / "rpi4-s1.build.log").stat().st_mtime_ns == kept
    assert sorted(p.name for p in here.log_dir.iterdir()) == sorted(files)  # (no temp left)
