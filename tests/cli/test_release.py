"""`tuoba release` and `tuoba download` for real: ssh-keygen signs and verifies, a real HTTP
server on loopback serves the release (with HTTP ranges, as web servers do), and misbehaving
ones cut a transfer midway, serve a tampered byte or a re-signed checksum list. The images are
small stand-ins with real manifests (tests/integration releases a built one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import invoke
from tests.conftest import FileServer, keypair, serve_files
from tuoba.manifest import Manifest

BOARD = "qemu-aarch64"
NAME = f"tuoba-{BOARD}-s1-0.1.0"


def fake_build(out: Path, name: str = NAME, board: str = BOARD, size: int = 3 << 20,
               recipes: tuple[str, ...] = ("base",)) -> None:  # fmt: skip
    """An out/ as `tuoba build` leaves it: image, xz, bmap, kernel and a manifest naming their
    hashes. The xz is 3 MiB of incompressible bytes, so a transfer can be cut midway."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        f"{name}.img": b"raw image " * 1000,
        f"{name}.img.xz": os.urandom(size),
        f"{name}.img.bmap": b"<bmap/>\n",
        f"{name}.Image": b"kernel " * 100,
    }
    for file, data in files.items():
        (out / file).write_bytes(data)
    manifest = Manifest(
        name=name, version="0.1.0", board=board, arch="arm64", stage=1, recipes=list(recipes),
        tests=[], hostname="h", inputs_digest="0" * 64,
        kernel={"version": "6.1.170-tuoba"},
        boot={"kernel": f"{name}.Image", "initrd": None, "cmdline": "", "qemu": None,
              "loaders": [], "supplied": []},
        partitions=[],
        sources={"linux_6.1.170.orig.tar.xz": {"sha256": "d" * 64, "origin": "Debian Sources"}},
        rootfs={},
        packages=[
            {"name": "bash", "version": "5.2.15-2+b7", "arch": "arm64",
             "license": "GPL-3.0-or-later"},
            {"name": "libc6", "version": "2.36-9+deb12u10", "arch": "arm64"},
            {"name": "perl-base", "version": "5.36.0-7", "arch": "arm64",
             "license": "GPL-1.0-or-later OR Artistic-1.0-Perl"},
            {"name": "busybox", "version": "1.35.0", "role": "package", "source_sha256": "e" * 64,
             "built_by": "Debian clang version 14.0.6", "target": "aarch64-linux-musl"},
        ],
        files={f: hashlib.sha256(d).hexdigest() for f, d in files.items()},
    )  # fmt: skip
    (out / f"{name}.manifest.json").write_text(manifest.to_json())


@contextlib.contextmanager
def serve(server: FileServer) -> Iterator[str]:
    """The release served on loopback; yields its catalog's URL."""
    with serve_files(server) as base:
        yield f"{base}/catalog.json"


