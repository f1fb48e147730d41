from __future__ import annotations

import click

from tuoba.cli import App
from tuoba.cli.options import board_option
from tuoba.errors import InputError
from tuoba.kbuild import merged_fragment
from tuoba.plan import DEFAULT_RECIPES, Request, resolve


@click.group("kernel")
def command() -> None:
    """Inspect the TuobaOS kernel configuration."""


@command.command("config")
@board_option
@click.option("-r", "--recipe", "recipes", multiple=True, help="Add a recipe's features.")
@click.pass_obj
def config(app: App, board: str, recipes: tuple[str, ...]) -> None:
    """Print the options the board's kernel gets, each with the fragment that set it.

    \b
    Example:
      tuoba kernel config --board qemu-aarch64
    """
    plan = resolve(
        Request(
            board=board,
            recipes=(*DEFAULT_RECIPES, *recipes),
            stage=1,
            data_dir=str(app.data_dir),
            out_dir=str(app.out_dir),
            cache_dir=str(app.cache_dir),
            check_needs=False,  # a board's kernel config does not depend on its boot files
        )
    )
    if plan.board.kernel.source != "tuoba":
        raise InputError(
            f"board '{board}' uses the distribution's kernel ({plan.board.kernel.package})",
            hint="only kernels built by tuoba (kernel: source: tuoba) have a resolved config",
        )
    _, chosen = merged_fragment([(f.name, list(f.options)) for f in plan.fragments])
    for opt in chosen.values():
        setting = f"# {opt.name} is not set" if opt.value == "n" else f"{opt.name}={opt.value}"
        click.echo(f"{setting:<48} {opt.feature}:{opt.line}")
