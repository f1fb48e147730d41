"""Overlays: file trees copied into the rootfs in order; `*.j2` files rendered with jinja2."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jinja2

from tuoba.errors import InputError
from tuoba.plan import Overlay

TEMPLATE_SUFFIX = ".j2"


def render_overlays(
    overlays: tuple[Overlay, ...], context: dict[str, Any], dest: Path
) -> list[str]:
    """Render all overlays into `dest` (later overlays win); returns the files written."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    written: dict[str, None] = {}
    for overlay in overlays:
        for src in sorted(overlay.path.rglob("*")):
            if src.is_dir() and not src.is_symlink():
                continue
            rel = src.relative_to(overlay.path)
            display = f"{overlay.display}/{rel}"
            if src.suffix == TEMPLATE_SUFFIX:
                rel = rel.with_suffix("")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            if src.is_symlink():
                out.symlink_to(src.readlink())
            elif src.suffix == TEMPLATE_SUFFIX:
                out.write_text(_render(env, src, display, context))
                shutil.copymode(src, out)
            else:
                shutil.copy2(src, out)
            written[str(rel)] = None
    return list(written)


def _render(env: jinja2.Environment, src: Path, display: str, context: dict[str, Any]) -> str:
    try:
        return env.from_string(src.read_text()).render(context)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"{display}:{e.lineno}: template error: {e.message}") from e
    except jinja2.UndefinedError as e:
        raise InputError(
            f"{display}: template uses an undefined value: {e.message}",
            hint="templates see: board.*, stage, recipes, version, ssh_public_key",
        ) from e


def apply_overlay(src: Path, root: Path) -> None:
    """Copy a rendered overlay onto a (hard-linked) root tree, never writing through a link.

    The root is a hard-link copy of the cached rootfs: files are replaced (unlink + copy), so the
    cache is never modified.
    """
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        target = root / rel
        if path.is_dir() and not path.is_symlink():
            if not target.is_dir():
                target.mkdir(parents=True)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        target.unlink(missing_ok=True)
        if path.is_symlink():
            target.symlink_to(path.readlink())
        else:
            shutil.copy2(path, target)
