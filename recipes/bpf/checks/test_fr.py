"""Guest checks for tuoba-fr (bpf/fr, stage 1, arm64): the in-kernel filter -> reduce on the
read path, on the running TuobaOS kernel (kernel/patches/0001 keeps copyout out of line and
on the error-injection list).

Each check makes its data in the guest with a fixed seed, asks tuoba-fr, and compares with
the answer computed outside the guest (the same generator run where the checks run, its file
the guest's byte for byte); in reduce mode no byte of the data may reach tuoba-fr's buffer.
Under QEMU TCG each tuoba-fr run (loading and verifying its BPF program) takes a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.guest

TEXT = "/tmp/fr-values.txt"
INT64 = "/tmp/fr-values.i64"
VALUES = 30000  # about 200 KiB of text: dozens of pages, values straddle page boundaries

# Writes both files and prints Python's own answers for the checks' (filter, reduce) pairs.
MAKE_DATA = r"""
import json, random, struct
rng = random.Random(20261202)
values = [rng.randint(-10**6, 10**6) for _ in range(VALUES)]
with open("TEXT", "w") as f:
    f.write("\n".join(map(str, values)))  # no newline after the last value
with open("INT64", "wb") as f:
    f.write(b"".join(struct.pack("<q", v) for v in values))
ops = {"gt": int.__gt__, "ge": int.__ge__, "lt": int.__lt__, "le": int.__le__,
       "eq": int.__eq__, "ne": int.__ne__}
def answer(op, n, reduce):
    kept = [v for v in values if ops[op](v, n)]
    return {"sum": sum(kept), "count": len(kept), "min": min(kept, default=None),
            "max": max(kept, default=None), "exists": bool(kept),
            "mean_sum": sum(kept), "mean_count": len(kept)}[reduce]
print(json.dumps({f"{op} {n} {r}": answer(op, n, r)
                  for op, n, r in PAIRS}))