@pytest.fixture
def released(project: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(release dir, private key, allowed_signers the user keeps) of a fake qemu-aarch64 build."""
    fake_build(project / "out")
    key = keypair(tmp_path / "release-key")
    dest = tmp_path / "public"
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key))
    assert code == 0, out
    trusted = tmp_path / "trusted_signers"
    trusted.write_text((dest / "allowed_signers").read_text())
    return dest, key, trusted


def download(project: Path, url: str, trusted: Path | None, *extra: str) -> tuple[int, str]:
    signers = ("--allowed-signers", str(trusted)) if trusted else ()
    return invoke(project, "--out", str(project / "dl"), "download", "--board", BOARD,
                  "--catalog", url, *signers, *extra)  # fmt: skip


def test_release_is_signed_listed_and_checksummed(released: tuple[Path, Path, Path]) -> None:
    dest, _, trusted = released
    catalog = json.loads((dest / "catalog.json").read_text())
    (image,) = catalog["images"]
    assert (image["board"], image["stage"], image["name"]) == (BOARD, 1, NAME)
    roles = {f["name"]: f["role"] for f in image["files"]}
    assert roles == {f"{NAME}.img.xz": "image", f"{NAME}.img.bmap": "bmap",
                     f"{NAME}.Image": "boot", f"{NAME}.manifest.json": "manifest",
                     f"{NAME}.spdx.json": "sbom", f"{NAME}.cdx.json": "sbom"}  # fmt: skip
    assert not (dest / f"{NAME}.img").exists(), "the raw image is not shipped, its xz is"
    subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=dest, check=True,
                   capture_output=True)  # fmt: skip
    assert "catalog.json" in (dest / "SHA256SUMS").read_text()
    with (dest / "SHA256SUMS").open("rb") as sums:  # ssh-keygen itself agrees
        subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(trusted), "-I", "release@tuoba",
                        "-n", "tuoba-release", "-s", str(dest / "SHA256SUMS.sig")],
                       stdin=sums, check=True, capture_output=True)  # fmt: skip


def test_download_verifies_and_keeps_the_files(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, trusted = released
    with serve(FileServer(dest)) as url:
        code, out = download(project, url, trusted)
    assert code == 0, out
    for name in (f"{NAME}.img.xz", f"{NAME}.img.bmap", f"{NAME}.Image", f"{NAME}.manifest.json",
                 f"{NAME}.spdx.json", f"{NAME}.cdx.json"):  # fmt: skip
        assert (project / "dl" / name).read_bytes() == (dest / name).read_bytes(), name
    assert not list((project / "dl").glob(".*")), "no partial files left"
    assert "tuoba flash" in out


def test_an_interrupted_transfer_resumes_with_a_range(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, trusted = released
    server = FileServer(dest)
    server.cut_first = {f"{NAME}.img.xz"}
    with serve(server) as url:
        code, out = download(project, url, trusted)
    assert code == 0, out
    xz_requests = [rng for name, rng in server.requests if name == f"{NAME}.img.xz"]
    assert xz_requests[0] is None and xz_requests[1] and xz_requests[1].startswith("bytes=")
    assert int(xz_requests[1].removeprefix("bytes=").rstrip("-")) > 0, xz_requests
    assert (project / "dl" / f"{NAME}.img.xz").read_bytes() == (
        dest / f"{NAME}.img.xz"
    ).read_bytes()


def test_a_partial_file_of_an_earlier_run_is_resumed(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, trusted = released
    data = (dest / f"{NAME}.img.xz").read_bytes()
    dl = project / "dl"
    dl.mkdir()
    (dl / f".{NAME}.img.xz.part").write_bytes(data[:1000])
    server = FileServer(dest)
    with serve(server) as url:
        etag = server.etag(dest / f"{NAME}.img.xz")
        assert etag == f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        sha = hashlib.sha256(data).hexdigest()
        (dl / f".{NAME}.img.xz.part.json").write_text(json.dumps(
            {"url": url.replace("catalog.json", f"{NAME}.img.xz"), "sha256": sha,
             "validator": etag}))  # fmt: skip
        code, out = download(project, url, trusted)
    assert code == 0, out
    assert (f"{NAME}.img.xz", "bytes=1000-") in server.requests
    # resumed, not started over
    assert [st for n, st in server.statuses if n == f"{NAME}.img.xz"] == [206]
    assert (dl / f"{NAME}.img.xz").read_bytes() == data


def test_a_tampered_byte_is_refused_and_nothing_kept(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, trusted = released
    server = FileServer(dest)
    server.tamper = {f"{NAME}.img.xz"}
    with serve(server) as url:
        code, out = download(project, url, trusted)
    assert code == 7, out
    said = " ".join(out.split())
    assert f"error: {NAME}.img.xz: downloaded" in said and "the release signs" in said, said
    assert not (project / "dl" / f"{NAME}.img.xz").exists()
    assert not list((project / "dl").glob(f".{NAME}.img.xz*")), "the bad bytes are not kept"


def test_checksums_signed_by_another_key_are_refused(
    project: Path, released: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    dest, _, trusted = released
    # someone swaps a byte of the image and re-signs SHA256SUMS (and the catalog) with their key
    xz = dest / f"{NAME}.img.xz"
    xz.write_bytes(b"\x00" + xz.read_bytes()[1:])
    other = keypair(tmp_path / "other-key")
    sums = dest / "SHA256SUMS"
    text = sums.read_text().splitlines()
    sha = hashlib.sha256(xz.read_bytes()).hexdigest()
    sums.write_text("".join(f"{sha}  {ln.split('  ')[1]}\n" if ln.endswith(".img.xz")
                            else ln + "\n" for ln in text))  # fmt: skip
    (dest / "SHA256SUMS.sig").unlink()
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(other), "-n", "tuoba-release",
                    str(sums)], check=True, capture_output=True)  # fmt: skip
    with serve(FileServer(dest)) as url:
        code, out = download(project, url, trusted)
    assert code == 7, out
    assert "SHA256SUMS.sig is not signed by a key in" in " ".join(out.split()), out
    assert not (project / "dl").exists() or not list((project / "dl").iterdir())


def test_without_allowed_signers_the_release_key_is_used_with_a_warning(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, _ = released
    with serve(FileServer(dest)) as url:
        code, out = download(project, url, None)
    assert code == 0, out
    assert "no --allowed-signers given" in " ".join(out.split())


def test_an_unknown_board_names_what_the_release_has(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, trusted = released
    with serve(FileServer(dest)) as url:
        code, out = invoke(project, "download", "--board", "rpi4", "--catalog", url,
                           "--allowed-signers", str(trusted))  # fmt: skip
    assert code == 2, out
    said = " ".join(out.split())
    assert "error: the release has no image for board 'rpi4' stage 1" in said
    assert f"it has: {BOARD} (stage 1)" in said


def test_a_catalog_url_that_is_no_catalog(project: Path, tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text("<html>not found</html>")
    with serve(FileServer(tmp_path)) as url:
        code, out = download(project, url, None)
    assert code == 7, out
    assert "not a TuobaOS release catalog" in " ".join(out.split())


def test_release_refuses_an_image_changed_since_its_build(project: Path, tmp_path: Path) -> None:
    fake_build(project / "out")
    (project / "out" / f"{NAME}.img.bmap").write_text("edited\n")
    code, out = invoke(project, "release", str(tmp_path / "public"), "--sign-key",
                       str(keypair(tmp_path / "k")))  # fmt: skip
    assert code == 2, out
    assert "is not the file its manifest recorded" in " ".join(out.split())
    assert not (tmp_path / "public" / "SHA256SUMS.sig").exists()


def test_release_of_a_board_not_built(project: Path, tmp_path: Path) -> None:
    fake_build(project / "out")
    code, out = invoke(project, "release", str(tmp_path / "public"), "--sign-key",
                       str(keypair(tmp_path / "k")), "--board", "rpi4")  # fmt: skip
    assert code == 2, out
    assert "no built image of board 'rpi4' stage 1" in " ".join(out.split())


def test_sboms_validate_and_name_every_package(released: tuple[Path, Path, Path]) -> None:
    """SPDX 2.3 checked by the SPDX project's own validator, CycloneDX 1.6 by its schema."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    dest, _, _ = released
    spdx_file = dest / f"{NAME}.spdx.json"
    problems = validate_full_spdx_document(parse_file(str(spdx_file)))
    assert not problems, [p.validation_message for p in problems]
    spdx = json.loads(spdx_file.read_text())
    by_name = {p["name"]: p for p in spdx["packages"]}
    assert by_name["bash"]["licenseDeclared"] == "GPL-3.0-or-later"
    assert by_name["libc6"]["licenseDeclared"] == "NOASSERTION"  # not machine-readable: no guess
    assert by_name["bash"]["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/bash@5.2.15-2%2Bb7?distro=debian-12&arch=arm64"
    )
    assert by_name["linux_6.1.170.orig.tar.xz"]["checksums"][0]["checksumValue"] == "d" * 64
    xz_sha = hashlib.sha256((dest / f"{NAME}.img.xz").read_bytes()).hexdigest()
    assert by_name[NAME]["checksums"][0]["checksumValue"] == xz_sha

    cdx_text = (dest / f"{NAME}.cdx.json").read_text()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(cdx_text)
    assert error is None, error
    cdx = json.loads(cdx_text)
    names = {c["name"] for c in cdx["components"]}
    assert {"bash", "libc6", "perl-base", "busybox", "linux"} <= names
    perl = next(c for c in cdx["components"] if c["name"] == "perl-base")
    assert perl["licenses"] == [{"expression": "GPL-1.0-or-later OR Artistic-1.0-Perl"}]


def test_release_notes_say_what_changed_since_the_last_release(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, key, _ = released
    notes = (dest / "RELEASE-NOTES.md").read_text()
    assert "First release of this image: 4 packages." in notes, notes
    # the next build: bash upgraded, libc6 gone, curl new, the kernel rebuilt with another config
    m_file = project / "out" / f"{NAME}.manifest.json"
    m = json.loads(m_file.read_text())
    m["packages"] = [p for p in m["packages"] if p["name"] != "libc6"]
    m["packages"][0]["version"] = "5.2.15-2+b8"
    m["packages"].append({"name": "curl", "version": "7.88.1-10", "arch": "arm64"})
    m["kernel"]["config_sha256"] = "f" * 64
    m["kernel"]["config_digest"] = "e" * 64
    m["inputs_digest"] = "1" * 64
    m_file.write_text(json.dumps(m))
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key))
    assert code == 0, out
    notes = (dest / "RELEASE-NOTES.md").read_text()
    for line in (
        "- added curl 7.88.1-10",
        "- removed libc6 2.36-9+deb12u10",
        "- upgraded bash 5.2.15-2+b7 -> 5.2.15-2+b8",
        "- kernel configuration changed",
        "(config ffffffffffff)",
    ):
        assert line in notes, notes
    assert "RELEASE-NOTES.md" in (dest / "SHA256SUMS").read_text()


