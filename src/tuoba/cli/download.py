from __future__ import annotations

from pathlib import Path

import click

from tuoba import download as core
from tuoba import ui
from tuoba.cli import App


@click.command("download")
@click.option("--board", required=True, help="The board whose image to download.")
@click.option("--stage", default=1, show_default=True, type=click.IntRange(1, 2))
@click.option(
    "--catalog",
    "catalog_url",
    required=True,
    envvar="TUOBA_CATALOG",
    help="The release's catalog.json URL. [env: TUOBA_CATALOG]",
)
@click.option(
    "--allowed-signers",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The signers you trust (ssh-keygen's allowed_signers format) [default: the release's "
    "own, with a warning].",
)
@click.pass_obj
def command(
    app: App, board: str, stage: int, catalog_url: str, allowed_signers: Path | None
) -> None:
    """Download a board's release image into --out, verified, ready for `tuoba flash`.

    Checks SHA256SUMS's signature, then the catalog and every file against it; a file is
    renamed into place only when its sha256 matches. An interrupted download resumes (HTTP
    Range) when the same command runs again.

    \b
    Example:
      tuoba download --board rpi4 --catalog https://example.org/tuoba/catalog.json \\
          --allowed-signers tuoba_allowed_signers
      tuoba flash out/tuoba-rpi4-s1-0.1.0.img.xz --device /dev/sdb
    """
    image, files = core.download(catalog_url, board, stage, app.out_dir, allowed_signers)
    for f in files:
        ui.info(f"  {f}")
    xz = app.out_dir / image.file("image").name
    ui.info(f"{image.name}: verified; write it with: tuoba flash {xz} --device /dev/sdX")
