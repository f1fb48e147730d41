"""`tuoba export lava` on small stand-in built images (tests/cli/test_release.py's, with the
board's real partition layout, recipes and packages): a job for every board and stage, each
validated by LAVA's own schema (Debian's lava-common, `lava_common.schemas.validate`, run by
Debian's /usr/bin/python3: the project's venv is another Python), and bad input refused
before anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.test_cli import invoke
from tests.cli.test_release import fake_build
from tuoba import disk
from tuoba.board import board_names, load_board
from tuoba.manifest import Manifest
from tuoba.plan import image_name
from tuoba.recipe import load_recipe

URL = "https://dl.example.org/tuoba/0.1.0"
DEBIAN_PYTHON = "/usr/bin/python3"
# LAVA's validator, as lava-server runs it on a submitted job (strict: no unknown keys)
VALIDATE = """\
import sys, yaml
from lava_common.schemas import validate
validate(yaml.safe_load(open(sys.argv[1])))
print("valid")
"""


def recipes_of(project: Path, board: str, stage: int) -> list[str]:
    """The recipes a build of the board and stage keeps: base, the board's, their includes
    (those with a form for the stage, as plan.resolve keeps them; k3s is left out, as a build
    without its supplied release files does)."""
    wanted, kept = ["base", *load_board(project, board)[0].recipes], []
    for name in wanted:
        recipe, _ = load_recipe(project, name)
        if name in kept or name == "k3s" or recipe.section(stage) is None:
            continue
        kept.append(name)
        wanted += recipe.includes
    return kept


def stand_in(project: Path, board: str, stage: int) -> Manifest:
    """A built image of the board and stage in PROJECT/out: fake_build's files, and a manifest
    with the board's partition layout, the recipes, packages and kernel of such a build."""
    b, _ = load_board(project, board)
    name = image_name(board, stage)
    out = project / "out"
    fake_build(out, name, board, size=4096)
    m_file = out / f"{name}.manifest.json"
    m = Manifest.from_json(m_file.read_text(), str(m_file))
    parts = disk.layout(b.image, "seed")
    root = next(p for p in parts if p.mountpoint == "/")
    init = (
        [{"name": "systemd", "version": "252.38-1~deb12u1", "arch": b.arch},
         {"name": "openssh-server", "version": "1:9.2p1-2+deb12u7", "arch": b.arch}]
        if stage == 1
        else [{"name": "busybox", "version": "1.35.0", "role": "package"},
              {"name": "dropbear", "version": "2022.83", "role": "package"}]
    )  # fmt: skip
    m = dataclasses.replace(
        m,
        stage=stage,
        arch=b.arch,
        hostname=b.hostname,
        recipes=recipes_of(project, board, stage),
        tests=["recipes/base/checks/test_login.py"],
        kernel={"version": "6.1.170-tuoba", "kernel": f"{name}.Image",
                "requested": {"CONFIG_BPF_SYSCALL": "y", "CONFIG_DEBUG_INFO_BTF": "y"}},
        boot=m.boot | {"cmdline": f"root=PARTUUID={root.uuid} rootwait console={b.console} rw "
                       "quiet systemd.firstboot=off"},
        partitions=[vars(p) for p in parts],
        packages=init,
        source_date_epoch=1700000000,
    )  # fmt: skip
    m_file.write_text(m.to_json())
    return m


def lava_validate(job: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEBIAN_PYTHON, "-c", VALIDATE, str(job)], capture_output=True,
                          text=True, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def lava_common() -> None:
    """LAVA's schema must be there: a missing validator fails the tests that validate
    (./dev test installs it), it never skips them."""
    found = subprocess.run([DEBIAN_PYTHON, "-c", "import lava_common.schemas"],
                           capture_output=True, check=False)  # fmt: skip
    if found.returncode != 0:
        pytest.fail(
            "Debian's lava-common is needed (./dev test installs it: apt-get install "
            f"lava-common): {DEBIAN_PYTHON} cannot import lava_common.schemas"
        )


def matrix() -> list[tuple[str, int]]:
    from tests.conftest import ROOT

    boards = board_names(ROOT)
    assert len(boards) == 7, boards
    # stage 2 builds for the arm64 boards (arch.ARCHES: armhf has no stage-2 toolchain)
    return [(b, s) for b in boards for s in (1, 2)
            if s == 1 or load_board(ROOT, b)[0].arch == "arm64"]  # fmt: skip


