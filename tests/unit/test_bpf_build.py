"""How the bpf step builds a program (without running the compilers): each object with its
light skeleton, the loader against no library but the C one, the image's one object, and a
cache key that covers the headers the loaders are built with and bpf/common/."""

from __future__ import annotations

import types
from pathlib import Path
from typing import IO, Any

import pytest

from tuoba import bpf
from tuoba.cache import Store
from tuoba.errors import BuildError


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands compile_program runs, in order (none of them runs)."""
    ran: list[list[str]] = []

    def fake_run(cmd: list[str], *, stdout_file: IO[bytes] | None = None, **kw: Any) -> None:
        ran.append([str(c) for c in cmd])

    monkeypatch.setattr(bpf.run, "run", fake_run)
    return ran


def tree_with_headers(root: Path) -> Path:
    for name in ("usr/include/bpf/skel_internal.h", "usr/include/bpf/bpf_helpers.h",
                 "usr/include/linux/bpf.h", "usr/include/linux/perf_event.h",
                 "usr/include/stdio.h"):  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"/* {name} */\n")
    return root


def test_fr_is_two_objects_each_a_light_skeleton_and_one_loader_without_libbpf(
    project: Path, tmp_path: Path, commands: list[list[str]]
) -> None:
    prog = bpf.load_program(project, "fr")
    tree = tmp_path / "tree"
    (tmp_path / "out").mkdir()
    built = bpf.compile_program(prog, tmp_path / "out", bpf.image_target("arm64", tree))
    assert built == bpf.Built(tmp_path / "out/tuoba-fr", tmp_path / "out/fr.bpf.o")
    compiles = [c for c in commands if c[:3] == ["clang", "-target", "bpf"]]
    assert [c[c.index("-c") + 1] for c in compiles] == [
        str(project / "bpf/fr/fr_skip.bpf.c"), str(project / "bpf/fr/fr_copy.bpf.c")
    ]  # fmt: skip
    for c in compiles:
        assert "-D__TARGET_ARCH_arm64" in c and str(project / "bpf/common") in c
        assert c[c.index("-isystem") + 1] == str(tree / "usr/include")
    skeletons = [c for c in commands if c[:3] == ["bpftool", "gen", "skeleton"]]
    assert [c[3:] for c in skeletons] == [
        ["-L", str(tmp_path / "out/fr_skip.bpf.o"), "name", "fr_skip_bpf"],
        ["-L", str(tmp_path / "out/fr_copy.bpf.o"), "name", "fr_copy_bpf"],
    ]
    # the image's fr.bpf.o: both objects linked into one
    objects = [str(tmp_path / "out" / f"{o}.bpf.o") for o in ("fr_skip", "fr_copy")]
    assert ["bpftool", "gen", "object", str(built.object), *objects] in commands
    loader = commands[-1]
    assert loader[:4] == ["clang", "--target=aarch64-linux-gnu", f"--sysroot={tree}",
                          "--gcc-toolchain=/usr"]  # fmt: skip
    assert loader[loader.index("-o") + 1 :] == [
        str(built.loader),
        str(prog.directory / "tuoba-fr.c"),
    ]
    assert not [a for a in loader if a.startswith("-l")], loader


def test_a_program_of_one_object_is_its_own_image_object(
    project: Path, tmp_path: Path, commands: list[list[str]]
) -> None:
    prog = bpf.load_program(project, "iolat")
    built = bpf.compile_program(prog, tmp_path, bpf.Target(kernel_arch="x86"))
    assert prog.objects == ("iolat",)
    assert built.object == tmp_path / "iolat.bpf.o"
    assert not [c for c in commands if c[:3] == ["bpftool", "gen", "object"]]
    assert ["-L", str(tmp_path / "iolat.bpf.o"), "name", "iolat_bpf"] in [c[3:] for c in commands]
    # the build host's own compiler and root
    assert commands[-1][:3] == ["clang", "-fuse-ld=lld", "-O2"]
    assert commands[0][commands[0].index("-isystem") + 1] == "/usr/include"


def test_stage_2_loaders_are_static_musl_programs_with_libbpfs_own_headers(
    project: Path, tmp_path: Path, commands: list[list[str]]
) -> None:
    """Stage 2: the loader by the musl toolchain's clang, statically; both sides find libbpf's
    headers (userland/libbpf) before the toolchain's sysroot; no host path in the objects."""
    cc = ["clang", "--target=aarch64-linux-musl", "--sysroot=/tc/sysroot", "-fuse-ld=lld"]
    target = bpf.musl_target("arm64", cc, Path("/tc/sysroot"), Path("/pkg/usr/include"))
    prog = bpf.load_program(project, "iolat")
    bpf.compile_program(prog, tmp_path, target)
    loader = commands[-1]
    assert loader[: len(cc) + 1] == [*cc, "-static"]
    assert loader[loader.index("-isystem") + 1] == "/pkg/usr/include"
    compile_ = commands[0]
    isystem = [compile_[i + 1] for i, a in enumerate(compile_) if a == "-isystem"]
    assert isystem == ["/pkg/usr/include", "/tc/sysroot/usr/include"]
    assert f"-ffile-prefix-map={project / 'bpf'}={bpf.SOURCE_NAME}" in compile_
    assert f"-ffile-prefix-map={tmp_path}={bpf.SOURCE_NAME}/build" in compile_
    assert bpf.target_ids(target)["cc"] == [
        "clang",
        "--target=aarch64-linux-musl",
        "--sysroot=SYSROOT_DIR/sysroot",
        "-fuse-ld=lld",
        "-static",
    ]  # fmt: skip (no place of this machine's cache in the key)
    # the key reads libbpf's headers by content
    headers = tmp_path / "libbpf"
    (headers / "bpf").mkdir(parents=True)
    (headers / "bpf/skel_internal.h").write_text("/* 1.1.2 */\n")
    other = bpf.musl_target("arm64", cc, tmp_path / "none", headers)
    before = bpf.target_ids(other)
    assert before["libbpf"] == {"bpf/skel_internal.h": bpf.sources.sha256_file(
        headers / "bpf/skel_internal.h")}  # fmt: skip
    (headers / "bpf/skel_internal.h").write_text("/* 1.4.6 */\n")
    assert bpf.target_ids(other) != before


