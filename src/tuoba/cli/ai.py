from __future__ import annotations

import json
from pathlib import Path

import click

from tuoba import inference, lock, ui
from tuoba.cache import Store
from tuoba.cli import App
from tuoba.cli.options import board_option, default_image, image_option, stage_option
from tuoba.errors import InputError


@click.group("ai")
def command() -> None:
    """The ai recipe's tools on the build host (TVM, ONNX)."""


@command.command("run-remote")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--rpc",
    metavar="HOST[:PORT]",
    help="A running board's TVM RPC server (the ai recipe's tvm-rpc service; PORT: the "
    "recipe's). Without it, the board's built image is booted in QEMU for the run.",
)
@board_option
@stage_option
@image_option
@click.option(
    "--input", "inputs", multiple=True, metavar="NAME=FILE.npy",
    help="A model input from a numpy file (repeatable); inputs not given are seeded random "
    "numbers of the model's shape.",
)  # fmt: skip
@click.option("--runs", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="Timed runs on the board (the median is reported).")  # fmt: skip
@click.option("--mcpu", default="cortex-a72", show_default=True,
              help="The board's CPU, for TVM's code generation.")  # fmt: skip
@click.option(
    "--wait", type=float, default=None,
    help="Seconds to wait for the RPC server to answer [default: 30; 600 for a booted image, "
    "whose server starts under emulation].",
)  # fmt: skip
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for a booted image's ssh server.")  # fmt: skip
@click.option("--offline", is_flag=True, help="Use the cache only (the host wheels).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def run_remote(
    app: App,
    model: Path,
    rpc: str | None,
    board: str,
    stage: int,
    image: Path | None,
    inputs: tuple[str, ...],
    runs: int,
    mcpu: str,
    wait: float | None,
    timeout: float,
    offline: bool,
    as_json: bool,
) -> None:
    """Compile an ONNX MODEL with TVM here, for the board's CPU, and run it on the board over
    TVM's RPC: uploaded, run and timed there, its outputs checked against ONNX's reference
    implementation (numpy) computed here. Exit status 5 when they differ.

    \b
    Example:
      tuoba build --board qemu-aarch64 -r ai
      tuoba ai run-remote model.onnx --board qemu-aarch64      # boots the image for the run
      tuoba ai run-remote model.onnx --rpc 192.168.1.42 --input x=x.npy --json   # a real Pi 4
    """
    given = []
    for item in inputs:
        name, sep, file = item.partition("=")
        if not (sep and name and file):
            raise InputError(f"--input {item}: expected NAME=FILE.npy", hint="e.g. --input x=x.npy")
        given.append((name, Path(file).resolve()))
    job = inference.Run(model=model.resolve(), inputs=tuple(given), runs=runs, mcpu=mcpu,
                        wait=wait if wait is not None else 30.0 if rpc else 600.0)  # fmt: skip
    with lock.shared(app.cache_dir, "the cache", holder="tuoba ai run-remote"):
        store = Store(app.cache_dir)
        if rpc:
            host, _, port = rpc.partition(":")
            if port and not port.isdigit():
                raise InputError(f"--rpc {rpc}: expected HOST[:PORT]", hint="e.g. 10.0.0.7:9090")
            address = f"{host}:{port or inference.rpc_port(app.data_dir)}"
            report = inference.run_on(address, job, app.data_dir, store, offline)
        else:
            image = (image or default_image(app.out_dir, board, stage)).resolve()
            report = inference.run_booted(image, job, app.data_dir, store, timeout, offline)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    target = report["target"]
    ui.info(f"{report['model']} on {report['rpc']}: TVM {report['tvm']}, {target['mtriple']} "
            f"({target['mcpu']}), library {report['library_bytes']} bytes, compiled in "
            f"{report['compile_s']} s")  # fmt: skip
    ui.info(f"  {report['runs']} runs on the board: median {report['ms']:.3f} ms")
    for name, out in report["outputs"].items():
        ui.info(f"  output {name} {out['dtype']} {out['shape']}: agrees with the reference "
                f"(numpy), max |error| {out['max_abs_err']:.3g}")  # fmt: skip
