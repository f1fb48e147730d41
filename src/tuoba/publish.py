"""Publishing files and directories under their final names only when they are complete: an
interrupted or failed build never leaves a half-written artifact or cache entry that looks
finished (work happens beside the final name, then one rename)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty work directory beside dest; it replaces dest only if the block succeeds,
    so an interrupted or failed build never leaves a half-made cache entry under dest's name."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside dest; rename it over dest only if the block succeeds."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
