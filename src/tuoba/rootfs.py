"""Stage-1 root filesystem: Debian for the board's architecture, built by mkosi.

The tree is a cache entry (kind ``rootfs``) keyed by the digest of its inputs, so a fresh
checkout (or a second output directory) reuses it instead of installing packages again.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

from tuoba import arch as arches
from tuoba import host, records, run
from tuoba.cache import Entry, Store
from tuoba.digest import digest
from tuoba.errors import BuildError
from tuoba.plan import Plan
from tuoba.records import RootfsRecord
from tuoba.sources import tree_sha256


def skeleton_dir(plan: Plan) -> Path:
    return plan.board.directory / "skeleton"


def files_under(root: Path) -> tuple[Path, ...]:
    """Every file under root, sorted (none when root is not a directory)."""
    return tuple(sorted(p for p in root.rglob("*") if p.is_file())) if root.is_dir() else ()


def inputs(plan: Plan) -> dict[str, Any]:
    """The plan's values the Debian root filesystem depends on."""
    return {
        "arch": plan.board.arch,
        "release": plan.release,
        "packages": sorted(plan.packages),
        # (absent when none: earlier root filesystems stay valid)
        **({"suites": sorted(plan.suites)} if plan.suites else {}),
        **({"components": list(plan.components)} if plan.components else {}),
        "mirrors": plan.mirrors,
        "security_mirrors": plan.security_mirrors,
    }


def rootfs_digest(plan: Plan, mkosi_version: str) -> str:
    return digest(
        {
            "inputs": inputs(plan),
            "skeleton": tree_sha256(skeleton_dir(plan)),
            "mkosi": mkosi_version,
            "format": 1,  # bump when the post-processing below changes
        }
    )


def mkosi_conf(plan: Plan, output_dir: Path, workspace: Path) -> str:
    suite = dict(plan.suites)
    packages = "\n".join(
        f"         {p}/{suite[p]}" if p in suite else f"         {p}" for p in sorted(plan.packages)
    )
    skeleton = skeleton_dir(plan)
    skeleton_line = f"SkeletonTrees={skeleton}\n" if skeleton.is_dir() else ""
    return (
        textwrap.dedent(
            f"""\
            [Distribution]
            Distribution=debian
            Release={plan.release}
            Architecture={arches.of(plan.board.arch).mkosi}
            Mirror={plan.mirrors[0]}

            [Output]
            Format=directory
            Output=tree
            OutputDirectory={output_dir}

            [Build]
            WorkspaceDirectory={workspace}

            [Content]
            Bootable=no
            WithDocs=no
            Locale=C.UTF-8
            Keymap=us
            Timezone=UTC
            """
        )
        + skeleton_line
        + f"Packages={packages.lstrip()}\n"
    )


