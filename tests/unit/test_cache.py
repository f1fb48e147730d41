"""The build cache's store: atomic, immutable entries, uses, and what prune selects."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
import types
from pathlib import Path
from typing import Any

import pytest

from tuoba import steps
from tuoba.cache import Mirror, Store, leftovers, parse_duration, select_prune, usage
from tuoba.errors import InputError

KEY = "ab" * 32
KEY2 = "cd" * 32


def make(store: Store, kind: str, key: str, text: str = "x") -> None:
    with store.make(kind, key, what=f"a {kind}", inputs={"n": 1}) as data:
        (data / "f").write_text(text)
        (data / "sub").mkdir()
        os.link(data / "f", data / "sub" / "f-again")  # counted once


def test_made_entry_has_its_metadata_and_data(tmp_path: Path) -> None:
    store = Store(tmp_path, label="rpi4-s1")
    assert store.get("kernel", KEY) is None
    make(store, "kernel", KEY, "hello")
    entry = store.get("kernel", KEY)
    assert entry is not None
    assert (entry.data / "f").read_text() == "hello"
    assert (entry.meta.kind, entry.meta.key, entry.meta.what) == ("kernel", KEY, "a kernel")
    assert (entry.meta.size, entry.meta.files) == (5, 1)
    assert entry.meta.inputs == {"n": 1}
    assert abs(entry.meta.created - time.time()) < 60
    assert set(entry.used_by) == {"rpi4-s1"}
    assert [e.ref for e in store.entries()] == [f"kernel/{KEY}"]


def test_failed_or_interrupted_make_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for exc in (RuntimeError("compile failed"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), store.make("rootfs", KEY, what="w", inputs={}) as data:
            (data / "half").write_text("half")
            raise exc
        assert store.get("rootfs", KEY) is None
        assert list((tmp_path / "store" / "rootfs").iterdir()) == []  # no work dir either


def test_a_second_make_of_one_key_keeps_the_first_entry(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make(store, "kernel", KEY, "first")
    make(store, "kernel", KEY, "second")  # (as a builder that did not see the first would)
    entry = store.get("kernel", KEY)
    assert entry is not None and (entry.data / "f").read_text() == "first"
    assert len(store.entries()) == 1
    assert [p.name for p in (tmp_path / "store" / "kernel").iterdir()] == [KEY]


def _make_in_child(root: str, text: str) -> None:
    make(Store(Path(root)), "kernel", KEY, text * 100_000)


def test_two_processes_making_one_key_at_once_both_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_make_in_child, args=(str(tmp_path), t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entry = Store(tmp_path).get("kernel", KEY)
    assert entry is not None
    assert (entry.data / "f").read_text() in ("a" * 100_000, "b" * 100_000)  # whole, one of them
    assert [p.name for p in (tmp_path / "store" / "kernel").iterdir()] == [KEY]


def test_strays_are_not_entries_and_names_are_checked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (tmp_path / "store" / "kernel" / KEY2).mkdir(parents=True)  # no entry.json: not finished
    (tmp_path / "store" / "kernel" / KEY2 / "data").mkdir()
    assert store.get("kernel", KEY2) is None
    assert store.entries() == []
    with pytest.raises(InputError, match="not a cache entry name"):
        make(store, "Kernel", KEY)
    with pytest.raises(InputError, match="not a cache entry name"):
        make(store, "kernel", "../../etc")


def test_remove_and_usage(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make(store, "kernel", KEY, "12345")
    make(store, "rootfs", KEY2, "123")
    (store.work("ccache") / "obj").write_bytes(b"x" * 10)
    (tmp_path / "rootfs-of-an-older-layout").mkdir()
    use = usage(store)
    assert use.kinds == {"kernel": (1, 5), "rootfs": (1, 3)}
    assert use.work == {"ccache": 10}
    assert set(use.other) == {"rootfs-of-an-older-layout"}
    entry = store.get("kernel", KEY)
    assert entry is not None
    store.remove(entry)
    assert store.get("kernel", KEY) is None
    assert not store.has(f"kernel/{KEY}") and store.has(f"rootfs/{KEY2}")
    assert [p.name for p in (tmp_path / "store" / "kernel").iterdir()] == []


def test_prune_selection_by_age_and_by_count(tmp_path: Path) -> None:
    store = Store(tmp_path, label="qemu-aarch64-s1")
    keys = [f"{i:02x}" * 32 for i in range(4)]
    for k in keys:
        make(store, "kernel", k)
    make(store, "rootfs", KEY)
    now = time.time()
    day = 86400.0
    for i, k in enumerate(keys):  # key i last used i days ago
        mark = tmp_path / "store" / "kernel" / k / "used-by" / "qemu-aarch64-s1"
        os.utime(mark, (now - i * day, now - i * day))
        meta = tmp_path / "store" / "kernel" / k / "entry.json"
        raw = json.loads(meta.read_text())
        meta.write_text(json.dumps(raw | {"created": now - 10 * day}))
    entries = store.entries()
    old = select_prune(entries, older_than=1.5 * day, keep_last=None, now=now)
    assert [e.meta.key for e in old] == [keys[3], keys[2]]
    last = select_prune(entries, older_than=None, keep_last=1, now=now)
    assert [e.meta.key for e in last] == [keys[3], keys[2], keys[1]]  # rootfs: its only one kept
    both = select_prune(entries, older_than=2.5 * day, keep_last=3, now=now)
    assert [e.meta.key for e in both] == [keys[3]]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("2w", 14 * 86400), ("90m", 5400), ("45s", 45)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "d", "-1d", "1y", "1.5d", ""])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(InputError, match="not a duration") as e:
        parse_duration(text)
    assert "30d" in (e.value.hint or "")


def test_steps_whose_entries_are_gone_are_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    make(store, "kernel", KEY)
    make(store, "rootfs", KEY2)
    plan = types.SimpleNamespace(build_dir=tmp_path / "build", store=store)
    plan.build_dir.mkdir()
    for step, refs in (("kernel", [f"kernel/{KEY}"]), ("rootfs", [f"rootfs/{KEY2}"]),
                       ("overlay", [])):  # fmt: skip
        (plan.build_dir / f"{step}.json").write_text(json.dumps({"cache": refs}))
    assert steps.forget_pruned(plan) == []  # type: ignore[arg-type]
    entry = store.get("rootfs", KEY2)
    assert entry is not None
    store.remove(entry)
    assert steps.forget_pruned(plan) == ["rootfs"]  # type: ignore[arg-type]
    assert sorted(p.name for p in plan.build_dir.iterdir()) == ["kernel.json", "overlay.json"]


def test_what_a_killed_build_left_half_made_is_counted_and_taken_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dead = _dead_pid()
    for key in (KEY, KEY2):
        half = tmp_path / "store" / "kernel" / f".{key}.tmp-{dead}" / "data"
        half.mkdir(parents=True)
        (half / "f").write_bytes(b"x" * 100)
    mine = tmp_path / "store" / "kernel" / f".{KEY2}.tmp-{os.getpid()}"  # alive: not touched
    mine.mkdir()
    assert len(leftovers(tmp_path)) == 2 and usage(store).leftover == 200
    assert store.entries() == []  # never entries
    make(store, "kernel", KEY)  # making that key takes its leftover back
    assert [p.name for p in leftovers(tmp_path)] == [f".{KEY2}.tmp-{dead}"]
    assert mine.is_dir()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_ref_of_a_path_into_an_entry(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.ref_of(str(tmp_path / "store" / "rootfs" / KEY / "data" / "tree")) == (
        f"rootfs/{KEY}"
    )
    assert store.ref_of(str(tmp_path / "work" / "ccache")) is None
    assert store.ref_of(str(tmp_path / "store" / "rootfs" / f".{KEY}.tmp-1")) is None
    assert store.ref_of("/elsewhere/store/rootfs/" + KEY) is None


def test_a_mirror_gives_only_the_kinds_it_is_asked_for_and_takes_nothing(tmp_path: Path) -> None:
    """The second build of --check-reproducible: its own cache, with downloads (here
    `source`) taken from the first build's cache, hard-linked; a `kernel` made again."""
    first = Store(tmp_path / "first")
    make(first, "source", KEY, "tarball")
    make(first, "kernel", KEY2, "vmlinux")
    second = Store(tmp_path / "second", remote=Mirror(tmp_path / "first", ["source"]))
    got = second.get("source", KEY)
    assert got is not None and (got.data / "f").read_text() == "tarball"
    assert got.data.parent.parent.parent == tmp_path / "second" / "store"
    mine = (got.data / "f").stat()
    theirs = (tmp_path / "first/store/source" / KEY / "data/f").stat()
    assert (mine.st_ino, mine.st_dev) == (theirs.st_ino, theirs.st_dev)  # linked, not copied
    assert second.get("kernel", KEY2) is None
    make(second, "kernel", KEY2, "vmlinux, again")
    assert [e.ref for e in first.entries()] == [f"kernel/{KEY2}", f"source/{KEY}"]
    assert (first.get("kernel", KEY2).data / "f").read_text() == "vmlinux"  # type: ignore[union-attr]


