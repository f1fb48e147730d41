"""OCI images made at image-build time from packages of the image itself.

No container registry is reachable from a board or from this build, so a recipe that brings a
container engine also brings an image to run: the files some of the image's own Debian packages
installed (as dpkg listed them) become one layer, written as an OCI image-layout archive
(`oci-layout`, `index.json`, `blobs/sha256/…` in one tar) that `podman load` and `ctr images
import` both read. The archive is bit-for-bit a function of those files: sorted entries, zero
times, root owner, no creation date.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from tuoba import arch as arches
from tuoba.errors import BuildError

# The directory of the image where the archives go (the recipe's first-boot unit loads them).
ARCHIVE_DIR = "usr/share/tuoba/oci"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True)
class OciImage:
    """A recipe's container image: its reference, the packages whose files make its one layer,
    symbolic links added to them, and the command it runs."""

    name: str  # a full reference, like localhost/tuoba/busybox:latest
    packages: tuple[str, ...]
    links: tuple[tuple[str, str], ...] = ()  # (absolute path in the container, link target)
    cmd: tuple[str, ...] = ()

    @property
    def archive(self) -> str:
        """The archive's file name: the reference with '/' and ':' as '-'."""
        return self.name.replace("/", "-").replace(":", "-") + ".oci.tar"


def in_tree(tree: Path, path: str) -> Path:
    """Where `path` (absolute, as the image sees it) is in the tree, its parents' symbolic links
    followed as the image would follow them (an absolute target from the tree's root); the last
    part is not followed. It never leads out of the tree: as in a chroot, '..' stops at its
    root."""
    current, followed = tree, 0
    parts = [p for p in path.split("/") if p not in ("", ".")]
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != tree else tree
            continue
        nxt = current / part
        if not (parts and nxt.is_symlink()):
            current = nxt
            continue
        followed += 1  # a parent that is a link: follow it, inside the tree
        if followed > 40:
            raise BuildError(
                f"{path}: too many symbolic links in the image's tree",
                hint="a link loop in the root filesystem: remove its cache entry "
                "(tuoba cache rm rootfs/KEY) and build again",
            )
        target = os.readlink(nxt)
        current = tree if target.startswith("/") else current
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return current


def package_files(tree: Path, package: str) -> list[str]:
    """The paths (absolute, as dpkg lists them) of the files and links a package installed."""
    info = tree / "var/lib/dpkg/info"
    lists = sorted(info.glob(f"{package}.list")) + sorted(info.glob(f"{package}:*.list"))
    if not lists:
        raise BuildError(
            f"the root filesystem has no installed package '{package}' (no dpkg file list)",
            hint="an OCI image's packages must be among the image's own packages",
        )
    listed = [ln for ln in lists[0].read_text().splitlines() if ln not in ("", "/.")]
    # A directory of the package's is left to the layer's parents: a path other paths go
    # through (merged /usr's /bin is a link in the tree, yet a directory to the package), or
    # a real directory. A link of the package's own to a directory is kept as a link.
    parents = {str(Path(ln).parent) for ln in listed}
    out = []
    for line in listed:
        p = in_tree(tree, line)
        if line in parents or not os.path.lexists(p) or (p.is_dir() and not p.is_symlink()):
            continue
        out.append(line)
    return out


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def layer(tree: Path, image: OciImage) -> bytes:
    """The image's one layer, an uncompressed tar: its packages' files read from the tree (a
    path through the tree's merged-/usr links is read there and stored where dpkg listed it),
    its links, and every parent directory. A link that would replace a file, or sit where
    other entries need a directory, is refused."""
    files: dict[str, Path | str] = {}  # name in the layer -> file in the tree, or link target
    for package in image.packages:
        for path in package_files(tree, package):
            files[path.lstrip("/")] = in_tree(tree, path)
    for path, target in image.links:
        if path.lstrip("/") in files:
            raise BuildError(
                f"OCI image {image.name}: the link {path} would replace a file of its packages",
                hint="drop the link from the recipe's oci_images (the file is already there)",
            )
        files[path.lstrip("/")] = target
    dirs = {str(p) for name in files for p in Path(name).parents if str(p) != "."}
    for path, _ in image.links:
        if path.lstrip("/") in dirs:
            raise BuildError(
                f"OCI image {image.name}: the link {path} is a directory other entries are in",
                hint="link a file, not a directory, in the recipe's oci_images",
            )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | set(files)):
            source = files.get(name)
            if source is None:
                tar.addfile(_entry(name, tarfile.DIRTYPE, 0o755))
            elif isinstance(source, str):
                tar.addfile(_entry(name, tarfile.SYMTYPE, 0o777, link=source))
            elif source.is_symlink():
                tar.addfile(_entry(name, tarfile.SYMTYPE, 0o777, link=os.readlink(source)))
            else:
                st = source.stat()  # (regular: in_tree kept it inside the tree)
                info = _entry(name, tarfile.REGTYPE, stat.S_IMODE(st.st_mode), st.st_size)
                with source.open("rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, dict[str, Any]]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return digest, {"digest": digest, "size": len(data)}


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def archive(tree: Path, image: OciImage, arch: str) -> bytes:
    """The OCI image-layout archive of the image, for a board architecture."""
    oci_arch, variant = arches.of(arch).oci
    layer_data = layer(tree, image)
    layer_digest, layer_desc = _blob(layer_data)
    config: dict[str, Any] = {
        "architecture": oci_arch,
        "os": "linux",
        "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": list(image.cmd)},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": f"tuoba: files of {', '.join(image.packages)}"}],
    }
    if variant:
        config["variant"] = variant
    config_data = _json(config)
    config_digest, config_desc = _blob(config_data)
    manifest_data = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, **config_desc},
            "layers": [{"mediaType": MEDIA_LAYER, **layer_desc}],
        }
    )
    manifest_digest, manifest_desc = _blob(manifest_data)
    platform = {"architecture": oci_arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                **manifest_desc,
                "platform": platform,
                # podman names what it loads from the first, containerd from the second
                "annotations": {
                    "org.opencontainers.image.ref.name": image.name,
                    "io.containerd.image.name": image.name,
                },
            }
        ],
    }
    members = [
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _json(index)),
        *sorted(
            (f"blobs/sha256/{d.removeprefix('sha256:')}", data)
            for d, data in (
                (layer_digest, layer_data),
                (config_digest, config_data),
                (manifest_digest, manifest_data),
            )
        ),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(_entry(d, tarfile.DIRTYPE, 0o755))
        for name, data in members:
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return buf.getvalue()


def write_images(root: Path, images: tuple[OciImage, ...], arch: str) -> list[str]:
    """Write each image's archive into the image's tree (`root`, whose packages they are made
    of); returns the paths written, relative to root."""
    written = []
    for image in images:
        dest = root / ARCHIVE_DIR / image.archive
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)  # (the tree is hard-linked from the cache: never write in)
        dest.write_bytes(archive(root, image, arch))
        written.append(str(dest.relative_to(root)))
    return written
