"""`tuoba release`: built images (out/) into a release directory people download from.

Each image's compressed image, block map, manifest and boot files (the kernel and device trees
QEMU boards boot with, the loaders written outside the partitions) are checked against the
sha256 its manifest recorded, then copied, and its SBOMs written (SPDX 2.3 and CycloneDX 1.6,
tuoba.sbom); `catalog.json` lists them, a download page (`index.html`, tuoba.page) and, for
the boards Raspberry Pi Imager knows, its catalog (`os_list.json`, tuoba.imager) show them,
`SHA256SUMS` covers every file (the catalog too), and `SHA256SUMS.sig` signs it, written
last: a release without its signature is not finished, and `tuoba download` refuses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tuoba import catalog, imager, lock, manifest, page, publish, sbom, ui
from tuoba.catalog import Catalog, CatalogFile, CatalogImage
from tuoba.errors import InputError
from tuoba.sources import sha256_file


def built_images(
    out_dirs: list[Path], boards: tuple[str, ...], stages: tuple[int, ...]
) -> list[Path]:
    """The images in the output directories (their manifests), those of the given boards and
    stages. The raw .img need not be there: a release ships its .xz. Several directories: what
    `tuoba matrix` leaves (OUT/BOARD-sSTAGE) or builds made apart; an image (board and stage)
    found in two of them is refused, as the release could hold only one."""
    found: list[tuple[Path, manifest.Manifest]] = []
    for out_dir in out_dirs:
        for m_file in sorted(out_dir.glob("tuoba-*.manifest.json")):
            m = manifest.Manifest.from_json(m_file.read_text(), str(m_file))
            if (boards and m.board not in boards) or (stages and m.stage not in stages):
                continue
            twin = next((f for f, o in found if (o.board, o.stage) == (m.board, m.stage)), None)
            if twin is not None and twin.parent == out_dir:
                raise InputError(
                    f"{out_dir} holds two builds of board '{m.board}' stage {m.stage} "
                    f"({twin.name} and {m_file.name}): a release holds one image of each",
                    hint="remove the manifest of the one not to release, or build it again",
                )
            if twin is not None:
                raise InputError(
                    f"board '{m.board}' stage {m.stage} was built in both {twin.parent} and "
                    f"{out_dir}: a release holds one image of each",
                    hint="name one of the directories (--from), or narrow with --board/--stage",
                )
            found.append((m_file, m))
    missing = [
        (b, s)
        for b in boards
        for s in stages or (1,)
        if not any((m.board, m.stage) == (b, s) for _, m in found)
    ]
    where = ", ".join(str(d) for d in out_dirs)
    if missing or not found:
        board, stage = missing[0] if missing else ("BOARD", 1)
        raise InputError(
            f"no built image of board '{board}' stage {stage} in {where}"
            if missing
            else f"no built image in {where}",
            hint=f"build it first: tuoba build --board {board} --stage {stage}",
        )
    return [m_file for m_file, _ in found]


@dataclasses.dataclass(frozen=True)
class Site:
    """What the release's web side needs: the project's release/ directory (the page's
    template, the icon), the URL the release is served at (Imager wants absolute addresses:
    without it there is no os_list.json), and each board's Imager device tags."""

    directory: Path
    base_url: str | None = None
    imager_devices: Callable[[str], tuple[str, ...]] = lambda board: ()  # (board.yaml's)


def make_release(
    manifests: list[Path],
    dest: Path,
    sign_key: Path,
    signer: str = "release@tuoba",
    site: Site | None = None,
    add: bool = False,
) -> Catalog:
    """Copy, list, checksum and sign; returns the catalog written. With `add`, the images
    already released in DEST stay in it beside these (an image of the same board and stage is
    replaced), their notes as they were: boards released one at a time, from builders of their
    own, make one release. Two releases into one DEST take turns (its lock)."""
    pub = catalog.public_key(sign_key)  # (checked before anything is written)
    dest.mkdir(parents=True, exist_ok=True)
    # (the lock file beside DEST, not in it: DEST is served as it is)
    beside = dest.parent / f".{dest.name}.tuoba-release.lock"
    with lock.held(beside, f"the release {dest}", "tuoba release"):
        return _release(manifests, dest, sign_key, pub, signer, site, add)