def _make_once_in_child(root: str, made: str, text: str, inside: Any, go: Any) -> None:
    """What a costly step does: take the entry if the cache has it (or gets it while this one
    waits), else make it, noting in `made` that it did (and, for the test, saying it is inside
    and making it only once told to)."""
    store = Store(Path(root))
    with store.making("kernel", KEY) as entry:
        if entry is None:
            with Path(made).open("a") as f:
                f.write(text)
            inside.set()
            go.wait(30)
            make(store, "kernel", KEY, text)


def test_an_entry_two_builds_need_at_once_is_made_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Builds share the cache: the second that needs an entry being made waits for it, saying
    so, and takes the first one's instead of making it again."""
    made = tmp_path / "made"
    ctx = multiprocessing.get_context("fork")
    inside, go = ctx.Event(), ctx.Event()
    args = (str(tmp_path / "cache"), str(made))
    first = ctx.Process(target=_make_once_in_child, args=(*args, "a", inside, go))
    first.start()
    assert inside.wait(30)
    second = ctx.Process(target=_make_once_in_child, args=(*args, "b", inside, go))
    second.start()
    said, deadline = "", time.monotonic() + 30
    waiting = f"waiting: the cache entry kernel/{KEY[:12]}… is being made by tuoba build"
    while waiting not in said and time.monotonic() < deadline:  # (the second asks, and waits)
        time.sleep(0.05)
        said += " ".join(capfd.readouterr().err.split()) + " "
    go.set()
    for p in (first, second):
        p.join(60)
        assert p.exitcode == 0
    assert waiting in said
    assert made.read_text() == "a"  # made once, by the first
    entry = Store(tmp_path / "cache").get("kernel", KEY)
    assert entry is not None and (entry.data / "f").read_text() == "a"
    with Store(tmp_path / "cache").making("kernel", KEY) as again:  # there: no lock, no wait
        assert again is not None


def _use_in_child(root: str, log: str) -> None:
    with Store(Path(root)).using("kernel-build-arm64") as d:
        with Path(log).open("a") as f:
            f.write(f"in {d.name}\n")
        time.sleep(0.5)
        with Path(log).open("a") as f:
            f.write("out\n")


def test_a_working_tree_is_used_by_one_build_at_a_time(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_use_in_child, args=(str(tmp_path / "c"), str(log))) for _ in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text() == "in kernel-build-arm64\nout\n" * 2  # never both inside
    store = Store(tmp_path / "c")
    assert list((tmp_path / "c" / "work" / ".locks").iterdir())
    store.clear_locks()
    assert not (tmp_path / "c" / "work" / ".locks").exists()
    assert {e.meta.kind for e in store.entries()} == set()  # lock files are not entries
