from __future__ import annotations

import json
import re
import shutil
import time

import click

from tuoba import cache, lock, remote
from tuoba.cli import App
from tuoba.errors import InputError


@click.group("cache")
def command() -> None:
    """Show and prune the build cache (~/.cache/tuoba or --cache-dir).

    Every artifact a build reuses is an entry: the kernels, root filesystems, stage-2
    toolchains and packages, U-Boot builds, unpacked firmware and tools, and each downloaded
    source, named by the digest of what made it.
    """


@command.command("list")
@click.option("--kind", help="Only entries of this kind (kernel, rootfs, source, …).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry, a line each.")
@click.option("--remote", "of_remote", is_flag=True, help="The remote cache's (--cache-url).")
@click.pass_obj
def list_(app: App, kind: str | None, as_json: bool, of_remote: bool) -> None:
    """List the cache entries: kind, key, size, age (since last used), which boards use
    them, and what each is.

    \b
    Example:
      tuoba cache list --kind kernel
    """
    if of_remote:
        if as_json:
            raise InputError("--json is not there yet for --remote",
                             hint="tuoba cache list --remote")  # fmt: skip
        rc = _remote(app)
        for meta, size in rc.entries():
            if kind is None or meta.kind == kind:
                click.echo(f"{meta.kind:<10} {meta.key}  {cache.human_size(size):>10} (packed)"
                           f"  {meta.what}")  # fmt: skip
        _reachable(rc)
        return
    store = cache.Store(app.cache_dir)
    entries = [e for e in store.entries() if kind is None or e.meta.kind == kind]
    now = time.time()
    for e in entries:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "kind": e.meta.kind,
                        "key": e.meta.key,
                        "what": e.meta.what,
                        "size": e.meta.size,
                        "files": e.meta.files,
                        "created": e.meta.created,
                        "last_used": e.last_used,
                        "used_by": sorted(e.used_by),
                        "inputs": e.meta.inputs,
                    },
                    sort_keys=True,
                )
            )
            continue
        users = ",".join(sorted(e.used_by)) or "-"
        click.echo(
            f"{e.meta.kind:<10} {e.meta.key[:12]}  {cache.human_size(e.meta.size):>10}  "
            f"{cache.human_age(now - e.last_used):>4}  {users:<24} {e.meta.what}"
        )
    if not entries and not as_json:
        click.echo(f"no cache entries in {app.cache_dir}", err=True)


@command.command("du")
@click.pass_obj
def du(app: App) -> None:
    """Disk use of the cache: entries by kind, working trees, and anything else there.

    \b
    Example:
      tuoba cache du
    """
    use = cache.usage(cache.Store(app.cache_dir))
    for kind, (n, size) in sorted(use.kinds.items()):
        click.echo(f"{cache.human_size(size):>10}  {kind} ({n} {'entry' if n == 1 else 'entries'})")
    for name, size in use.work.items():
        click.echo(f"{cache.human_size(size):>10}  work/{name} (kept for faster rebuilds)")
    if use.leftover:
        click.echo(f"{cache.human_size(use.leftover):>10}  left half made by killed builds "
                   "(tuoba cache prune removes it)")  # fmt: skip
    for name, size in use.other.items():
        click.echo(f"{cache.human_size(size):>10}  {name} (not used by this tuoba: remove it)")
    click.echo(f"{cache.human_size(use.total):>10}  total in {app.cache_dir}")


@command.command("prune")
@click.option("--older-than", metavar="AGE", help="Remove entries not used for AGE (30d, 12h).")
@click.option(
    "--keep-last",
    type=click.IntRange(min=0),
    metavar="N",
    help="Keep the N most recently used entries of each kind, remove the rest.",
)
@click.option("--kind", help="Only entries of this kind (kernel, rootfs, source, …).")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@click.pass_obj
def prune(
    app: App, older_than: str | None, keep_last: int | None, kind: str | None, dry_run: bool
) -> None:
    """Remove cache entries. A later build makes again what it needs (its steps notice
    entries that are gone).

    \b
    Examples:
      tuoba cache prune --older-than 30d
      tuoba cache prune --keep-last 2 --dry-run
      tuoba cache prune --kind rootfs --keep-last 1
    """
    if older_than is None and keep_last is None:
        raise InputError(
            "tuoba cache prune needs --older-than AGE or --keep-last N",
            hint="for example: tuoba cache prune --older-than 30d (see tuoba cache list)",
        )
    age = None if older_than is None else cache.parse_duration(older_than)
    with lock.exclusive(app.cache_dir, "the cache", holder="tuoba cache prune"):
        store = cache.Store(app.cache_dir)
        entries = [e for e in store.entries() if kind is None or e.meta.kind == kind]
        doomed = cache.select_prune(entries, older_than=age, keep_last=keep_last, now=time.time())
        for e in doomed:
            if not dry_run:
                store.remove(e)
            click.echo(f"{'would remove' if dry_run else 'removed'} {e.ref[:40]}  {e.meta.what}")
        half_made = 0
        for stale in cache.leftovers(app.cache_dir):
            half_made += cache.tree_size(stale)[0]
            if not dry_run:
                shutil.rmtree(stale, ignore_errors=True)
            click.echo(f"{'would remove' if dry_run else 'removed'} {stale.name} (half made)")
        if not dry_run:
            store.clear_locks()  # (no build holds one: the cache is held alone)
    freed = cache.human_size(sum(e.meta.size for e in doomed) + half_made)
    verb = "would free" if dry_run else "freed"
    n = len(doomed)
    click.echo(f"{n} {'entry' if n == 1 else 'entries'}, {verb} {freed}")


