"""Is a build bit-reproducible? `tuoba build --check-reproducible` builds the image, then
builds it a second time with an output and a cache directory of its own, and compares the
two byte for byte. Where they differ it says where: which artifact, which region of the disk
image (a partition, or the table and loader before them) and, for a partition with a
filesystem, which files inside the image (both filesystems mounted read-only and walked),
with diffoscope's account of the first few when diffoscope is installed.

What the second build may take from the first one's cache is said in the report: downloads
(`source` and `tool` entries, named by the sha256 of their bytes: inputs, not outputs)
always; what steps make only for the kinds the user names with `--reuse` (`--reuse kernel`:
the kernel is then not built twice, and its own reproducibility goes unchecked).
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuoba import publish, run, ui
from tuoba.build import build
from tuoba.errors import InputError, TuobaError
from tuoba.plan import Plan, Request, resolve

# Downloads: named by their own sha256, checked when fetched; sharing them checks nothing less.
SHARED = ("source", "tool")
# What steps make, and so what a second build may make again or (--reuse) take from the first.
REUSABLE = ("kernel", "kernel-src", "toolchain", "package", "rootfs", "bpf", "u-boot", "firmware")
SCRATCH = ".reproducible"  # under the output directory: the second build's out/ and cache
DIFFOSCOPE_FILES = 5  # files diffoscope is asked about (each can take a while)
LISTED = 50  # differing files named in the report, per region


class NotReproducible(TuobaError):
    """The two builds differ."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class Difference:
    where: str  # "tuoba-…img, partition 1 (root, ext4)", "tuoba-…manifest.json"
    what: str  # one line: how it differs
    files: tuple[str, ...] = ()  # paths inside the image ("/etc/hostname: content")
    diffoscope: str = ""  # its text about the first files, when it ran


@dataclasses.dataclass(frozen=True)
class Report:
    image: str
    identical: tuple[str, ...]  # artifacts that are byte for byte the same
    differences: tuple[Difference, ...]
    shared: tuple[str, ...]  # cache kinds the second build took from the first
    source_date_epoch: int
    seconds: tuple[float, float]  # the two builds

    @property
    def reproducible(self) -> bool:
        return not self.differences

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["reproducible"] = self.reproducible
        return json.dumps(data, indent=2) + "\n"


def check_reuse(kinds: tuple[str, ...]) -> tuple[str, ...]:
    for kind in kinds:
        if kind not in REUSABLE:
            raise InputError(
                f"--reuse {kind}: not a kind of cache entry a build makes",
                hint=f"one of: {', '.join(REUSABLE)}",
            )
    return tuple(dict.fromkeys(kinds))


def check(request: Request, reuse: tuple[str, ...] = (), keep: bool = False) -> Report:
    """Build twice and compare; the report is written beside the image
    (`<image>.reproducible.json`). Raises NotReproducible when the builds differ."""
    reuse = check_reuse(reuse)
    first = resolve(request)
    ui.info(f"reproducibility: first build of {first.image_name}")
    a = build(first)
    ui.info(f"first build: steps run: {', '.join(a.ran) or 'nothing (up to date)'}")
    scratch = first.out_dir / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    shared = (*SHARED, *reuse)
    second = resolve(
        dataclasses.replace(
            request,
            out_dir=str(scratch / "out"),
            cache_dir=str(scratch / "cache"),
            cache_url=None,  # a remote cache would hand it the first build's outputs
            ssh_key=str(first.ssh_key),  # root's authorized key is an input: the same one
            reuse_from=request.cache_dir,
            reuse_kinds=shared,
        )
    )
    try:
        ui.info(
            f"reproducibility: second build in {scratch}, with a cache of its own "
            f"(taking only {', '.join(shared)} entries from the first)"
        )
        b = build(second)
        ui.info(f"second build: steps run: {', '.join(b.ran)}")
        differences = compare(first, second.out_dir)
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    names = artifact_names(first)
    report = Report(
        image=first.image_name,
        identical=tuple(
            n for n in names if not any(d.where.partition(",")[0] == n for d in differences)
        ),
        differences=tuple(differences),
        shared=shared,
        source_date_epoch=first.source_date_epoch,
        seconds=(round(a.seconds, 1), round(b.seconds, 1)),
    )
    path = first.out_dir / f"{first.image_name}.reproducible.json"
    with publish.atomic(path) as tmp:
        tmp.write_text(report.to_json())
    if differences:
        first_diff = differences[0]
        named = f" ({first_diff.files[0]}…)" if first_diff.files else ""
        raise NotReproducible(
            f"the two builds of {first.image_name} differ: {first_diff.where}: "
            f"{first_diff.what}{named}",
            hint=f"every difference, with diffoscope's account where it ran, is in {path}",
        )
    ui.info(
        f"reproducible: {len(names)} artifacts of {first.image_name} bit-identical "
        f"(SOURCE_DATE_EPOCH {first.source_date_epoch}; report {path})"
    )
    return report


