"""`tuoba release`: built images (out/) into a release directory people download from.

Each image's compressed image, block map, manifest and boot files (the kernel and device trees
QEMU boards boot with, the loaders written outside the partitions) are checked against the
sha256 its manifest recorded, then copied, and its SBOMs written (SPDX 2.3 and CycloneDX 1.6,
tuoba.sbom); `catalog.json` lists them, `SHA256SUMS` covers every
file (the catalog too), and `SHA256SUMS.sig` signs it, written last: a release without its
signature is not finished, and `tuoba download` refuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tuoba import catalog, manifest, publish, sbom, ui
from tuoba.catalog import Catalog, CatalogFile, CatalogImage
from tuoba.errors import InputError
from tuoba.sources import sha256_file


def built_images(out_dir: Path, boards: tuple[str, ...], stages: tuple[int, ...]) -> list[Path]:
    """The images in out/ (by their manifests), those of the given boards and stages."""
    found = []
    for m in sorted(out_dir.glob("tuoba-*.manifest.json")):
        image = m.with_name(m.name.removesuffix(".manifest.json") + ".img")
        got = manifest.load(image)
        if (not boards or got.board in boards) and (not stages or got.stage in stages):
            found.append(image)
    missing = [
        (b, s)
        for b in boards
        for s in stages or (1,)
        if not any(manifest.load(i).board == b and manifest.load(i).stage == s for i in found)
    ]
    if missing or not found:
        board, stage = missing[0] if missing else ("BOARD", 1)
        raise InputError(
            f"no built image of board '{board}' stage {stage} in {out_dir}"
            if missing
            else f"no built image in {out_dir}",
            hint=f"build it first: tuoba build --board {board} --stage {stage}",
        )
    return found


def make_release(
    images: list[Path], dest: Path, sign_key: Path, signer: str = "release@tuoba"
) -> Catalog:
    """Copy, list, checksum and sign; returns the catalog written."""
    pub = catalog.public_key(sign_key)  # (checked before anything is written)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / catalog.SIGNATURE).unlink(missing_ok=True)  # unfinished until signed again
    released = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = []
    for image in images:
        m = manifest.load(image)
        files = []
        for role, name in _files_of(m):
            src = image.parent / name
            # (the manifest lists the others' hashes; its own is what it is)
            recorded = m.files[name] if role != "manifest" else sha256_file(src)
            if not src.is_file() or sha256_file(src) != recorded:
                raise InputError(
                    f"{src} is not the file its manifest recorded (missing or changed since "
                    "it was built)",
                    hint=f"build it again: tuoba build --board {m.board} --stage {m.stage}",
                )
            with ui.step(f"Adding {name}"):
                _copy(src, dest / name)
            files.append(CatalogFile(name, role, src.stat().st_size, recorded))
        xz_sha = next(f.sha256 for f in files if f.role == "image")
        for suffix, doc in ((".spdx.json", sbom.spdx), (".cdx.json", sbom.cyclonedx)):
            sbom_file = dest / f"{m.name}{suffix}"
            with publish.atomic(sbom_file) as tmp:
                tmp.write_text(json.dumps(doc(m, xz_sha, released), indent=2) + "\n")
            files.append(
                CatalogFile(sbom_file.name, "sbom", sbom_file.stat().st_size,
                            sha256_file(sbom_file))
            )  # fmt: skip
        entries.append(
            CatalogImage(
                name=m.name,
                board=m.board,
                stage=m.stage,
                arch=m.arch,
                version=m.version,
                image_size=(image.stat().st_size if image.is_file() else 0),
                files=tuple(files),
            )
        )
    cat = Catalog(
        version=entries[0].version,
        released=released,
        images=tuple(entries),
    )
    with publish.atomic(dest / catalog.CATALOG) as tmp:
        tmp.write_text(cat.to_json())
    with publish.atomic(dest / catalog.SIGNERS) as tmp:
        tmp.write_text(catalog.signer_line(signer, pub))
    names = [f.name for e in entries for f in e.files] + [catalog.CATALOG, catalog.SIGNERS]
    sums = dest / catalog.SUMS
    with publish.atomic(sums) as tmp:
        tmp.write_text("".join(f"{sha256_file(dest / n)}  {n}\n" for n in sorted(set(names))))
    with publish.atomic(dest / catalog.SIGNATURE) as tmp:
        catalog.sign(sums, sign_key, tmp)
    return cat


def _files_of(m: manifest.Manifest) -> list[tuple[str, str]]:
    """(role, file name) of what a release carries of an image: not the raw .img (the .xz
    is the same bytes, smaller)."""
    out = []
    for name in m.files:
        if name == f"{m.name}.img":
            continue
        roles = {".img.xz": "image", ".img.bmap": "bmap"}
        out.append((next((r for s, r in roles.items() if name.endswith(s)), "boot"), name))
    out.append(("manifest", manifest.path_for(Path(f"{m.name}.img")).name))
    return out


def _copy(src: Path, dest: Path) -> None:
    """A hard link when src and dest share a filesystem (images are large), else a copy;
    either way the file appears under its name complete."""
    with publish.atomic(dest) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
