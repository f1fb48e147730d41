"""Software bills of materials for a built image, from its manifest: SPDX 2.3 JSON and
CycloneDX 1.6 JSON. They name the image (and the sha256 of its .img.xz), every Debian package
(name, version, arch, purl `pkg:deb/debian/…`, its licence where the package's copyright file
is machine-readable), every stage-2 package and its source, every pinned source by sha256 and
where it came from, and the kernel with its config digest.

Licences are read at image time from each package's /usr/share/doc/<package>/copyright
(Debian's machine-readable format: the `Files: *` stanza's `License:`), translated from
Debian's short names to SPDX identifiers where the name is one of the common ones below;
anything else is NOASSERTION, never a guess.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuoba.manifest import Manifest

DEBIAN = "debian-12"

# Debian copyright-format short names -> SPDX license identifiers.
SPDX_IDS = {
    **{f"GPL-{v}": f"GPL-{v}.0-only" for v in ("1", "2", "3")},
    **{f"GPL-{v}+": f"GPL-{v}.0-or-later" for v in ("1", "2", "3")},
    **{f"GPL-{v}.0": f"GPL-{v}.0-only" for v in ("2", "3")},
    **{f"GPL-{v}.0+": f"GPL-{v}.0-or-later" for v in ("2", "3")},
    "LGPL-2": "LGPL-2.0-only", "LGPL-2+": "LGPL-2.0-or-later",
    "LGPL-2.1": "LGPL-2.1-only", "LGPL-2.1+": "LGPL-2.1-or-later",
    "LGPL-3": "LGPL-3.0-only", "LGPL-3+": "LGPL-3.0-or-later",
    "AGPL-3": "AGPL-3.0-only", "AGPL-3+": "AGPL-3.0-or-later",
    "Apache-2.0": "Apache-2.0", "Apache-2": "Apache-2.0",
    "Expat": "MIT", "MIT": "MIT", "ISC": "ISC", "Zlib": "Zlib", "zlib": "Zlib",
    "BSD-2-clause": "BSD-2-Clause", "BSD-2-Clause": "BSD-2-Clause",
    "BSD-3-clause": "BSD-3-Clause", "BSD-3-Clause": "BSD-3-Clause",
    "BSD-4-clause": "BSD-4-Clause", "MPL-2.0": "MPL-2.0", "MPL-1.1": "MPL-1.1",
    "Artistic": "Artistic-1.0-Perl", "Artistic-2.0": "Artistic-2.0", "CC0-1.0": "CC0-1.0",
    "PSF-2": "PSF-2.0", "OpenSSL": "OpenSSL", "BSL-1.0": "BSL-1.0", "curl": "curl",
    "X11": "X11", "FTL": "FTL", "Unicode-DFS-2016": "Unicode-DFS-2016",
}  # fmt: skip


def spdx_licence(debian: str) -> str | None:
    """An SPDX expression for a Debian `License:` short name or simple expression
    (`GPL-2+ or Artistic`), None when a part is not a known name."""
    text = " ".join(debian.split())
    for op in (" or ", " and ", " | ", ", "):
        parts = [p.strip() for p in re.split(re.escape(op), text, flags=re.I)]
        if len(parts) > 1:
            mapped = [SPDX_IDS.get(p) for p in parts]
            if None in mapped or any(o in p for p in parts for o in (" or ", " and ")):
                return None
            join = " AND " if op == " and " else " OR "
            return join.join(dict.fromkeys(m for m in mapped if m))
    return SPDX_IDS.get(text)


def debian_licences(tree: Path) -> dict[str, str]:
    """package -> SPDX licence, from the machine-readable copyright files under `tree`."""
    out = {}
    doc = tree / "usr/share/doc"
    for copyright_file in sorted(doc.glob("*/copyright")) if doc.is_dir() else ():
        try:
            text = copyright_file.read_text(errors="replace")
        except OSError:
            continue
        if not text.startswith("Format:"):
            continue
        for stanza in re.split(r"\n\s*\n", text):
            if re.search(r"^Files:\s*\*\s*$", stanza, re.M):
                m = re.search(r"^License:[ \t]*(\S[^\n]*)", stanza, re.M)
                if m and (spdx := spdx_licence(m.group(1))):
                    out[copyright_file.parent.name] = spdx
                break
    return out


def purl(p: dict[str, Any]) -> str:
    """The package URL of a Debian package (purl-spec: pkg:deb/debian/NAME@VERSION?…)."""
    arch = f"&arch={p['arch']}" if p.get("arch") else ""
    name, version = quote(p["name"], safe=""), quote(p["version"], safe="")
    return f"pkg:deb/debian/{name}@{version}?distro={DEBIAN}{arch}"


def _ref(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def spdx(m: Manifest, image_sha256: str, created: str) -> dict[str, Any]:
    """An SPDX 2.3 document describing the image."""
    image_id = "SPDXRef-image"
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": image_id,
            "name": m.name,
            "versionInfo": m.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "checksums": [{"algorithm": "SHA256", "checksumValue": image_sha256}],
            "comment": f"TuobaOS {m.board} stage {m.stage} ({m.arch}), recipes "
            f"{', '.join(m.recipes)}; inputs digest {m.inputs_digest}",
        },
        {
            "SPDXID": "SPDXRef-kernel",
            "name": "linux",
            "versionInfo": str(m.kernel.get("version", "NOASSERTION")),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseDeclared": "GPL-2.0-only",
            "comment": f"built by {m.kernel.get('compiler', '?')}; config digest "
            f"{m.kernel.get('config_digest') or m.kernel.get('config_sha256')}",
        },
    ]
    for p in m.packages:
        entry: dict[str, Any] = {
            "SPDXID": _ref("pkg", p["name"]),
            "name": p["name"],
            "versionInfo": p["version"],
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseDeclared": p.get("license") or "NOASSERTION",
        }
        if p.get("role"):  # stage 2: built here by clang from a pinned source
            entry["comment"] = f"built by {p.get('built_by')} for {p.get('target')}"
            if p.get("source_sha256"):
                entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": p["source_sha256"]}]
        else:
            entry["supplier"] = "Organization: Debian"
            entry["externalRefs"] = [
                {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                 "referenceLocator": purl(p)}
            ]  # fmt: skip
        packages.append(entry)
    for name, src in m.sources.items():
        packages.append(
            {
                "SPDXID": _ref("src", name),
                "name": name,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "checksums": [{"algorithm": "SHA256", "checksumValue": src["sha256"]}],
                "sourceInfo": f"pinned source; hash from: {src.get('origin') or 'not said'}",
            }
        )
    rels = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
             "relatedSpdxElement": image_id}]  # fmt: skip
    for p in packages[1:]:
        kind = "GENERATED_FROM" if p["SPDXID"].startswith("SPDXRef-src-") else "CONTAINS"
        rels.append({"spdxElementId": image_id, "relationshipType": kind,
                     "relatedSpdxElement": p["SPDXID"]})  # fmt: skip
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": m.name,
        "documentNamespace": f"https://tuoba.invalid/spdx/{m.name}-{m.inputs_digest[:16]}",
        "creationInfo": {"created": created, "creators": [f"Tool: tuoba-{m.version}"]},
        "packages": packages,
        "relationships": rels,
    }


def cyclonedx(m: Manifest, image_sha256: str, created: str) -> dict[str, Any]:
    """A CycloneDX 1.6 BOM describing the image."""
    components: list[dict[str, Any]] = [
        {
            "type": "operating-system",
            "bom-ref": "kernel",
            "name": "linux",
            "version": str(m.kernel.get("version", "")),
            "licenses": [{"license": {"id": "GPL-2.0-only"}}],
            "properties": [
                {"name": "tuoba:kernel:compiler", "value": str(m.kernel.get("compiler", ""))},
                {
                    "name": "tuoba:kernel:config_digest",
                    "value": str(m.kernel.get("config_digest") or m.kernel.get("config_sha256")),
                },
            ],
        }
    ]
    for p in m.packages:
        c: dict[str, Any] = {
            "type": "library" if p["name"].startswith("lib") else "application",
            "bom-ref": f"pkg:{p['name']}",
            "name": p["name"],
            "version": p["version"],
        }
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        if p.get("role"):
            c["properties"] = [{"name": "tuoba:built_by", "value": str(p.get("built_by"))}]
            if p.get("source_sha256"):
                c["hashes"] = [{"alg": "SHA-256", "content": p["source_sha256"]}]
        else:
            c["purl"] = purl(p)
            c["supplier"] = {"name": "Debian"}
        components.append(c)
    for name, src in m.sources.items():
        components.append(
            {
                "type": "file",
                "bom-ref": f"src:{name}",
                "name": name,
                "hashes": [{"alg": "SHA-256", "content": src["sha256"]}],
                "properties": [{"name": "tuoba:origin", "value": str(src.get("origin") or "")}],
            }
        )
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'tuoba:' + m.inputs_digest)}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {
                "components": [{"type": "application", "name": "tuoba", "version": m.version}]
            },
            "component": {
                "type": "operating-system",
                "bom-ref": "image",
                "name": m.name,
                "version": m.version,
                "hashes": [{"alg": "SHA-256", "content": image_sha256}],
            },
        },
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": [c["bom-ref"] for c in components]}],
    }
