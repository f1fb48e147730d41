"""Licences for the SBOMs: Debian's machine-readable copyright files, translated to SPDX only
where the name is known (never a guess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuoba.sbom import debian_licences, spdx_licence


@pytest.mark.parametrize(
    ("debian", "spdx"),
    [
        ("GPL-2+", "GPL-2.0-or-later"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("Expat", "MIT"),
        ("GPL-1+ or Artistic", "GPL-1.0-or-later OR Artistic-1.0-Perl"),
        ("BSD-3-clause and ISC", "BSD-3-Clause AND ISC"),
        ("GPL-2 with OpenSSL exception", None),
        ("public-domain", None),
        ("GPL-2+ or Artistic and MIT", None),  # mixed operators: not translated
        ("Some-Custom-Licence", None),
    ],
)
def test_debian_short_names(debian: str, spdx: str | None) -> None:
    assert spdx_licence(debian) == spdx


def test_licences_come_from_the_files_star_stanza(tmp_path: Path) -> None:
    doc = tmp_path / "usr/share/doc"
    (doc / "bash").mkdir(parents=True)
    (doc / "bash/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: bash\n\n"
        "Files: examples/*\nCopyright: x\nLicense: BSD-3-clause\n\n"
        "Files: *\nCopyright: FSF\nLicense: GPL-3+\n\n"
        "License: GPL-3+\n text\n"
    )
    (doc / "old").mkdir()
    (doc / "old/copyright").write_text("This package was debianized by …\nGPL-2\n")  # free text
    assert debian_licences(tmp_path) == {"bash": "GPL-3.0-or-later"}
