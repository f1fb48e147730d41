"""Stage 2 for real: the LLVM + musl userland built from pinned sources, audited, booted in
QEMU and checked over ssh (dropbear) by the same testinfra harness as stage 1.

Shares ~/.cache/tuoba with the other integration tests: the kernel is the one qemu-aarch64's
stage 1 builds; the toolchain and packages are cached after the first run.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import Joined, copy_project, flashed_release, needs_root, snoop_checks
from tests.integration.test_qemu_aarch64 import BOARD, KERNEL_CHECKS, H, Project
from tuoba.disk import data_ranges

pytestmark = pytest.mark.integration

LOGIN_CHECKS = {
    f"test_expected_kernel_running[{H}]",
    f"test_root_is_ext4_read_write[{H}]",
    f"test_ssh_host_key_made_on_first_boot[{H}]",
    "test_password_login_refused[]",
    "test_password_login_refused[root]",
    "test_password_login_refused[tuoba]",
    f"test_root_has_no_password[{H}]",
    f"test_hostname_from_board[{H}]",
}
S2_CHECKS = {
    f"test_init_is_busybox[{H}]",
    f"test_ssh_server_is_dropbear[{H}]",
    f"test_no_glibc_loader[{H}]",
    f"test_elf_files_are_the_audited_ones[{H}]",
    f"test_no_gnu_marks_inside[{H}-GCC: (]",
    f"test_no_gnu_marks_inside[{H}-GLIBC_2.]",
    f"test_no_gnu_marks_inside[{H}-ld-linux-]",
    f"test_no_gnu_marks_inside[{H}-libgcc_s]",
    f"test_programs_are_static_or_musl[{H}]",
    f"test_clang_built_the_programs[{H}]",
    f"test_bpf_objects_are_audited_as_bpf[{H}]",
    f"test_bpf_program_loads_and_runs[{H}]",
    # bpf/fr, bpf/iolat and bpf/snoop, their loaders static musl programs
    *(
        f"test_s2_fr_matches_the_hosts_answer[{H}-{case}]"
        for case in (
            "gt-5000-sum",
            "le--250000-count",
            "ge-999000-min",
            "lt-0-max",
            "eq-123456-exists",
        )
    ),
    f"test_s2_fr_mean_and_copy_mode[{H}]",
    f"test_s2_fr_concurrent_callers_get_their_own_answers[{H}]",
    f"test_s2_fr_bad_input_is_one_sentence_and_a_failure[{H}]",
    f"test_s2_fr_an_empty_file_has_no_values[{H}]",
    f"test_s2_iolat_counts_reads_for_the_root_cgroup[{H}]",
    # bpf/snoop: exec and open tracing (the same checks in both stages)
    *snoop_checks(H),
}
MIB = 1 << 20


class Stage2(Project):
    def artifact(self, suffix: str) -> Path:
        from tuoba.plan import image_name

        return self.out / f"{image_name(BOARD, 2)}{suffix}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Stage2:
    project = Stage2(copy_project(tmp_path_factory.mktemp("stage2") / "project"))
    project.tuoba("build", "--board", BOARD, "--stage", "2")
    return project


def test_manifest_lists_what_llvm_built_and_the_audit(built: Stage2) -> None:
    m = built.manifest()
    assert m["stage"] == 2
    pkgs = {p["name"]: p for p in m["packages"]}  # type: ignore[attr-defined]
    assert set(pkgs) == {"musl", "compiler-rt", "busybox", "dropbear", "tuoba-bpf-check"}
    assert all(p["built_by"].startswith("Debian clang version") for p in pkgs.values())
    assert all(p["target"] == "aarch64-linux-musl" for p in pkgs.values())
    audit = {row["file"]: row for row in m["audit"]}  # type: ignore[attr-defined]
    for program in ("usr/bin/busybox", "usr/sbin/dropbearmulti", "usr/bin/tuoba-bpf-check",
                    "usr/bin/tuoba-fr", "usr/bin/tuoba-iolat", "usr/bin/tuoba-snoop"):  # fmt: skip
        assert audit[program]["linker"] == "static", program
        assert "clang version" in audit[program]["compiler"], program
    for obj in ("usr/lib/tuoba/bpf/fr.bpf.o", "usr/lib/tuoba/bpf/iolat.bpf.o",
                "usr/lib/tuoba/bpf/snoop.bpf.o"):  # fmt: skip
        assert audit[obj]["type"] == "REL", obj  # the kernel's BPF machine's: audited as such
    assert set(m["bpf"]) == {"fr", "iolat", "snoop"}  # type: ignore[arg-type]
    assert all("GCC" not in row["compiler"] for row in audit.values())
    modules = [f for f in audit if f.endswith(".ko")]
    assert modules and all(audit[f]["linker"] == "relocatable" for f in modules)
    for tarball in ("musl_1.2.3.orig.tar.gz", "busybox_1.35.0.orig.tar.bz2",
                    "libbpf_1.1.2.orig.tar.gz"):  # fmt: skip
        assert tarball in m["sources"]  # type: ignore[operator]


def test_compressed_image_is_small(built: Stage2) -> None:
    assert built.artifact(".img.xz").stat().st_size < 32 * MIB


@needs_root
def test_guest_checks_pass_on_the_released_image_flashed_to_a_card(
    built: Stage2, tmp_path: Path, joined: Joined
) -> None:
    """Stage 2 as a user gets it: released, downloaded with a resume, flashed to a loop device
    with the user's key (dropbear takes it); QEMU boots the card and every check passes."""
    junit = built.out / "report-s2.xml"
    img = built.artifact(".img")
    card_size = img.stat().st_size + (64 << 20)
    with flashed_release(built.root, built.out, BOARD, 2, tmp_path, card_size, joined) as card:
        proc = built.tuoba("test", "--board", BOARD, "--stage", "2", "--image", str(card.xz),
                           "--card", str(card.card), "--ssh-key", str(card.key), "--junit",
                           str(junit), check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    requested = built.manifest()["kernel"]["requested"]  # type: ignore[index]
    options = {f"test_option_in_running_kernel[{name}-{H}]" for name in requested}
    assert set(cases) == LOGIN_CHECKS | S2_CHECKS | KERNEL_CHECKS | options
    for name, case in cases.items():
        assert len(case) == 0, f"{name} did not pass: {ET.tostring(case, encoding='unicode')}"


def test_audit_stops_a_glibc_binary_and_leaves_no_image(built: Stage2) -> None:
    intruder = built.root / "recipes/base/overlay-s2/usr/bin/true"
    intruder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("true") or "/bin/true", intruder)
    try:
        proc = built.tuoba("build", "--board", BOARD, "--stage", "2", check=False)
        assert proc.returncode == 4, proc.stderr
        assert "the stage-2 ELF audit failed: /usr/bin/true: built for EM_X86_64" in proc.stderr
        assert not built.artifact(".img").exists()
        assert not built.artifact(".manifest.json").exists()
    finally:
        intruder.unlink()
    again = built.tuoba("build", "--board", BOARD, "--stage", "2")
    assert json.loads(built.artifact(".manifest.json").read_text())["stage"] == 2
    assert again.returncode == 0


