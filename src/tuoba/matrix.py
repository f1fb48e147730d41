"""The board × stage matrix: which images it holds, what they share, in which order they can
be made, and how it went (a table and a JUnit file). Executors (tuoba.executors) run it."""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from tuoba import kbuild
from tuoba.board import board_names, load_board
from tuoba.digest import digest
from tuoba.errors import InputError, TuobaError
from tuoba.plan import DEFAULT_BOARD, DEFAULT_RECIPES, Plan, Request, image_name, resolve

PHASES = ("build", "test")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One image of the matrix."""

    board: str
    stage: int

    @property
    def name(self) -> str:
        return f"{self.board}-s{self.stage}"


@dataclasses.dataclass(frozen=True)
class Planned:
    """A cell with what it shares with others and the cells that make that first."""

    cell: Cell
    image: str
    shares: tuple[str, ...]  # e.g. "kernel 3f2a…", "stage-2 userland arm64"
    after: tuple[Cell, ...]  # the cells that build what it shares (its dependencies)
    skipped: str | None = None  # why it cannot be built here, or None
    untested: str | None = None  # why `tuoba test` cannot boot it, or None


@dataclasses.dataclass(frozen=True)
class Job:
    """What every cell is built (and tested) with; plain values, sent to remote workers."""

    data_dir: str
    out_dir: str
    cache_dir: str | None  # None: each worker's default cache
    cache_url: str | None
    recipes: tuple[str, ...]
    supplies: tuple[tuple[str, str], ...]
    test: bool
    offline: bool = False
    run: str = ""  # this run's id, in each attempt's log line (logs are kept across runs)

    @property
    def log_dir(self) -> Path:
        return Path(self.out_dir) / "matrix"

    def log_of(self, cell: Cell, phase: str) -> Path:
        """A phase's log (build, test): a line per attempt, then what the command said."""
        return self.log_dir / f"{cell.name}.{phase}.log"

    def junit_of(self, cell: Cell) -> Path:
        """The JUnit file of the cell's `tuoba test`."""
        return self.log_dir / f"{cell.name}.test.xml"

    def cell_out(self, cell: Cell) -> Path:
        """Each image its own output directory: tuoba builds one image at a time per output
        directory, and a worker may build two cells at once."""
        return Path(self.out_dir) / cell.name


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one phase of one cell went."""

    cell: Cell
    phase: str  # build | test
    ok: bool
    seconds: float
    log: str
    message: str = ""  # on failure: the last thing the log said
    node: str = ""  # the machine it ran on
    attempts: int = 1  # more than one: a worker died and the task was run again
    skipped: str | None = None  # not run, and why


def parse_stages(text: str) -> tuple[int, ...]:
    stages = []
    for part in text.split(","):
        if part.strip() not in ("1", "2"):
            raise InputError(f"--stages {text}: {part.strip() or 'an empty item'} is not a stage",
                             hint="stages are 1 and 2, e.g. --stages 1,2")  # fmt: skip
        stages.append(int(part))
    return tuple(dict.fromkeys(stages))


def parse_boards(text: str | None, data_dir: Path) -> tuple[str, ...]:
    known = board_names(data_dir)
    if text is None:  # the default board first: the one most likely made already
        return tuple(sorted(known, key=lambda b: b != DEFAULT_BOARD))
    boards = tuple(dict.fromkeys(b.strip() for b in text.split(",")))
    for b in boards:
        if b not in known:
            raise InputError(f"--boards: no board '{b}'",
                             hint=f"boards are {', '.join(known)} (tuoba boards)")  # fmt: skip
    return boards


def plan_cells(job: Job, boards: Sequence[str], stages: Sequence[int]) -> list[Planned]:
    """The cells in the order they are started: each board's stages in turn. A cell that
    cannot be built here (a file only its vendor has and nobody supplied, a stage the board
    cannot have) is kept, skipped with the reason; any other mistake (a recipe that does not
    exist, a supplied file that is wrong) stops the matrix before anything is built. What cells
    share — the kernel of one flavour, the stage-2 userland of one architecture — is made by
    the first cell that needs it; the others wait for it and take it from the cache (the remote
    cache, between machines)."""
    data_dir = Path(job.data_dir)
    needs = {b: load_board(data_dir, b)[0].boot.needs for b in boards}
    board_files = {n.file for ns in needs.values() for n in ns if n.file}
    source = None
    out: list[Planned] = []
    leader: dict[str, Cell] = {}
    for board in boards:
        takes = {n.file for n in needs[board] if n.file}
        # a board's own files go to it alone; the rest (a recipe's) to every cell
        supplies = tuple((f, p) for f, p in job.supplies if f in takes or f not in board_files)
        unmet = [n for n in needs[board] if n.file is None or n.file not in dict(supplies)]
        for stage in stages:
            cell = Cell(board, stage)
            request = Request(
                board=board, recipes=(*DEFAULT_RECIPES, *job.recipes), stage=stage,
                data_dir=job.data_dir, out_dir=job.out_dir, cache_dir=job.cache_dir or "",
                supplies=supplies, offline=job.offline,
            )  # fmt: skip
            plan = _resolve_cell(request, bool(unmet))
            if isinstance(plan, str):
                out.append(Planned(cell, image_name(board, stage), (), (), skipped=plan))
                continue
            shares = []
            if plan.board.kernel.source == "tuoba":
                source = source or kbuild.load_source(data_dir)
                config, _ = kbuild.merged_fragment([(f.name, list(f.options))
                                                    for f in plan.fragments])  # fmt: skip
                inputs = kbuild.kernel_inputs(source.id, plan.board.arch, config,
                                              plan.kernel_dtbs, plan.board_dts)  # fmt: skip
                shares.append(f"kernel {digest(inputs)[:12]}")
            if stage == 2:
                shares.append(f"stage-2 userland {plan.board.arch}")
            after = []
            for share in shares:
                first = leader.setdefault(share, cell)
                if first != cell and first not in after:
                    after.append(first)
            untested = None
            if plan.board.qemu is None:
                untested = f"board '{board}' has no QEMU machine to boot in (no qemu: in its file)"
            out.append(Planned(cell, plan.image_name, tuple(shares), tuple(after),
                               untested=untested))  # fmt: skip
    if all(p.skipped for p in out):
        raise InputError(
            "no image of the matrix can be built here: "
            + "; ".join(f"{p.cell.name}: {p.skipped}" for p in out),
            hint="choose other --boards, or hand over what they need with --supply",
        )
    return out


def _resolve_cell(request: Request, unmet: bool) -> Plan | str:
    """The cell's plan, or why it cannot be built here; raises what is a mistake instead. A
    stage is the board's to refuse when its stage 1 resolves; a missing file when nobody
    supplied it."""
    try:
        resolve(dataclasses.replace(request, check_needs=False))
    except InputError as e:
        if request.stage == 1:
            raise
        resolve(dataclasses.replace(request, stage=1, check_needs=False))  # (raises a mistake)
        return e.message
    try:
        return resolve(request)
    except InputError as e:
        if not unmet:
            raise
        return e.message


def not_built(planned: Planned) -> Outcome:
    """A cell that cannot be built here, reported as such (never silently left out)."""
    return Outcome(planned.cell, "build", False, 0.0, "", skipped=planned.skipped)


class MatrixFailed(TuobaError):
    exit_code = 4


def verdict(outcomes: Sequence[Outcome], junit: Path | None) -> None:
    failed = [o for o in outcomes if not o.ok and o.skipped is None]
    if failed:
        names = ", ".join(f"{o.cell.name} ({o.phase})" for o in failed)
        where = f"; JUnit: {junit}" if junit else ""
        raise MatrixFailed(
            f"{len(failed)} of the matrix's steps failed: {names}",
            hint=f"each failure's log is named in the table above{where}",
        )


def table_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for o in outcomes:
        if o.skipped is not None:
            result = f"skipped: {o.skipped}"
        elif o.ok:
            result = "ok" + (f" (attempt {o.attempts})" if o.attempts > 1 else "")
        else:
            result = f"FAILED: {o.message}" + (f" (attempt {o.attempts})" if o.attempts > 1 else "")
        time_ = "" if o.skipped is not None else f"{o.seconds:.1f} s"
        rows.append((o.cell.board, str(o.cell.stage), o.phase, result, time_, o.node, o.log))
    return rows


def write_junit(outcomes: Sequence[Outcome], path: Path, seconds: float) -> None:
    """One test case per cell and phase (tests.testcase: classname tuoba.matrix.BOARD, name
    'stage N build'); written to a temporary name and renamed, so a reader never sees half."""
    suite = ET.Element("testsuite", {
        "name": "tuoba matrix",
        "tests": str(len(outcomes)),
        "failures": str(sum(1 for o in outcomes if not o.ok and o.skipped is None)),
        "skipped": str(sum(1 for o in outcomes if o.skipped is not None)),
        "errors": "0",
        "time": f"{seconds:.1f}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
    })  # fmt: skip
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"tuoba.matrix.{o.cell.board}",
            "name": f"stage {o.cell.stage} {o.phase}",
            "time": f"{o.seconds:.1f}",
        })  # fmt: skip
        if o.skipped is not None:
            ET.SubElement(case, "skipped", {"message": o.skipped})
        elif not o.ok:
            ET.SubElement(case, "failure", {"message": o.message}).text = f"log: {o.log}"
        if o.log:
            ET.SubElement(
                case, "system-out"
            ).text = f"log: {o.log}\nnode: {o.node}\nattempts: {o.attempts}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
