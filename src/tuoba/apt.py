"""The host's apt configuration: where Debian's archive is, as this machine reaches it.

Mirrors are never hard-coded: they are read from the host's sources (deb822 `.sources` files
and one-line `sources.list`), or given by the user (`--mirror` / TUOBA_MIRROR).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

APT_DIR = Path("/etc/apt")


@dataclasses.dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(
                AptSource(
                    uri.rstrip("/"),
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                )
            )
    return out


def _one_line(text: str) -> list[AptSource]:
    out = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            out.append(AptSource(words[0].rstrip("/"), (words[1],), tuple(words[2:])))
    return out


def host_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    sources: list[AptSource] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        sources += _one_line(main.read_text())
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".sources":
                sources += _deb822(f.read_text())
            elif f.suffix == ".list":
                sources += _one_line(f.read_text())
    return sources


def debian_mirrors(release: str, apt_dir: Path = APT_DIR) -> list[str]:
    """URIs of the Debian archive serving `release` (not its -security suite), host order."""
    uris: list[str] = []
    for s in host_sources(apt_dir):
        if release in s.suites and s.uri not in uris:
            uris.append(s.uri)
    return uris


def security_mirrors(release: str, apt_dir: Path = APT_DIR) -> list[str]:
    uris: list[str] = []
    for s in host_sources(apt_dir):
        if f"{release}-security" in s.suites and s.uri not in uris:
            uris.append(s.uri)
    return uris
