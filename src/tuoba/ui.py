"""Console output: steps, progress bars, warnings. Core modules report through here."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
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


LOG_EVERY = 30.0  # seconds between progress lines when the output is not a terminal


def watch(label: str, poll: Callable[[], str], stop: threading.Event, every: float = 2.0) -> None:
    """Report a long step until `stop` is set: a live status line on a terminal; otherwise
    (CI, a log file) a plain line every LOG_EVERY seconds, so a log never goes silent.
    `poll` says how far the step is (e.g. '4100/9800 objects')."""
    start = time.monotonic()
    if console.is_terminal:
        with console.status(label) as status:
            while not stop.wait(every):
                status.update(f"{label}: {escape(poll())} ({time.monotonic() - start:.0f} s)")
        return
    while not stop.wait(LOG_EVERY):
        elapsed = time.monotonic() - start
        console.print(f"  {label}: {poll()}, {elapsed:.0f} s elapsed", soft_wrap=True, markup=False)


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
