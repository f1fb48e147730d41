from __future__ import annotations

import click

from tuoba.board import board_names, load_board
from tuoba.cli import App


@click.command("boards")
@click.pass_obj
def command(app: App) -> None:
    """List the boards, one line each: name, arch, SoC, boot method, what is proven."""
    for name in board_names(app.data_dir):
        board, _ = load_board(app.data_dir, name)
        click.echo(
            f"{name:<14} {board.arch:<6} {board.soc:<10} {board.boot.method:<13} {board.proven}"
        )