def test_no_host_path_in_any_artifact(built: Stage2) -> None:
    """Nothing a build publishes names a place on the build host: not the cache (kernel
    trees, toolchains, build directories), not the project or the output directory."""
    cache = os.environ.get("TUOBA_CACHE_DIR") or str(Path.home() / ".cache" / "tuoba")
    needles = [p.encode() for p in (cache, str(built.root), "/.cache/tuoba")]
    for artifact in sorted(built.out.glob(f"{built.artifact('.img').stem}*")):
        with artifact.open("rb") as f:
            for start, end in data_ranges(f.fileno(), artifact.stat().st_size):
                f.seek(start)
                tail = b""
                for _ in range(start, end, 8 * MIB):
                    chunk = tail + f.read(min(8 * MIB, end - f.tell()))
                    for needle in needles:
                        at = chunk.find(needle)
                        assert at < 0, f"{artifact.name}: {chunk[at - 40 : at + 120]!r}"
                    tail = chunk[-256:]


def test_stage2_is_bit_reproducible(built: Stage2) -> None:
    """`--check-reproducible`: the image built again with an output and a cache directory of
    its own — musl, compiler-rt, busybox, dropbear, the tuoba programs, the eBPF programs,
    the root tree and the image made a second time; only the downloads and the kernel
    (`--reuse kernel`: its compile is a third of this suite's budget) taken from the first —
    is bit for bit the first one."""
    proc = built.tuoba("build", "--board", BOARD, "--stage", "2", "--check-reproducible",
                       "--reuse", "kernel")  # fmt: skip
    said = " ".join(proc.stderr.split())
    report = json.loads(built.artifact(".reproducible.json").read_text())
    assert report["reproducible"] is True and report["differences"] == [], report
    name = built.artifact("").name
    assert {f"{name}.img", f"{name}.img.xz", f"{name}.img.bmap", f"{name}.manifest.json",
            f"{name}.Image"} <= set(report["identical"])  # fmt: skip
    assert report["shared"] == ["source", "tool", "kernel"]
    assert "bit-identical" in said
    assert (
        "second build: steps run: fetch, artifacts, rootfs, kernel, bpf, venv, overlay, image"
        in said
    )
    assert not (built.out / ".reproducible").exists()
    m = built.manifest()
    assert m["source_date_epoch"] == report["source_date_epoch"]
