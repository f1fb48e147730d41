from __future__ import annotations

from pathlib import Path

import click

from tuoba import release as core
from tuoba import ui
from tuoba.board import load_board
from tuoba.cli import App


@click.command("release")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--sign-key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The private SSH key that signs SHA256SUMS (unencrypted; ssh-keygen -t ed25519).",
)
@click.option("--board", "boards", multiple=True, help="Only this board's images (repeatable).")
@click.option(
    "--stage", "stages", multiple=True, type=click.IntRange(1, 2), help="Only this stage."
)
@click.option(
    "--base-url",
    metavar="URL",
    help="Where DEST will be served (https://…/tuoba/1.0): Raspberry Pi Imager's catalog "
    "os_list.json needs absolute addresses, so it is written only with this.",
)
@click.option(
    "--from",
    "out_dirs",
    multiple=True,
    metavar="DIR",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Take the built images from DIR (repeatable: e.g. the OUT/BOARD-sSTAGE directories "
    "`tuoba matrix` leaves). Default: --out.",
)
@click.option(
    "--add",
    is_flag=True,
    help="Keep the images already released in DEST (one of the same board and stage is "
    "replaced): boards built apart, released one after another into one release.",
)
@click.option(
    "--signer",
    default="release@tuoba",
    show_default=True,
    help="The signer's name in the allowed_signers line written beside the release.",
)
@click.pass_obj
def command(
    app: App,
    dest: Path,
    sign_key: Path,
    boards: tuple[str, ...],
    stages: tuple[int, ...],
    signer: str,
    base_url: str | None,
    out_dirs: tuple[Path, ...],
    add: bool,
) -> None:
    """Make a signed release of built images in DEST, for `tuoba download` and web servers.

    Copies each image's .img.xz, .img.bmap, manifest and boot files (checked against the
    hashes its manifest recorded), writes catalog.json, SHA256SUMS over every file and
    SHA256SUMS.sig (ssh-keygen -Y sign, namespace tuoba-release), and allowed_signers with the
    key's public half, a download page (index.html) and, with --base-url, a Raspberry Pi
    Imager catalog (os_list.json) of the boards Imager knows. Serve DEST over HTTP as it is.

    \b
    Example:
      ssh-keygen -t ed25519 -N '' -f release-key
      tuoba release public/ --sign-key release-key --board rpi4 --board qemu-aarch64
      tuoba release public/ --sign-key release-key --base-url https://dl.example.org/tuoba
      tuoba release public/ --sign-key release-key --from out/rpi4-s1 --from out/rpi4-s2
      tuoba release public/ --sign-key release-key --add --board vim3
      rpi-imager --repo https://dl.example.org/tuoba/os_list.json
    """
    manifests = core.built_images(list(out_dirs) or [app.out_dir], boards, stages)
    if base_url is not None and not base_url.startswith(("https://", "http://")):
        raise click.BadParameter(f"{base_url!r} is not an http(s) URL", param_hint="--base-url")
    site = core.Site(
        app.data_dir / "release",
        base_url,
        lambda board: load_board(app.data_dir, board)[0].imager_devices,
    )
    cat = core.make_release(manifests, dest.resolve(), sign_key, signer, site, add=add)
    for image in cat.images:
        xz = image.file("image")
        ui.info(
            f"{image.name}: {xz.name} ({xz.size / (1 << 20):.0f} MiB), {len(image.files)} files"
        )
    ui.info(f"release {cat.version} in {dest}: catalog.json, SHA256SUMS, SHA256SUMS.sig")