@command.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="KIND/KEY...")
@click.pass_obj
def rm(app: App, refs: tuple[str, ...]) -> None:
    """Remove the named entries (KIND/KEY, the key or a unique prefix of it, as `tuoba cache
    list` shows them).

    \b
    Example:
      tuoba cache rm rootfs/8a7cf2b084ea
    """
    with lock.exclusive(app.cache_dir, "the cache", holder="tuoba cache rm"):
        store = cache.Store(app.cache_dir)
        for e in _choose(store.entries(), refs):
            store.remove(e)
            click.echo(f"removed {e.ref[:40]}  {e.meta.what}")


def _choose(entries: list[cache.Entry], refs: tuple[str, ...]) -> list[cache.Entry]:
    """The entries named KIND/KEY (a unique prefix of the key is enough)."""
    chosen = []
    for ref in refs:
        kind, _, prefix = ref.partition("/")
        found = [e for e in entries if e.meta.kind == kind and e.meta.key.startswith(prefix)]
        if len(found) != 1 or not prefix:
            raise InputError(
                f"{ref}: {'no' if not found else str(len(found))} cache entries match",
                hint="name one entry as KIND/KEY, with enough of the key to be unique "
                "(tuoba cache list)",
            )
        chosen.append(found[0])
    return chosen


def _remote(app: App) -> remote.RemoteCache:
    if not app.cache_url:
        raise InputError(
            "no remote cache: pass --cache-url URL (or set TUOBA_CACHE_URL)",
            hint="e.g. tuoba --cache-url s3://team-builds/tuoba cache push",
        )
    return remote.RemoteCache.open(app.cache_url)


def _reachable(rc: remote.RemoteCache) -> None:
    """A command that is about the remote cache fails when it cannot reach it (a build only
    warns and goes on)."""
    if rc.disabled is not None:
        raise remote.RemoteError(
            f"remote cache {remote.safe_url(rc.url)} not reachable ({rc.disabled})",
            hint="check the URL, the endpoint (AWS_ENDPOINT_URL) and the credentials",
        )


@command.command("push")
@click.argument("refs", nargs=-1, metavar="[KIND/KEY...]")
@click.option("--kind", help="Only entries of this kind (kernel, rootfs, source, …).")
@click.pass_obj
def push(app: App, refs: tuple[str, ...], kind: str | None) -> None:
    """Upload local cache entries to the remote cache (--cache-url): the named ones, or every
    one (of --kind). Entries the remote cache has already are left as they are.

    \b
    Example:
      tuoba --cache-url s3://team-builds/tuoba cache push --kind kernel
    """
    rc = _remote(app)
    if not rc.objects.writable:
        raise InputError(f"{remote.safe_url(rc.url)} is a read-only cache (https://)",
                         hint="push to its s3:// form")  # fmt: skip
    with lock.exclusive(app.cache_dir, "the cache", holder="tuoba cache push"):
        store = cache.Store(app.cache_dir)
        entries = [e for e in store.entries() if kind is None or e.meta.kind == kind]
        chosen = _choose(entries, refs) if refs else entries
        for e in chosen:
            rc.push(e)
            _reachable(rc)
    click.echo(f"{len(chosen)} entries checked, {cache.human_size(rc.pushed)} uploaded")
    if rc.failed:
        raise remote.RemoteError(
            f"{len(rc.failed)} entries could not be packed for the remote cache: "
            f"{', '.join(sorted(rc.failed))}",
            hint="see the warnings above (a full disk where the cache is?)",
        )


@command.command("pull")
@click.argument("refs", nargs=-1, required=True, metavar="KIND/KEY...")
@click.pass_obj
def pull(app: App, refs: tuple[str, ...]) -> None:
    """Download entries from the remote cache (--cache-url) into the local one, verified
    (full keys, as `tuoba cache list --remote` shows them).

    \b
    Example:
      tuoba --cache-url s3://team-builds/tuoba cache pull kernel/8fa28c1b…
    """
    rc = _remote(app)
    for ref in refs:
        kind, _, key = ref.partition("/")
        if not cache.KIND.fullmatch(kind) or not re.fullmatch(r"[0-9a-f]{64}", key):
            raise InputError(
                f"{ref}: not KIND/KEY with the whole key",
                hint="tuoba cache list --remote shows the entries with their whole keys",
            )
    with lock.exclusive(app.cache_dir, "the cache", holder="tuoba cache pull"):
        store = cache.Store(app.cache_dir, remote=rc)
        for ref in refs:
            kind, _, key = ref.partition("/")
            entry = store.get(kind, key)
            _reachable(rc)
            if entry is None:
                raise InputError(
                    f"{ref}: the remote cache has no such entry (or it was refused as damaged)",
                    hint="tuoba cache list --remote shows what it has",
                )
            click.echo(f"{entry.ref[:40]}  {entry.meta.what}")
