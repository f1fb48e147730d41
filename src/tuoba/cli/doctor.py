from __future__ import annotations

import click

from tuoba import host, ui
from tuoba.cli import App
from tuoba.errors import HostToolError


@click.command("doctor")
@click.option("--fix", is_flag=True, help="Install what is missing (apt) and register binfmt.")
@click.pass_obj
def command(app: App, fix: bool) -> None:
    """Check the host tools a build needs; with --fix, install the missing ones.

    \b
    Example:
      tuoba doctor --fix
    """
    checks = host.all_checks(app.data_dir, app.cache_dir)
    if fix:
        done: set[int] = set()
        for c in checks:
            if not c.ok and c.fix is not None and id(c.fix) not in done:
                if not host.is_root():
                    raise HostToolError("--fix needs root (apt-get, mount)", hint="run as root")
                ui.info(f"fixing: {c.name} ({c.detail})")
                c.fix()
                done.add(id(c.fix))
        checks = host.all_checks(app.data_dir, app.cache_dir)
    for c in checks:
        mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
        ui.console.print(f"{mark} {c.name:<22} {c.detail}")
    bad = [c.name for c in checks if not c.ok]
    if bad:
        raise HostToolError(
            f"{len(bad)} host check(s) failed: {', '.join(bad)}",
            hint="run 'tuoba doctor --fix' as root",
        )
