from __future__ import annotations

from pathlib import Path

import click

from tuoba import reproducible, ui
from tuoba.build import build
from tuoba.cli import App
from tuoba.cli.options import board_option, parse_supplies, stage_option
from tuoba.errors import InputError
from tuoba.host import e2fsprogs_check, require_reproducible_ext4
from tuoba.plan import DEFAULT_RECIPES, Request, resolve
from tuoba.reproducible import REUSABLE, check_reuse


@click.command("build")
@board_option
@stage_option
@click.option(
    "-r",
    "--recipe",
    "recipes",
    multiple=True,
    help="Add a stack (see `tuoba recipes`); repeatable. 'base' is always included.",
)
@click.option(
    "--ssh-key",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="TUOBA_SSH_KEY",
    help="Public key for root's authorized_keys [default: generated in OUT/ssh/].",
)
@click.option("--offline", is_flag=True, envvar="TUOBA_OFFLINE", help="Never download.")
@click.option(
    "--mirror",
    envvar="TUOBA_MIRROR",
    help="Debian mirror URL [default: the host's apt sources]. [env: TUOBA_MIRROR]",
)
@click.option(
    "--supply",
    "supplies",
    multiple=True,
    metavar="FILE=PATH",
    help="Hand over a file the board needs and tuoba cannot fetch, checked before anything is "
    "built: pynq-z2's BOOT.BIN=~/pynq/BOOT.BIN, vim3's u-boot.bin.sd.bin=PATH (its signed "
    "Amlogic boot image); repeatable. Without it the build names the file and where to get it.",
)
@click.option("--explain", is_flag=True, help="Say why each step runs.")
@click.option(
    "--check",
    is_flag=True,
    help="Only validate: read the board, recipes and every data file they use, report what "
    "would be built, write nothing.",
)
@click.option(
    "--check-reproducible",
    is_flag=True,
    help="Build, then build again with an output and a cache directory of its own, and "
    "compare the two bit for bit; where they differ, name the file inside the image. The "
    "report goes to OUT/IMAGE.reproducible.json; exit 1 when they differ.",
)
@click.option(
    "--reuse",
    multiple=True,
    metavar="KIND",
    help="With --check-reproducible: let the second build take this kind of cache entry from "
    "the first instead of making it again (e.g. kernel); repeatable. Downloads are always "
    f"shared. Kinds: {', '.join(REUSABLE)}.",
)
@click.pass_obj
def command(
    app: App,
    board: str,
    stage: int,
    recipes: tuple[str, ...],
    ssh_key: Path | None,
    offline: bool,
    mirror: str | None,
    supplies: tuple[str, ...],
    explain: bool,
    check: bool,
    check_reproducible: bool,
    reuse: tuple[str, ...],
) -> None:
    """Compose an image for a board from its recipes.

    Only the steps whose inputs changed run again (fetch, rootfs, kernel, overlay, image);
    results go to OUT/tuoba-BOARD-sSTAGE-VERSION.img with .img.xz, .img.bmap, .manifest.json
    and SHA256SUMS.

    \b
    Example:
      tuoba build --board qemu-aarch64
      tuoba build --board qemu-aarch64 --recipe base --explain
      tuoba build --board rpi4 --check
      tuoba build --board pynq-z2 --supply BOOT.BIN=./BOOT.BIN
      tuoba build --board vim3 --supply u-boot.bin.sd.bin=./fip/u-boot.bin.sd.bin
      tuoba build --board qemu-aarch64 --stage 2 --check-reproducible
    """
    if reuse and not check_reproducible:
        raise InputError(
            "--reuse only has a meaning with --check-reproducible",
            hint="add --check-reproducible, or drop --reuse",
        )
    check_reuse(reuse)
    pairs = parse_supplies(supplies)
    request = Request(
        board=board,
        recipes=(*DEFAULT_RECIPES, *recipes),
        stage=stage,
        data_dir=str(app.data_dir),
        out_dir=str(app.out_dir),
        cache_dir=str(app.cache_dir),
        cache_url=app.cache_url,
        ssh_key=str(ssh_key.resolve()) if ssh_key else None,
        offline=offline,
        mirror=mirror,
        supplies=pairs,
    )
    plan = resolve(request)
    for name, origin, why in plan.left_out:
        ui.warn(f"recipe '{name}' ({origin}) {why}: this image is built without it")
    if check:
        ui.info(
            f"valid: {plan.image_name} (board {plan.board.name}, stage {plan.stage}, recipes "
            f"{', '.join(r.name for r in plan.recipes)}, {len(plan.packages)} packages, "
            f"{len(plan.fragments)} kernel fragments); nothing built"
        )
        return
    ui.info(
        f"building [bold]{plan.image_name}[/bold]: board {plan.board.name}, stage {plan.stage}, "
        f"recipes {', '.join(r.name for r in plan.recipes)}"
    )
    if not e2fsprogs_check().ok:
        ui.warn(
            "this host's mkfs.ext4 dates the image's files by the build's clock, not by "
            "SOURCE_DATE_EPOCH: the image is not reproducible ('tuoba doctor --fix' installs a "
            "newer e2fsprogs)"
        )
    if check_reproducible:
        require_reproducible_ext4()
        report = reproducible.check(request, reuse)
        ui.info(f"built in {report.seconds[0]:.1f} s and {report.seconds[1]:.1f} s")
        return
    result = build(plan, explain=explain)
    ran = ", ".join(result.ran) if result.ran else "nothing (up to date)"
    ui.info(f"steps run: {ran}")
    ui.info(f"image: {result.image}")
    ui.info(f"manifest: {result.manifest}")
    ui.info(f"built in {result.seconds:.1f} s")
    if plan.board.boot.hardware:
        ui.warn(f"before this card boots a {plan.board.name}: {plan.board.boot.hardware}")