def artifact_names(plan: Plan) -> list[str]:
    """What a build publishes for its image, by name."""
    return sorted(
        p.name
        for p in plan.out_dir.glob(f"{plan.image_name}.*")
        if p.is_file() and not p.name.endswith(".reproducible.json")
    )


def compare(first: Plan, other_out: Path) -> list[Difference]:
    """Every way the second build's artifacts differ from the first's."""
    out: list[Difference] = []
    for name in artifact_names(first):
        a, b = first.out_dir / name, other_out / name
        if not b.is_file():
            out.append(Difference(name, "the second build did not make it"))
        elif not filecmp.cmp(a, b, shallow=False):
            if name.endswith(".img"):
                out.extend(compare_images(a, b, manifest(first)))
            elif name.endswith(".json"):
                out.append(Difference(name, f"JSON differs at {', '.join(json_paths(a, b))}"))
            else:
                out.append(Difference(name, f"{first_byte(a, b)}"))
    return out


def manifest(plan: Plan) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (plan.out_dir / f"{plan.image_name}.manifest.json").read_text()
    )
    return data


def first_byte(a: Path, b: Path) -> str:
    """Where two files first differ."""
    sa, sb = a.stat().st_size, b.stat().st_size
    if sa != sb:
        return f"sizes differ ({sa} and {sb} bytes)"
    with a.open("rb") as fa, b.open("rb") as fb:
        offset = 0
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if not ca:
                return "same bytes"
            if ca != cb:
                at = next(i for i, (x, y) in enumerate(zip(ca, cb, strict=True)) if x != y)
                return f"first differs at byte {offset + at}"
            offset += len(ca)


def json_paths(a: Path, b: Path) -> list[str]:
    """The keys (dotted paths) at which two JSON documents differ, the first few."""
    found: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if len(found) >= 10 or x == y:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else str(k))
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{path}[{i}]")
        else:
            found.append(path or "(the whole document)")

    walk(json.loads(a.read_text()), json.loads(b.read_text()), "")
    return found


def same_range(a: Path, b: Path, start: int, size: int) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        fa.seek(start)
        fb.seek(start)
        left = size
        while left > 0:
            n = min(left, 8 << 20)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def compare_images(a: Path, b: Path, m: dict[str, Any]) -> list[Difference]:
    """Region by region: the table and loader before the first partition, each partition
    (and the files in it), what follows the last one."""
    parts = sorted(m["partitions"], key=lambda p: int(p["start"]))
    if a.stat().st_size != b.stat().st_size:
        return [Difference(a.name, f"sizes differ: {first_byte(a, b)}")]
    out: list[Difference] = []
    regions = [(0, int(parts[0]["start"]) if parts else a.stat().st_size, "before the first "
                "partition (partition table, boot loader)")]  # fmt: skip
    end = int(parts[-1]["start"]) + int(parts[-1]["size"]) if parts else a.stat().st_size
    regions.append((end, a.stat().st_size - end, "after the last partition (backup GPT)"))
    for start, size, label in regions:
        if size and not same_range(a, b, start, size):
            out.append(Difference(f"{a.name}, {label}", f"bytes {start}–{start + size} differ"))
    for n, p in enumerate(parts, 1):
        start, size = int(p["start"]), int(p["size"])
        if same_range(a, b, start, size):
            continue
        where = f"{a.name}, partition {n} ({p['name']}, {p.get('fs') or 'raw'})"
        out.append(compare_partition(a, b, start, size, str(p.get("fs") or ""), where))
    return out


