from __future__ import annotations

import os
import time
from pathlib import Path

import click
from rich.table import Table

from tuoba import executors, matrix, ui
from tuoba.cli import App
from tuoba.cli.options import parse_supplies
from tuoba.matrix import Outcome


@click.command("matrix")
@click.option(
    "--boards",
    metavar="B1,B2,…",
    help="The boards to build [default: every board; those that cannot be built here "
    "are reported as skipped, with the reason].",
)
@click.option(
    "--stages",
    default="1,2",
    show_default=True,
    metavar="1,2",
    help="The stages to build for each board.",
)
@click.option(
    "-r",
    "--recipe",
    "recipes",
    multiple=True,
    help="Add a stack to every image (see `tuoba recipes`); repeatable.",
)
@click.option(
    "--supply",
    "supplies",
    multiple=True,
    metavar="FILE=PATH",
    help="A file a board needs and tuoba cannot fetch (as tuoba build takes it).",
)
@click.option(
    "--test",
    "with_test",
    is_flag=True,
    help="Boot each image built in QEMU and run its guest checks (tuoba test).",
)
@click.option(
    "--executor",
    "executor_name",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: one image at a time here; ray: the images as tasks on a Ray cluster's workers.",
)
@click.option(
    "--address",
    metavar="HOST:PORT",
    help="The Ray cluster [default: RAY_ADDRESS, or the one here].",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=2,
    show_default=True,
    help="With ray: how many times an image whose worker died is built again.",
)
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a JUnit file, a test case per image and phase [default: OUT/matrix/junit.xml].",
)
@click.option("--offline", is_flag=True, help="Never download.")
@click.option(
    "--check",
    is_flag=True,
    help="Only plan: list the images, what each shares and waits for; build nothing.",
)
@click.pass_obj
def command(
    app: App,
    boards: str | None,
    stages: str,
    recipes: tuple[str, ...],
    supplies: tuple[str, ...],
    with_test: bool,
    executor_name: str,
    address: str | None,
    retries: int,
    junit: Path | None,
    offline: bool,
    check: bool,
) -> None:
    """Build (and with --test, boot and check) every board × stage image.

    What images share is made once: the first image of a kernel flavour builds the kernel the
    others of that flavour take from the cache, the first stage-2 image of an architecture its
    LLVM + musl userland. Each image goes to OUT/BOARD-sSTAGE/ (with its own ssh key), its
    build and test logs to OUT/matrix/; a table of how each went ends the run. Exit status 4
    when any image failed.

    \b
    Example:
      tuoba matrix --boards qemu-aarch64,rpi4 --stages 1,2
      tuoba matrix --test --junit matrix.xml
      ray start --head --num-cpus 1       # then, on each other machine:
      ray start --address HEAD:6379 --num-cpus 1
      tuoba matrix --executor ray --cache-url s3://team-cache/tuoba
    """
    pairs = parse_supplies(supplies, resolve=True)
    runner = executors.executor(executor_name, address, retries)
    job = matrix.Job(
        data_dir=str(app.data_dir),
        out_dir=str(app.out_dir),
        cache_dir=str(app.cache_dir),
        cache_url=app.cache_url,
        recipes=recipes,
        supplies=pairs,
        test=with_test,
        offline=offline,
        run=f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
    )
    planned = matrix.plan_cells(
        job, matrix.parse_boards(boards, app.data_dir), matrix.parse_stages(stages)
    )
    for p in planned:
        if p.skipped:
            ui.warn(f"{p.cell.name} is not built here: {p.skipped}")
    if check:
        plan = Table(title="tuoba matrix: the plan (nothing built)")
        for column in ("image", "shares", "waits for"):
            plan.add_column(column, overflow="fold")
        for p in planned:
            if not p.skipped:
                plan.add_row(p.image, ", ".join(p.shares), ", ".join(c.name for c in p.after))
        ui.console.print(plan)
        return
    start = time.monotonic()
    outcomes = runner.run(planned, job)
    seconds = time.monotonic() - start
    table = Table(title=f"tuoba matrix ({runner.name}, {seconds:.0f} s)")
    for column in ("board", "stage", "phase", "result", "time", "node", "log"):
        table.add_column(column, overflow="fold")
    for row in matrix.table_rows(_ordered(outcomes, planned)):
        table.add_row(*row)
    ui.console.print(table)
    junit = junit or job.log_dir / "junit.xml"
    matrix.write_junit(_ordered(outcomes, planned), junit, seconds)
    ui.info(f"JUnit: {junit}")
    matrix.verdict(outcomes, junit)


def _ordered(outcomes: list[Outcome], planned: list[matrix.Planned]) -> list[Outcome]:
    """In the matrix's order (a Ray run finishes in any order)."""
    rank = {p.cell: n for n, p in enumerate(planned)}
    return sorted(outcomes, key=lambda o: (rank[o.cell], matrix.PHASES.index(o.phase)))