def _release(
    manifests: list[Path],
    dest: Path,
    sign_key: Path,
    pub: str,
    signer: str,
    site: Site | None,
    add: bool,
) -> Catalog:
    mans = [(f, manifest.Manifest.from_json(f.read_text(), str(f))) for f in manifests]
    for m_file, m in mans:  # (all of them before DEST changes at all)
        _check_built(m_file, m)
    kept: list[CatalogImage] = []
    kept_notes: dict[str, str] = {}
    if add:
        kept, kept_notes = _released(dest, {(m.board, m.stage) for _, m in mans})
    (dest / catalog.SIGNATURE).unlink(missing_ok=True)  # unfinished until signed again
    released = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    before = previous_manifests(dest)  # (read before this release's files replace them)
    entries = []
    current = []
    site_files: list[str] = []
    for m_file, m in mans:
        current.append(m)
        files = []
        for role, name in _files_of(m):
            src = m_file.parent / name
            # (the manifest lists the others' hashes; its own is what it is)
            recorded = m.files[name] if role != "manifest" else sha256_file(src)
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
                image_size=_image_size(m_file.parent / f"{m.name}.img.bmap"),
                files=tuple(files),
            )
        )
    for k in kept:
        ui.info(f"kept in the release: {k.name} (board {k.board}, stage {k.stage})")
    cat = Catalog(
        version=entries[0].version,
        released=released,
        images=tuple(sorted((*entries, *kept), key=lambda i: (i.board, i.stage))),
    )
    with publish.atomic(dest / catalog.CATALOG) as tmp:
        tmp.write_text(cat.to_json())
    notes = release_notes(before, current, released)
    notes += "".join(f"\n{kept_notes[k.name]}" for k in kept if k.name in kept_notes)
    with publish.atomic(dest / catalog.NOTES) as tmp:
        tmp.write_text(notes)
    with publish.atomic(dest / catalog.SIGNERS) as tmp:
        tmp.write_text(catalog.signer_line(signer, pub))
    if site is not None:
        every = {m.name: m for m in current}
        for k in kept:
            m_file = dest / k.file("manifest").name
            every[k.name] = manifest.Manifest.from_json(m_file.read_text(), str(m_file))
        site_files = write_site(site, cat, every, dest)
    names = [f.name for e in cat.images for f in e.files]
    names += [catalog.CATALOG, catalog.SIGNERS, catalog.NOTES, *site_files]
    sums = dest / catalog.SUMS
    with publish.atomic(sums) as tmp:
        tmp.write_text("".join(f"{sha256_file(dest / n)}  {n}\n" for n in sorted(set(names))))
    with publish.atomic(dest / catalog.SIGNATURE) as tmp:
        catalog.sign(sums, sign_key, tmp)
    return cat


def _check_built(m_file: Path, m: manifest.Manifest) -> None:
    """Every file of the image is the one its manifest recorded."""
    for role, name in _files_of(m):
        src = m_file.parent / name
        if role != "manifest" and (not src.is_file() or sha256_file(src) != m.files[name]):
            raise InputError(
                f"{src} is not the file its manifest recorded (missing or changed since "
                "it was built)",
                hint=f"build it again: tuoba build --board {m.board} --stage {m.stage}",
            )


def write_site(
    site: Site, cat: Catalog, manifests: dict[str, manifest.Manifest], dest: Path
) -> list[str]:
    """The release's web side: its icon, the Imager catalog (with a base URL and a board that
    names Imager devices) and the download page; returns the names written."""
    written = [imager.ICON]
    with publish.atomic(dest / imager.ICON) as tmp:
        shutil.copyfile(site.directory / imager.ICON, tmp)
    devices = {i.board: site.imager_devices(i.board) for i in cat.images}
    listed = any(devices.values())
    if site.base_url and listed:
        with publish.atomic(dest / imager.OS_LIST) as tmp:
            tmp.write_text(imager.os_list(cat, manifests, devices, site.base_url))
        written.append(imager.OS_LIST)
    else:
        (dest / imager.OS_LIST).unlink(missing_ok=True)  # (an old one would list other files)
        why = (
            "no --base-url (Imager needs absolute addresses)"
            if listed
            else ("no board of it names Imager devices (board.yaml imager_devices)")
        )
        ui.info(f"no Imager catalog ({imager.OS_LIST}) in this release: {why}")
    html = page.render(site.directory / "index.html.j2", cat, site.base_url,
                       imager=imager.OS_LIST in written)  # fmt: skip
    with publish.atomic(dest / page.PAGE) as tmp:
        tmp.write_text(html)
    written.append(page.PAGE)
    return written


