from __future__ import annotations

import json

import click

from tuoba.board import board_doc, board_names, load_board
from tuoba.cli import App
from tuoba.config import flatten, format_path


@click.command("boards")
@click.option(
    "--show",
    "show",
    metavar="BOARD",
    help="Print the board's effective data: each value with the file and line it came from.",
)
@click.pass_obj
def command(app: App, show: str | None) -> None:
    """List the boards, one line each: name, arch, SoC, boot method, what is proven.

    A board's data is boards/BOARD/board.yaml on top of the shared files it includes
    (boards/common/NAME.yaml); --show prints the result.

    \b
    Examples:
      tuoba boards
      tuoba boards --show rpi4
    """
    if show is not None:
        load_board(app.data_dir, show)  # validated first: a bad board is an error, not a listing
        rows = [
            (format_path(path), value, where)
            for path, value, where in flatten(board_doc(app.data_dir, show))
        ]
        width = max(len(k) for k, _, _ in rows)
        for key, value, where in rows:
            text = value if isinstance(value, str) else json.dumps(value)
            click.echo(f"{key:<{width}}  {text}    ({where})")
        return
    for name in board_names(app.data_dir):
        board, _ = load_board(app.data_dir, name)
        click.echo(
            f"{name:<14} {board.arch:<6} {board.soc:<10} {board.boot.method:<13} {board.proven}"
        )