def test_flash_refuses_a_key_that_is_no_public_key_before_writing(
    project: Path, tmp_path: Path
) -> None:
    fake_build(project / "out")
    card = tmp_path / "card"
    card.write_bytes(b"\xaa" * 4096)
    code, out = invoke(project, "flash", str(project / "out" / f"{NAME}.img.xz"), "--device",
                       str(card), "--yes", "--ssh-key", "/etc/passwd")  # fmt: skip
    assert code == 2, out
    assert "--ssh-key /etc/passwd: not an OpenSSH public key" in " ".join(out.split())
    assert card.read_bytes() == b"\xaa" * 4096


def test_flash_with_a_key_needs_the_manifest_beside_the_image(
    project: Path, tmp_path: Path
) -> None:
    fake_build(project / "out")
    (project / "out" / f"{NAME}.manifest.json").unlink()
    key = keypair(tmp_path / "k").with_suffix(".pub")
    card = tmp_path / "card"
    card.write_bytes(b"\xaa" * 4096)
    code, out = invoke(project, "flash", str(project / "out" / f"{NAME}.img.xz"), "--device",
                       str(card), "--yes", "--ssh-key", str(key))  # fmt: skip
    assert code == 6, out
    assert "cannot find the root partition" in " ".join(out.split())
    assert card.read_bytes() == b"\xaa" * 4096


