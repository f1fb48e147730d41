"""A shared remote build cache: entries of the local cache (tuoba.cache) pushed to and pulled
from an S3 bucket (`s3://BUCKET/PREFIX`: any S3 API server; the standard AWS credential chain,
the endpoint from AWS_ENDPOINT_URL) or read from a plain HTTPS mirror of one (`https://…`,
read-only), the way Yocto's sstate mirrors and Armbian's artifact cache share builds.

Layout under the prefix, per entry:

    v1/<kind>/<key>/<sha256>.tar.zst   the entry (data/ and its metadata), as a zstd tarball
    v1/<kind>/<key>/entry.json         written last: the metadata, and which tarball (sha256,
                                       size) is the entry — the commit marker

A reader trusts a tarball only when its bytes match the marker's sha256 and size: a truncated
or corrupt entry is refused (logged), the build makes it locally and pushes a good one over it.
An upload that fails midway leaves no marker, so no entry; two builders pushing one key at
once each upload their own tarball (named by its hash) and both markers are valid. A cache
that cannot be reached turns into one warning and local builds. Credentials are the AWS
chain's: they are never logged, and a URL is logged without its query.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import requests

from tuoba import run, ui
from tuoba.cache import LAYOUT as LOCAL_LAYOUT
from tuoba.cache import Entry, Meta
from tuoba.errors import BuildError, InputError, TuobaError
from tuoba.sources import sha256_file

LAYOUT = "v1"
MARKER = "entry.json"


class RemoteError(TuobaError):
    """The remote cache could not be used for what was asked of it."""

    exit_code = 4


class Unreachable(Exception):
    """The remote cache did not answer (network, DNS, credentials)."""


class Objects:
    """The few object operations the cache needs."""

    def get(self, name: str, dest: Path | None = None) -> bytes | None:
        """The object's bytes (or into `dest`, returning b""), None when it does not exist."""
        raise NotImplementedError

    def put(self, name: str, src: Path | bytes) -> None:
        raise NotImplementedError

    def names(self, prefix: str) -> list[str]:
        raise NotImplementedError

    writable = True


class S3Objects(Objects):
    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.denied_said = False
        # (imported here: boto3 costs every tuoba command ~60 ms, and only s3:// needs it)
        import boto3
        import botocore.config

        config = botocore.config.Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"}
        )
        try:  # endpoint, region and credentials come from the environment and AWS config files
            self.s3 = boto3.session.Session().client("s3", config=config)
        except (botocore.exceptions.BotoCoreError, ValueError) as e:
            raise InputError(
                f"s3://{bucket}: the AWS settings do not make an S3 client ({type(e).__name__})",
                hint="check AWS_PROFILE, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL "
                "(a full URL such as https://s3.example.org)",
            ) from e

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def get(self, name: str, dest: Path | None = None) -> bytes | None:
        try:
            with _calls():
                if dest is not None:
                    self.s3.download_file(self.bucket, self._key(name), str(dest))
                    return b""
                got = self.s3.get_object(Bucket=self.bucket, Key=self._key(name))
                body: bytes = got["Body"].read()
                return body
        except _Missing as e:
            if e.denied and not self.denied_said:  # S3 says 403 for a missing key to a caller
                self.denied_said = True  # without s3:ListBucket: a miss, not an outage
                ui.warn(
                    f"the remote cache answers 'access denied' for {name}: read as absent "
                    "(a caller without s3:ListBucket gets this for a missing key)"
                )
            return None

    def put(self, name: str, src: Path | bytes) -> None:
        try:
            with _calls():
                if isinstance(src, Path):
                    self.s3.upload_file(str(src), self.bucket, self._key(name))
                else:
                    self.s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=src)
        except _Missing as e:  # (writing: a 403 is a refusal, a 404 a missing bucket)
            raise Unreachable("access denied" if e.denied else "no such bucket") from e

    def names(self, prefix: str) -> list[str]:
        out = []
        try:
            with _calls():
                pages = self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self._key(prefix)
                )
                for page in pages:
                    out += [o["Key"] for o in page.get("Contents", [])]
        except _Missing as e:
            raise Unreachable("access denied" if e.denied else "no such bucket") from e
        strip = len(self._key("")) if self.prefix else 0
        return [n[strip:] for n in out]


class _Missing(Exception):
    def __init__(self, denied: bool) -> None:
        self.denied = denied


