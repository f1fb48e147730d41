from __future__ import annotations

from pathlib import Path

import click

from tuoba import ui
from tuoba.cli import App
from tuoba.cli.options import board_option, default_image, image_option, stage_option
from tuoba.config import parse_size
from tuoba.guest import check_image
from tuoba.plan import default_ssh_key


@click.command("test")
@board_option
@stage_option
@image_option
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a JUnit XML report here; the serial console log is kept beside it.",
)
@click.option(
    "--ssh-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Private key for root [default: OUT/ssh/tuoba_ed25519].",
)
@click.option(
    "--timeout",
    type=float,
    default=240.0,
    show_default=True,
    help="Seconds to wait for the guest's ssh server.",
)
@click.option(
    "--card-size",
    metavar="SIZE",
    help="Attach the image as a disk of SIZE (e.g. 4G; copy-on-write, the image is only read), "
    "as when it is written to a larger SD card: first-boot growth then has room.",
)
@click.option(
    "--keep-card",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Keep the card as the guest left it (a qcow2 overlay over the image) at this path: "
    "what first-boot work wrote, to inspect (qemu-img convert -O raw FILE card.img; over a "
    "--card, while that card is still attached).",
)
@click.option(
    "--card",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Boot the card the image was flashed to (a block device such as /dev/sdX or a loop "
    "device, or an image file) instead of the image; the kernel, device tree and manifest still "
    "come from beside --image (the built one, or a downloaded .img.xz). QEMU only reads the card.",
)
@click.option("-k", "keyword", help="Only run guest checks matching this pytest expression.")
@click.pass_obj
def command(
    app: App,
    board: str,
    stage: int,
    image: Path | None,
    junit: Path | None,
    ssh_key: Path | None,
    timeout: float,
    keyword: str | None,
    card_size: str | None,
    keep_card: Path | None,
    card: Path | None,
) -> None:
    """Boot an image in QEMU and run the guest checks its recipes select.

    QEMU gets the image as a throw-away snapshot, ssh forwarded on a free loopback port; it is
    stopped at the end, also on failure or Ctrl-C.

    \b
    Example:
      tuoba test --board qemu-aarch64 --junit report.xml
      tuoba test --board rpi4 --card-size 4G
      tuoba download --board rpi4 --catalog URL --out dl/
      tuoba flash dl/tuoba-rpi4-s1-1.0.img.xz --device /dev/sdX --ssh-key ~/.ssh/id_ed25519.pub
      tuoba test --board rpi4 --image dl/tuoba-rpi4-s1-1.0.img.xz --card /dev/sdX \\
          --ssh-key ~/.ssh/id_ed25519
    """
    card_bytes = None
    if card_size is not None:
        card_bytes = parse_size(card_size)
        if card_bytes is None:
            raise click.BadParameter(
                f"expected a size like 4G, got {card_size!r}", param_hint="--card-size"
            )
    image = (image or default_image(app.out_dir, board, stage)).resolve()
    if junit is not None:
        junit = junit.resolve()
        console = junit.with_name(junit.stem + ".console.log")
    else:
        console = app.out_dir / f"{image.stem}.console.log"
    result = check_image(
        image=image,
        ssh_key=(ssh_key or default_ssh_key(app.out_dir)).resolve(),
        data_dir=app.data_dir,
        junit=junit,
        console_log=console,
        timeout=timeout,
        extra_pytest_args=("-k", keyword) if keyword else (),
        card_size=card_bytes,
        keep_card=keep_card.resolve() if keep_card else None,
        card=card.resolve() if card else None,
        cache_dir=app.cache_dir,
    )
    ui.info(f"[green]all guest checks passed[/green] (guest up after {result.boot_seconds:.1f} s)")