def test_the_host_target_is_named_by_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpf.os, "uname", lambda: types.SimpleNamespace(machine="aarch64"))
    assert bpf.host_target() == bpf.Target(kernel_arch="arm64")
    monkeypatch.setattr(bpf.os, "uname", lambda: types.SimpleNamespace(machine="riscv64"))
    with pytest.raises(BuildError) as e:
        bpf.host_target()
    assert e.value.message == "no BPF target for this host's architecture riscv64"


def test_the_cache_key_covers_the_sysroot_headers_and_bpf_common(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built again when the root tree (its inputs digest: its C library among them), libbpf's
    headers, the uapi headers of the calls the loaders make or bpf/common/ change; reused when
    nothing they are built with did."""
    made: list[Path] = []

    def fake_compile(p: bpf.Program, out: Path, target: bpf.Target, **kw: Any) -> bpf.Built:
        assert target == bpf.image_target("arm64", tree)
        made.append(out)
        return bpf.Built(out / p.loader, out / f"{p.name}.bpf.o")

    monkeypatch.setattr(bpf.run, "require", lambda tool: tool)
    monkeypatch.setattr(bpf, "_tool_ids", lambda: {"clang": "clang 14"})
    monkeypatch.setattr(bpf, "_check_symbols", lambda programs, system_map: None)
    monkeypatch.setattr(bpf, "make_vmlinux_h", lambda btf, out: out / "vmlinux.h")
    monkeypatch.setattr(bpf, "compile_program", fake_compile)
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    (kernel / "vmlinux.btf").write_bytes(b"\x9f\xeb")
    tree = tree_with_headers(tmp_path / "tree")
    store = Store(tmp_path / "cache")
    programs = (bpf.load_program(project, "iolat"),)
    tree_digest = "tree-1"

    def build() -> int:
        bpf.build(programs, kernel_dir=kernel, btf_file="vmlinux.btf",
                  target=bpf.image_target("arm64", tree),
                  tree_digest=tree_digest, arch="arm64", store=store,
                  log=tmp_path / "log")  # fmt: skip
        return len(made)

    assert build() == 1
    assert build() == 1
    (tree / "usr/include/stdio.h").write_text("/* the tree's digest stands for it */\n")
    assert build() == 1
    tree_digest = "tree-2"  # another root tree (its packages changed)
    assert build() == 2
    for changed in (tree / "usr/include/bpf/bpf_helpers.h", tree / "usr/include/linux/perf_event.h",
                    project / "bpf/common/tuoba_skel.h"):  # fmt: skip
        changed.write_text(changed.read_text() + "/* changed */\n")
        before = len(made)
        assert build() == before + 1, changed