def _released(
    dest: Path, replaced: set[tuple[str, int]]
) -> tuple[list[CatalogImage], dict[str, str]]:
    """The images of the release in DEST that stay in it — all but those of the `replaced`
    boards and stages, each with every file still there as its catalog and SHA256SUMS recorded
    it (hashed again) — and each one's section of the notes, by image name."""
    cat_file = dest / catalog.CATALOG
    if not cat_file.is_file():
        return [], {}
    try:
        old = Catalog.from_json(cat_file.read_text(), str(cat_file))
    except catalog.DownloadError as e:
        raise InputError(
            f"{cat_file} is not a release catalog ({e}): there is no release to add to",
            hint="release into an empty directory, or without --add",
        ) from e
    listed = {}
    if (dest / catalog.SUMS).is_file():
        listed = catalog.parse_sums((dest / catalog.SUMS).read_text())
    kept = []
    for image in old.images:
        if (image.board, image.stage) in replaced:
            continue
        gone = [
            f.name
            for f in image.files
            if listed.get(f.name) != f.sha256
            or not (dest / f.name).is_file()
            or (dest / f.name).stat().st_size != f.size
            or sha256_file(dest / f.name) != f.sha256
        ]
        if gone:
            raise InputError(
                f"{dest}: {image.name} of its release is not as its catalog lists it "
                f"({gone[0]} missing or changed), so it cannot be kept",
                hint="release its board again beside the others, or into an empty directory",
            )
        kept.append(image)
    notes_file = dest / catalog.NOTES
    sections: dict[str, str] = {}
    if notes_file.is_file():
        for part in re.split(r"(?m)^(?=## )", notes_file.read_text())[1:]:
            title = part.splitlines()[0]
            name = title.rsplit(": ", 1)[-1].strip()
            sections[name] = part.rstrip() + "\n"
    return kept, sections


def previous_manifests(dest: Path) -> dict[tuple[str, int], manifest.Manifest]:
    """The manifests of the release already in `dest` (its catalog's), by (board, stage)."""
    cat_file = dest / catalog.CATALOG
    if not cat_file.is_file():
        return {}
    try:
        old = Catalog.from_json(cat_file.read_text(), str(cat_file))
    except catalog.DownloadError:
        ui.warn(f"{cat_file} is not a release catalog: the notes compare with nothing")
        return {}
    found = {}
    for image in old.images:
        m_file = dest / image.file("manifest").name
        try:
            found[(image.board, image.stage)] = manifest.Manifest.from_json(
                m_file.read_text(), str(m_file)
            )
        except (OSError, InputError) as e:
            ui.warn(f"the previous release's {m_file.name} is unreadable ({e}): not compared")
    return found


def release_notes(
    before: dict[tuple[str, int], manifest.Manifest], now: list[manifest.Manifest], released: str
) -> str:
    """What changed since the previous release in the same directory, per image: packages
    added, removed and upgraded, the kernel, the recipes."""
    lines = [f"# TuobaOS {now[0].version}, released {released}", ""]
    for m in now:
        lines += [f"## {m.board}, stage {m.stage} ({m.arch}): {m.name}", ""]
        kernel = f"Linux {m.kernel.get('version')}"
        # the .config's own hash: the cache key (config_digest) also changes with the compiler,
        # the patches or what a kernel entry holds, which is no configuration change
        digest = str(m.kernel.get("config_sha256") or m.kernel.get("config_digest") or "")[:12]
        old = before.get((m.board, m.stage))
        lines.append(f"Recipes: {', '.join(m.recipes)}. Kernel: {kernel} (config {digest}).")
        if old is None:
            lines += [f"First release of this image: {len(m.packages)} packages.", ""]
            continue
        was = {p["name"]: p["version"] for p in old.packages}
        now_pkgs = {p["name"]: p["version"] for p in m.packages}
        added = sorted(set(now_pkgs) - set(was))
        removed = sorted(set(was) - set(now_pkgs))
        upgraded = sorted(n for n in set(was) & set(now_pkgs) if was[n] != now_pkgs[n])
        old_digest = str(old.kernel.get("config_sha256") or old.kernel.get("config_digest"))
        changes = []
        if old.kernel.get("version") != m.kernel.get("version"):
            changes.append(f"- kernel: {old.kernel.get('version')} -> {m.kernel.get('version')}")
        elif not old_digest.startswith(digest):
            changes.append(f"- kernel configuration changed ({old_digest[:12]} -> {digest})")
        if old.recipes != m.recipes:
            changes.append(f"- recipes: {', '.join(old.recipes)} -> {', '.join(m.recipes)}")
        changes += [f"- added {n} {now_pkgs[n]}" for n in added]
        changes += [f"- removed {n} {was[n]}" for n in removed]
        changes += [f"- upgraded {n} {was[n]} -> {now_pkgs[n]}" for n in upgraded]
        lines += ["", f"Since {old.version} ({old.inputs_digest[:12]}):"]
        lines += changes or ["- nothing changed"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _image_size(bmap: Path) -> int:
    """The raw image's size, as its block map says (what a card must hold)."""
    found = re.search(r"<ImageSize>\s*(\d+)\s*</ImageSize>", bmap.read_text(errors="replace"))
    return int(found.group(1)) if found else 0


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


LINK_FROM = 64 << 20  # files this large are hard-linked when they can be (tuoba never
# writes into a built file: a rebuild replaces it), smaller ones copied


def _copy(src: Path, dest: Path) -> None:
    """The file under its name in the release, complete: a hard link for a large image when
    src and dest share a filesystem, else a copy."""
    with publish.atomic(dest) as tmp:
        try:
            if src.stat().st_size < LINK_FROM:
                raise OSError("small: copied")
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
