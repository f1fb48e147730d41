"""The kernel's own patches (kernel/patches/) and the bpf/ programs: how they are read and
checked before any build, and how a patch that does not apply is reported."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.conftest import plan_request, zynq_boot_image
from tuoba import bpf, kbuild
from tuoba.cache import Store
from tuoba.errors import BuildError, InputError
from tuoba.plan import Request, resolve

PATCH = "kernel/patches/0001-iov_iter-copyout-visible-to-bpf.patch"


def request(project: Path, **kw: object) -> Request:
    return plan_request(project, **{"recipes": ("bpf",), **kw})


def test_the_patches_are_part_of_the_kernel_source_id(project: Path) -> None:
    ks = kbuild.load_source(project)
    assert [p.name for p in ks.patches] == [Path(PATCH).name]
    assert ks.patches[0].files == ("lib/iov_iter.c",)
    assert ks.id.startswith(f"{ks.version}-{ks.source.sha256[:12]}-p")
    # no uapi header changes: the stage-2 toolchain's kernel headers are those of the tarball
    assert ks.headers_id == f"{ks.version}-{ks.source.sha256[:12]}"
    before = ks.id
    patch = project / PATCH
    patch.write_text(patch.read_text().replace("BPF Tales", "BPF tales"))
    assert kbuild.load_source(project).id != before


def test_a_uapi_patch_changes_the_headers_id(project: Path) -> None:
    (project / "kernel/patches/0002-uapi.patch").write_text(
        "Subject: [PATCH] a uapi change\n\nWhy: a test.\n---\n"
        "--- a/include/uapi/linux/bpf.h\n+++ b/include/uapi/linux/bpf.h\n@@ -1 +1 @@\n-x\n+y\n"
    )
    ks = kbuild.load_source(project)
    assert ks.headers_id != f"{ks.version}-{ks.source.sha256[:12]}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just words, no diff\n", "kernel/patches/0002-x.patch:1: holds no diff"),
        ("--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n",
         "kernel/patches/0002-x.patch:1: no header saying why TuobaOS carries the patch"),
    ],
)  # fmt: skip
def test_a_patch_needs_a_diff_and_a_reason(project: Path, text: str, message: str) -> None:
    (project / "kernel/patches/0002-x.patch").write_text(text)
    with pytest.raises(InputError) as e:
        kbuild.load_source(project)
    assert e.value.message == message
    assert e.value.hint


def test_a_patch_that_does_not_apply_is_named_and_nothing_is_cached(
    project: Path, tmp_path: Path
) -> None:
    """The source tree is made in a cache entry that is published only when every patch
    applied: a failing patch names itself and leaves no tree behind."""
    src = tmp_path / "src" / "linux-1.0"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "iov_iter.c").write_text("int nothing_like_linux;\n")
    tarball = tmp_path / "linux.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(src, arcname="linux-1.0")
    ks = kbuild.load_source(project)
    store = Store(tmp_path / "cache")
    with pytest.raises(BuildError) as e:
        kbuild.unpack_source(ks, tarball, store)
    assert e.value.message.startswith(f"{PATCH} does not apply to Linux {ks.version}: ")
    assert "refresh the patch" in (e.value.hint or "")
    assert store.get("kernel-src", ks.tree_key) is None


def test_the_fr_program_is_read(project: Path) -> None:
    prog = bpf.load_program(project, "fr")
    assert prog.loader == "tuoba-fr" and prog.install == "/usr/bin/tuoba-fr"
    assert prog.kernel_symbols == ("copyout",) and prog.arch == ("arm64",)
    # one object (and light skeleton) per mode: a light skeleton loads all of its programs
    assert prog.objects == ("fr_skip", "fr_copy")
    files = {f.relative_to(project / "bpf").as_posix() for f in prog.files()}
    assert {"fr/fr_skip.bpf.c", "fr/fr_copy.bpf.c", "fr/fr.bpf.h", "fr/tuoba-fr.c", "fr/fr.h",
            "fr/program.yaml", "common/tuoba_skel.h"} <= files  # fmt: skip


def test_the_iolat_program_is_read(project: Path) -> None:
    prog = bpf.load_program(project, "iolat")
    assert prog.loader == "tuoba-iolat" and prog.kernel_symbols == ()
    assert prog.kernel_features == ("bpf", "containers")  # (BLK_CGROUP: bios carry a blkcg)
    assert prog.objects == ("iolat",)  # (the default: one object, named like the program)
    assert {"iolat.bpf.c", "tuoba-iolat.c", "iolat.h"} <= {f.name for f in prog.files()}


def test_the_snoop_program_is_read(project: Path) -> None:
    prog = bpf.load_program(project, "snoop")
    assert prog.loader == "tuoba-snoop" and prog.kernel_symbols == ()
    assert prog.kernel_features == ("bpf",) and prog.arch == ("arm64",)
    assert prog.objects == ("snoop",)
    files = {f.relative_to(project / "bpf").as_posix() for f in prog.files()}
    assert {"snoop/snoop.bpf.c", "snoop/tuoba-snoop.c", "snoop/snoop.h",
            "common/tuoba_ringbuf.h"} <= files  # fmt: skip


def test_a_plan_with_bpf_builds_its_programs_and_asserts_their_features(project: Path) -> None:
    plan = resolve(request(project))
    assert [p.name for p in plan.bpf_programs] == ["fr", "iolat", "snoop"]
    assert {"readpath", "containers"} <= {f.name for f in plan.features}
    assert plan.image_inputs()["bpf"] == ["fr", "iolat", "snoop"]


def test_an_unknown_program_is_located(project: Path) -> None:
    recipe = project / "recipes/bpf/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("bpf: [fr, iolat, snoop]", "bpf: [fr, nope]"))
    with pytest.raises(InputError) as e:
        resolve(request(project))
    assert e.value.message.startswith("recipes/bpf/recipe.yaml:")
    assert e.value.message.endswith("-> stage1 -> bpf[1]: no eBPF program bpf/nope/")


def test_a_loader_needs_libbpf_dev_in_the_image(project: Path) -> None:
    recipe = project / "recipes/bpf/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("    - libbpf-dev\n", ""))
    with pytest.raises(InputError) as e:
        resolve(request(project))
    assert "the image has no libbpf-dev" in e.value.message
    assert e.value.hint == "add libbpf-dev to the recipe's packages"


def pynq(project: Path, tmp_path: Path) -> Request:
    boot = zynq_boot_image(tmp_path / "BOOT.BIN")
    return request(project, board="pynq-z2", supplies=(("BOOT.BIN", str(boot)),))


def test_a_program_for_another_arch_is_refused(project: Path, tmp_path: Path) -> None:
    recipe = project / "recipes/bpf/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("      bpf: []\n", ""))
    with pytest.raises(InputError) as e:
        resolve(pynq(project, tmp_path))
    assert "bpf/fr runs on arm64, not on pynq-z2 (armhf)" in e.value.message


def test_the_armhf_image_gets_no_fr(project: Path, tmp_path: Path) -> None:
    """The recipe's armhf section sets bpf: [] (fr's hook needs arm64's error injection)."""
    plan = resolve(pynq(project, tmp_path))
    assert plan.bpf_programs == ()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("loader: tuoba-fr", "loader: Tuoba FR"),
         "bpf/fr/program.yaml:6 -> loader: 'Tuoba FR' is not a command name"),
        (("arch: [arm64]", "arch: [mips]"),
         "bpf/fr/program.yaml:10 -> arch[0]: unknown arch 'mips'"),
        (("kernel_features: [bpf, readpath]", "kernel_features: [bpf, nope]"),
         "bpf/fr/program.yaml:7 -> kernel_features[1]: unknown feature 'nope'"),
        (("objects: [fr_skip, fr_copy]", "objects: [fr_skip, Fr-Copy]"),
         "bpf/fr/program.yaml:14 -> objects[1]: 'Fr-Copy' is not an object name"),
        (("objects: [fr_skip, fr_copy]", "objects: [fr_skip, fr_skip]"),
         "bpf/fr/program.yaml:14 -> objects[1]: the object 'fr_skip' is named twice"),
        (("objects: [fr_skip, fr_copy]", "objects: [fr_skip, fr_nope]"),
         "bpf/fr/program.yaml:14 -> objects[1]: bpf/fr/ has no fr_nope.bpf.c"),
        (("objects: [fr_skip, fr_copy]", "objects: fr_skip"),
         "bpf/fr/program.yaml:14 -> objects: expected a list, got a string"),
    ],
)  # fmt: skip
def test_a_bad_program_description_is_located(
    project: Path, edit: tuple[str, str], message: str
) -> None:
    f = project / "bpf/fr/program.yaml"
    assert edit[0] in f.read_text()
    f.write_text(f.read_text().replace(*edit))
    with pytest.raises(InputError) as e:
        resolve(request(project))
    assert e.value.message.startswith(message)


