"""A release's catalog and its signature: what `tuoba release` writes and `tuoba download`
reads.

A release directory holds, beside the images' files, `catalog.json` (every image: board, stage,
its files with size and sha256, names relative to the catalog), `SHA256SUMS` (every file of the
release, the catalog included) and `SHA256SUMS.sig`, an SSH signature (`ssh-keygen -Y sign`,
namespace `tuoba-release`) that `allowed_signers` beside it (or the user's own copy) verifies.
Trust flows one way: signature -> SHA256SUMS -> catalog and every file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tuoba import run
from tuoba.errors import InputError, TuobaError

SCHEMA = 1
NAMESPACE = "tuoba-release"
CATALOG = "catalog.json"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"  # (never <name>.bmap.sig: bmaptool reads those as GPG signatures)
SIGNERS = "allowed_signers"
NOTES = "RELEASE-NOTES.md"
ROLES = ("image", "bmap", "manifest", "boot", "sbom")


class DownloadError(TuobaError):
    """A download, its signature or its checksum failed."""

    exit_code = 7


@dataclasses.dataclass(frozen=True)
class CatalogFile:
    name: str  # relative to the catalog
    role: str  # image (.img.xz), bmap, manifest, boot (kernel, initrd, device tree, loader),
    # sbom (.spdx.json, .cdx.json)
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class CatalogImage:
    name: str  # tuoba-<board>-s<stage>-<version>
    board: str
    stage: int
    arch: str
    version: str
    image_size: int  # the raw image's bytes (what a card needs)
    files: tuple[CatalogFile, ...]

    def file(self, role: str) -> CatalogFile:
        return next(f for f in self.files if f.role == role)


@dataclasses.dataclass(frozen=True)
class Catalog:
    version: str  # tuoba's
    released: str  # ISO 8601 UTC
    images: tuple[CatalogImage, ...]
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def find(self, board: str, stage: int) -> CatalogImage:
        for image in self.images:
            if (image.board, image.stage) == (board, stage):
                return image
        have = ", ".join(f"{i.board} (stage {i.stage})" for i in self.images) or "none"
        raise InputError(
            f"the release has no image for board '{board}' stage {stage}",
            hint=f"it has: {have}",
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Catalog:
        """A catalog as downloaded; anything else is one sentence naming it."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if raw.get("schema") != SCHEMA:
                raise ValueError(f"schema {raw.get('schema')!r}, this tuoba reads {SCHEMA}")
            images = tuple(
                CatalogImage(
                    **{k: v for k, v in i.items() if k != "files"},
                    files=tuple(CatalogFile(**f) for f in i["files"]),
                )
                for i in raw["images"]
            )
            catalog = cls(raw["version"], raw["released"], images)
            for image in images:
                if not (isinstance(image.board, str) and isinstance(image.stage, int)):
                    raise ValueError(f"image entry {image.name!r}")
                for f in image.files:
                    if not (isinstance(f.name, str) and isinstance(f.size, int)
                            and isinstance(f.sha256, str)):  # fmt: skip
                        raise ValueError(f"file entry {f.name!r}")
                    if "/" in f.name or f.name.startswith(".") or f.role not in ROLES:
                        raise ValueError(f"file entry {f.name!r} ({f.role!r})")
                for role in ("image", "manifest"):
                    if sum(f.role == role for f in image.files) != 1:
                        raise ValueError(f"image {image.name!r} without one {role} file")
        except (ValueError, KeyError, TypeError) as e:
            raise DownloadError(
                f"{where}: not a TuobaOS release catalog ({e})",
                hint="give the URL of a release's catalog.json (tuoba release writes it)",
            ) from e
        return catalog


def signer_line(principal: str, public_key: str) -> str:
    """An allowed_signers line (ssh-keygen(1), ALLOWED SIGNERS) trusting the key for releases."""
    return f'{principal} namespaces="{NAMESPACE}" {" ".join(public_key.split()[:2])}\n'


def public_key(private_key: Path) -> str:
    """The public key of a private one (asks nothing: a key with a passphrase fails)."""
    proc = run.run(["ssh-keygen", "-y", "-f", str(private_key)], capture=True,
                   capture_stderr=True, check=False, input="")  # fmt: skip
    if proc.returncode != 0:
        said = " ".join((proc.stderr or "").split())
        raise InputError(
            f"--sign-key {private_key}: not a private key ssh-keygen can read without a "
            f"passphrase ({said})",
            hint="make one: ssh-keygen -t ed25519 -N '' -f release-key",
        )
    return proc.stdout.strip()


def sign(sums: Path, private_key: Path, dest: Path) -> None:
    """SSH-sign SHA256SUMS into `dest`."""
    produced = sums.with_name(sums.name + ".sig")
    produced.unlink(missing_ok=True)
    cmd = ["ssh-keygen", "-Y", "sign", "-f", str(private_key), "-n", NAMESPACE, str(sums)]
    proc = run.run(cmd, capture=True, capture_stderr=True, check=False, input="")
    if proc.returncode != 0:
        raise InputError(
            f"ssh-keygen could not sign with {private_key}: {' '.join(proc.stderr.split())}",
            hint="give an unencrypted private key (ssh-keygen -t ed25519 -N '' -f KEY)",
        )
    produced.rename(dest)


def verify(sums: Path, signature: Path, allowed_signers: Path) -> str:
    """Check the signature of SHA256SUMS against allowed_signers; returns the signer."""
    found = run.run(["ssh-keygen", "-Y", "find-principals", "-s", str(signature), "-f",
                     str(allowed_signers)], capture=True, capture_stderr=True,
                    check=False)  # fmt: skip
    principals = found.stdout.split()
    if found.returncode != 0 or not principals:
        raise DownloadError(
            f"{SIGNATURE} is not signed by a key in {allowed_signers}",
            hint="the release was signed by another key, or changed after signing: "
            "do not use it; check which allowed_signers file you trust",
        )
    proc = run.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(allowed_signers),
            "-I",
            principals[0],
            "-n",
            NAMESPACE,
            "-s",
            str(signature),
        ],
        capture=True,
        capture_stderr=True,
        check=False,
        input=sums.read_text(),
    )  # fmt: skip (SHA256SUMS is ASCII)
    if proc.returncode != 0:
        raise DownloadError(
            f"the signature of {SUMS} does not verify ({' '.join(proc.stderr.split())})",
            hint="the checksums changed after signing: do not use this release",
        )
    return principals[0]


def parse_sums(text: str) -> dict[str, str]:
    """name -> sha256 from SHA256SUMS text (sha256sum's format)."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64:
            sums[name.lstrip("*")] = digest
    return sums
