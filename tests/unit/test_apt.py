from __future__ import annotations

from pathlib import Path

from tuoba.apt import debian_mirrors, security_mirrors


def test_mirrors_from_deb822_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://a.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
    )
    assert debian_mirrors("bookworm", tmp_path) == [
        "http://mirror.example/debian",
        "http://a.example/debian",
    ]
    assert security_mirrors("bookworm", tmp_path) == ["http://a.example/debian-security"]
    assert debian_mirrors("trixie", tmp_path) == []