def test_release_without_the_raw_image(project: Path, tmp_path: Path) -> None:
    """A release ships the .xz: the multi-GB raw .img may be gone (a CI job that kept only
    the compressed artifacts)."""
    fake_build(project / "out")
    (project / "out" / f"{NAME}.img").unlink()
    code, out = invoke(project, "release", str(tmp_path / "public"), "--sign-key",
                       str(keypair(tmp_path / "k")))  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "public" / "SHA256SUMS.sig").is_file()


def test_a_file_missing_on_the_server_is_one_sentence(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, trusted = released
    (dest / f"{NAME}.img.bmap").unlink()  # the server lost a file
    with serve(FileServer(dest)) as url:
        code, out = download(project, url, trusted)
    assert code == 7, out
    said = " ".join(out.split())
    assert f"error: {NAME}.img.bmap: 0 of" in said and "HTTP 404" in said, said
    assert "Traceback" not in out


def test_a_catalog_image_without_its_image_file_is_refused(
    project: Path, released: tuple[Path, Path, Path]
) -> None:
    dest, _, _ = released
    cat = json.loads((dest / "catalog.json").read_text())
    cat["images"][0]["files"] = [f for f in cat["images"][0]["files"] if f["role"] != "image"]
    (dest / "catalog.json").write_text(json.dumps(cat))
    with serve(FileServer(dest)) as url:
        code, out = download(project, url, None)
    assert code == 7, out
    assert "without one image file" in " ".join(out.split()), out


# --- Raspberry Pi Imager's catalog and the download page -----------------------------------

# What Imager's os_list schema (its repository's doc/json-schema/os-list-schema.json) asks of a
# catalog with image entries: only `imager` and `os_list` at the top; each image entry with
# these fields of these types (other fields are allowed).
IMAGER_SCHEMA = {
    "type": "object",
    "required": ["os_list"],
    "additionalProperties": False,
    "properties": {
        "imager": {"type": "object"},
        "os_list": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "description", "icon", "url", "extract_size",
                             "extract_sha256", "image_download_size", "release_date"],
                "properties": {
                    "name": {"type": "string"}, "description": {"type": "string"},
                    "icon": {"type": "string"}, "url": {"type": "string"},
                    "extract_size": {"type": "integer"}, "extract_sha256": {"type": "string"},
                    "image_download_size": {"type": "integer"},
                    "image_download_sha256": {"type": "string"},
                    "release_date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                    "devices": {"type": "array", "items": {"type": "string"}},
                    "website": {"type": "string"},
                },
            },
        },
    },
}  # fmt: skip
RPI4 = "tuoba-rpi4-s1-0.1.0"
BASE_URL = "https://dl.example.org/tuoba/0.1.0"