"""

# (op, constant, reduce); mean is checked as its sum and count
PAIRS = [
    ("gt", 5000, "sum"),
    ("le", -250000, "count"),
    ("ge", 999000, "min"),
    ("lt", 0, "max"),
    ("ne", 7, "count"),
    ("eq", 123456, "exists"),
    ("gt", 2000000, "exists"),
    ("gt", -1000, "mean_sum"),
    ("gt", -1000, "mean_count"),
]


def make_data(text: str, int64: str) -> str:
    return (
        MAKE_DATA.replace("VALUES", str(VALUES))
        .replace("TEXT", text)
        .replace("INT64", int64)
        .replace("PAIRS", repr(PAIRS))
    )


@pytest.fixture(scope="module")
def expected(host: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The answers, computed outside the guest: the same seeded generator run here, on the
    machine that runs the checks, must make the values the guest's files hold (the guest's
    own answers over its files are compared with these too)."""
    res = host.run(f"python3 -c {shlex.quote(make_data(TEXT, INT64))}")
    assert res.rc == 0, res.stderr[-2000:]
    here = tmp_path_factory.mktemp("fr-data")
    mine = subprocess.run(
        [sys.executable, "-c", make_data(str(here / "values.txt"), str(here / "values.i64"))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    text_sha = host.run(f"sha256sum {TEXT}").stdout.split()[0]
    assert text_sha == hashlib.sha256((here / "values.txt").read_bytes()).hexdigest()
    answers = dict(json.loads(mine))
    assert json.loads(res.stdout) == answers
    return answers


def fr(host: Any, *args: str, check: bool = True) -> Any:
    res = host.run("timeout 300 tuoba-fr " + " ".join(shlex.quote(a) for a in args))
    if check:
        assert res.rc == 0, f"tuoba-fr {' '.join(args)}: exit {res.rc}: {res.stderr[-2000:]}"
    return res


def test_fr_matches_python_for_each_filter_and_reduction(host: Any, expected: Any) -> None:
    """tuoba-fr over a text file of 30000 integers (values straddling pages, no final
    newline) gives Python's answer for each operator and reduction, and not one byte of the
    file reaches its buffer (the copy is skipped in the kernel)."""
    size = int(host.run(f"stat -c %s {TEXT}").stdout)
    assert size > 16 * 4096
    for op, n, reduce in PAIRS:
        if reduce == "mean_count":
            continue  # (checked with mean_sum)
        r = "mean" if reduce == "mean_sum" else reduce
        out = json.loads(fr(host, TEXT, "--filter", f"{op} {n}", "--reduce", r, "--json").stdout)
        want = expected[f"{op} {n} {reduce}"]
        if reduce == "mean_sum":
            assert (out["sum"], out["count"]) == (want, expected[f"{op} {n} mean_count"]), out
            assert out["count"] > 0
        else:
            assert out["result"] == want, (op, n, reduce, out)
        assert out["bytes_read"] == size, out
        assert out["bytes_seen_in_kernel"] == size, out
        assert out["bytes_to_user"] == 0, out
        assert out["buffer_untouched"] is True, out
        assert out["copies_skipped"] == out["copies"] > 16, out


def test_fr_int64_format_and_copy_mode(host: Any, expected: Any) -> None:
    """Raw little-endian int64 data gives the same answer as its text form; with --copy the
    same result comes with every byte copied to the caller."""
    want = expected["gt 5000 sum"]
    out = json.loads(
        fr(host, INT64, "--format", "int64", "--filter", "gt 5000", "--reduce", "sum",
           "--json").stdout
    )  # fmt: skip
    assert out["result"] == want and out["bytes_to_user"] == 0, out
    size = int(host.run(f"stat -c %s {TEXT}").stdout)
    copied = json.loads(
        fr(host, TEXT, "--filter", "gt 5000", "--reduce", "sum", "--copy", "--json").stdout
    )
    assert copied["result"] == want, copied
    assert copied["bytes_to_user"] == size and copied["buffer_untouched"] is False, copied


def test_fr_concurrent_callers_get_their_own_answers(host: Any, expected: Any) -> None:
    """Three tuoba-fr processes reading the same file at the same time, with different
    filters, each get their own right answer (callers are told apart by thread and buffer)."""
    runs = [("gt", 5000, "sum"), ("le", -250000, "count"), ("lt", 0, "max")]
    cmds = " & ".join(
        f"tuoba-fr {TEXT} --filter '{op} {n}' --reduce {r} > /tmp/fr-par-{i}.out"
        for i, (op, n, r) in enumerate(runs)
    )
    res = host.run(f"timeout 600 sh -c {shlex.quote(cmds + ' & wait')}")
    assert res.rc == 0, res.stderr[-2000:]
    for i, (op, n, r) in enumerate(runs):
        got = host.run(f"cat /tmp/fr-par-{i}.out").stdout.strip()
        assert got == str(expected[f"{op} {n} {r}"]), (op, n, r, got)


def test_fr_bad_input_is_one_sentence_and_a_failure(host: Any, expected: Any) -> None:
    """An unknown operator or reduction, a file it cannot read and a value that does not
    parse: exit status not 0 and a sentence that names the problem."""
    res = fr(host, TEXT, "--filter", "about 5", "--reduce", "sum", check=False)
    assert res.rc == 2 and "unknown operator 'about'" in res.stderr, res.stderr
    res = fr(host, TEXT, "--reduce", "median", check=False)
    assert res.rc == 2 and "unknown reduction 'median'" in res.stderr, res.stderr
    res = fr(host, "/nonexistent/values", "--reduce", "sum", check=False)
    assert res.rc == 1 and "cannot read /nonexistent/values" in res.stderr, res.stderr
    host.run("printf '1\\n2\\nthree\\n4\\n' > /tmp/fr-bad.txt")
    res = fr(host, "/tmp/fr-bad.txt", "--reduce", "sum", check=False)
    assert res.rc == 1, res.stdout + res.stderr
    assert "byte 4 ('t') is not part of an integer" in res.stderr, res.stderr


def test_fr_int64_extremes_and_overflow(host: Any) -> None:
    """The ends of the int64 range are read exactly; a sum that leaves the range and a value
    outside it are errors, never a wrapped number."""
    host.run("printf '9223372036854775807\\n-9223372036854775808\\n' > /tmp/fr-ends.txt")
    assert fr(host, "/tmp/fr-ends.txt", "--reduce", "max").stdout.strip() == "9223372036854775807"
    assert fr(host, "/tmp/fr-ends.txt", "--reduce", "min").stdout.strip() == "-9223372036854775808"
    host.run("printf '9223372036854775807\\n1\\n' > /tmp/fr-wrap.txt")
    res = fr(host, "/tmp/fr-wrap.txt", "--reduce", "sum", check=False)
    assert res.rc == 1 and "left the int64 range" in res.stderr, res.stdout + res.stderr
    host.run("printf '9223372036854775808\\n' > /tmp/fr-big.txt")
    res = fr(host, "/tmp/fr-big.txt", "--reduce", "count", check=False)
    assert res.rc == 1 and "outside the int64 range" in res.stderr, res.stdout + res.stderr


def test_fr_an_empty_file_has_no_values(host: Any) -> None:
    """An empty file: a sum of 0 and no mean (null, not a division by 0)."""
    host.run("rm -f /tmp/fr-empty.txt && touch /tmp/fr-empty.txt")
    for reduce, want in (("sum", 0), ("mean", None)):
        out = json.loads(fr(host, "/tmp/fr-empty.txt", "--reduce", reduce, "--json").stdout)
        assert (out["result"], out["count"], out["bytes_read"]) == (want, 0, 0), out


# seq's integers, FIRST to LAST: 39 MB of text on the root filesystem (not /tmp: a tmpfs).
# Positive: seq has a fast path for them; a negative start sends it through long double
# arithmetic, emulated in software under TCG (52 s instead of 4.5 s). The random data of the
# other checks has the negatives.
BIG = "/var/tmp/fr-big.txt"
FIRST, LAST, OVER = 1, 5_000_000, 3_000_000
SHARE = 16 << 20  # the memory (page cache included) the reader may have


def test_fr_a_file_larger_than_its_page_cache_share(host: Any) -> None:
    """tuoba-fr reads 39 MB from a transient scope limited to 16 MiB of memory (MemoryMax: the
    page cache it reads through is charged there), the page cache dropped first: the file is
    read from the disk while it runs, and never all of it stays cached (fincore afterwards).
    The answer is the arithmetic one computed here, with no byte to the reader."""
    res = host.run(f"seq {FIRST} {LAST} > {BIG} && sync && echo 3 > /proc/sys/vm/drop_caches")
    assert res.rc == 0, res.stderr
    try:
        size = int(host.run(f"stat -c %s {BIG}").stdout)
        assert size > 2 * SHARE
        res = host.run(
            f"timeout 600 systemd-run --scope --quiet -p MemoryMax={SHARE} "
            f"tuoba-fr {BIG} --filter 'gt {OVER}' --reduce sum --json"
        )
        assert res.rc == 0, f"exit {res.rc}: {res.stderr[-2000:]}"
        out = json.loads(res.stdout)
        kept = LAST - OVER  # OVER + 1 .. LAST
        assert (out["result"], out["count"]) == (kept * (OVER + 1 + LAST) // 2, kept), out
        assert out["bytes_read"] == out["bytes_seen_in_kernel"] == size, out
        assert out["bytes_to_user"] == 0, out
        cached = int(host.run(f"fincore --bytes --noheadings --output RES {BIG}").stdout)
        assert cached < size, f"{cached} of {size} bytes cached: the limit did not hold"
    finally:
        host.run(f"rm -f {BIG}")