def test_an_object_named_like_its_program_is_refused_among_several(project: Path) -> None:
    """The image's fr.bpf.o is fr's objects linked into one: no object may be called fr."""
    f = project / "bpf/fr/program.yaml"
    f.write_text(f.read_text().replace("objects: [fr_skip, fr_copy]", "objects: [fr, fr_copy]"))
    (project / "bpf/fr/fr.bpf.c").write_text('#include "fr.bpf.h"\n')
    with pytest.raises(InputError) as e:
        bpf.load_program(project, "fr")
    assert e.value.message.startswith(
        "bpf/fr/program.yaml:14 -> objects[0]: the object 'fr' is named like the program"
    )


def test_a_program_without_objects_needs_its_own_bpf_c(project: Path) -> None:
    (project / "bpf/iolat/iolat.bpf.c").unlink()
    with pytest.raises(InputError) as e:
        bpf.load_program(project, "iolat")
    assert "bpf/iolat/ has no iolat.bpf.c" in e.value.message
    assert "objects: [...]" in (e.value.hint or "")


def test_a_program_without_its_loader_source_is_refused(project: Path) -> None:
    (project / "bpf/fr/tuoba-fr.c").unlink()
    with pytest.raises(InputError) as e:
        bpf.load_program(project, "fr")
    assert "bpf/fr/ has no tuoba-fr.c" in e.value.message


