"""A fuzzer over every data file a build reads (Hypothesis): byte flips, truncation, type swaps,
deep nesting, huge values, unknown and removed keys. For each mutant, `tuoba build --check`
either validates (exit 0) or refuses with exit 2 and `error: <file>:<line>: …` plus a hint —
never a traceback, never a hang, and nothing written."""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.test_cli import invoke
from tests.conftest import ROOT, amlogic_sd_fip, copy_project, zynq_boot_image

# Mutants per file and arguments (39 cases). Plain `pytest` (the quick tier) makes 4 of each;
# `./dev test` (CI) sets 30: about two minutes in all on 2 cores. A deeper run:
# TUOBA_FUZZ_EXAMPLES=500 ./dev test tests/cli/test_fuzz.py
EXAMPLES = int(os.environ.get("TUOBA_FUZZ_EXAMPLES", "4"))
SECONDS_PER_MUTANT = 10


# Recipes of the test data, copied into the fuzzer's project: kinds of data file no recipe of the
# tree has yet (a sources.yaml).
TEST_RECIPES = ROOT / "tests" / "data" / "recipes"


def _original(file: str) -> Path:
    """Where a target's unmutated text is: the tree, or the test data."""
    parts = Path(file).parts
    if parts[0] == "recipes" and (TEST_RECIPES / parts[1]).is_dir():
        return TEST_RECIPES.joinpath(*parts[1:])
    return ROOT / file


def _targets() -> list[tuple[str, tuple[str, ...]]]:
    """(data file, the `tuoba build` arguments that make it read that file)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for board in sorted(p.parent.name for p in (ROOT / "boards").glob("*/board.yaml")):
        out.append((f"boards/{board}/board.yaml", ("--board", board)))
        if (ROOT / "boards" / board / "kernel.config").is_file():
            out.append((f"boards/{board}/kernel.config", ("--board", board)))
    for shared in sorted((ROOT / "boards" / "common").glob("*.yaml")):
        out.append((f"boards/common/{shared.name}", ("--board", "rpi4")))  # rpi4 includes each
    for recipe in sorted(p.parent.name for p in (ROOT / "recipes").glob("*/recipe.yaml")):
        for stage in ("1", "2"):
            out.append((f"recipes/{recipe}/recipe.yaml", ("--recipe", recipe, "--stage", stage)))
        if (ROOT / "recipes" / recipe / "sources.yaml").is_file():
            out.append((f"recipes/{recipe}/sources.yaml", ("--recipe", recipe)))
        if (ROOT / "recipes" / recipe / "wheels.yaml").is_file():
            out.append((f"recipes/{recipe}/wheels.yaml", ("--recipe", recipe)))
    for recipe in sorted(p.parent.name for p in (TEST_RECIPES).glob("*/recipe.yaml")):
        out.append((f"recipes/{recipe}/sources.yaml", ("--recipe", recipe)))
    for package in sorted(p.parent.name for p in (ROOT / "userland").glob("*/package.yaml")):
        out.append((f"userland/{package}/package.yaml", ("--stage", "2")))
    out.append(("kernel/sources.yaml", ()))
    out.append(("kernel/base.config", ()))
    out += [(f"kernel/features/{p.name}", ()) for p in sorted((ROOT / "kernel/features").glob("*"))]
    out += [(f"kernel/patches/{p.name}", ()) for p in sorted((ROOT / "kernel/patches").glob("*"))]
    for program in sorted(p.parent.name for p in (ROOT / "bpf").glob("*/program.yaml")):
        out.append((f"bpf/{program}/program.yaml", ("--recipe", "bpf")))
    return out


TARGETS = _targets()


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A project copy, and the placeholder files the boards that need one are given."""
    root = tmp_path_factory.mktemp("fuzz")
    project = copy_project(root / "project")
    shutil.copytree(TEST_RECIPES, project / "recipes", dirs_exist_ok=True)
    supplies = {
        "pynq-z2": f"BOOT.BIN={zynq_boot_image(root / 'BOOT.BIN')}",
        "vim3": f"u-boot.bin.sd.bin={amlogic_sd_fip(root / 'u-boot.bin.sd.bin')}",
    }
    return project, supplies


# --- mutations --------------------------------------------------------------------------------

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.just("x" * 200_000),  # huge
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*here, i))
    return found


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


@st.composite
def mutant(draw: st.DrawFn, text: str) -> bytes:
    raw = text.encode()
    kind = draw(st.sampled_from(["flip", "truncate", "swap", "nest", "add-key", "drop-key"]))
    if kind == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:  # a kernel fragment: not YAML
        data = None
    if not isinstance(data, dict):
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines)))
        junk = draw(st.text(max_size=60))
        return "".join([*lines[:at], junk + "\n", *lines[at:]]).encode()
    data = copy.deepcopy(data)
    path = draw(st.sampled_from(_paths(data)[1:] or [()]))
    parent, last = (_get(data, path[:-1]), path[-1]) if path else (None, None)
    if kind == "swap" and parent is not None:
        parent[last] = draw(ODD_VALUES)
    elif kind == "nest" and parent is not None:
        value = parent[last]
        for _ in range(draw(st.integers(1, 80))):
            value = [value]
        parent[last] = value
    elif kind == "add-key":
        target = parent[last] if parent is not None else data
        if not isinstance(target, dict):
            target = data
        target[draw(st.text(min_size=1, max_size=12))] = draw(ODD_VALUES)
    elif parent is not None:  # drop-key (or drop an item)
        del parent[last]
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode()


# --- the property -----------------------------------------------------------------------------


def check_mutant(project: Path, supply: tuple[str, ...], file: str, args: tuple[str, ...],
                 data: bytes) -> None:  # fmt: skip
    path = project / file
    original = path.read_bytes()
    path.write_bytes(data)
    start = time.monotonic()
    try:
        code, out = invoke(project, "build", "--check", *supply, *args)
    finally:
        path.write_bytes(original)
    # A bound, not a benchmark: validation takes ~50 ms; minutes meant an alias bomb before.
    assert time.monotonic() - start < SECONDS_PER_MUTANT, f"{file}: validation hung"
    assert code in (0, 2), out
    assert "Traceback" not in out
    assert not (project / "out").exists(), f"{file} mutant: something was written to out/"
    if code == 2:
        first, _, rest = out.partition("\n")
        assert first.startswith("error: "), out
        assert "hint: " in rest, out
        where = first.removeprefix("error: ").split(": ", 1)[0]
        if where.startswith("--"):  # a flag the mutant made wrong (e.g. --supply for a need it
            return  # no longer has): named by the flag
        assert where.split(":")[0] in {file, *(t for t, _ in TARGETS)}, out
        assert ":" in where or "too large" in first, f"no line in: {out}"


@pytest.mark.parametrize(("file", "args"), TARGETS, ids=[f"{t}{' '.join(a)}" for t, a in TARGETS])
def test_mutants_validate_or_are_refused_with_a_location(
    fuzz_project: tuple[Path, dict[str, str]], file: str, args: tuple[str, ...]
) -> None:
    project, supplies = fuzz_project
    board = args[1] if args[:1] == ("--board",) else None
    supply = ("--supply", supplies[board]) if board in supplies else ()
    text = _original(file).read_text()

    # deadline=None: Hypothesis's own timing flakes on a loaded machine; check_mutant bounds it
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(mutant(text))
    def run(data: bytes) -> None:
        check_mutant(project, supply, file, args, data)

    run()
