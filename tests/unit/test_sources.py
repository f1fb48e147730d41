"""Fetching against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tuoba.cache import Store
from tuoba.errors import BuildError
from tuoba.sources import Source, cached, fetch

PAYLOAD = b"tuoba source payload\n" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.hits.append(self.path)
        if self.path.startswith("/good/"):
            body = PAYLOAD
        elif self.path.startswith("/evil/"):
            body = PAYLOAD + b"x"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_verified_into_cache(server: str, tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = fetch(Source("s", f"{server}/good/s.tar", SHA), store)
    assert path == cached(store, SHA)
    assert path.read_bytes() == PAYLOAD
    entry = store.get("source", SHA)
    assert entry is not None and entry.meta.size == len(PAYLOAD)
    assert entry.meta.inputs == {"url": f"{server}/good/s.tar"}
    # second fetch comes from the cache
    fetch(Source("s", f"{server}/good/s.tar", SHA), store)
    assert Handler.hits == ["/good/s.tar"]


def test_mirror_fallback(server: str, tmp_path: Path) -> None:
    src = Source("s", f"{server}/missing/s.tar", SHA, mirrors=(f"{server}/good/s.tar",))
    assert fetch(src, Store(tmp_path)).read_bytes() == PAYLOAD
    assert Handler.hits == ["/missing/s.tar", "/good/s.tar"]


def test_debian_url_resolves_against_host_mirrors(server: str, tmp_path: Path) -> None:
    src = Source("s", "debian:pool/main/s/s.deb", SHA)
    fetch(src, Store(tmp_path), debian_mirrors=[f"{server}/missing", f"{server}/good"])
    assert Handler.hits == ["/missing/pool/main/s/s.deb", "/good/pool/main/s/s.deb"]


def test_checksum_mismatch_is_refused_and_nothing_cached(server: str, tmp_path: Path) -> None:
    with pytest.raises(BuildError) as e:
        fetch(Source("s", f"{server}/evil/s.tar", SHA), Store(tmp_path))
    assert SHA in e.value.message
    assert hashlib.sha256(PAYLOAD + b"x").hexdigest() in e.value.message
    assert cached(Store(tmp_path), SHA) is None
    assert not list((tmp_path / "store" / "source").glob("*"))  # no partial file either


def test_all_urls_failing_lists_them(server: str, tmp_path: Path) -> None:
    src = Source("s", f"{server}/missing/a", SHA, mirrors=("http://127.0.0.1:9/b",))
    with pytest.raises(BuildError, match="could not download source 's'") as e:
        fetch(src, Store(tmp_path), timeout=2)
    assert "HTTP 404" in (e.value.hint or "")
    assert "127.0.0.1:9/b" in (e.value.hint or "")


def test_offline_uses_cache_or_names_what_is_missing(server: str, tmp_path: Path) -> None:
    src = Source("thing.tar", f"{server}/good/s.tar", SHA)
    with pytest.raises(BuildError, match=r"'thing.tar' .* not in the cache"):
        fetch(src, Store(tmp_path), offline=True)
    assert Handler.hits == []
    fetch(src, Store(tmp_path))
    assert fetch(src, Store(tmp_path), offline=True).read_bytes() == PAYLOAD


def test_pinned_source_entries_are_validated_with_locations(project: Path) -> None:
    from tuoba.errors import InputError
    from tuoba.host import pinned_tool
    from tuoba.kbuild import load_source

    tools = project / "host/tools.yaml"
    tools.write_text(tools.read_text().replace("sha256: ef56", "sha256: XX56"))
    with pytest.raises(
        InputError, match=r"host/tools\.yaml:\d+ -> mkosi -> sha256: .* not a sha256"
    ):
        pinned_tool(project, "mkosi")
    kernel = project / "kernel/sources.yaml"
    kernel.write_text(kernel.read_text().replace("  url:", "  uri:"))
    with pytest.raises(
        InputError, match=r"kernel/sources\.yaml:\d+ -> tarball -> uri: unknown key"
    ):
        load_source(project)