@contextlib.contextmanager
def _calls() -> Iterator[None]:
    """boto3's failures as Unreachable, a missing object as _Missing. A local file error
    (a full disk while downloading) is the caller's: it is not the cache's fault."""
    import boto3.exceptions

    try:
        yield
    except botocore.exceptions.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied"):
            raise _Missing(denied=code in ("403", "AccessDenied")) from e
        raise Unreachable(_client_error(e)) from e
    except (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error, ValueError) as e:
        raise Unreachable(type(e).__name__) from e


def _client_error(e: botocore.exceptions.ClientError) -> str:
    err = e.response.get("Error", {})
    return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()


class HttpObjects(Objects):
    """A read-only mirror: the same layout served over HTTP(S)."""

    writable = False

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def get(self, name: str, dest: Path | None = None) -> bytes | None:
        try:
            with requests.get(f"{self.base}/{name}", stream=True, timeout=30) as r:
                if r.status_code == 404:
                    return None
                r.raise_for_status()
                if dest is None:
                    return r.content
                with dest.open("wb") as f:
                    for chunk in r.iter_content(1 << 20):
                        f.write(chunk)
                return b""
        except requests.RequestException as e:
            raise Unreachable(type(e).__name__) from e

    def put(self, name: str, src: Path | bytes) -> None:
        raise InputError(f"{safe_url(self.base)} is a read-only cache (https://)",
                         hint="push to its s3:// form")  # fmt: skip

    def names(self, prefix: str) -> list[str]:
        raise InputError(f"{safe_url(self.base)} cannot be listed (an https:// mirror)",
                         hint="list its s3:// form")  # fmt: skip


def objects_for(url: str) -> Objects:
    parts = urlsplit(url)
    if parts.scheme == "s3" and parts.netloc:
        return S3Objects(parts.netloc, parts.path)
    if parts.scheme in ("http", "https") and parts.netloc:
        return HttpObjects(url)
    raise InputError(
        f"--cache-url {safe_url(url)}: not an s3://BUCKET/PREFIX or https:// cache URL",
        hint="e.g. s3://team-builds/tuoba (credentials and endpoint from the AWS settings: "
        "AWS_ENDPOINT_URL for a server other than AWS's)",
    )


def safe_url(url: str) -> str:
    """The URL as it may be logged: no user info, no query (where tokens travel)."""
    p = urlsplit(url)
    host = p.hostname or ""
    netloc = p.netloc.rsplit("@", 1)[-1]  # (host:port as written; .port raises on a bad one)
    return f"{p.scheme}://{netloc or host}{p.path}"


