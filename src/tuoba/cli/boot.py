from __future__ import annotations

from pathlib import Path

import click

from tuoba import manifest, qemu
from tuoba.cli import App
from tuoba.cli.options import board_option, default_image, image_option, stage_option
from tuoba.guest import boot_spec


@click.command("boot")
@board_option
@stage_option
@image_option
@click.option(
    "--writable", is_flag=True, help="Keep changes in the image (default: throw-away snapshot)."
)
@click.pass_obj
def command(app: App, board: str, stage: int, image: Path | None, writable: bool) -> None:
    """Boot an image in QEMU with its serial console on this terminal.

    Log in with the key from OUT/ssh/ on the printed port; Ctrl-A X quits.

    \b
    Example:
      tuoba boot --board qemu-aarch64
    """
    image = (image or default_image(app.out_dir, board, stage)).resolve()
    spec = boot_spec(image, manifest.load(image))
    raise SystemExit(qemu.interactive(spec, writable))
