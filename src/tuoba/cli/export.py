from __future__ import annotations

import click

from tuoba import lava, ui
from tuoba.cli import App
from tuoba.cli.options import board_option


@click.group("export")
def command() -> None:
    """Describe built images for other systems (a LAVA lab's jobs)."""


@command.command("lava")
@board_option
@click.option(
    "--stage", type=click.IntRange(1, 2), default=1, show_default=True, help="The image's stage."
)
@click.option(
    "--artifacts-url",
    required=True,
    metavar="URL",
    help="Where the image's files are served (http(s)): the address of a release directory "
    "(tuoba release), which serves them under their own names.",
)
@click.option(
    "--device-type",
    metavar="NAME",
    help="The lab's LAVA device type. [default: qemu for QEMU boards, else the board's device "
    "tree, as LAVA's device types are named: bcm2711-rpi-4-b, bcm2837-rpi-3-b …]",
)
@click.pass_obj
def lava_(app: App, board: str, stage: int, artifacts_url: str, device_type: str | None) -> None:
    """Write a LAVA v2 job for the board's built image: OUT/NAME.lava.yaml, and
    OUT/NAME.lava-console.tar that the job adds to its copy of the image.

    The image is found in OUT (a build's out/ or a release directory: both hold the
    manifests). QEMU boards (qemu-aarch64) are deployed to tmpfs (kernel + disk image) and
    booted by LAVA's qemu device type with the board's machine, CPU and memory; SD-card boards
    are deployed to flasher (the device dictionary's flasher_deploy_commands write {IMAGE} to
    the card) and booted minimal (power on, the board boots its card). Every file is checked by
    the sha256 its manifest recorded.

    The test action runs the in-guest subset of the image's guest checks on the serial console
    (kernel release, root ext4 read-write, hostname, the recipes' services, no failed unit,
    BTF); the full checks are pytest-testinfra files that `tuoba test` runs over ssh, not run
    here. The image has no console login (root has no password), so LAVA adds its overlay and
    NAME.lava-console.tar (root's shell on the console) to its copy of the root partition:
    serve that file beside the release's.

    \b
    Example:
      tuoba release public/ --sign-key release-key --board rpi4
      tuoba --out public/ export lava --board rpi4 --artifacts-url https://dl.example.org/tuoba
      lavacli jobs submit public/tuoba-rpi4-s1-0.1.0.lava.yaml
    """
    done = lava.export(app.data_dir, app.out_dir, board, stage, artifacts_url, device_type)
    ui.info(
        f"{done.job} (device type {done.device_type}, deploy to {done.deploy.to}, "
        f"{len(done.cases)} test cases)"
    )
    ui.info(f"{done.console}: serve it at {artifacts_url.rstrip('/')}/{done.console.name}")