@dataclasses.dataclass
class RemoteCache:
    """The remote half of a Store (cache.Remote): pull before building, push after."""

    url: str
    objects: Objects
    disabled: str | None = None  # why it is no longer asked (unreachable), once said
    refused: set[str] = dataclasses.field(default_factory=set)  # corrupt entries seen
    failed: set[str] = dataclasses.field(default_factory=set)  # entries not pushed
    pulled: int = 0  # bytes
    pushed: int = 0

    @classmethod
    def open(cls, url: str) -> RemoteCache:
        return cls(url, objects_for(url))

    def _off(self, why: str) -> None:
        if self.disabled is None:
            ui.warn(
                f"remote cache {safe_url(self.url)} not reachable ({why}): building locally "
                "without it"
            )
        self.disabled = why

    def pull(self, kind: str, key: str, work: Path) -> Meta | None:
        """Fetch entry kind/key into `work` (data/ beneath it), verified; its metadata, or
        None when the remote cache does not have it (or has it damaged: refused, logged)."""
        if self.disabled is not None:
            return None
        base = f"{LAYOUT}/{kind}/{key}"
        try:
            raw = self.objects.get(f"{base}/{MARKER}")
            if raw is None:
                return None
            marker = json.loads(raw)
            sha, size = str(marker["archive_sha256"]), int(marker["archive_size"])
            meta = Meta(**{k: marker["meta"][k] for k in _META_FIELDS})
            if (meta.kind, meta.key) != (kind, key):
                return self._refuse(kind, key, f"its marker names {meta.kind}/{meta.key[:12]}…")
            if meta.layout != LOCAL_LAYOUT or not all(
                isinstance(v, int) for v in (meta.size, meta.files)
            ):
                return self._refuse(kind, key, f"a marker of another form (layout {meta.layout!r})")
            with tempfile.TemporaryDirectory(dir=work.parent) as tmp:
                archive = Path(tmp) / "entry.tar.zst"
                if self.objects.get(f"{base}/{sha}.tar.zst", archive) is None:
                    return self._refuse(kind, key, "its tarball is missing")
                got = sha256_file(archive)
                if got != sha or archive.stat().st_size != size:
                    return self._refuse(
                        kind, key, f"{archive.stat().st_size} bytes with sha256 {got[:12]}…, "
                        f"the marker says {size} bytes with {sha[:12]}…"
                    )  # fmt: skip
                work.mkdir(parents=True, exist_ok=True)
                _untar(archive, work)
                self.pulled += size
        except Unreachable as e:
            self._off(str(e))
            return None
        except (ValueError, KeyError, TypeError, BuildError) as e:
            return self._refuse(kind, key, f"unreadable ({type(e).__name__})")
        except OSError as e:  # here, not there: a full disk is no reason to stop asking
            ui.warn(f"could not unpack {kind}/{key[:12]}… from the remote cache here "
                    f"({e.strerror or e}); building it")  # fmt: skip
            return None
        ui.info(f"  pulled {kind}/{key[:12]}… from the remote cache ({size >> 20} MiB)")
        return meta

    def _refuse(self, kind: str, key: str, why: str) -> Meta | None:
        """Log a damaged entry (pushed over by this build later); None: build it here."""
        ui.warn(f"remote cache entry {kind}/{key[:12]}… refused: {why}; building it here")
        self.refused.add(f"{kind}/{key}")
        return None

    def push(self, entry: Entry) -> None:
        """Upload a local entry (unless the remote cache has a good one already)."""
        if self.disabled is not None or not self.objects.writable:
            return
        base = f"{LAYOUT}/{entry.meta.kind}/{entry.meta.key}"
        try:
            if entry.ref not in self.refused and self.objects.get(f"{base}/{MARKER}") is not None:
                return  # someone pushed it already (first come stays)
            with tempfile.TemporaryDirectory(dir=entry.data.parent.parent) as tmp:
                archive = Path(tmp) / "entry.tar.zst"
                _tar(entry.data, archive)
                sha, size = sha256_file(archive), archive.stat().st_size
                self.objects.put(f"{base}/{sha}.tar.zst", archive)
                marker = {"archive_sha256": sha, "archive_size": size,
                          "meta": dataclasses.asdict(entry.meta)}  # fmt: skip
                self.objects.put(f"{base}/{MARKER}", json.dumps(marker, default=str).encode())
                self.pushed += size
        except Unreachable as e:
            self._off(str(e))
            return
        except (BuildError, OSError) as e:  # (the entry is fine here; only the upload is lost)
            ui.warn(f"could not pack {entry.ref} for the remote cache: {e}")
            self.failed.add(entry.ref)
            return
        ui.info(f"  pushed {entry.ref[:24]}… to the remote cache ({size >> 20} MiB)")

    def entries(self) -> list[tuple[Meta, int]]:
        """(metadata, packed size) of every entry the remote cache holds."""
        out = []
        try:
            for ref in self.refs():
                raw = self.objects.get(f"{LAYOUT}/{ref}/{MARKER}")
                if raw is None:
                    continue
                try:
                    marker = json.loads(raw)
                    meta = Meta(**{k: marker["meta"][k] for k in _META_FIELDS})
                    out.append((meta, int(marker["archive_size"])))
                except (ValueError, KeyError, TypeError):
                    ui.warn(f"remote cache entry {ref[:24]}…: unreadable marker")
        except Unreachable as e:
            self._off(str(e))
        return out

    def refs(self) -> list[str]:
        """kind/key of every entry the remote cache holds (its markers)."""
        names = self.objects.names(f"{LAYOUT}/")
        return sorted(
            n.removeprefix(f"{LAYOUT}/").removesuffix(f"/{MARKER}")
            for n in names
            if n.endswith(f"/{MARKER}")
        )


_META_FIELDS = tuple(f.name for f in dataclasses.fields(Meta))


def _tar(data: Path, archive: Path) -> None:
    """data/ (an entry's artifact tree) as a zstd tarball: owners, modes, links and
    extended attributes kept."""
    run.run(["tar", "--numeric-owner", *XATTRS, "-I", "zstd -q -T0 -3", "-C",
             str(data.parent), "-cf", str(archive), data.name])  # fmt: skip


def _untar(archive: Path, work: Path) -> None:
    """The tarball into work/ (it holds data/)."""
    run.run(["tar", "--numeric-owner", *XATTRS, "-I", "zstd -q", "-C", str(work), "-xf",
             str(archive)])  # fmt: skip


# File capabilities (ping's cap_net_raw …) are extended attributes: a root tree keeps them.
XATTRS = ("--xattrs", "--xattrs-include=*")
