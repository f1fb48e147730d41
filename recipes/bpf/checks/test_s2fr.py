"""Guest checks for tuoba-fr in stage 2 (bpf/fr, arm64): the same in-kernel filter -> reduce
as stage 1's, its loader a static musl program built by the stage-2 clang.

The guest has busybox and no Python: its data is made there by busybox awk with the MINSTD
generator (exact in awk's doubles: every product is below 2^47), and the answers are computed
here, on the host, from the same generator.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

pytestmark = pytest.mark.guest

TEXT = "/tmp/fr-s2.txt"
VALUES = 20000  # about 140 KiB of text: dozens of pages, values straddle page boundaries
SEED = 20261207

# (SEED_ and COUNT_ are replaced: no word of the awk program contains them)
MAKE = (
    (
        "awk 'BEGIN { x = SEED_; for (i = 0; i < COUNT_; i++) { x = (x * 16807) % 2147483647; "
        'printf "%s%d", (i ? "\\n" : ""), x % 2000001 - 1000000 } }\''  # no final newline
    )
    .replace("SEED_", str(SEED))
    .replace("COUNT_", str(VALUES))
)


def values() -> list[int]:
    out, x = [], SEED
    for _ in range(VALUES):
        x = (x * 16807) % 2147483647
        out.append(x % 2000001 - 1000000)
    return out


OPS = {"gt": int.__gt__, "ge": int.__ge__, "lt": int.__lt__, "le": int.__le__,
       "eq": int.__eq__, "ne": int.__ne__}  # fmt: skip


def answer(op: str, n: int, reduce: str) -> Any:
    kept = [v for v in values() if OPS[op](v, n)]
    return {"sum": sum(kept), "count": len(kept), "min": min(kept, default=None),
            "max": max(kept, default=None), "exists": bool(kept)}[reduce]  # fmt: skip


@pytest.fixture(scope="module")
def text(host: Any) -> str:
    host.check_output(f"{MAKE} > {TEXT}")
    size = int(host.check_output(f"wc -c < {TEXT}"))
    assert size == len("\n".join(map(str, values()))), "awk made other values than Python"
    return TEXT


def fr(host: Any, *args: str) -> Any:
    return host.run("tuoba-fr " + " ".join(shlex.quote(a) for a in args))


@pytest.mark.parametrize(
    ("op", "n", "reduce"),
    [("gt", 5000, "sum"), ("le", -250000, "count"), ("ge", 999000, "min"), ("lt", 0, "max"),
     ("eq", 123456, "exists")],
)  # fmt: skip
def test_s2_fr_matches_the_hosts_answer(host: Any, text: str, op: str, n: int, reduce: str) -> None:
    """Each filter and reduction over the file gives the answer computed here, and no byte of
    the file reaches tuoba-fr's buffer (the copy is skipped in the kernel)."""
    res = fr(host, text, "--filter", f"{op} {n}", "--reduce", reduce, "--json")
    assert res.rc == 0, f"exit {res.rc}: {res.stderr[-2000:]}"
    out = json.loads(res.stdout)
    assert out["result"] == answer(op, n, reduce), out
    assert out["bytes_to_user"] == 0 and out["buffer_untouched"] is True, out
    assert out["bytes_seen_in_kernel"] == out["bytes_read"] > 16 * 4096, out


def test_s2_fr_mean_and_copy_mode(host: Any, text: str) -> None:
    """Mean is its sum and count; with --copy the same result comes with every byte copied."""
    res = fr(host, text, "--filter", "gt -1000", "--reduce", "mean", "--json")
    assert res.rc == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    kept = [v for v in values() if v > -1000]
    assert (out["sum"], out["count"]) == (sum(kept), len(kept)), out
    res = fr(host, text, "--filter", "gt 5000", "--reduce", "sum", "--copy", "--json")
    assert res.rc == 0, res.stderr[-2000:]
    copied = json.loads(res.stdout)
    assert copied["result"] == answer("gt", 5000, "sum"), copied
    assert copied["bytes_to_user"] == copied["bytes_read"] and not copied["buffer_untouched"]


def test_s2_fr_concurrent_callers_get_their_own_answers(host: Any, text: str) -> None:
    runs = [("gt", 5000, "sum"), ("le", -250000, "count"), ("lt", 0, "max")]
    cmds = " & ".join(
        f"tuoba-fr {text} --filter '{op} {n}' --reduce {r} > /tmp/fr-s2-par-{i}.out"
        for i, (op, n, r) in enumerate(runs)
    )
    res = host.run(f"sh -c {shlex.quote(cmds + ' & wait')}")
    assert res.rc == 0, res.stderr[-2000:]
    for i, (op, n, r) in enumerate(runs):
        got = host.check_output(f"cat /tmp/fr-s2-par-{i}.out")
        assert got == str(answer(op, n, r)), (op, n, r, got)


def test_s2_fr_bad_input_is_one_sentence_and_a_failure(host: Any, text: str) -> None:
    res = fr(host, text, "--filter", "about 5", "--reduce", "sum")
    assert res.rc == 2 and "unknown operator 'about'" in res.stderr, res.stderr
    res = fr(host, "/nonexistent/values", "--reduce", "sum")
    assert res.rc == 1 and "cannot read /nonexistent/values" in res.stderr, res.stderr


def test_s2_fr_an_empty_file_has_no_values(host: Any) -> None:
    """An empty file: a sum of 0, and no mean (null, not a division by 0)."""
    host.run("rm -f /tmp/fr-s2-empty.txt && touch /tmp/fr-s2-empty.txt")
    for reduce, want in (("sum", 0), ("mean", None)):
        res = fr(host, "/tmp/fr-s2-empty.txt", "--reduce", reduce, "--json")
        assert res.rc == 0, res.stderr
        out = json.loads(res.stdout)
        assert (out["result"], out["count"], out["bytes_read"]) == (want, 0, 0), out