def compare_partition(a: Path, b: Path, start: int, size: int, fs: str, where: str) -> Difference:
    """Name the files that differ inside a partition's filesystem."""
    if fs not in ("ext4", "vfat"):
        return Difference(where, "its bytes differ (no filesystem to look into)")
    if os.geteuid() != 0:
        return Difference(where, "its bytes differ (the files in it are named only as root: "
                          "the filesystems are mounted to compare them)")  # fmt: skip
    with mounted(a, start, size, fs) as ra, mounted(b, start, size, fs) as rb:
        files = compare_trees(ra, rb)
        if not files:
            return Difference(
                where, "every file is the same; the filesystem's own metadata differs "
                "(block allocation, inode numbers, superblock or journal)"
            )  # fmt: skip
        text = diffoscope(ra, rb, [f for f in files if f.endswith(": content")])
    shown = tuple(files[:LISTED]) + ((f"… and {len(files) - LISTED} more",)
                                      if len(files) > LISTED else ())  # fmt: skip
    return Difference(where, f"{len(files)} files differ", shown, text)


@contextlib.contextmanager
def mounted(image: Path, start: int, size: int, fs: str) -> Iterator[Path]:
    """A partition of an image file mounted read-only on a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="tuoba-repro-") as d:
        options = f"ro,loop,offset={start},sizelimit={size}" + (",noload" if fs == "ext4" else "")
        run.run(["mount", "-t", fs, "-o", options, str(image), d])
        try:
            yield Path(d)
        finally:
            run.run(["umount", d], check=False)


def entry_of(root: Path, rel: str) -> tuple[Any, ...]:
    st = os.lstat(root / rel)
    kind = stat.S_IFMT(st.st_mode)
    link = os.readlink(root / rel) if stat.S_ISLNK(st.st_mode) else None
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
            st.st_size if stat.S_ISREG(st.st_mode) else None, link)  # fmt: skip


def walk(root: Path) -> set[str]:
    found: set[str] = set()
    for d, dirs, names in os.walk(root):
        for name in dirs + names:
            found.add(os.path.relpath(os.path.join(d, name), root))
    return found


FIELDS = ("type", "mode", "owner", "group", "mtime", "size", "link target")


def compare_trees(a: Path, b: Path) -> list[str]:
    """'/path: how' for every path that differs between two trees (sorted)."""
    in_a, in_b = walk(a), walk(b)
    out = [f"/{p}: only in the first build" for p in sorted(in_a - in_b)]
    out += [f"/{p}: only in the second build" for p in sorted(in_b - in_a)]
    for p in sorted(in_a & in_b):
        ea, eb = entry_of(a, p), entry_of(b, p)
        how = [FIELDS[i] for i, (x, y) in enumerate(zip(ea, eb, strict=True)) if x != y]
        if (not how and ea[0] == stat.S_IFREG
                and not filecmp.cmp(a / p, b / p, shallow=False)):  # fmt: skip
            how = ["content"]
        if how:
            out.append(f"/{p}: {', '.join(how)}")
    return sorted(out)


def diffoscope(a: Path, b: Path, files: list[str]) -> str:
    """diffoscope's account of the first few files whose contents differ ("" without any)."""
    if not files:
        return ""
    if shutil.which("diffoscope") is None:
        return "(diffoscope is not installed: `apt install diffoscope-minimal` for its account)"
    texts = []
    for f in files[:DIFFOSCOPE_FILES]:
        rel = f.split(": ", 1)[0].lstrip("/")
        start = time.monotonic()
        proc = run.run(["diffoscope", "--no-progress", "--text", "-", str(a / rel), str(b / rel)],
                       capture=True, check=False, timeout=300)  # fmt: skip
        lines = proc.stdout.splitlines()
        texts.append("\n".join([f"## /{rel} ({time.monotonic() - start:.0f} s)", *lines[:200],
                                *(["…"] if len(lines) > 200 else [])]))  # fmt: skip
    return "\n".join(texts)
