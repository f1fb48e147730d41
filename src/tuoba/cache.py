"""The build cache: one content-addressed store for every artifact a build reuses.

An entry is named by its kind (what it is: ``kernel``, ``rootfs``, ``source``…) and its key
(the digest of the inputs that made it, or for a download the sha256 of its bytes). Entries
are immutable: they are made in a work directory beside the store and published with one
rename, together with a small metadata record (what, inputs, size, created), so an
interrupted build never leaves an entry that looks finished, and two builders that make the
same entry at once both succeed and leave one. Layout under the cache directory:

    store/<kind>/<key>/entry.json         the metadata record (written before the rename)
    store/<kind>/<key>/data/              the artifact (a tree, or a directory of one file)
    store/<kind>/<key>/used-by/<label>    one empty file per board+stage that used it (mtime:
                                          when it last did)
    work/<name>/                          working trees kept between builds for speed (the
                                          kernel's incremental build, ccache, downloaded .debs);
                                          not entries: nothing else depends on them
    work/.locks/                          a lock file per entry being made and per working
                                          tree in use (builds share the cache: two that need
                                          the same one take turns)

Where entries are kept is a `Backend`: this module has the local one; a remote cache is one
more implementation of the same four methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from tuoba import lock, run
from tuoba.errors import BuildError, InputError

LAYOUT = 1
KEY = re.compile(r"[0-9a-f]{16,64}")
KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclasses.dataclass(frozen=True)
class Meta:
    """What an entry is and what made it."""

    kind: str
    key: str
    what: str  # one line for people: "Linux 6.1.119 arm64 (qemu-aarch64 fragments)"
    inputs: Mapping[str, Any]  # the inputs the key is the digest of (summaries of big ones)
    size: int  # bytes under data/
    files: int
    created: float  # seconds since the epoch
    layout: int = LAYOUT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Meta:
        raw = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Entry:
    meta: Meta
    data: Path  # the artifact, on this machine
    used_by: Mapping[str, float]  # label -> when it last used the entry

    @property
    def ref(self) -> str:
        return f"{self.meta.kind}/{self.meta.key}"

    @property
    def last_used(self) -> float:
        return max([self.meta.created, *self.used_by.values()])


class Backend(Protocol):
    """Where entries live. `publish` must be atomic and idempotent: when the key already
    exists, the existing entry wins and the new one is discarded."""

    def get(self, kind: str, key: str) -> Entry | None: ...

    def publish(self, work: Path, meta: Meta) -> Entry: ...

    def entries(self) -> Iterator[Entry]: ...

    def remove(self, entry: Entry) -> None: ...


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under path, counting each hard-linked file once and no symlink target."""
    if not path.exists():
        return 0, 0
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size, 1
    seen: set[tuple[int, int]] = set()
    size = files = 0
    for root, dirs, names in os.walk(path):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size += st.st_size
            files += 1
    return size, files