def test_imager_catalog_lists_the_raspberry_pi_images(project: Path, tmp_path: Path) -> None:
    """With --base-url, os_list.json lists rpi4's image (board.yaml: pi4-64bit) in Imager's
    format with the files' real sizes and hashes; qemu-aarch64 (no Imager devices) is not in
    it; the list is covered by the signed SHA256SUMS."""
    import jsonschema

    fake_build(project / "out")
    fake_build(project / "out", RPI4, "rpi4", recipes=("base", "bpf", "sdcard", "imager"))
    dest = tmp_path / "public"
    code, out = invoke(project, "release", str(dest), "--sign-key",
                       str(keypair(tmp_path / "k")), "--base-url", BASE_URL + "/")  # fmt: skip
    assert code == 0, out
    listing = json.loads((dest / "os_list.json").read_text())
    jsonschema.validate(listing, IMAGER_SCHEMA)
    (entry,) = listing["os_list"]
    xz, raw = project / "out" / f"{RPI4}.img.xz", project / "out" / f"{RPI4}.img"
    assert entry["devices"] == ["pi4-64bit"]
    assert entry["url"] == f"{BASE_URL}/{RPI4}.img.xz"
    assert entry["icon"] == f"{BASE_URL}/tuoba-icon.png"
    assert entry["image_download_size"] == xz.stat().st_size
    assert entry["image_download_sha256"] == hashlib.sha256(xz.read_bytes()).hexdigest()
    assert entry["extract_sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert entry["init_format"] == "systemd"  # the imager recipe takes Imager's firstrun.sh
    assert "with bpf, sdcard;" in entry["description"]
    assert (dest / "tuoba-icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sums = (dest / "SHA256SUMS").read_text()
    assert all(f"  {n}\n" in sums for n in ("os_list.json", "index.html", "tuoba-icon.png"))


def test_no_imager_catalog_without_a_base_url(project: Path, tmp_path: Path) -> None:
    fake_build(project / "out", RPI4, "rpi4")
    dest = tmp_path / "public"
    code, out = invoke(project, "release", str(dest), "--sign-key", str(keypair(tmp_path / "k")))
    assert code == 0, out
    assert not (dest / "os_list.json").exists()
    said = " ".join(out.split())
    assert "no Imager catalog (os_list.json) in this release: no --base-url" in said
    assert "made without <code>--base-url</code>" in (dest / "index.html").read_text()


def test_a_base_url_that_is_not_http_is_refused(project: Path, tmp_path: Path) -> None:
    fake_build(project / "out", RPI4, "rpi4")
    code, out = invoke(project, "release", str(tmp_path / "p"), "--sign-key",
                       str(keypair(tmp_path / "k")), "--base-url", "dl.example.org")  # fmt: skip
    assert code == 2 and "'dl.example.org' is not an http(s) URL" in out, out
    assert not (tmp_path / "p").exists()


def test_release_from_several_output_directories(project: Path, tmp_path: Path) -> None:
    """`--from` takes images from directories of their own (what `tuoba matrix` leaves); the
    same board and stage in two of them is refused before anything is written."""
    fake_build(project / "cells" / "qemu-aarch64-s1")
    fake_build(project / "cells" / "rpi4-s1", RPI4, "rpi4")
    key = keypair(tmp_path / "k")
    dest = tmp_path / "public"
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key),
                       "--from", str(project / "cells" / "qemu-aarch64-s1"),
                       "--from", str(project / "cells" / "rpi4-s1"))  # fmt: skip
    assert code == 0, out
    catalog = json.loads((dest / "catalog.json").read_text())
    assert [i["board"] for i in catalog["images"]] == ["qemu-aarch64", "rpi4"]

    fake_build(project / "cells" / "again")
    code, out = invoke(project, "release", str(tmp_path / "other"), "--sign-key", str(key),
                       "--from", str(project / "cells" / "qemu-aarch64-s1"),
                       "--from", str(project / "cells" / "again"))  # fmt: skip
    assert code == 2, out
    assert "board 'qemu-aarch64' stage 1 was built in both" in out
    assert not (tmp_path / "other").exists()


