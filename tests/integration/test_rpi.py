"""Raspberry Pi images: checked structurally (partition table, boot files on the FAT partition
matching the build, the board's device tree, root by PARTUUID, fstab, the shared TuobaOS kernel)
and booted in QEMU's raspi3b / raspi4b machines with the serial-console checks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    Joined,
    copy_project,
    ext4_file,
    flashed_release,
    needs_root,
    partition_table,
    tuoba_build,
    tuoba_test,
)
from tuoba.plan import image_name

pytestmark = pytest.mark.integration

MIB = 1 << 20
BOARDS = {
    # board: (firmware files, device tree, a compatible string the DTB must carry)
    "rpi4": (["start4.elf", "fixup4.dat"], "bcm2711-rpi-4-b.dtb", b"raspberrypi,4-model-b"),
    "rpi3": (
        ["bootcode.bin", "start.elf", "fixup.dat"],
        "bcm2837-rpi-3-b.dtb",
        b"raspberrypi,3-model-b",
    ),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("rpi") / "project")


@pytest.fixture(scope="module", params=sorted(BOARDS))
def built(request: pytest.FixtureRequest, project: Path) -> tuple[str, Path]:
    """rpi4's stage 1 as it is released (the developer image, `-r tuoba`); rpi3's as is."""
    return build(project, request.param, 1, *(("-r", "tuoba") if request.param == "rpi4" else ()))


def build(project: Path, board: str, stage: int = 1, *extra: str) -> tuple[str, Path]:
    proc = tuoba_build(project, board, "--stage", str(stage), *extra)
    assert proc.returncode == 0, proc.stderr
    return board, project / "out" / f"{image_name(board, stage)}.img"


def partuuids(img: Path) -> tuple[str, str]:
    """(boot, root) PARTUUIDs as the kernel sees an MBR disk: <disk id>-<partition number>."""
    disk_id = str(partition_table(img)["id"]).removeprefix("0x")
    return f"{disk_id}-01", f"{disk_id}-02"


def fat_file(img: Path, start: int, name: str) -> bytes:
    return subprocess.run(
        ["mtype", "-i", f"{img}@@{start}", f"::/{name}"],
        capture_output=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout


def test_partition_table(built: tuple[str, Path]) -> None:
    _, img = built
    table = partition_table(img)
    assert table["label"] == "dos"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and boot["start"] == 2048 and boot["size"] == 256 * MIB // 512
    assert root["type"] == "83"


def test_boot_partition_files_match_the_build(built: tuple[str, Path]) -> None:
    board, img = built
    firmware, dtb, compatible = BOARDS[board]
    manifest = json.loads(
        img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
    )
    boot, _ = partition_table(img)["partitions"]
    start = boot["start"] * 512
    kernel = fat_file(img, start, "Image")
    assert kernel == (img.parent / manifest["kernel"]["kernel"]).read_bytes()
    for name in firmware:
        data = fat_file(img, start, name)
        assert len(data) > 1000, name
    blob = fat_file(img, start, dtb)
    assert blob[:4] == b"\xd0\x0d\xfe\xed"  # a flattened device tree
    assert compatible in blob
    config = fat_file(img, start, "config.txt").decode()
    assert "arm_64bit=1" in config and f"device_tree={dtb}" in config and "kernel=Image" in config
    cmdline = fat_file(img, start, "cmdline.txt").decode()
    assert f"root=PARTUUID={partuuids(img)[1]}" in cmdline  # the table's own PARTUUID
    assert "rootwait" in cmdline and "console=ttyS0,115200" in cmdline


def test_root_filesystem_mounts_boot_and_has_the_kernel_modules(built: tuple[str, Path]) -> None:
    _, img = built
    _, root = partition_table(img)["partitions"]
    start = root["start"] * 512
    fstab = ext4_file(img, start, "/etc/fstab").decode()
    boot_id, root_id = partuuids(img)
    assert f"PARTUUID={root_id} / ext4" in fstab
    assert f"PARTUUID={boot_id} /boot/firmware vfat" in fstab
    modules = ext4_file(img, start, "/usr/lib/modules/6.1.170-tuoba/modules.dep").decode()
    assert "vhost_net.ko" in modules
    unit = ext4_file(img, start, "/etc/systemd/system/tuoba-grow-root.service").decode()
    assert "ExecStart=/usr/lib/tuoba/grow-root" in unit
    assert "growpart" in ext4_file(img, start, "/usr/lib/tuoba/grow-root").decode()
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /etc/systemd/system/multi-user.target.wants",
         f"{img}?offset={start}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "tuoba-grow-root.service" in listing  # enabled


def test_one_kernel_serves_all_arm64_boards(built: tuple[str, Path]) -> None:
    """rpi3, rpi4 and qemu-aarch64 share the arm64-generic flavour: the same kernel image."""
    board, img = built
    manifest = json.loads(
        img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
    )
    digest = manifest["kernel"]["config_digest"]
    kernel = img.parent / manifest["kernel"]["kernel"]
    other = "rpi3" if board == "rpi4" else "rpi4"
    other_manifest = img.parent / f"{image_name(other, 1)}.manifest.json"
    if other_manifest.exists():
        theirs = json.loads(other_manifest.read_text())
        assert theirs["kernel"]["config_digest"] == digest
    assert hashlib.sha256(kernel.read_bytes()).hexdigest() == manifest["kernel"]["kernel_sha256"]


@needs_root
@pytest.mark.parametrize(("board", "machine"), [("rpi3", "raspi3b"), ("rpi4", "raspi4b")])
def test_stage2_boots_in_qemu_raspi(
    project: Path, board: str, machine: str, tmp_path: Path, joined: Joined
) -> None:
    """The stage-2 image as a user gets it (released, downloaded with a resume, flashed to a
    card twice its size: a loop device) boots in QEMU's raspi3b/raspi4b with the kernel and
    device tree of the download; the raspi machines have no network, so the serial-console
    checks run, among them the root partition grown into the whole card on first boot. raspi4b
    gets the board's dtb_edits (said on the way), raspi3b the DTB unchanged. Stage 1 boots
    below: rpi4's release image, as Raspberry Pi Imager customised it (rpi3's stage 1 has the
    same userland and kernel; its structure is checked above)."""
    stage = 2
    _, img = build(project, board, stage)
    card = 2 * img.stat().st_size
    junit = img.parent / f"{board}-s{stage}-report.xml"
    with flashed_release(project, img.parent, board, stage, tmp_path, card, joined) as flashed:
        proc = tuoba_test(img, board, "--stage", str(stage), "--junit", str(junit), "--timeout",
                          "400", "--image", str(flashed.xz), "--card", str(flashed.card),
                          "--ssh-key", str(flashed.key))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "instead of the ssh checks" in said  # the limit is said, not hidden
    assert ("with these edits" in said) == (board == "rpi4")
    report = junit.read_text()
    assert 'failures="0"' in report and 'errors="0"' in report
    assert "test_root_grew_to_fill_the_card" in report
    assert "test_dropbear_started_and_stays_up" in report
    log = junit.with_name(junit.stem + ".console.log").read_text(errors="replace")
    assert f"{board} login:" in log
    assert "Machine model: Raspberry Pi " + ("4 Model B" if board == "rpi4" else "3 Model B") in log
    # the card is mmcblk0 or mmcblk1 depending on which SD controller probes first
    grew = re.search(r"tuoba-grow-root: grew /dev/mmcblk\dp2 from (\d+) to (\d+) MiB", log)
    assert grew, log[-3000:]
    # from the image's root partition (all but the boot partition and the first MiB) to the
    # card's end, less the few MiB the tools keep
    image_mib, card_mib = img.stat().st_size >> 20, card >> 20
    assert int(grew[1]) == image_mib - 256 - 2
    assert card_mib - 256 - 16 <= int(grew[2]) < card_mib - 256
    manifest = json.loads(
        img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
    )
    assert "usr/sbin/tuoba-grow-root" in {f["file"] for f in manifest["audit"]}


def test_card_size_must_hold_the_image_and_suit_qemus_sd(project: Path) -> None:
    _, img = build(project, "rpi4", 2)
    for size, message in [
        ("1G", "a 1024 MiB card cannot hold"),
        ("3G", "QEMU's SD cards are a power of two in size; 3072 MiB is not"),
    ]:
        proc = tuoba_test(img, "rpi4", "--stage", "2", "--card-size", size)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr


# What a user sets in Raspberry Pi Imager's OS customisation, for the test below.
IMAGER = {"hostname": "imager-pi", "user": "alice", "password": "tuoba imager", "ssid": "Tuoba Lab",
          "wifi": "correct horse battery", "country": "GB", "keymap": "de",
          "timezone": "Europe/Berlin"}  # fmt: skip
REGDOM = " cfg80211.ieee80211_regdom=GB"
FIRSTRUN = (" systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot"
            " systemd.unit=kernel-command-line.target")  # fmt: skip


def firstrun_sh(key: str, password_hash: str, psk: str) -> str:
    """firstrun.sh as Raspberry Pi Imager 1.8 writes it for init_format "systemd" (its
    OptionsPopup.qml applySettings: hostname, a public key, the user, Wi-Fi, keymap and time
    zone, each calling Raspberry Pi OS's helper when the image has it, else doing it itself)."""
    s = IMAGER
    return f"""#!/bin/bash

set +e

CURRENT_HOSTNAME=`cat /etc/hostname | tr -d " \\t\\n\\r"`
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname {s["hostname"]}
else
   echo {s["hostname"]} >/etc/hostname
   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t{s["hostname"]}/g" /etc/hosts
fi
FIRSTUSER=`getent passwd 1000 | cut -d: -f1`
FIRSTUSERHOME=`getent passwd 1000 | cut -d: -f6`
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k '{key}'
else
   install -o "$FIRSTUSER" -m 700 -d "$FIRSTUSERHOME/.ssh"
   install -o "$FIRSTUSER" -m 600 <(printf "'{key}'") "$FIRSTUSERHOME/.ssh/authorized_keys"
   echo 'PasswordAuthentication no' >>/etc/ssh/sshd_config
   systemctl enable ssh
fi
if [ -f /usr/lib/userconf-pi/userconf ]; then
   /usr/lib/userconf-pi/userconf '{s["user"]}' '{password_hash}'
else
   echo "$FIRSTUSER:"'{password_hash}' | chpasswd -e
   if [ "$FIRSTUSER" != "{s["user"]}" ]; then
      usermod -l "{s["user"]}" "$FIRSTUSER"
      usermod -m -d "/home/{s["user"]}" "{s["user"]}"
      groupmod -n "{s["user"]}" "$FIRSTUSER"
   fi
fi
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan '{s["ssid"]}' '{psk}' '{s["country"]}'
else
cat >/etc/wpa_supplicant/wpa_supplicant.conf <<'WPAEOF'
country={s["country"]}
ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev
ap_scan=1

update_config=1
network={{
\tssid="{s["ssid"]}"
\tpsk={psk}
}}

WPAEOF
   chmod 600 /etc/wpa_supplicant/wpa_supplicant.conf
   rfkill unblock wifi
   for filename in /var/lib/systemd/rfkill/*:wlan ; do
       echo 0 > $filename
   done
fi
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_keymap '{s["keymap"]}'
   /usr/lib/raspberrypi-sys-mods/imager_custom set_timezone '{s["timezone"]}'
else
   rm -f /etc/localtime
   echo "{s["timezone"]}" >/etc/timezone
   dpkg-reconfigure -f noninteractive tzdata
cat >/etc/default/keyboard <<'KBEOF'
XKBMODEL="pc105"
XKBLAYOUT="{s["keymap"]}"
XKBVARIANT=""
XKBOPTIONS=""

KBEOF
   dpkg-reconfigure -f noninteractive keyboard-configuration
fi
rm -f /boot/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/cmdline.txt
exit 0
"""


def imager_writes(card: Path, fat_start: int, script: str, work: Path) -> str:
    """Onto the card's first FAT partition what Imager writes there once the image is on it
    (its DownloadThread's _customizeImage): firstrun.sh, and cmdline.txt read, trimmed and
    appended to (the Wi-Fi country, then the systemd.run words). The original command line is
    returned."""
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    fat = f"{card}@@{fat_start}"
    script_file = work / "firstrun.sh"
    script_file.write_text(script)
    subprocess.run(["mcopy", "-o", "-i", fat, str(script_file), "::/firstrun.sh"], env=env,
                   check=True)  # fmt: skip
    original = fat_file(card, fat_start, "cmdline.txt").decode().strip()
    cmdline = work / "cmdline.txt"
    cmdline.write_text(original + REGDOM + FIRSTRUN)  # (Imager's: no newline at the end)
    subprocess.run(["mcopy", "-o", "-i", fat, str(cmdline), "::/cmdline.txt"], env=env,
                   check=True)  # fmt: skip
    return original


@needs_root
def test_imager_customisation_takes_effect_on_raspi4b(
    project: Path, tmp_path: Path, joined: Joined
) -> None:
    """rpi4's release image (stage 1, the developer image: `-r tuoba`) as a user of Raspberry
    Pi Imager gets it: released, downloaded with a resume and flashed to a card (a loop device
    of 8 GiB), then customised as Imager does it after writing (the catalog declares
    init_format "systemd"): firstrun.sh and the cmdline.txt words on the boot partition. QEMU's
    raspi4b boots the card and, like the board's firmware, reads cmdline.txt from it at every
    boot: the first boot runs the script, which reboots; the second comes up as the user asked
    (the login prompt shows the hostname, the serial checks pass) and the card holds each
    setting."""
    _, img = build(project, "rpi4", 1, "-r", "tuoba")  # (the `built` fixture's: up to date)
    manifest = json.loads(
        img.with_name(img.name.removesuffix(".img") + ".manifest.json").read_text()
    )
    assert {"bpf", "containers", "security", "imager"} <= set(manifest["recipes"])
    boot_part, root_part = manifest["partitions"][0], manifest["partitions"][1]
    key = (img.parent / "ssh" / "tuoba_ed25519.pub").read_text().strip()
    hashed = subprocess.run(["openssl", "passwd", "-5", IMAGER["password"]],
                            capture_output=True, text=True, check=True)  # fmt: skip
    password_hash = hashed.stdout.strip()  # sha256-crypt, as Imager 1.x makes it
    psk = hashlib.pbkdf2_hmac("sha1", IMAGER["wifi"].encode(), IMAGER["ssid"].encode(),
                              4096, 32).hex()  # fmt: skip
    junit = tmp_path / "rpi4-s1-report.xml"
    kept = tmp_path / "card-after.qcow2"
    with flashed_release(project, img.parent, "rpi4", 1, tmp_path, 8 << 30, joined) as card:
        original = imager_writes(card.card, boot_part["start"],
                                 firstrun_sh(key, password_hash, psk), tmp_path)  # fmt: skip
        proc = tuoba_test(img, "rpi4", "--image", str(card.xz), "--card", str(card.card),
                          "--junit", str(junit), "--timeout", "600", "--keep-card", str(kept),
                          "--ssh-key", str(card.key), "-k", "not board_hostname")  # fmt: skip
        # the card as the guest left it: the kept overlay over the loop device, read while the
        # device is still there
        raw = tmp_path / "card-after.img"
        if proc.returncode == 0:
            subprocess.run(["qemu-img", "convert", "-O", "raw", str(kept), str(raw)], check=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert "the guest rebooted; booting it again (boot 2)" in said
    report = junit.read_text()
    assert 'failures="0"' in report and 'errors="0"' in report
    assert "test_unit_started[ssh.service]" in report
    assert "test_root_grew_to_fill_the_card" in report
    log = junit.with_name(junit.stem + ".console.log").read_text(errors="replace")
    first, _, second = log.partition("tuoba: the guest rebooted; boot 2")
    for said_first in ("imager_custom: hostname imager-pi", "imager_custom: ssh: 1 key(s) for",
                       "userconf: user alice (uid 1000)", "imager_custom: Wi-Fi: network Tuoba Lab",
                       "imager_custom: keymap de", "imager_custom: time zone Europe/Berlin",
                       "Finished kernel-command-line.service",
                       "Reached target reboot.target"):  # fmt: skip
        assert said_first in first, said_first
    assert "imager-pi login:" in second and "tuoba-rpi4 login:" not in second
    booted_with = next(ln for ln in second.splitlines() if "Kernel command line:" in ln)
    assert original.split()[0] in booted_with and REGDOM.strip() in booted_with
    assert "systemd.run=" not in booted_with

    # the card as the guest left it
    assert fat_file(raw, boot_part["start"], "cmdline.txt").decode() == original + REGDOM
    gone = subprocess.run(["mtype", "-i", f"{raw}@@{boot_part['start']}", "::/firstrun.sh"],
                          capture_output=True, env={"MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    assert gone.returncode != 0, "firstrun.sh removed itself"

    def debugfs(request: str) -> str:
        """debugfs on the card's root filesystem, as QEMU left it: mounted, the partition grown
        online, so bitmaps are in the journal (-c: read without them; files are whole)."""
        return subprocess.run(["debugfs", "-c", "-R", request,
                               f"{raw}?offset={root_part['start']}"], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip

    def root(path: str) -> str:
        return debugfs(f"cat {path}")

    assert root("/etc/hostname") == "imager-pi\n"
    assert "127.0.1.1\timager-pi" in root("/etc/hosts")
    alice = next(ln for ln in root("/etc/passwd").splitlines() if ln.startswith("alice:"))
    assert alice.split(":")[2:4] == ["1000", "1000"] and alice.endswith(":/home/alice:/bin/bash")
    assert f"alice:{password_hash}:" in root("/etc/shadow")
    assert "alice" in next(ln for ln in root("/etc/group").splitlines() if ln.startswith("sudo:"))
    assert root("/home/alice/.ssh/authorized_keys") == key + "\n"
    stat = debugfs("stat /home/alice/.ssh/authorized_keys")
    assert "Mode:  0600" in stat and "User:  1000" in stat
    wpa = root("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    assert "country=GB" in wpa and f"psk={psk}" in wpa
    assert f"ssid={IMAGER['ssid'].encode().hex()}" in wpa
    wlan0 = "/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants"
    wants = debugfs(f"ls -l {wlan0}")
    assert "wpa_supplicant@wlan0.service" in wants  # started when wlan0 appears
    assert 'XKBLAYOUT="de"' in root("/etc/default/keyboard")
    assert root("/etc/timezone") == "Europe/Berlin\n"
    link = debugfs("stat /etc/localtime")
    assert 'Fast link dest: "/usr/share/zoneinfo/Europe/Berlin"' in link
