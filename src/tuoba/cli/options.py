"""Options several commands share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tuoba.plan import DEFAULT_BOARD, image_name

F = TypeVar("F", bound=Callable[..., Any])


def board_option(f: F) -> F:
    return click.option(
        "-b",
        "--board",
        default=DEFAULT_BOARD,
        show_default=True,
        envvar="TUOBA_BOARD",
        help="Board to build for (see `tuoba boards`). [env: TUOBA_BOARD]",
    )(f)


def stage_option(f: F) -> F:
    return click.option(
        "--stage",
        type=int,
        default=1,
        show_default=True,
        help="1: Debian + TuobaOS kernel; 2: LLVM + musl userland; 3: llvm-libc (not built yet).",
    )(f)


def image_option(f: F) -> F:
    return click.option(
        "--image",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Image to use [default: OUT/tuoba-BOARD-sSTAGE-VERSION.img].",
    )(f)


def default_image(out_dir: Path, board: str, stage: int) -> Path:
    return out_dir / f"{image_name(board, stage)}.img"
