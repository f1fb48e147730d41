"""Building, again and again, on one image: the qemu-aarch64 board without its default stack
(`base` alone, 2 GiB). The cache, incremental rebuilds, interrupted, killed, concurrent and
full-disk builds are one code path whatever the recipes; on this small image each rebuild costs
seconds, not the developer image's minutes. A private copy of the project (editing an overlay
here never touches the checkout) and a cache of its own, hard links of the shared cache's
entries (~/.cache/tuoba or TUOBA_CACHE_DIR). Tests run in file order and build on each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import base_only, copy_project
from tests.integration.test_qemu_aarch64 import BOARD, Project, steps_run

pytestmark = pytest.mark.integration


def private_cache(dest: Path) -> Path:
    """A cache of this module's own whose entries are hard links of the shared cache's (an
    entry is never written once made; working trees are not copied): what the tests here remove
    from it (`tuoba cache rm`) is still there for the module on the other pytest-xdist worker,
    and what that one makes meanwhile does not hide a removal from these."""
    shared = Path(os.environ.get("TUOBA_CACHE_DIR") or Path.home() / ".cache" / "tuoba")
    for kind in sorted((shared / "store").glob("*/")):
        entries = [str(e) for e in sorted(kind.iterdir()) if not e.name.startswith(".")]
        if entries:
            (dest / "store" / kind.name).mkdir(parents=True)
            subprocess.run(["cp", "-al", *entries, str(dest / "store" / kind.name)], check=True)
    return dest


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The board without its default stack: an image of `base` alone, on a cache of its own."""
    base = tmp_path_factory.mktemp("qemu-base")
    project = Project(base_only(copy_project(base / "project")), private_cache(base / "cache"))
    project.tuoba("build", "--board", BOARD)
    assert project.manifest()["recipes"] == ["base"]
    return project


def test_removed_entry_is_made_again_by_the_next_build(small: Project) -> None:
    """The downloaded mkosi package (a small file) is removed from the cache: the step whose record
    points at it runs again and downloads it again; nothing after it runs, the image is
    unchanged."""
    before = small.artifact(".img").stat().st_mtime_ns
    listed = small.tuoba("cache", "list", "--json", "--kind", "source").stdout.splitlines()
    mkosi = next(e for e in map(json.loads, listed) if e["what"].startswith("mkosi_"))
    proc = small.tuoba("cache", "rm", f"source/{mkosi['key'][:12]}")
    assert f"removed source/{mkosi['key'][:12]}" in proc.stdout
    again = small.tuoba("build", "--board", BOARD)
    assert "the cache no longer holds what step 'fetch' made: it runs again" in again.stderr
    assert steps_run(again.stderr) == "fetch"
    assert small.artifact(".img").stat().st_mtime_ns == before
    back = small.tuoba("cache", "list", "--kind", "source").stdout
    assert mkosi["key"][:12] in back


def test_overlay_edit_reruns_only_overlay_and_image(small: Project) -> None:
    motd = small.root / "recipes/base/overlay/etc/motd"
    motd.write_text("TuobaOS test build\n")
    before = small.manifest()["rootfs"]
    proc = small.tuoba("build", "--board", BOARD, "--explain")
    assert steps_run(proc.stderr) == "overlay, image"
    assert "because" in proc.stdout + proc.stderr  # --explain says why
    assert small.manifest()["rootfs"] == before