def export(project: Path, board: str, stage: int, *extra: str) -> tuple[int, str]:
    return invoke(project, "export", "lava", "--board", board, "--stage", str(stage),
                  "--artifacts-url", URL, *extra)  # fmt: skip


@pytest.mark.parametrize(("board", "stage"), matrix())
@pytest.mark.usefixtures("lava_common")
def test_job_for_every_board_and_stage_is_valid_lava(project: Path, board: str, stage: int) -> None:
    m = stand_in(project, board, stage)
    code, out = export(project, board, stage)
    assert code == 0, out
    job_file = project / "out" / f"{m.name}.lava.yaml"
    checked = lava_validate(job_file)
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stdout + checked.stderr

    job = yaml.safe_load(job_file.read_text())
    deploy, boot, test = (next(iter(a.values())) for a in job["actions"])
    assert [next(iter(a)) for a in job["actions"]] == ["deploy", "boot", "test"]
    disk_image = deploy["images"]["rootfs" if board == "qemu-aarch64" else "image"]
    # the release's file, by its name, checked by the hash the manifest recorded
    assert disk_image["url"] == f"{URL}/{m.name}.img.xz"
    assert disk_image["sha256sum"] == m.files[f"{m.name}.img.xz"]
    assert disk_image["compression"] == "xz" and disk_image["format"] == "ext4"
    root = [p["mountpoint"] for p in m.partitions].index("/")
    assert disk_image["partition"] == root
    console = disk_image["overlays"]["console"]
    tar = (project / "out" / f"{m.name}.lava-console.tar").read_bytes()
    assert console["url"] == f"{URL}/{m.name}.lava-console.tar"
    assert console["sha256sum"] == hashlib.sha256(tar).hexdigest()
    assert disk_image["overlays"]["lava"] is True
    assert boot["prompts"] == [f"root@{m.hostname}:"]
    if board == "qemu-aarch64":
        assert (job["device_type"], deploy["to"], boot["method"]) == ("qemu", "tmpfs", "qemu")
        kernel = deploy["images"]["kernel"]
        assert kernel["url"] == f"{URL}/{m.name}.Image"
        assert kernel["sha256sum"] == m.files[f"{m.name}.Image"]
        assert m.boot["cmdline"] in kernel["image_arg"]
        machine = "virt,virtualization=on,gic-version=3"  # boards/qemu-aarch64/board.yaml's
        assert job["context"] == {"arch": "arm64", "machine": machine, "cpu": "cortex-a72",
                                  "memory": 2048, "extra_options": ["-smp 2"]}  # fmt: skip
    else:
        assert (deploy["to"], boot["method"]) == ("flasher", "minimal")
        assert list(deploy["images"]) == ["image"]  # {IMAGE} in flasher_deploy_commands
        assert "context" not in job
    # the timeouts of a real board: a card takes longer than QEMU, each within the job's
    minutes = [a["timeout"]["minutes"] for a in (deploy, boot, test)]
    assert sum(minutes) <= job["timeouts"]["job"]["minutes"]
    assert deploy["timeout"]["minutes"] >= (40 if deploy["to"] == "flasher" else 15)

    (definition,) = test["definitions"]
    steps = definition["repository"]["run"]["steps"]
    if stage == 1:  # first the wait for the end of the boot, then only cases
        wait = steps.pop(0)
        assert wait == "systemctl is-system-running --wait >/dev/null || true"
    names = [s.split()[1] for s in steps]
    assert all(s.startswith("lava-test-case ") and " --shell " in s for s in steps)
    assert boot["parameters"] == {"kernel-start-message": ""}  # `quiet`: no banner to wait for
    assert {"kernel-release", "root-ext4-rw", "hostname", "btf"} <= set(names)
    if stage == 1:
        assert "no-failed-units" in names and "service-ssh" in names
        assert "ssh-server-running" not in names
    else:
        assert not [n for n in names if n.startswith("service-") or n == "no-failed-units"]
        assert "ssh-server-running" in names
    said = definition["repository"]["metadata"]["description"]
    assert "in-guest subset" in said and "pytest-testinfra" in said and "over ssh" in said
    header = " ".join(ln for ln in job_file.read_text().splitlines() if ln.startswith("#"))
    assert "in-guest subset" in header and "pytest-testinfra" in header, header


