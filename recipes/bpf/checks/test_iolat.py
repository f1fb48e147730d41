"""Guest checks for bpf/iolat (tuoba-iolat, stage 1 arm64): block I/O latency histograms per
cgroup, measured on the running TuobaOS kernel.

- 3000 direct 4 KiB reads made by a service of their own (IOAccounting=yes: systemd turns the
  io controller on for it) are counted for that service's cgroup, by path and by id, as reads
  of at least 3000 × 4 KiB, in a histogram that sums to its count;
- bad arguments are one sentence with exit status 2.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

pytestmark = pytest.mark.guest

READS = 3000
UNIT = "tuoba-iolat-check"

TRACE = r"""
set -u
out=$(mktemp); err=$(mktemp)
rm -f /run/tuoba-iolat-done
tuoba-iolat --json > "$out" 2> "$err" &
pid=$!
for i in $(seq 300); do
  grep -q 'tracing block I/O' "$err" && break
  kill -0 $pid 2>/dev/null || break
  sleep 1
done
grep -q 'tracing block I/O' "$err" || { echo "tuoba-iolat did not start"; cat "$err"; exit 1; }
dev=$(findmnt -no SOURCE /)
systemd-run --quiet -p IOAccounting=yes --unit UNIT sh -c \
  "dd if=$dev of=/dev/null bs=4096 count=READS iflag=direct status=none;
   touch /run/tuoba-iolat-done; sleep 600"
for i in $(seq 600); do [ -e /run/tuoba-iolat-done ] && break; sleep 1; done
echo "cgroup_id $(stat -c %i /sys/fs/cgroup/system.slice/UNIT.service)" >&2
kill -INT $pid
wait $pid
rc=$?
systemctl stop UNIT
cat "$err" >&2
cat "$out"
exit $rc
""".replace("UNIT", UNIT).replace("READS", str(READS))


def test_iolat_counts_a_services_direct_reads_for_its_cgroup(host: Any) -> None:
    """The service's reads are its cgroup's: found by path and by id, READS of them or a few
    more (the shell's own), each at least 4 KiB, in a histogram whose buckets sum to its count."""
    res = host.run(f"timeout 900 bash -c {shlex.quote(TRACE)}")
    assert res.rc == 0, f"exit {res.rc}: {res.stderr[-3000:]}\n{res.stdout[-2000:]}"
    cgroup_id = int(
        next(x for x in res.stderr.splitlines() if x.startswith("cgroup_id")).split()[1]
    )
    doc = json.loads(res.stdout)
    path = f"/system.slice/{UNIT}.service"
    mine = [c for c in doc["cgroups"] if c["cgroup"] == path and c["op"] == "read"]
    assert len(mine) == 1, doc
    reads = mine[0]
    assert reads["cgroup_id"] == cgroup_id
    assert READS <= reads["count"] < READS + 50, reads
    assert reads["bytes"] >= READS * 4096, reads
    assert sum(b["count"] for b in reads["hist"]) == reads["count"]
    assert reads["mean_us"] > 0
    assert doc["lost"] == {"requests": 0, "histograms": 0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-d 0", "--duration '0' is not a number of seconds"),
        ("--cgroup /no/such.slice", "--cgroup '/no/such.slice': no cgroup directory"),
        ("extra", "unexpected argument 'extra'"),
    ],
    ids=["zero-duration", "no-such-cgroup", "extra-argument"],
)
def test_iolat_bad_arguments_are_one_sentence(host: Any, args: str, message: str) -> None:
    res = host.run(f"tuoba-iolat {args}")
    assert res.rc == 2, res.stderr
    assert res.stderr.startswith("tuoba-iolat: ") and message in res.stderr, res.stderr
