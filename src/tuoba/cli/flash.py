from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from tuoba import flash as core
from tuoba import ui
from tuoba.cli import App
from tuoba.errors import InputError
from tuoba.plan import check_public_key


@click.command("flash")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "-d",
    "--device",
    required=True,
    type=click.Path(path_type=Path),
    help="The whole card to write, e.g. /dev/sdb or /dev/mmcblk0.",
)
@click.option(
    "--bmap",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Block map [default: IMAGE.bmap beside the image].",
)
@click.option(
    "--ssh-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="After writing, make this public key root's only authorized ssh key on the card (a "
    "downloaded image carries its builder's).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--force", is_flag=True, help="Allow a device that is not removable.")
@click.option("--no-verify", is_flag=True, help="Skip reading the written ranges back.")
@click.pass_obj
def command(
    app: App,
    image: Path,
    device: Path,
    bmap: Path | None,
    ssh_key: Path | None,
    yes: bool,
    force: bool,
    no_verify: bool,
) -> None:
    """Write an image (.img or .img.xz) to an SD card, using its block map.

    Only mapped blocks are written; each range is checked against the bmap and read back from
    the card afterwards. Always refused: a mounted device, the device holding this system's
    root, a device smaller than the image. A device that is not removable needs --force.

    \b
    Example:
      tuoba flash out/tuoba-rpi4-s1-0.1.0.img.xz --device /dev/sdb
      tuoba flash tuoba-rpi4-s1-0.1.0.img.xz -d /dev/sdb --ssh-key ~/.ssh/id_ed25519.pub
    """
    if ssh_key is not None:  # checked before a byte is written
        check_public_key(ssh_key)
        m = core.manifest_beside(image)
    bmap_path = bmap or core.bmap_for(image)
    if bmap_path.is_file():
        block_map = core.read_bmap(bmap_path)
    elif image.suffix == ".xz":
        raise InputError(
            f"no block map for {image} (looked for {bmap_path})",
            hint="a compressed image is written through its .bmap; pass --bmap FILE",
        )
    else:
        ui.warn(f"no block map at {bmap_path}: writing every block of the image")
        block_map = core.whole_image_map(image)
    dev = core.inspect_device(device)
    found = core.problems(dev, block_map.image_size, force)
    if found:
        raise core.FlashError(
            f"refusing to write to {device}: {'; '.join(found)}",
            hint="pick the card's whole-disk device (lsblk shows RM=1 for removable ones); "
            "unmount it first",
        )
    mib = 1 << 20
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("not asking for confirmation without a terminal", hint="pass --yes")
        click.confirm(
            f"Write {image.name} ({block_map.mapped_bytes / mib:.0f} MiB mapped) to {device} "
            f"({dev.size / mib:.0f} MiB)? Everything on {device} is lost",
            abort=True,
        )
    total = block_map.mapped_bytes * (1 if no_verify else 2)
    start = time.monotonic()
    with ui.download_progress() as progress:
        task = progress.add_task(
            f"{'writing' if no_verify else 'writing + verifying'}", total=total
        )
        core.flash(image, block_map, dev, lambda n: progress.advance(task, n), not no_verify)
    seconds = time.monotonic() - start
    ui.info(
        f"wrote {block_map.mapped_bytes / mib:.0f} MiB to {device} in {seconds:.1f} s"
        + ("" if no_verify else ", read back and verified")
    )
    if ssh_key is not None:
        core.authorize_key(device, m, ssh_key)
        ui.info(f"root's authorized ssh key on {device} is now {ssh_key}")