def test_each_step_runs_in_a_shell_as_written(project: Path, tmp_path: Path) -> None:
    """lava-test-case evals the words after `NAME --shell`: run by a shell with a stand-in
    lava-test-case that shows them, each step hands over its whole command (quotes and all),
    and the command parses as shell."""
    m = stand_in(project, "qemu-aarch64", 1)
    assert export(project, "qemu-aarch64", 1)[0] == 0
    job = yaml.safe_load((project / "out" / f"{m.name}.lava.yaml").read_text())
    steps = job["actions"][2]["test"]["definitions"][0]["repository"]["run"]["steps"]
    fake = tmp_path / "bin" / "lava-test-case"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$2" = --shell ] || exit 9\nshift 2\nprintf "%s" "$*"\n')
    fake.chmod(0o755)
    commands = []
    for step in steps:
        got = subprocess.run(["sh", "-c", step], capture_output=True, text=True, check=True,
                             env={"PATH": f"{fake.parent}:/usr/bin:/bin"})  # fmt: skip
        commands.append(got.stdout)
        subprocess.run(["sh", "-n", "-c", got.stdout], check=True)
    assert 'test "$(uname -r)" = "6.1.170-tuoba"' in commands
    assert 'grep -Eq "^[^ ]+ / ext4 rw[ ,]" /proc/mounts' in commands
    assert "test -s /sys/kernel/btf/vmlinux" in commands


@pytest.mark.usefixtures("lava_common")
def test_an_invalid_job_is_refused_by_lava(project: Path, tmp_path: Path) -> None:
    """The validator does refuse: a job whose image has an unknown compression and whose test
    runs longer than the job."""
    m = stand_in(project, "rpi4", 1)
    assert export(project, "rpi4", 1)[0] == 0
    bad = yaml.safe_load((project / "out" / f"{m.name}.lava.yaml").read_text())
    bad["actions"][0]["deploy"]["images"]["image"]["compression"] = "lzma"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    refused = lava_validate(tmp_path / "bad.yaml")
    assert refused.returncode != 0 and "valid" not in refused.stdout, refused.stdout
    assert "compression" in refused.stderr or "images" in refused.stderr, refused.stderr

    late = yaml.safe_load((project / "out" / f"{m.name}.lava.yaml").read_text())
    late["actions"][2]["test"]["timeout"] = {"minutes": 10_000}
    (tmp_path / "late.yaml").write_text(yaml.safe_dump(late))
    refused = lava_validate(tmp_path / "late.yaml")
    assert refused.returncode != 0 and "larger than job timeout" in refused.stderr


def _tar(path: Path) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        return {
            i.name: tar.extractfile(i).read().decode()  # type: ignore[union-attr]
            for i in tar.getmembers()
        }


def test_console_overlay_gives_root_a_shell_on_the_console(project: Path) -> None:
    """Stage 1: systemd's serial getty logs root in; stage 2: busybox init's console entry is a
    root login shell with the prompt the job waits for, the rest of the image's inittab kept."""
    s1 = stand_in(project, "rpi4", 1)
    s2 = stand_in(project, "rpi4", 2)
    assert export(project, "rpi4", 1)[0] == 0
    assert export(project, "rpi4", 2)[0] == 0
    one = _tar(project / "out" / f"{s1.name}.lava-console.tar")
    assert list(one) == ["etc/systemd/system/serial-getty@.service.d/tuoba-lava.conf"]
    assert "ExecStart=\nExecStart=-/sbin/agetty --autologin root" in next(iter(one.values()))
    two = _tar(project / "out" / f"{s2.name}.lava-console.tar")
    assert sorted(two) == ["etc/inittab", "etc/profile"]
    shipped = (project / "recipes/base/overlay-s2/etc/inittab").read_text().splitlines()
    inittab = two["etc/inittab"].splitlines()
    assert "console::respawn:-/bin/sh" in inittab
    assert not [ln for ln in inittab if "getty" in ln and not ln.startswith("#")]
    assert [ln for ln in shipped if not ln.startswith("console:")] == [
        ln for ln in inittab if not ln.startswith(("console:", "# tuoba export lava"))
    ]
    assert "PS1='root@tuoba-rpi4:# '" in two["etc/profile"]


