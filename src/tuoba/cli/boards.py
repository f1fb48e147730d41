from __future__ import annotations

import click

from tuoba.board import board_names, load_board
from tuoba.cli import App


@click.command("boards")
@click.pass_obj
def command(app: App) -> None:
    """List the boards (one line each: name, arch, SoC, how it is booted, description)."""
    for name in board_names(app.data_dir):
        board, _ = load_board(app.data_dir, name)
        boot = f"qemu {board.qemu.machine}" if board.qemu else "hardware only"
        click.echo(f"{name:<16} {board.arch:<6} {board.soc:<14} {boot:<14} {board.description}")
