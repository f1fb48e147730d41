"""The release the run's image modules made together (tests/conftest.py: the joined release):
qemu-aarch64 and rpi4 in both stages, and rpi3's stage 2, each built by its own module (on
either xdist worker), added with `tuoba release --add`, downloaded back with a resume, flashed
to a loop device and booted there. This module comes last and waits for them; then it checks
the release as a whole, as a user and a mirror would: the signature over SHA256SUMS, every
file against it, every SBOM by its validator, Raspberry Pi Imager's catalog by Imager's schema
(its addresses under the release's public URL, resolved here on loopback), and the download
page in a real headless Chromium, every link resolving to the release's own bytes. A
screenshot is kept (out/test-artifacts/joined-release.png)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli.test_release import IMAGER_SCHEMA
from tests.conftest import (
    JOINED_BASE_URL,
    PRODUCERS,
    ROOT,
    FileServer,
    Joined,
    needs_root,
    serve_files,
)
from tests.integration.test_download_page import browser

# (the wait below covers the developer image's module with a cold cache, and leaves the
# checks their time within the limit)
pytestmark = [pytest.mark.integration, needs_root, pytest.mark.timeout(5400)]

WAIT = 75 * 60
# The tests that add an image to the joined release (module::name), and the image each adds:
# in a whole run, the issue's "done when" (qemu-aarch64 and rpi4, both stages) and rpi3's
# stage 2.
RELEASING = {
    "test_qemu_aarch64.py::test_guest_checks_pass_on_the_released_image_flashed_to_a_card":
        ("qemu-aarch64", 1),
    "test_qemu_aarch64_stage2.py::test_guest_checks_pass_on_the_released_image_flashed_to_a_card":
        ("qemu-aarch64", 2),
    "test_rpi.py::test_stage2_boots_in_qemu_raspi[rpi3-raspi3b]": ("rpi3", 2),
    "test_rpi.py::test_stage2_boots_in_qemu_raspi[rpi4-raspi4b]": ("rpi4", 2),
    "test_rpi.py::test_imager_customisation_takes_effect_on_raspi4b": ("rpi4", 1),
}  # fmt: skip
MIB = 1 << 20


def sha256_url(url: str) -> tuple[str, int]:
    """The sha256 and size of what a URL serves, read a MiB at a time."""
    h, size = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200, url
        while chunk := response.read(MIB):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def wait_for_producers(joined: Joined, producers: list[str]) -> None:
    deadline = time.monotonic() + WAIT
    while missing := [m for m in producers if not (joined.root / "done" / m).exists()]:
        assert time.monotonic() < deadline, f"{', '.join(missing)} did not end in {WAIT} s"
        time.sleep(5)


def test_the_images_released_together(
    joined: Joined, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import jsonschema
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from selenium.webdriver.common.by import By
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    selected = {f"{item.path.name}::{item.name}" for item in request.session.items}
    expected = {image for test, image in RELEASING.items() if test in selected}
    if not expected:
        pytest.skip(f"the joined release is made by the release tests of {', '.join(PRODUCERS)}, "
                    "and none of them is in this run (./dev test runs them all)")  # fmt: skip
    producers = sorted({test.split("::")[0] for test in RELEASING if test in selected})
    wait_for_producers(joined, producers)
    public = joined.public
    with joined.locked(shared=True):  # (every producer has ended; a stray one would wait)
        assert (public / "catalog.json").is_file(), "no release test added its image"
        catalog = json.loads((public / "catalog.json").read_text())
        sums_text = (public / "SHA256SUMS").read_text()
    images = {i["name"]: i for i in catalog["images"]}
    missing = expected - {(i["board"], i["stage"]) for i in images.values()}
    assert not missing, f"not in the joined release (their tests failed: see above): {missing}"

    # the signature over SHA256SUMS (ssh-keygen itself, with the signer the user keeps), and
    # every file of the catalog as SHA256SUMS lists it
    signer = joined.trusted.read_text().split()[0]
    subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(joined.trusted), "-I", signer,
                    "-n", "tuoba-release", "-s", str(public / "SHA256SUMS.sig")],
                   input=sums_text.encode(), check=True, capture_output=True)  # fmt: skip
    sums = {line[66:]: line[:64] for line in sums_text.splitlines()}
    for image in images.values():
        for f in image["files"]:
            assert sums.get(f["name"]) == f["sha256"], f["name"]
            assert (public / f["name"]).stat().st_size == f["size"], f["name"]
    for name in ("catalog.json", "index.html", "os_list.json", "RELEASE-NOTES.md"):
        assert sums[name] == hashlib.sha256((public / name).read_bytes()).hexdigest(), name

    # the SBOMs of the real images, by the SPDX project's validator and CycloneDX's schema
    for image in images.values():
        spdx = public / f"{image['name']}.spdx.json"
        problems = validate_full_spdx_document(parse_file(str(spdx)))
        assert not problems, (spdx.name, [p.validation_message for p in problems][:5])
        error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(
            (public / f"{image['name']}.cdx.json").read_text()
        )
        assert error is None, (image["name"], error)
    notes = (public / "RELEASE-NOTES.md").read_text()
    for image in images.values():
        assert f"): {image['name']}\n" in notes, f"the notes have no section for {image['name']}"

    # Imager's catalog: its schema, the Raspberry Pi images (and only those), each address
    # under the public URL, the files' own sizes and hashes
    listing = json.loads((public / "os_list.json").read_text())
    jsonschema.validate(listing, IMAGER_SCHEMA)
    pis = {n: i for n, i in images.items() if i["board"] in ("rpi3", "rpi4")}
    by_url = {e["url"]: e for e in listing["os_list"]}
    assert set(by_url) == {f"{JOINED_BASE_URL}/{n}.img.xz" for n in pis}
    for name, image in pis.items():
        entry = by_url[f"{JOINED_BASE_URL}/{name}.img.xz"]
        xz = next(f for f in image["files"] if f["role"] == "image")
        assert entry["image_download_sha256"] == xz["sha256"]
        assert entry["image_download_size"] == xz["size"]
        assert entry["extract_size"] == image["image_size"]
        manifest = json.loads((public / f"{name}.manifest.json").read_text())
        assert entry["extract_sha256"] == manifest["files"][f"{name}.img"]
        assert entry["devices"] == [f"pi{image['board'][-1]}-64bit"]

    # served on loopback: the page in Chromium (no JavaScript), every link resolves to the
    # release's bytes, the figures shown are the files' own; Imager's addresses too
    with serve_files(FileServer(public)) as base:
        driver = browser()
        try:
            driver.get(f"{base}/index.html")
            assert driver.title.startswith("TuobaOS ")
            links = {a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")}
            shown = {
                row.get_attribute("data-name"): (
                    row.find_element(By.CLASS_NAME, "size").get_attribute("data-bytes"),
                    row.find_element(By.CLASS_NAME, "sha256").text,
                    row.find_element(By.CLASS_NAME, "download").get_attribute("href"),
                )
                for row in driver.find_elements(By.CSS_SELECTOR, "tr.image")
            }
            shot = ROOT / "out" / "test-artifacts" / "joined-release.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()
        assert set(shown) == set(images)
        for name, (size, sha, href) in shown.items():
            xz = next(f for f in images[name]["files"] if f["role"] == "image")
            assert (int(size), sha, href) == (xz["size"], xz["sha256"], f"{base}/{xz['name']}")
        for link in sorted(links):
            assert link.startswith(base + "/"), link
            file = link.removeprefix(base + "/")
            assert sha256_url(link) == (
                hashlib.sha256((public / file).read_bytes()).hexdigest()
                if (public / file).stat().st_size < 64 * MIB
                else sums[file],
                (public / file).stat().st_size,
            ), file
        for entry in listing["os_list"]:
            for key in ("url", "icon"):
                local = base + entry[key].removeprefix(JOINED_BASE_URL)
                assert sha256_url(local)[0] == sums[entry[key].rsplit("/", 1)[1]], entry[key]
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    shutil.rmtree(joined.root, ignore_errors=True)  # (GiBs of images: kept only on a failure)
