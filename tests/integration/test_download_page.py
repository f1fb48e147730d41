"""The release's download page in a real browser: Debian's headless Chromium, driven by
Selenium through chromedriver, with JavaScript off (the page must not need it), opens the
page a loopback web server serves; every link on it resolves, the figures it shows are the
files' own, and Imager's catalog it points to lists addresses that resolve too. A screenshot
is kept (out/test-artifacts/download-page.png)."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import invoke
from tests.cli.test_release import RPI4, fake_build, keypair
from tests.conftest import ROOT, FileServer, serve_files

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "out" / "test-artifacts"
MIB = 1 << 20


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Debian's chromium and chromium-driver are needed (./dev test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        data: bytes = response.read()
        return data


def test_download_page_in_a_browser(project: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    fake_build(project / "out")
    fake_build(project / "out", RPI4, "rpi4")
    dest = tmp_path / "public"
    dest.mkdir()
    with serve_files(FileServer(dest)) as base:
        code, out = invoke(project, "release", str(dest), "--sign-key",
                           str(keypair(tmp_path / "k")), "--base-url", base)  # fmt: skip
        assert code == 0, out
        catalog = json.loads((dest / "catalog.json").read_text())
        driver = browser()
        try:
            driver.get(f"{base}/index.html")
            assert driver.title.startswith("TuobaOS 0.1.0")
            links = {a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")}
            shown = {}
            for row in driver.find_elements(By.CSS_SELECTOR, "tr.image"):
                size = row.find_element(By.CLASS_NAME, "size")
                shown[row.get_attribute("data-name")] = (
                    size.text,
                    size.get_attribute("data-bytes"),
                    row.find_element(By.CLASS_NAME, "sha256").text,
                    row.find_element(By.CLASS_NAME, "download").get_attribute("href"),
                )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "download-page.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()

        # every link resolves on the server, and what it serves is the release's file
        assert len(links) >= 15, links
        for link in sorted(links):
            assert link.startswith(base + "/"), link
            data = fetch(link)
            name = link.removeprefix(base + "/")
            assert data == (dest / name).read_bytes(), name
        # the figures shown are the files' own
        assert set(shown) == {i["name"] for i in catalog["images"]}
        for image in catalog["images"]:
            xz = next(f for f in image["files"] if f["role"] == "image")
            size_text, size_bytes, sha, href = shown[image["name"]]
            data = (dest / xz["name"]).read_bytes()
            assert size_text == f"{len(data) / MIB:.1f} MiB" and size_bytes == str(len(data))
            assert sha == hashlib.sha256(data).hexdigest()
            assert href == f"{base}/{xz['name']}"
        # Imager's catalog, linked from the page, lists addresses that resolve to its files
        assert f"{base}/os_list.json" in links
        (entry,) = json.loads(fetch(f"{base}/os_list.json"))["os_list"]
        for key in ("url", "icon", "website"):
            assert fetch(entry[key]) == (dest / entry[key].removeprefix(base + "/")).read_bytes()
        assert hashlib.sha256(fetch(entry["url"])).hexdigest() == entry["image_download_sha256"]
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    # the commands the page gives are the commands tuoba takes
    page = (dest / "index.html").read_text()
    assert "tuoba flash images/IMAGE.img.xz --device /dev/sdX --ssh-key" in page
    assert f"tuoba download --board BOARD --catalog {base}/catalog.json --out images/" in page