def test_release_add_keeps_what_was_released_before(project: Path, tmp_path: Path) -> None:
    """Boards released one after another with --add make one release: the catalog, checksums,
    signature, page and notes hold both; without --add a release replaces the catalog."""
    fake_build(project / "a")
    fake_build(project / "b", RPI4, "rpi4")
    key = keypair(tmp_path / "k")
    dest = tmp_path / "public"
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key),
                       "--from", str(project / "a"))  # fmt: skip
    assert code == 0, out
    first_notes = (dest / "RELEASE-NOTES.md").read_text()
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key), "--add",
                       "--from", str(project / "b"))  # fmt: skip
    assert code == 0, out
    assert f"kept in the release: {NAME}" in out
    catalog = json.loads((dest / "catalog.json").read_text())
    assert {i["name"] for i in catalog["images"]} == {NAME, RPI4}
    sums = (dest / "SHA256SUMS").read_text()
    for image in catalog["images"]:
        for f in image["files"]:
            assert f"{f['sha256']}  {f['name']}\n" in sums
    signer = (dest / "allowed_signers").read_text()
    (tmp_path / "signers").write_text(signer)
    subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "signers"), "-I",
                    signer.split()[0], "-n", "tuoba-release", "-s", str(dest / "SHA256SUMS.sig")],
                   input=sums.encode(), check=True, capture_output=True)  # fmt: skip
    notes = (dest / "RELEASE-NOTES.md").read_text()
    kept_section = first_notes[first_notes.index("## ") :]
    assert kept_section in notes and f"## rpi4, stage 1 (arm64): {RPI4}" in notes
    page = (dest / "index.html").read_text()
    assert f"{NAME}.img.xz" in page and f"{RPI4}.img.xz" in page

    # a kept image whose file changed (even keeping its size) is refused, and the release
    # stays as it was (signed); releasing that board again replaces it
    bmap = dest / f"{NAME}.img.bmap"
    bmap.write_bytes(bmap.read_bytes().replace(b"bmap", b"BMAP"))
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key), "--add",
                       "--from", str(project / "b"))  # fmt: skip
    assert code == 2, out
    assert f"{NAME} of its release is not as its catalog lists it" in out
    assert (dest / "SHA256SUMS.sig").is_file()
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key), "--add",
                       "--from", str(project / "a"))  # fmt: skip
    assert code == 0, out
    assert f"kept in the release: {RPI4}" in out
    assert bmap.read_bytes() == (project / "a" / bmap.name).read_bytes()
    assert not list(tmp_path.glob("public/.*lock"))  # (its lock is beside it: not served)

    # without --add the catalog holds what this release names
    code, out = invoke(project, "release", str(dest), "--sign-key", str(key),
                       "--from", str(project / "b"))  # fmt: skip
    assert code == 0, out
    assert [i["name"] for i in json.loads((dest / "catalog.json").read_text())["images"]] == [RPI4]
