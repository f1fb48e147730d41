"""Guest checks for the `wifi` recipe (stage 1): the Raspberry Pis' Wi-Fi stack, as far as a
machine without a Wi-Fi chip proves it (QEMU emulates none; the SDIO chip itself, its power-up
and its firmware's download need a board).

- every firmware file brcmfmac names for the Pi 4's and the Pi 3's chips (`modinfo`) is there,
  with the NVRAM file named after each board's device tree;
- brcmfmac loads;
- cfg80211 takes the regulatory database the image selects (the kernel checks its signature):
  a country given the way Raspberry Pi Imager gives it (`cfg80211.ieee80211_regdom=GB` on the
  kernel command line: the module's parameter) becomes the kernel's regulatory domain, and so
  does one set with `iw reg set`;
- two software radios (mac80211_hwsim): one is the access point of a WPA2 network
  (wpa_supplicant in AP mode), the other a client configured the way Imager's settings
  configure wlan0 (imager recipe, `set_wlan`: the country, the SSID in hex, the 64-hex-digit
  PSK Imager derives from the passphrase) — it associates and completes the WPA2 handshake.

The checks load and unload the Wi-Fi modules themselves and leave none loaded.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.guest

# what brcmfmac asks for on each board: the chip's files and the NVRAM named after the board's
# device tree's first compatible (brcmfmac43455-sdio.raspberrypi,4-model-b.txt …)
BOARDS = {"4-model-b": "brcmfmac43455-sdio", "3-model-b": "brcmfmac43430-sdio"}
MODULES = "brcmfmac brcmutil mac80211_hwsim mac80211 cfg80211"
SSID, PASSPHRASE, COUNTRY = "Tuoba Lab", "correct horse battery", "GB"
WORK = "/run/tuoba-wifi-check"


def ok(host: Any, command: str, limit: int = 120) -> str:
    res = host.run(f"timeout {limit} sh -c {shlex.quote(command)}")
    assert res.rc == 0, f"{command}: exit {res.rc}\n{res.stdout}\n{res.stderr}"
    return str(res.stdout)


def until(host: Any, command: str, pattern: str, limit: float = 60) -> str:
    """The output of `command` once it matches `pattern` (tried every second)."""
    deadline = time.monotonic() + limit
    out = ""
    while time.monotonic() < deadline:
        out = str(host.run(command).stdout)
        if re.search(pattern, out):
            return out
        time.sleep(1)
    raise AssertionError(f"{command}: no {pattern!r} in {limit:.0f} s; last output:\n{out}")


@pytest.fixture
def unloaded(host: Any) -> Iterator[None]:
    """No Wi-Fi module loaded before the check nor after it (the wpa_supplicants a check
    started end first: they write their pids into its directory)."""
    stop = f"cat {WORK}/*.pid 2>/dev/null | xargs -r kill; sleep 1; modprobe -r {MODULES}"
    host.run(stop)
    assert not host.file("/sys/module/cfg80211").exists, "cfg80211 could not be unloaded"
    host.run(f"rm -rf {WORK} && mkdir -p {WORK}")
    yield
    host.run(stop)
    host.run(f"rm -rf {WORK}")


def test_brcmfmac_firmware_for_each_pi(host: Any) -> None:
    named = ok(host, "modinfo -F firmware brcmfmac").split()
    for board, chip in BOARDS.items():
        wanted = [n for n in named if n.startswith(f"brcm/{chip}.")]
        assert wanted, f"brcmfmac names no firmware of {chip}: {named}"
        for name in (*wanted, f"brcm/{chip}.raspberrypi,{board}.txt"):
            assert host.file(f"/lib/firmware/{name}").exists, f"{name} (Pi {board}) is missing"


def test_brcmfmac_loads(host: Any, unloaded: None) -> None:
    ok(host, "modprobe brcmfmac")
    assert host.file("/sys/module/brcmfmac").is_directory
    assert host.file("/sys/module/cfg80211").is_directory  # (what it needs came with it)


def test_regulatory_database_is_the_one_the_kernel_trusts(host: Any) -> None:
    assert ok(host, "readlink -f /lib/firmware/regulatory.db").strip().endswith("-upstream")
    query = ok(host, "update-alternatives --query regulatory.db")
    assert "Status: manual" in query and "Value: /lib/firmware/regulatory.db-upstream" in query


def test_country_from_imagers_kernel_parameter(host: Any, unloaded: None) -> None:
    """cfg80211.ieee80211_regdom=GB (Imager's cmdline.txt word) is cfg80211's parameter,
    which the kernel hands the module as it loads; given to modprobe here (the same parameter:
    this image's command line has no such word), the module asks for GB's rules from
    regulatory.db, and the kernel takes them only when the database's signature verifies."""
    ok(host, f"modprobe cfg80211 ieee80211_regdom={COUNTRY}")
    until(host, "iw reg get", rf"(?m)^country {COUNTRY}: ")
    ok(host, "iw reg set DE")
    until(host, "iw reg get", r"(?m)^country DE: ")
    log = ok(host, "dmesg | grep -i cfg80211 || true")
    assert "failed to load regulatory.db" not in log, log


def test_wpa2_network_as_imager_configures_it_associates(host: Any, unloaded: None) -> None:
    ok(host, "modprobe mac80211_hwsim radios=2")
    links = until(host, "iw dev | awk '$1 == \"Interface\" {print $2}'", r"\S+\s+\S+", 30)
    client, ap = sorted(links.split())[:2]
    psk = hashlib.pbkdf2_hmac("sha1", PASSPHRASE.encode(), SSID.encode(), 4096, 32).hex()
    ap_conf = (
        f'ctrl_interface={WORK}/ap\nnetwork={{\n\tssid="{SSID}"\n\tmode=2\n\tfrequency=2412\n'
        "\tkey_mgmt=WPA-PSK\n\tproto=RSN\n\tpairwise=CCMP\n\tgroup=CCMP\n"
        f'\tpsk="{PASSPHRASE}"\n}}\n'
    )
    # what set_wlan writes for Imager's SSID, PSK and country (wpa_supplicant-wlan0.conf)
    client_conf = (
        f"country={COUNTRY}\nctrl_interface=DIR={WORK}/client\nupdate_config=1\n"
        f"network={{\n\tssid={SSID.encode().hex()}\n\tpsk={psk}\n}}\n"
    )
    for name, text in (("ap.conf", ap_conf), ("client.conf", client_conf)):
        ok(host, f"printf %s {shlex.quote(text)} > {WORK}/{name}")
    ok(host, f"wpa_supplicant -B -i {ap} -c {WORK}/ap.conf -P {WORK}/ap.pid")
    until(host, f"wpa_cli -p {WORK}/ap -i {ap} status", r"(?m)^wpa_state=COMPLETED$", 60)
    ok(host, f"wpa_supplicant -B -i {client} -c {WORK}/client.conf -P {WORK}/client.pid")
    status = until(host, f"wpa_cli -p {WORK}/client -i {client} status",
                   r"(?m)^wpa_state=COMPLETED$", 90)  # fmt: skip
    assert f"\nssid={SSID}\n" in status and "key_mgmt=WPA2-PSK" in status, status
    ap_mac = ok(host, f"cat /sys/class/net/{ap}/address").strip()
    link = ok(host, f"iw dev {client} link")
    assert f"Connected to {ap_mac}" in link and f"SSID: {SSID}" in link, link