def test_exporting_again_writes_the_same_bytes(project: Path) -> None:
    m = stand_in(project, "vim3", 2)
    assert export(project, "vim3", 2)[0] == 0
    files = [project / "out" / f"{m.name}{s}" for s in (".lava.yaml", ".lava-console.tar")]
    first = [f.read_bytes() for f in files]
    assert export(project, "vim3", 2)[0] == 0
    assert [f.read_bytes() for f in files] == first


def test_device_type_can_be_named(project: Path) -> None:
    m = stand_in(project, "jetson-nano", 1)
    code, out = export(project, "jetson-nano", 1, "--device-type", "lab-jetson-nano")
    assert code == 0, out
    job = yaml.safe_load((project / "out" / f"{m.name}.lava.yaml").read_text())
    assert job["device_type"] == "lab-jetson-nano"
    code, out = export(project, "jetson-nano", 1)
    assert code == 0
    job = yaml.safe_load((project / "out" / f"{m.name}.lava.yaml").read_text())
    assert job["device_type"] == "tegra210-p3450-0000"  # its device tree's name


def test_export_lava_has_help(project: Path) -> None:
    code, out = invoke(project, "export", "lava", "--help")
    assert code == 0
    said = " ".join(out.split())
    for words in ("--artifacts-url", "flasher", "tmpfs", "in-guest subset",
                  "pytest-testinfra", "lava-console.tar", "lavacli jobs submit"):  # fmt: skip
        assert words in said, words
    code, out = invoke(project, "export", "--help")
    assert code == 0 and "lava" in out


def _nothing_written(project: Path) -> bool:
    out = project / "out"
    return not list(out.glob("*.lava*")) and not list(out.glob(".*"))


@pytest.mark.parametrize(
    ("args", "said", "code"),
    [
        (["--board", "rpi3"], "error: no built image of board 'rpi3' stage 1 in", 2),
        (["--board", "qemu-aarch64", "--stage", "2"],
         "error: no built image of board 'qemu-aarch64' stage 2 in", 2),
        (["--board", "rpi5"], "error: no board named 'rpi5'", 2),
        (["--board", "qemu-aarch64", "--artifacts-url", "ftp://example.org/tuoba"],
         "error: --artifacts-url 'ftp://example.org/tuoba' is not an http(s) URL", 2),
        (["--board", "qemu-aarch64", "--artifacts-url", "dl.example.org/tuoba"],
         "is not an http(s) URL", 2),
        (["--board", "qemu-aarch64", "--device-type", "a b"], "is not a LAVA device type", 2),
        (["--board", "qemu-aarch64", "--stage", "3"], "Invalid value for '--stage'", 2),
    ],
)  # fmt: skip
def test_bad_input_says_what_and_writes_nothing(
    project: Path, args: list[str], said: str, code: int
) -> None:
    stand_in(project, "qemu-aarch64", 1)
    full: list[Any] = ["export", "lava", *args]
    if "--artifacts-url" not in args:
        full += ["--artifacts-url", URL]
    got, out = invoke(project, *full)
    assert got == code, out
    assert said in " ".join(out.split()), out
    if got == 2 and "error:" in out:
        assert "hint:" in out, out
        assert "Traceback" not in out
    assert _nothing_written(project)


def test_without_artifacts_url_it_asks_for_one(project: Path) -> None:
    stand_in(project, "qemu-aarch64", 1)
    code, out = invoke(project, "export", "lava", "--board", "qemu-aarch64")
    assert code == 2 and "Missing option '--artifacts-url'" in out
    assert _nothing_written(project)


def test_a_manifest_without_the_compressed_image_is_refused(project: Path) -> None:
    m = stand_in(project, "rpi3", 1)
    m_file = project / "out" / f"{m.name}.manifest.json"
    files = {k: v for k, v in m.files.items() if not k.endswith(".img.xz")}
    m_file.write_text(dataclasses.replace(m, files=files).to_json())
    code, out = export(project, "rpi3", 1)
    assert code == 2
    assert f"the manifest of {m.name} lists no compressed image" in " ".join(out.split())
    assert _nothing_written(project)