def apt_sources(plan: Plan) -> str:
    """Our own apt sources for mkosi: mkosi's defaults add a debug suite not served here. The
    components: main and those the recipes add (recipe.COMPONENTS), for every suite."""
    components = " ".join(("main", *plan.components))
    stanzas = [
        f"Types: deb\nURIs: {' '.join(plan.mirrors)}\n"
        f"Suites: {plan.release} {plan.release}-updates\nComponents: {components}\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    ]
    extra = sorted({s for _, s in plan.suites})
    if extra:  # packages asked for from these suites (named per package: apt's pkg/suite)
        stanzas.append(
            f"Types: deb\nURIs: {' '.join(plan.mirrors)}\n"
            f"Suites: {' '.join(extra)}\nComponents: {components}\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
    if plan.security_mirrors:
        stanzas.append(
            f"Types: deb\nURIs: {' '.join(plan.security_mirrors)}\n"
            f"Suites: {plan.release}-security\nComponents: {components}\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
    return "\n".join(stanzas)


def dpkg_packages(tree: Path) -> list[dict[str, str]]:
    """Installed packages of a Debian tree, from /var/lib/dpkg/status."""
    status = tree / "var/lib/dpkg/status"
    pkgs = []
    for stanza in status.read_text().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status", "").endswith(" installed"):
            pkgs.append(
                {
                    "name": fields["Package"],
                    "version": fields["Version"],
                    "arch": fields.get("Architecture", ""),
                }
            )
    return sorted(pkgs, key=lambda p: p["name"])


_STALE_INDEX = re.compile(r"^E: Failed to fetch (\S+) +File has unexpected size", re.M)


def stale_index_error(log: Path) -> None:
    """apt's "unexpected size" is the archive's fault, not the build's: say which index."""
    found = _STALE_INDEX.search(log.read_text(errors="replace")) if log.is_file() else None
    if found is None:
        return
    raise BuildError(
        f"the Debian archive served an index that does not match its signed Release file: "
        f"{found.group(1)} (apt: 'File has unexpected size'; the mirror is mid-sync or stale)",
        hint="try again later; or build from the main archive alone with --mirror URL (the "
        f"-security suite is then left out); apt's words are in {log}",
    )


def build_rootfs(plan: Plan, log: Path) -> RootfsRecord:
    """Build (or reuse) the rootfs tree; returns its record (digest, tree, packages)."""
    host.require_binfmt(plan.board.arch)
    store = plan.store
    _, mkosi_version = host.pinned_tool(plan.data_dir, "mkosi")
    key = rootfs_digest(plan, mkosi_version)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    with store.making("rootfs", key) as entry:
        if entry is None:
            entry = _make_rootfs(plan, store, key, mkosi_version, log)
        else:
            log.write_text(f"reused cached rootfs {entry.data}\n")
    try:
        rec = json.loads((entry.data / "rootfs.json").read_text())
        return records.from_dict(
            RootfsRecord, rec | {"tree": str(entry.data / "tree")}, f"{entry.data}/rootfs.json"
        )
    except (ValueError, BuildError) as e:
        raise BuildError(
            f"the cached root filesystem {key[:12]}… has an unreadable record ({e})",
            hint=f"remove the entry and build again: tuoba cache rm rootfs/{key[:12]}",
        ) from e


def _make_rootfs(plan: Plan, store: Store, key: str, mkosi_version: str, log: Path) -> Entry:
    if plan.request.offline:
        raise BuildError(
            f"no cached root filesystem for these inputs ({key[:12]}…) and --offline "
            "forbids installing packages",
            hint="run the build once without --offline to fill the cache",
        )
    names = [r.name for r in plan.recipes]
    what = f"Debian {plan.board.arch} root filesystem ({', '.join(names)})"
    inputs = {"mkosi": mkosi_version, "arch": plan.board.arch, "recipes": names}
    site = host.mkosi_dir(plan.data_dir, store, offline=plan.request.offline)
    with store.make("rootfs", key, what=what, inputs=inputs) as data:
        _mkosi_build(plan, store, site, key, log, data)
        record = {
            "digest": key,
            "packages": dpkg_packages(data / "tree"),
            "mkosi": mkosi_version,
        }
        (data / "rootfs.json").write_text(json.dumps(record, indent=2))
    entry = store.get("rootfs", key)
    assert entry is not None  # (just made)
    return entry


def work_dirs(store: Store, key: str) -> tuple[Path, Path]:
    """mkosi's configuration directory and its workspace for one rootfs build: side by side,
    since mkosi refuses a workspace inside a build source (its configuration directory is
    one)."""
    work = store.work("rootfs") / key[:16]
    return work, work.with_name(f"{work.name}.workspace")


def _mkosi_build(plan: Plan, store: Store, site: Path, key: str, log: Path, data: Path) -> None:
    """Run mkosi for the plan; its tree becomes data/tree."""
    work, workspace = work_dirs(store, key)
    for d in (work, workspace):
        shutil.rmtree(d, ignore_errors=True)
    (work / "mkosi.sandbox/etc/apt/sources.list.d").mkdir(parents=True)
    (work / "out").mkdir()
    workspace.mkdir()
    (work / "mkosi.conf").write_text(mkosi_conf(plan, work / "out", workspace))
    (work / "mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources").write_text(apt_sources(plan))
    try:
        # (apt locks its package cache without waiting: two mkosi runs for one architecture
        # take turns; another architecture's has a cache of its own)
        with store.using(f"mkosi-packages-{plan.board.arch}") as packages:
            run.run(
                [sys.executable, "-m", "mkosi", "--directory", str(work),
                 "--package-cache-dir", str(packages), "--force", "build"],
                env={"PYTHONPATH": str(site)},
                log=log,
            )  # fmt: skip
        tree = work / "out" / "tree"
        # Build-time host keys would be identical in every image; they are made on first boot.
        for key_file in (tree / "etc/ssh").glob("ssh_host_*"):
            key_file.unlink()
        tree.rename(data / "tree")
    except BuildError:
        stale_index_error(log)
        raise
    finally:
        for d in (work, workspace):
            shutil.rmtree(d, ignore_errors=True)