def test_interrupted_build_leaves_no_finished_image_and_next_build_finishes(
    small: Project,
) -> None:
    (small.root / "recipes/base/overlay/etc/motd").write_text("interrupted build\n")
    proc = subprocess.Popen(
        small.cmd("build", "--board", BOARD),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        # as from a terminal: a suite started in the background by a non-interactive shell
        # inherits SIGINT ignored, and so would tuoba (Python keeps an ignored SIGINT ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "Writing" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    # tuoba ends the build's process group: SIGTERM, SIGKILL after run.GROUP_GRACE (30 s)
    proc.wait(180)
    assert proc.returncode != 0
    assert not small.artifact(".img").exists()
    assert not small.artifact(".manifest.json").exists()
    # Only hidden temporary files may remain (a killed process cannot clean up)...
    assert all(p.name.startswith(".") for p in small.out.glob("*.tmp"))

    again = small.tuoba("build", "--board", BOARD)
    assert "image" in steps_run(again.stderr)
    assert small.artifact(".manifest.json").is_file()
    assert small.artifact(".img").is_file()
    assert not list(small.out.glob(".*.tmp"))  # ...and the next build clears them


def _process_tree(pid: int) -> list[int]:
    """pid and everything below it (SCons runs in a session of its own, so a group kill of
    tuoba's does not reach it: kill -9 of "the whole build" is of this tree)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def test_kill_9_of_the_whole_build_loses_nothing(small: Project) -> None:
    """kill -9 of tuoba, SCons and every command below them while the image is written: no
    artifact under a final name, and the next build completes with SHA256SUMS verifying."""
    (small.root / "recipes/base/overlay/etc/motd").write_text("killed build\n")
    proc = subprocess.Popen(
        small.cmd("build", "--board", BOARD),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "Writing" in line or time.monotonic() > deadline:
            break
    tree = _process_tree(proc.pid)
    while len(tree) < 3 and proc.poll() is None:  # tuoba, SCons and a command of the step
        time.sleep(0.05)
        tree = _process_tree(proc.pid)
    assert proc.poll() is None, "the build finished before a command of its image step ran"
    while True:  # stopped first, so none starts a child between the listing and the kill
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        again_tree = _process_tree(proc.pid)
        if set(again_tree) <= set(tree):
            break
        tree = again_tree
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(60)
    assert not small.artifact(".img").exists()
    assert not small.artifact(".manifest.json").exists()

    again = small.tuoba("build", "--board", BOARD)
    assert "image" in steps_run(again.stderr)
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=small.out,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{small.artifact('.img').name}: OK" in check.stdout
    assert not list(small.out.glob(".*.tmp"))


def test_two_builds_at_once_into_one_out_dir(small: Project) -> None:
    """Two `tuoba build`s started together on one cache and out/: they share the cache, but the
    second waits for the first to be done with out/ (saying for whom), both finish, and the
    published set verifies."""
    (small.root / "recipes/base/overlay/etc/motd").write_text("two builds at once\n")
    procs = [
        subprocess.Popen(small.cmd("build", "--board", BOARD), stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
        for _ in range(2)
    ]  # fmt: skip
    said = [p.communicate(timeout=1200)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], said
    waited = [s for s in said if "waiting: the output" in " ".join(s.split())]
    assert len(waited) == 1, said
    assert "is in use by tuoba build (pid " in " ".join(waited[0].split())
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=small.out,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert not list(small.out.glob(".*.tmp"))


def test_full_disk_while_writing_the_image_loses_nothing(small: Project, tmp_path: Path) -> None:
    """out/ on a small filesystem mounted for the test, one and a half times the root tree:
    the staged tree fits, the root filesystem image written beside it does not. The build
    stops saying the disk is full (exit 4), publishes nothing, leaves no scratch; with room
    again (tmpfs: only what is written takes memory) the next build completes and verifies."""
    digest = small.manifest()["rootfs"]["digest"]  # type: ignore[index]
    listed = small.tuoba("cache", "list", "--json", "--kind", "rootfs").stdout.splitlines()
    tree = next(e["size"] for e in map(json.loads, listed) if e["key"] == digest)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={(tree * 3 // 2) >> 20}m", "tuoba-test",
                    str(disk)], check=True)  # fmt: skip
    try:
        cmd = [sys.executable, "-m", "tuoba", "--data-dir", str(small.root), "--out", str(disk),
               "--cache-dir", str(small.cache), "build", "--board", BOARD]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        said = " ".join(proc.stderr.split())
        assert proc.returncode == 4, proc.stderr
        assert "error: the disk filled up: no space left on the filesystem of" in said, said
        assert "hint: free space there" in said
        assert "Traceback" not in proc.stderr
        name = small.artifact(".img").name.removesuffix(".img")
        assert not (disk / f"{name}.img").exists()
        assert not (disk / f"{name}.manifest.json").exists()
        assert not list(disk.glob(".build/*/staging")) and not list(disk.glob(".build/*/part-*"))

        subprocess.run(["mount", "-o", "remount,size=8g", str(disk)], check=True)
        again = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stderr
        check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=disk,
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"{name}.img: OK" in check.stdout
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_dropped_kernel_option_fails_naming_its_unmet_dependency(small: Project) -> None:
    fragment = small.root / "kernel/features/virtio.config"
    original = fragment.read_text()
    fragment.write_text(original + "CONFIG_DRM_VIRTIO_GPU=m\n")
    try:
        proc = small.tuoba("build", "--board", BOARD, check=False)
    finally:
        fragment.write_text(original)
    assert proc.returncode == 4, proc.stderr
    assert "Kconfig dropped 1 requested option(s): CONFIG_DRM_VIRTIO_GPU=m" in proc.stderr
    assert "kernel/features/virtio.config:" in proc.stderr
    assert "unmet: DRM=n" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the previous image is still the finished one; restoring the fragment needs no rebuild
    again = small.tuoba("build", "--board", BOARD)
    assert "kernel" in steps_run(again.stderr)  # re-checked, and reused from the cache
    assert "reusing kernel built for these inputs" in again.stderr
