"""Console output: steps, progress bars, warnings. Core modules report through here."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, highlight=False)
_verbosity = int(os.environ.get("TUOBA_VERBOSE", "0") or 0)


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = level


def verbosity() -> int:
    return _verbosity


def info(message: str) -> None:
    console.print(message)


def debug(message: str) -> None:
    if _verbosity > 0:
        console.print(f"[dim]{message}[/dim]", markup=True, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a step and how long it took."""
    console.print(f"[bold]‣ {title}[/bold]")
    start = time.monotonic()
    yield
    console.print(f"  [green]done[/green] in {time.monotonic() - start:.1f} s")


def download_progress() -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
