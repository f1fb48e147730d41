"""Stage 2 without building: recipes per stage, package data, and the ELF audit run on real
host binaries (x86-64, glibc, GCC-built: everything the audit must refuse)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_config import request
from tuoba import elfaudit, stages, userland
from tuoba.errors import BuildError, InputError
from tuoba.kernel import parse_config
from tuoba.plan import resolve


def test_stage2_plan_builds_from_source_and_installs_no_debian_package(project: Path) -> None:
    plan = resolve(request(project, stage=2))
    assert plan.packages == ()
    assert plan.services == ()
    assert plan.builds == ("busybox", "dropbear", "tuoba-bpf-check")
    assert [o.name for o in plan.overlays] == ["common", "base-s2"]
    assert plan.tests == (
        "recipes/base/checks/test_login.py",
        "recipes/base/checks/test_s2base.py",
        "recipes/bpf/checks/test_s2bpf.py",
        "recipes/bpf/checks/test_s2fr.py",
        "recipes/bpf/checks/test_s2iolat.py",
        "recipes/bpf/checks/test_snoop.py",
        "tests/image/test_kernel.py",
    )
    assert plan.image_name.startswith("tuoba-qemu-aarch64-s2-")


def test_stage1_plan_keeps_its_own_sections(project: Path) -> None:
    plan = resolve(request(project, stage=1))
    assert plan.builds == ()
    assert [o.name for o in plan.overlays] == [
        "common", "base", "containers", "security", "virt", "devtools", "wifi"
    ]  # fmt: skip
    assert "ssh" in plan.services


def test_recipe_without_stage2_form_asked_for_is_an_error_naming_it(project: Path) -> None:
    recipe = project / "recipes/sdcard/recipe.yaml"
    recipe.write_text(recipe.read_text().split("stage2:")[0])
    with pytest.raises(InputError) as e:
        resolve(request(project, stage=2, board="rpi4", recipes=("base", "sdcard")))
    assert e.value.message == (
        "recipes/sdcard/recipe.yaml:3: recipe 'sdcard' has no stage-2 form (no stage2 section)"
    )
    assert e.value.exit_code == 2


def test_board_default_without_stage2_form_is_left_out_and_named(project: Path) -> None:
    """qemu-aarch64's recipe `tuoba` includes containers and security, which have no stage-2
    form: its stage-2 image is built without them, and the plan names them for the build to
    say so."""
    plan = resolve(request(project, stage=2))
    assert plan.left_out == (
        ("containers", "included by recipe 'tuoba'", "has no stage-2 form"),
        ("security", "included by recipe 'tuoba'", "has no stage-2 form"),
        ("virt", "included by recipe 'tuoba'", "has no stage-2 form"),
        ("devtools", "included by recipe 'tuoba'", "has no stage-2 form"),
        ("k3s", "included by recipe 'tuoba'", "has no stage-2 form"),
        ("wifi", "included by recipe 'tuoba'", "has no stage-2 form"),
    )
    assert "containers" not in [r.name for r in plan.recipes]
    assert plan.oci_images == ()


def test_unknown_stage2_package_is_located(project: Path) -> None:
    recipe = project / "recipes/bpf/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("builds: [tuoba-bpf-check]", "builds: [bpfz]"))
    with pytest.raises(InputError) as e:
        resolve(request(project, stage=2))
    assert e.value.message.startswith("recipes/bpf/recipe.yaml:")
    assert "stage2 -> builds[0]: no package userland/bpfz/package.yaml" in e.value.message


def test_unknown_builder_is_located(project: Path) -> None:
    pkg = project / "userland/busybox/package.yaml"
    pkg.write_text(pkg.read_text().replace("build: busybox", "build: meson"))
    with pytest.raises(InputError) as e:
        resolve(request(project, stage=2))
    assert "userland/busybox/package.yaml:" in e.value.message
    assert "unknown builder 'meson'" in e.value.message
    assert "autotools" in (e.value.hint or "")


def test_stage3_is_refused_with_what_is_missing(project: Path) -> None:
    with pytest.raises(InputError) as e:
        resolve(request(project, stage=3))
    assert "llvm-libc" in (e.value.hint or "")


def test_pinned_sources_come_from_the_debian_archive_with_hashes(project: Path) -> None:
    srcs = userland.all_sources(project, ("busybox", "dropbear", "tuoba-bpf-check"))
    assert [s.name for s in srcs] == [
        "musl_1.2.3.orig.tar.gz",
        "llvm-toolchain-14_14.0.6.orig.tar.xz",
        "busybox_1.35.0.orig.tar.bz2",
        "dropbear_2022.83.orig.tar.bz2",
    ]
    assert all(s.url.startswith("debian:") and len(s.sha256) == 64 for s in srcs)


def test_merged_usr_paths() -> None:
    assert userland.merged_usr("/bin/sh") == "usr/bin/sh"
    assert userland.merged_usr("/sbin/init") == "usr/sbin/init"
    assert userland.merged_usr("/usr/bin/env") == "usr/bin/env"
    assert userland.merged_usr("/linuxrc") == "linuxrc"


def test_cmake_list_reads_compiler_rt_sources() -> None:
    text = "set(GENERIC_SOURCES\n  absvdi2.c\n  # a comment\n  ${OTHER}\n  addsf3.c\n)\n"
    assert userland.cmake_list(text, "GENERIC_SOURCES") == ["absvdi2.c", "addsf3.c"]
    with pytest.raises(BuildError):
        userland.cmake_list(text, "GENERIC_TF_SOURCES")


def test_busybox_config_reads_like_the_kernels() -> None:
    text = 'CONFIG_ASH=y\n# CONFIG_HUSH is not set\nCONFIG_X="a b"\n'
    assert parse_config(text) == {
        "CONFIG_ASH": "y",
        "CONFIG_HUSH": "n",
        "CONFIG_X": '"a b"',
    }


def test_audit_refuses_a_glibc_program_of_another_arch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(shutil.which("true") or "/bin/true", root / "usr/bin/true")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("not an ELF\n")
    with pytest.raises(BuildError) as e:
        elfaudit.audit_tree(root, "arm64", "ld-musl-aarch64.so.1")
    msg = e.value.message
    assert msg.startswith("the stage-2 ELF audit failed: /usr/bin/true: built for EM_X86_64")
    assert "/usr/bin/true: loader /lib64/ld-linux-x86-64.so.2" in msg
    assert "/usr/bin/true: linked against glibc (libc.so.6" in msg
    assert "hostname" not in msg


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the host's gcc")
def test_audit_refuses_gcc_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    subprocess.run(
        ["gcc", "-c", str(tmp_path / "x.c"), "-o", str(root / "usr/lib/x.o")], check=True
    )
    with pytest.raises(BuildError) as e:
        elfaudit.audit_tree(root, "arm64", "ld-musl-aarch64.so.1")
    assert "/usr/lib/x.o: GCC output (.comment: GCC: (" in e.value.message


def test_audit_table_for_clean_files(tmp_path: Path) -> None:
    info = {
        "type": "ET_EXEC",
        "machine": "EM_AARCH64",
        "interp": None,
        "needed": [],
        "versions": [],
        "comment": ["Linker: LLD 14.0.6", "clang version 14.0.6"],
    }
    assert elfaudit.problems(info, "arm64", "ld-musl-aarch64.so.1") == []
    info["interp"] = "/lib/ld-musl-aarch64.so.1"
    assert elfaudit.problems(info, "arm64", "ld-musl-aarch64.so.1") == []


def test_audit_lets_bpf_objects_through_and_only_relocatable_ones() -> None:
    """A bpf/ program's object is for the kernel's BPF machine, on every board; an executable
    for it is no such object."""
    info = {"type": "ET_REL", "machine": "EM_BPF", "interp": None, "needed": [],
            "versions": [], "comment": []}  # fmt: skip
    assert elfaudit.problems(info, "arm64", "ld-musl-aarch64.so.1") == []
    info["type"] = "ET_EXEC"
    assert elfaudit.problems(info, "arm64", "ld-musl-aarch64.so.1") == [
        "built for EM_BPF, the board is arm64 (EM_AARCH64)"
    ]


def test_stage2_bpf_programs_and_libbpfs_headers(project: Path) -> None:
    """Stage 2 builds the bpf recipe's programs (their loaders against musl, libbpf's headers
    from userland/libbpf, whose source the build fetches)."""
    plan = resolve(request(project, stage=2, recipes=("base", "bpf")))
    assert [p.name for p in plan.bpf_programs] == ["fr", "iolat", "snoop"]
    assert "libbpf_1.1.2.orig.tar.gz" in {s.name for s in stages.of(plan).sources()}
    pkg = userland.load_package(project, userland.LIBBPF)
    assert pkg.build == "headers" and pkg.options["into"] == "/usr/include/bpf"
    assert "src/skel_internal.h" in pkg.options["headers"]


def test_headers_are_copied_into_their_directory(tmp_path: Path, project: Path) -> None:
    pkg = userland.load_package(project, userland.LIBBPF)
    src = tmp_path / "src"
    for h in pkg.options["headers"]:
        (src / h).parent.mkdir(parents=True, exist_ok=True)
        (src / h).write_text(f"/* {h} */\n")
    dest = tmp_path / "dest"
    userland.build_headers(pkg, src, None, dest, tmp_path / "log")  # type: ignore[arg-type]
    assert (dest / "usr/include/bpf/skel_internal.h").read_text() == "/* src/skel_internal.h */\n"
    (src / "src/bpf.h").unlink()
    with pytest.raises(BuildError) as e:
        userland.build_headers(pkg, src, None, tmp_path / "dest2", tmp_path / "log")  # type: ignore[arg-type]
    assert e.value.message == "libbpf 1.1.2's source has no src/bpf.h"


def test_an_umbrella_recipe_brings_in_its_includes(project: Path) -> None:
    plan = resolve(request(project, recipes=("base", "tuoba")))
    assert [r.name for r in plan.recipes] == [
        "base", "tuoba", "bpf", "containers", "security", "virt", "devtools", "wifi"
    ]  # fmt: skip
    # k3s's release files are supplied by the user: without them the image has no k3s
    assert [n for n, _, _ in plan.left_out] == ["k3s"]


def test_an_umbrella_including_an_unknown_recipe_is_located(project: Path) -> None:
    umbrella = project / "recipes/tuoba/recipe.yaml"
    umbrella.write_text(umbrella.read_text().replace("includes: [bpf,", "includes: [bfp,"))
    with pytest.raises(InputError) as e:
        resolve(request(project))
    assert e.value.message.startswith("recipes/tuoba/recipe.yaml:")
    assert e.value.message.endswith("-> includes[0]: no recipe 'bfp'")


def test_a_recipe_asked_for_by_name_without_the_stage_form_is_an_error(project: Path) -> None:
    with pytest.raises(InputError, match="recipe 'containers' has no stage-2 form"):
        resolve(request(project, stage=2, recipes=("base", "containers")))
