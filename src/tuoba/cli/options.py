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


def parse_supplies(items: tuple[str, ...], resolve: bool = False) -> tuple[tuple[str, str], ...]:
    """--supply FILE=PATH values as (file, path) pairs; `resolve`: the path made absolute (for
    a build that runs in another directory or on another machine)."""
    pairs = []
    for item in items:
        file, sep, path = item.partition("=")
        if not sep or not file or not path:
            raise click.BadParameter(f"expected FILE=PATH, got {item!r}", param_hint="--supply")
        pairs.append((file, str(Path(path).expanduser().resolve()) if resolve else path))
    return tuple(pairs)
