"""Downloaded inputs: url + sha256 + mirrors, fetched into the cache (kind ``source``, keyed
by the pinned sha256).

A source is used only after its bytes match the pinned sha256. `offline` uses the cache or
fails naming what is missing. URLs of the form `debian:<path>` are resolved against the Debian
archive mirrors of the host's apt configuration (no registry host is written in the project).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from tuoba import ui
from tuoba.cache import Store
from tuoba.config import Doc, Field, PathPart, parse_mapping, string, string_list
from tuoba.errors import BuildError, InputError

CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    url: str
    sha256: str
    mirrors: tuple[str, ...] = ()
    origin: str = ""  # where the pinned hash comes from, for people reading the data

    def candidates(self, debian_mirrors: Sequence[str]) -> list[str]:
        urls = []
        for u in (self.url, *self.mirrors):
            if u.startswith("debian:"):
                urls += [f"{m}/{u.removeprefix('debian:').lstrip('/')}" for m in debian_mirrors]
            else:
                urls.append(u)
        return urls


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256(doc: Doc, path: tuple[PathPart, ...], value: Any) -> str:
    s = string(doc, path, value)
    if not _SHA256.match(s):
        raise doc.error(path, f"'{s}' is not a sha256 (64 lower-case hex digits)")
    return s


SOURCE_FIELDS = [
    Field("url", string, help="where it is published; debian:<path> for the Debian archive"),
    Field("sha256", _sha256, help="the pinned hash"),
    Field("mirrors", string_list, (), help="other URLs serving the same bytes"),
    Field("origin", string, "", help="where the pinned hash comes from"),
]


def parse_source(
    doc: Doc, path: tuple[PathPart, ...], value: Any, extra: Sequence[Field] = ()
) -> tuple[Source, dict[str, Any]]:
    """A source entry of a data file (url, sha256, mirrors, origin + `extra` fields)."""
    v = parse_mapping(doc, path, value, [*SOURCE_FIELDS, *extra])
    src = Source(
        name=v["url"].rsplit("/", 1)[-1],
        url=v["url"],
        sha256=v["sha256"],
        mirrors=v["mirrors"],
        origin=v["origin"],
    )
    return src, v


def cached(store: Store, sha256: str) -> Path | None:
    """The cached file with these bytes, if the cache has it."""
    entry = store.get("source", sha256)
    return next(iter(sorted(entry.data.iterdir())), None) if entry else None


def cached_or_offline(store: Store, sha256: str, what: str, offline: bool) -> Path | None:
    """The cached file with these bytes; None when it must be downloaded, which `offline`
    forbids (an error naming `what`)."""
    found = cached(store, sha256)
    if found is None and offline:
        raise BuildError(
            f"{what} (sha256 {sha256[:12]}…) is not in the cache and --offline forbids "
            "downloading it",
            hint="run once without --offline to fill the cache",
        )
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (none when root is not a directory)."""
    if not root.is_dir():
        return {}
    files = sorted(f for f in root.rglob("*") if f.is_file())
    return {str(f.relative_to(root)): sha256_file(f) for f in files}


def fetch(
    source: Source,
    store: Store,
    *,
    debian_mirrors: Sequence[str] = (),
    offline: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Return the cached, verified file for `source`, downloading it if needed."""
    found = cached_or_offline(store, source.sha256, f"source '{source.name}'", offline)
    if found is not None:
        return found
    urls = source.candidates(debian_mirrors)
    if not urls:
        raise InputError(
            f"source '{source.name}' has no usable URL",
            hint="a 'debian:' URL needs a Debian mirror in the host's apt sources or --mirror",
        )
    failures: list[str] = []
    for url in urls:
        try:
            with store.make("source", source.sha256, what=source.name, inputs={"url": url}) as data:
                _download(url, data / source.name, source, timeout)
            path = cached(store, source.sha256)
            assert path is not None  # (just published)
            return path
        except _Mismatch as e:
            raise BuildError(
                f"source '{source.name}' from {url} has sha256 {e.got}, expected {source.sha256}",
                hint="the mirror serves different bytes than pinned; refusing to use them",
            ) from None
        except (requests.RequestException, OSError) as e:
            failures.append(f"{url}: {short_reason(e)}")
            ui.debug(f"fetch {source.name}: {url} failed: {e}")
    raise BuildError(
        f"could not download source '{source.name}' from any of {len(urls)} URL(s)",
        hint="tried:\n  " + "\n  ".join(failures),
    )


def adopt(source: Source, given: Path, store: Store) -> Path:
    """A file the user supplied for `source` (`--supply`), copied into the cache like a
    download: its hash is checked again on the copy, so a file changed since the build
    started is refused."""
    found = cached(store, source.sha256)
    if found is not None:
        return found
    with store.make("source", source.sha256, what=source.name, inputs={"supplied": True}) as data:
        shutil.copyfile(given, data / source.name)
        if (got := sha256_file(data / source.name)) != source.sha256:
            raise BuildError(
                f"the file supplied as {source.name} ({given}) changed during the build: "
                f"sha256 {got}, pinned {source.sha256}",
                hint="leave the supplied file alone while tuoba builds",
            )
    path = cached(store, source.sha256)
    assert path is not None  # (just published)
    return path


class _Mismatch(Exception):
    def __init__(self, got: str) -> None:
        self.got = got


def short_reason(e: Exception) -> str:
    """A failed request in a few words: its HTTP status, or the kind of failure."""
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code}"
    return type(e).__name__


def _download(url: str, dest: Path, source: Source, timeout: float) -> None:
    """Download into dest (inside a cache entry being made: a failure publishes nothing)."""
    with requests.get(url, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        total = int(r.headers.get("content-length") or 0) or None
        h = hashlib.sha256()
        with dest.open("wb") as f, ui.download_progress() as progress:
            task = progress.add_task(source.name, total=total)
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                h.update(chunk)
                progress.advance(task, len(chunk))
        if h.hexdigest() != source.sha256:
            raise _Mismatch(h.hexdigest())