class LocalBackend:
    """Entries in directories under ROOT/store."""

    def __init__(self, root: Path) -> None:
        self.root = root / "store"

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _read(self, d: Path) -> Entry | None:
        try:
            meta = Meta.from_json((d / "entry.json").read_text())
        except (OSError, ValueError, TypeError):
            return None  # not an entry (a stray directory)
        if meta.layout != LAYOUT:
            return None  # an entry of another layout: not read as this one
        users = d / "used-by"
        used = {p.name: p.stat().st_mtime for p in users.iterdir()} if users.is_dir() else {}
        return Entry(meta, d / "data", used)

    def get(self, kind: str, key: str) -> Entry | None:
        return self._read(self._dir(kind, key))

    def publish(self, work: Path, meta: Meta) -> Entry:
        (work / "entry.json").write_text(meta.to_json())
        final = self._dir(meta.kind, meta.key)
        try:
            work.rename(final)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(work, ignore_errors=True)  # another builder published it first
        entry = self._read(final)
        if entry is None:
            raise BuildError(
                f"cache entry {meta.kind}/{meta.key[:12]}… in {final} is not readable",
                hint=f"remove {final} and build again",
            )
        return entry

    def entries(self) -> Iterator[Entry]:
        if not self.root.is_dir():
            return
        for kind in sorted(self.root.iterdir()):
            for d in sorted(kind.iterdir()) if kind.is_dir() else []:
                if not d.name.startswith(".") and (entry := self._read(d)) is not None:
                    yield entry

    def remove(self, entry: Entry) -> None:
        d = self._dir(entry.meta.kind, entry.meta.key)
        # Rename first: a half-removed entry must never be read as a whole one.
        doomed = d.with_name(f".{d.name}.removing-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            d.rename(doomed)
            shutil.rmtree(doomed)


class Remote(Protocol):
    """A shared cache behind the local one (tuoba.remote): asked for what the local cache lacks
    before it is built, given what was built here."""

    def pull(self, kind: str, key: str, work: Path) -> Meta | None: ...

    def push(self, entry: Entry) -> None: ...


class Mirror:
    """Another local cache behind this one, read-only, for some kinds of entry only: how the
    second build of `tuoba build --check-reproducible` takes downloads (and what the user
    names) from the first build's cache while it makes everything else again. Entries are
    hard-linked when both caches share a filesystem, copied otherwise; nothing is pushed."""

    def __init__(self, root: Path, kinds: Collection[str]) -> None:
        self.backend = LocalBackend(root)
        self.kinds = frozenset(kinds)

    def pull(self, kind: str, key: str, work: Path) -> Meta | None:
        entry = self.backend.get(kind, key) if kind in self.kinds else None
        if entry is None:
            return None
        work.mkdir(parents=True)
        linked = entry.data.stat().st_dev == work.stat().st_dev
        run.run(["cp", "-al" if linked else "-a", str(entry.data), str(work / "data")])
        return entry.meta

    def push(self, entry: Entry) -> None:
        pass


class Store:
    """The cache a build uses: lookups, atomic publishing, and a note of what was used (by
    `label`, a board and stage such as ``rpi4-s1``) for `tuoba cache list` and prune ages.
    With a `remote`, a lookup the local cache misses is pulled from it, and what is made here
    is pushed to it."""

    def __init__(
        self,
        root: Path,
        label: str | None = None,
        backend: Backend | None = None,
        remote: Remote | None = None,
    ):
        self.root = root
        self.label = label
        self.backend: Backend = backend or LocalBackend(root)
        self.remote = remote

    def get(self, kind: str, key: str) -> Entry | None:
        entry = self.backend.get(kind, key)
        if entry is None and self.remote is not None:
            entry = self._pull(kind, key)
        if entry is not None:
            self._used(entry)
        return entry

    def _pull(self, kind: str, key: str) -> Entry | None:
        assert self.remote is not None
        work = self._work_dir(kind, key)
        try:
            meta = self.remote.pull(kind, key, work)
            return None if meta is None else self.backend.publish(work, meta)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def has(self, ref: str) -> bool:
        """Whether the entry `kind/key` is there."""
        kind, _, key = ref.partition("/")
        return self.backend.get(kind, key) is not None

    def touch(self, ref: str) -> bool:
        """Whether the entry `kind/key` is here (the remote cache is not asked: a step whose
        entry is gone runs again, and pulls it then); when it is, it counts as used now."""
        kind, _, key = ref.partition("/")
        entry = self.backend.get(kind, key)
        if entry is not None:
            self._used(entry)
        return entry is not None

    def ref_of(self, path: str) -> str | None:
        """The entry (kind/key) a path on this machine points into, if any."""
        try:
            parts = Path(path).relative_to(self.root / "store").parts
        except ValueError:
            return None
        return f"{parts[0]}/{parts[1]}" if len(parts) >= 2 and KEY.fullmatch(parts[1]) else None

    @contextlib.contextmanager
    def make(self, kind: str, key: str, *, what: str, inputs: Mapping[str, Any]) -> Iterator[Path]:
        """Yield an empty directory to build the entry's data in; when the block succeeds it is
        published (size counted, metadata written, one rename); when it fails or is
        interrupted, nothing is left. Read the entry with `get` afterwards."""
        work = self._work_dir(kind, key)
        (work / "data").mkdir(parents=True)
        try:
            yield work / "data"
            size, files = tree_size(work / "data")
            meta = Meta(kind, key, what, dict(inputs), size, files, time.time())
            entry = self.backend.publish(work, meta)
            self._used(entry)
            if self.remote is not None:
                self.remote.push(entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _work_dir(self, kind: str, key: str) -> Path:
        """Where entry kind/key is made (built here, or pulled) before its one rename: beside
        the store, this process's own, with what killed builds left of it gone."""
        _check_name(kind, key)
        tmp_root = self.root / "store" / kind
        tmp_root.mkdir(parents=True, exist_ok=True)
        for stale in leftovers(self.root, f".{key}."):  # a build killed while making it
            shutil.rmtree(stale, ignore_errors=True)
        work = tmp_root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        return work

    def work(self, name: str) -> Path:
        """A working directory kept between builds (not an entry). One that builds would both
        write (not ccache's: it locks its own files) is used under `using`."""
        d = self.root / "work" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[Path]:
        """The working directory `name`, for this build alone: another build that needs it at
        the same time waits (builds share the cache, not its working trees)."""
        with self._lock(f"work-{name}", f"the cache's working directory {name}", "is in use by"):
            yield self.work(name)

    @contextlib.contextmanager
    def making(self, kind: str, key: str) -> Iterator[Entry | None]:
        """For an entry that is costly to make: yields it when the cache has it, else holds the
        right to make it for the block and yields None. A second build that needs the same entry
        meanwhile waits, then takes what the first published instead of making it again."""
        if (entry := self.get(kind, key)) is not None:
            yield entry
            return
        _check_name(kind, key)
        with self._lock(f"{kind}-{key}", f"the cache entry {kind}/{key[:12]}…", "is being made by"):
            yield self.get(kind, key)

    def _lock(self, name: str, what: str, doing: str) -> contextlib.AbstractContextManager[int]:
        locks = self.root / "work" / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        return lock.held(locks / f"{name}.lock", what, "tuoba build", doing=doing)

    def clear_locks(self) -> None:
        """Remove the lock files of entries and working trees: only while the cache is held
        alone (no build is running to hold one)."""
        shutil.rmtree(self.root / "work" / LOCKS, ignore_errors=True)

    def entries(self) -> list[Entry]:
        return list(self.backend.entries())

    def remove(self, entry: Entry) -> None:
        self.backend.remove(entry)

    def _used(self, entry: Entry) -> None:
        if self.label is None or not isinstance(self.backend, LocalBackend):
            return
        marks = entry.data.parent / "used-by"
        with contextlib.suppress(OSError):  # a read-only cache still serves
            marks.mkdir(exist_ok=True)
            (marks / self.label).touch()


# Under work/: the lock files of entries being made and of working trees in use.
LOCKS = ".locks"

LEFTOVER = re.compile(r"\.[0-9a-f]+\.(?:tmp|removing)-(\d+)")


def leftovers(root: Path, prefix: str = ".") -> list[Path]:
    """Entries half made or half removed by a process that is gone (killed mid-build): never
    entries, only space to take back."""
    out = []
    for d in sorted((root / "store").glob(f"*/{prefix}*")):
        m = LEFTOVER.fullmatch(d.name)
        if m and not _alive(int(m.group(1))):
            out.append(d)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != 0


def _check_name(kind: str, key: str) -> None:
    if not KIND.fullmatch(kind) or not KEY.fullmatch(key):
        raise InputError(
            f"not a cache entry name: {kind}/{key}",
            hint="kinds are short lowercase words, keys hex digests (a bug in tuoba)",
        )


# --- what `tuoba cache` shows and removes --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Usage:
    """Disk use of a cache directory: entries by kind, work directories, anything else."""

    kinds: Mapping[str, tuple[int, int]]  # kind -> (entries, bytes)
    work: Mapping[str, int]  # work/<name> -> bytes
    other: Mapping[str, int]  # top-level names tuoba does not use (an older layout) -> bytes
    leftover: int = 0  # bytes of entries a killed build left half made (prune removes them)

    @property
    def total(self) -> int:
        return (
            sum(b for _, b in self.kinds.values())
            + sum(self.work.values())
            + sum(self.other.values())
            + self.leftover
        )


def usage(store: Store) -> Usage:
    kinds: dict[str, tuple[int, int]] = {}
    for e in store.entries():
        n, b = kinds.get(e.meta.kind, (0, 0))
        kinds[e.meta.kind] = (n + 1, b + e.meta.size)
    work_root = store.root / "work"
    work = {
        d.name: tree_size(d)[0] for d in (sorted(work_root.iterdir()) if work_root.is_dir() else [])
    }
    other = {
        p.name: tree_size(p)[0]
        for p in (sorted(store.root.iterdir()) if store.root.is_dir() else [])
        if p.name not in ("store", "work") and not p.name.startswith(".")
    }
    leftover = sum(tree_size(d)[0] for d in leftovers(store.root))
    return Usage(kinds, work, other, leftover)


def select_prune(
    entries: list[Entry], *, older_than: float | None, keep_last: int | None, now: float
) -> list[Entry]:
    """The entries a prune removes: those not used for `older_than` seconds, and beyond the
    `keep_last` most recently used of each kind. With both, an entry goes when either says so."""
    doomed: dict[str, Entry] = {}
    if older_than is not None:
        for e in entries:
            if now - e.last_used > older_than:
                doomed[e.ref] = e
    if keep_last is not None:
        by_kind: dict[str, list[Entry]] = {}
        for e in entries:
            by_kind.setdefault(e.meta.kind, []).append(e)
        for group in by_kind.values():
            group.sort(key=lambda e: e.last_used, reverse=True)
            for e in group[keep_last:]:
                doomed[e.ref] = e
    return sorted(doomed.values(), key=lambda e: (e.meta.kind, e.last_used))


DURATION = re.compile(r"(\d+)([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'30d', '12h', '2w', '90m', '45s' -> seconds."""
    m = DURATION.fullmatch(text.strip())
    if not m:
        raise InputError(
            f"not a duration: {text!r}",
            hint="a number and a unit: 45s, 90m, 12h, 30d or 2w",
        )
    return int(m.group(1)) * UNITS[m.group(2)]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # (the loop always returns)


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
