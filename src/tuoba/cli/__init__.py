"""The `tuoba` command line: thin commands over the core library."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.markup import escape

from tuoba import __version__, ui
from tuoba.errors import TuobaError


def find_data_dir() -> Path:
    """The project tree holding boards/, recipes/, kernel/, overlays/.

    Searched from the current directory upwards, then beside the installed package (an editable
    install from a checkout)."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "boards").is_dir() and (d / "recipes").is_dir() and (d / "SConstruct").is_file():
            return d
    pkg_root = Path(__file__).resolve().parents[3]
    return pkg_root


@dataclasses.dataclass
class App:
    """Global state shared by all commands (on ctx.obj)."""

    data_dir: Path
    out_dir: Path
    cache_dir: Path
    debug: bool
    cache_url: str | None = None


class TuobaGroup(click.Group):
    """Maps tuoba errors to one sentence + hint and an exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TuobaError as e:
            app = ctx.obj if isinstance(ctx.obj, App) else None
            if app is not None and app.debug:
                raise
            # messages quote the user's text, which must never be read as rich markup
            ui.console.print(f"[bold red]error:[/bold red] {escape(e.message)}", soft_wrap=True)
            if e.hint:
                ui.console.print(f"[cyan]hint:[/cyan] {escape(e.hint)}", soft_wrap=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            ui.console.print("[bold red]interrupted[/bold red]")
            ctx.exit(130)


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tuoba"


@dataclasses.dataclass(frozen=True)
class GlobalOption:
    """One global option: accepted before the command (`tuoba --out D build`) and after it
    (`tuoba build --out D`), as people type it; one table drives both."""

    decls: tuple[str, ...]
    field: str
    kwargs: dict[str, Any]

    def for_group(self) -> click.Option:
        return click.Option(self.decls, **self.kwargs)

    def for_command(self) -> click.Option:
        """The same option on a subcommand: no default and no env var (the group took those),
        so only a value typed after the command changes the App."""
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("envvar", "default")}
        if kwargs.get("count"):
            kwargs["default"] = 0
        return click.Option(self.decls, expose_value=False, callback=self._apply, **kwargs)

    def _apply(self, ctx: click.Context, param: click.Parameter, value: Any) -> None:
        app = ctx.find_object(App)
        if app is None or value in (None, False, 0):
            return
        if self.field == "verbose":
            ui.set_verbosity(ui.verbosity() + value)
        elif isinstance(value, Path):
            setattr(app, self.field, value.resolve())
        else:
            setattr(app, self.field, value)


DIR = click.Path(path_type=Path, file_okay=False)
GLOBAL_OPTIONS = (
    GlobalOption(("--debug",), "debug",
                 {"is_flag": True, "envvar": "TUOBA_DEBUG", "help": "Show tracebacks on errors."}),
    GlobalOption(("-v", "--verbose"), "verbose",
                 {"count": True, "help": "Show every command tuoba runs."}),
    GlobalOption(("--out", "out_dir"), "out_dir", {
        "type": DIR, "envvar": "TUOBA_OUT", "default": Path("out"),
        "help": "Where images and build records go. [default: out] [env: TUOBA_OUT]",
    }),
    GlobalOption(("--cache-dir",), "cache_dir", {
        "type": DIR, "envvar": "TUOBA_CACHE_DIR", "default": None,
        "help": "Downloads, root filesystems and tools, shared by all builds. "
        "[default: ~/.cache/tuoba] [env: TUOBA_CACHE_DIR]",
    }),
    GlobalOption(("--cache-url",), "cache_url", {
        "envvar": "TUOBA_CACHE_URL", "default": None, "metavar": "URL",
        "help": "A shared build cache behind the local one: s3://BUCKET/PREFIX (AWS settings; "
        "AWS_ENDPOINT_URL for another S3 server) or a read-only https:// mirror of one. "
        "[env: TUOBA_CACHE_URL]",
    }),
    GlobalOption(("--data-dir",), "data_dir", {
        "type": click.Path(path_type=Path, file_okay=False, exists=True),
        "envvar": "TUOBA_DATA_DIR", "default": None,
        "help": "Project tree with boards/, recipes/, kernel/, overlays/. "
        "[default: found from here] [env: TUOBA_DATA_DIR]",
    }),
)  # fmt: skip


def with_global_options(command: click.Command) -> None:
    """Give a command the global options after its name; a group and each of its subcommands
    (`tuoba cache --cache-dir D list` and `tuoba cache list --cache-dir D`)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_global_options(sub)
    command.params.extend(o.for_command() for o in GLOBAL_OPTIONS)


@click.group(cls=TuobaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuoba")
@click.pass_context
def cli(
    ctx: click.Context,
    debug: bool,
    verbose: int,
    out_dir: Path,
    cache_dir: Path | None,
    cache_url: str | None,
    data_dir: Path | None,
) -> None:
    """Compose TuobaOS images for ARM boards from board and recipe data.

    Global options go before or after the command: `tuoba --out D build` or
    `tuoba build --out D`.

    \b
    Typical use:
      tuoba doctor --fix                 install the host tools a build needs
      tuoba build --board qemu-aarch64   compose an image into out/
      tuoba test --board qemu-aarch64    boot it in QEMU and run the guest checks
      tuoba boot --board qemu-aarch64    boot it with the console on this terminal
    """
    ui.set_verbosity(verbose)
    ctx.obj = App(
        data_dir=(data_dir or find_data_dir()).resolve(),
        out_dir=out_dir.resolve(),
        cache_dir=(cache_dir or default_cache_dir()).resolve(),
        debug=debug,
        cache_url=cache_url,
    )


cli.params[:0] = [o.for_group() for o in GLOBAL_OPTIONS]


def _register() -> None:
    from tuoba.cli import (
        ai,
        boards,
        boot,
        build,
        cache,
        doctor,
        download,
        export,
        flash,
        kernel,
        matrix,
        recipes,
        release,
        test,
    )

    for module in (
        build, test, boot, flash, release, download, export, ai, matrix, boards, recipes,
        kernel, cache, doctor,
    ):  # fmt: skip
        with_global_options(module.command)
        cli.add_command(module.command)


_register()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM/SIGHUP end tuoba like Ctrl-C: children ended, exit 130


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)  # a closed terminal (SCons, in its own session,
    # would not hear it)
    cli(prog_name="tuoba")
