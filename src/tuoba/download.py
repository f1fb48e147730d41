"""`tuoba download`: one board's image from a release catalog, verified before it is kept.

The order of trust: SHA256SUMS's SSH signature (checked against the user's allowed_signers, or
the release's own copy with a warning), then the catalog's hash in SHA256SUMS, then each file's.
A file is downloaded beside its final name (`.NAME.part`, with `.NAME.part.json` saying from
where and which version of it) and renamed into place only when its sha256 matches; an
interrupted transfer, in this run or a later one, resumes with an HTTP Range request guarded
by If-Range, so a file that changed on the server starts over instead of being spliced.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from rich.progress import TaskID

from tuoba import catalog, ui
from tuoba.catalog import Catalog, CatalogFile, CatalogImage, DownloadError
from tuoba.remote import safe_url
from tuoba.sources import sha256_file, short_reason

CHUNK = 1 << 20
ATTEMPTS = 5  # connections per file: each resumes where the last one stopped


def download(
    catalog_url: str,
    board: str,
    stage: int,
    dest: Path,
    allowed_signers: Path | None,
    timeout: float = 30.0,
) -> tuple[CatalogImage, list[Path]]:
    """Download, verify and keep one image's files in `dest`; returns them."""
    with tempfile.TemporaryDirectory(prefix="tuoba-download-") as tmp:
        work = Path(tmp)
        text = _get_text(catalog_url, timeout)
        cat = Catalog.from_json(text, safe_url(catalog_url))
        image = cat.find(board, stage)  # (an unknown board is said before more is fetched)
        sums_file, sig_file = work / catalog.SUMS, work / catalog.SIGNATURE
        sums_file.write_text(_get_text(sibling(catalog_url, catalog.SUMS), timeout))
        sig_file.write_text(_get_text(sibling(catalog_url, catalog.SIGNATURE), timeout))
        signers = allowed_signers
        if signers is None:
            signers = work / catalog.SIGNERS
            signers.write_text(_get_text(sibling(catalog_url, catalog.SIGNERS), timeout))
            ui.warn(
                "no --allowed-signers given: trusting the key the release names itself "
                "(this proves the files are the ones it signed, not who signed them)"
            )
        signer = catalog.verify(sums_file, sig_file, signers)
        sums = catalog.parse_sums(sums_file.read_text())
        if sums.get(catalog.CATALOG) != hashlib.sha256(text.encode()).hexdigest():
            raise DownloadError(
                f"{safe_url(catalog_url)} is not the catalog {catalog.SUMS} signs",
                hint="the catalog changed after the release was signed: do not use it",
            )
        ui.info(f"release {cat.version} ({cat.released}), signed by {signer}")
    dest.mkdir(parents=True, exist_ok=True)
    kept = []
    for f in image.files:
        if sums.get(f.name) != f.sha256:
            raise DownloadError(
                f"{f.name}: the catalog's sha256 is not the one {catalog.SUMS} signs",
                hint="the release is inconsistent: do not use it",
            )
        kept.append(fetch_file(sibling(catalog_url, f.name), f, dest, timeout))
    return image, kept


def sibling(catalog_url: str, name: str) -> str:
    """The URL of a file beside the catalog, with the catalog URL's query (a signed URL's
    token travels there)."""
    url = urljoin(catalog_url, name)
    query = urlsplit(catalog_url).query
    return f"{url}?{query}" if query else url


def _get_text(url: str, timeout: float) -> str:
    try:
        r = requests.get(url, timeout=timeout)
        r.raise_for_status()
    except requests.RequestException as e:
        raise DownloadError(f"could not get {safe_url(url)}: {short_reason(e)}",
                            hint="check the catalog URL and the network") from e  # fmt: skip
    return r.text


def fetch_file(url: str, f: CatalogFile, dest: Path, timeout: float = 30.0) -> Path:
    """One file into dest/NAME, resumed across connections and runs, kept only when its
    sha256 is the signed one."""
    final = dest / f.name
    if final.is_file() and final.stat().st_size == f.size and sha256_file(final) == f.sha256:
        ui.info(f"  {f.name}: already here, verified")
        return final
    part = dest / f".{f.name}.part"
    meta_file = dest / f".{f.name}.part.json"
    meta = _read_meta(meta_file)
    where = safe_url(url)  # (kept on disk: no user info or token)
    if meta.get("url") != where or meta.get("sha256") != f.sha256:  # another file's leftovers
        part.unlink(missing_ok=True)
        meta = {"url": where, "sha256": f.sha256}
    failures = []
    with ui.download_progress() as progress:
        task = progress.add_task(f.name, total=f.size)
        for _ in range(ATTEMPTS):
            meta = {**meta, **_read_meta(meta_file)} if part.is_file() else meta
            have = part.stat().st_size if part.is_file() else 0
            progress.update(task, completed=have)
            if have >= f.size:
                break
            try:
                _transfer(url, part, have, meta, meta_file, timeout, progress.advance, task)
            except (requests.RequestException, OSError) as e:
                failures.append(short_reason(e))
                got = part.stat().st_size if part.is_file() else 0
                ui.debug(f"{f.name}: transfer stopped at {got} bytes: {short_reason(e)}")
    got = part.stat().st_size if part.is_file() else 0
    if got < f.size:
        raise DownloadError(
            f"{f.name}: {got} of {f.size} bytes after {ATTEMPTS} connections "
            f"({', '.join(failures) or 'no data'})",
            hint="run the same command again: it resumes where this one stopped",
        )
    digest = sha256_file(part)
    if digest != f.sha256 or got != f.size:
        part.unlink(missing_ok=True)
        meta_file.unlink(missing_ok=True)
        raise DownloadError(
            f"{f.name}: downloaded {got} bytes with sha256 {digest}, the release signs "
            f"{f.size} bytes with {f.sha256}",
            hint="the server gave different bytes than the signed release; nothing was kept",
        )
    os.replace(part, final)
    meta_file.unlink(missing_ok=True)
    return final


def _transfer(
    url: str,
    part: Path,
    have: int,
    meta: dict[str, str],
    meta_file: Path,
    timeout: float,
    advance: Callable[[TaskID, float], None],
    task: TaskID,
) -> None:
    headers = {}
    if have and meta.get("validator"):
        headers = {"Range": f"bytes={have}-", "If-Range": meta["validator"]}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        resumed = r.status_code == 206
        if not resumed:  # a whole file: the server has no ranges, or the file changed
            have = 0
        etag = r.headers.get("ETag") or ""
        # If-Range takes a strong validator only (RFC 9110): a weak ETag would never resume
        validator = (etag if etag and not etag.startswith("W/") else None) or r.headers.get(
            "Last-Modified"
        )
        meta = {**meta, "validator": validator or ""}
        meta_file.write_text(json.dumps(meta))
        with part.open("ab" if resumed else "wb") as out:
            for chunk in r.iter_content(CHUNK):
                out.write(chunk)
                advance(task, len(chunk))


def _read_meta(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
