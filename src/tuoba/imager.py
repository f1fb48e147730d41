"""A release's Raspberry Pi Imager catalog: `os_list.json` in Imager's format (its repository's
doc/json-schema/os-list-schema.json), so `rpi-imager --repo URL/os_list.json` offers the
release's images for the devices each board names (board.yaml `imager_devices`).

Imager takes absolute URLs and checks what it wrote against `extract_sha256`, the raw image's
hash; `image_download_sha256` is the `.img.xz`'s. An image with the `imager` recipe declares
`init_format: systemd`, so Imager offers its OS customisation (hostname, user, ssh keys, Wi-Fi,
locale) and writes it the way Raspberry Pi OS takes it: firstrun.sh on the boot partition, run
on the first boot through cmdline.txt (recipes/imager). Other images declare none, and Imager
offers none.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from tuoba.catalog import Catalog, CatalogImage
from tuoba.manifest import Manifest

OS_LIST = "os_list.json"
# The recipe whose image takes Imager's customisation, and the format it takes.
RECIPE = "imager"
INIT_FORMAT = "systemd"
ICON = "tuoba-icon.png"  # beside os_list.json in the release


def entry(image: CatalogImage, m: Manifest, base_url: str, devices: tuple[str, ...],
          released: str) -> dict[str, object]:  # fmt: skip
    """The os_list entry of one image."""
    xz = image.file("image")
    raw = xz.name.removesuffix(".xz")
    stacks = [r for r in m.recipes if r not in ("base", RECIPE)]
    userland = "Debian bookworm" if m.stage == 1 else "an LLVM + musl userland built from source"
    return {
        "name": f"TuobaOS {m.version} ({m.board}, stage {m.stage})",
        "description": (
            f"{userland} on the clang-built TuobaOS kernel {m.kernel.get('version', '')}"
            + (f", with {', '.join(stacks)}" if stacks else "")
            + (
                "; set a user, ssh key and Wi-Fi in Imager's OS customisation, or log in as root"
                if RECIPE in m.recipes
                else "; log in as root"
            )
            + " with an ssh key (tuoba flash --ssh-key)"
        ),
        "icon": url(base_url, ICON),
        "url": url(base_url, xz.name),
        "extract_size": image.image_size,
        "extract_sha256": m.files[raw],
        "image_download_size": xz.size,
        "image_download_sha256": xz.sha256,
        "release_date": released[:10],
        "devices": list(devices),
        "website": url(base_url, "index.html"),
        **({"init_format": INIT_FORMAT} if RECIPE in m.recipes else {}),
    }


def os_list(
    cat: Catalog, manifests: dict[str, Manifest], devices: dict[str, tuple[str, ...]], base_url: str
) -> str:
    """The os_list.json text: the release's images of boards that name Imager devices."""
    entries = [
        entry(image, manifests[image.name], base_url, devices[image.board], cat.released)
        for image in cat.images
        if devices.get(image.board)
    ]
    return json.dumps({"os_list": entries}, indent=2) + "\n"


def url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{quote(name)}"