def test_a_kernel_without_its_btf_file_is_named(project: Path, tmp_path: Path) -> None:
    """A kernel cached by a tuoba that did not keep the BTF: the bpf step says which entry to
    remove so that it is built again."""
    kernel = tmp_path / "store" / "kernel" / "abc123" / "data"
    kernel.mkdir(parents=True)
    with pytest.raises(BuildError) as e:
        bpf.build((bpf.load_program(project, "fr"),), kernel_dir=kernel, btf_file="vmlinux.btf",
                  tree_digest="t",
                  target=bpf.image_target("arm64", tmp_path / "tree"), arch="arm64",
                  store=Store(tmp_path / "cache"),
                  log=tmp_path / "log")  # fmt: skip
    assert e.value.message.startswith(f"the kernel in {kernel} has no vmlinux.btf")
    assert e.value.hint == "remove it so that it is built again: tuoba cache rm kernel/abc123"


def test_a_tree_without_libbpf_is_named(project: Path, tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    (kernel / "vmlinux.btf").write_bytes(b"\x9f\xeb")
    with pytest.raises(BuildError) as e:
        bpf.build((bpf.load_program(project, "fr"),), kernel_dir=kernel, btf_file="vmlinux.btf",
                  tree_digest="t",
                  target=bpf.image_target("arm64", tmp_path / "tree"), arch="arm64",
                  store=Store(tmp_path / "cache"),
                  log=tmp_path / "log")  # fmt: skip
    assert "the root filesystem has no /usr/include/bpf/skel_internal.h" in e.value.message
    assert e.value.hint == "add libbpf-dev to the packages of the recipe that asks for the program"


def test_no_programs_build_nothing(tmp_path: Path) -> None:
    assert bpf.build((), kernel_dir=tmp_path, btf_file="x",
                     target=bpf.image_target("arm64", tmp_path), tree_digest="t",
                     arch="arm64", store=Store(tmp_path / "cache"),
                     log=tmp_path / "log") == {}  # fmt: skip
