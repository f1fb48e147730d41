"""Guest checks for tuoba-iolat in stage 2 (bpf/iolat, arm64): block I/O latency histograms
from a static musl loader. Stage 2's processes all live in the root cgroup: the reads this
check makes of a file on the root filesystem (4 MiB that no process maps, the page cache
dropped first) are counted there."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

pytestmark = pytest.mark.guest

TRACE = r"""
out=/tmp/iolat-s2.json; err=/tmp/iolat-s2.err
tuoba-iolat --json > $out 2> $err &
pid=$!
i=0
while [ $i -lt 300 ] && ! grep -q 'tracing block I/O' $err && kill -0 $pid 2>/dev/null; do
  sleep 1; i=$((i + 1))
done
grep -q 'tracing block I/O' $err || { echo "tuoba-iolat did not start"; cat $err; exit 1; }
dd if=/dev/zero of=/root/iolat-s2.bin bs=65536 count=64 2>/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
cat /root/iolat-s2.bin > /dev/null
rm -f /root/iolat-s2.bin
kill -INT $pid
wait $pid
rc=$?
cat $err >&2
cat $out
exit $rc
"""


def test_s2_iolat_counts_reads_for_the_root_cgroup(host: Any) -> None:
    res = host.run(f"sh -c {shlex.quote(TRACE)}")
    assert res.rc == 0, f"exit {res.rc}: {res.stderr[-3000:]}\n{res.stdout[-2000:]}"
    doc = json.loads(res.stdout)
    reads = [c for c in doc["cgroups"] if c["cgroup"] == "/" and c["op"] == "read"]
    assert len(reads) == 1, doc
    assert reads[0]["count"] > 0 and reads[0]["bytes"] >= 4096, reads
    assert sum(b["count"] for b in reads[0]["hist"]) == reads[0]["count"]
    assert doc["lost"] == {"requests": 0, "histograms": 0}
