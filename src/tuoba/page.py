"""A release's download page: `index.html`, static, readable without JavaScript, rendered from
the project's template (release/index.html.j2, jinja2 with HTML escaping) with the release's
catalog: per image its size, sha256, signature, SBOMs, manifest and notes, and how to add the
release to Raspberry Pi Imager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from tuoba import catalog
from tuoba.catalog import Catalog
from tuoba.imager import OS_LIST

PAGE = "index.html"
MIB = 1 << 20


def render(template: Path, cat: Catalog, base_url: str | None, imager: bool) -> str:
    """The page's HTML. `imager`: the release has an os_list.json (it needs a base URL)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    rows: list[dict[str, Any]] = []
    for image in sorted(cat.images, key=lambda i: (i.board, i.stage)):
        xz = image.file("image")
        rows.append(
            {
                "image": image,
                "xz": xz,
                "xz_mib": f"{xz.size / MIB:.1f}",
                "card_mib": f"{image.image_size / MIB:.0f}",
                "by_role": {
                    role: [f for f in image.files if f.role == role]
                    for role in ("bmap", "manifest", "sbom", "boot")
                },
            }
        )
    return env.get_template(template.name).render(
        catalog=cat,
        rows=rows,
        sums=catalog.SUMS,
        signature=catalog.SIGNATURE,
        signers=catalog.SIGNERS,
        notes=catalog.NOTES,
        catalog_file=catalog.CATALOG,
        os_list=OS_LIST if imager else None,
        base_url=(base_url or "").rstrip("/"),
    )
