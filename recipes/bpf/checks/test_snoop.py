"""Guest checks for bpf/snoop (tuoba-snoop, arm64, both stages): exec and open events traced
on the running TuobaOS kernel, compared with what the checks themselves ran.

- a command run under tuoba-snoop: its exec, its child's exec (arguments, parent), the child's
  successful and failed opens (the fd, -ENOENT), nothing of any other process, and the
  command's exit status passed on;
- --open --failed keeps only the failed opens;
- every process (no command): an open made by a process started elsewhere is seen, and
  --open leaves the execs out;
- bad arguments are one sentence with exit status 2.

Plain POSIX sh and /bin/cat by path: stage 1's dash and coreutils, stage 2's busybox (which
has no timeout or mktemp), the same events.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

pytestmark = pytest.mark.guest

MISSING = "/no/such/tuoba-snoop-file"
# (exit 7: not one of tuoba-snoop's own statuses, 1 to 3)
SCRIPT = f"/bin/cat /etc/hostname > /dev/null; /bin/cat {MISSING}; exit 7"


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_snoop_follows_a_command_and_its_children(host: Any) -> None:
    res = host.run(f"tuoba-snoop --json -- /bin/sh -c {shlex.quote(SCRIPT)}")
    assert res.rc == 7, f"exit {res.rc} (the command's is 7): {res.stderr[-2000:]}"
    got = events(res.stdout)
    execs = [e for e in got if e["event"] == "exec"]
    assert [e["args"] for e in execs] == [
        ["/bin/sh", "-c", SCRIPT], ["/bin/cat", "/etc/hostname"], ["/bin/cat", MISSING]
    ], execs  # fmt: skip
    sh, cat1, cat2 = (e["pid"] for e in execs)
    assert execs[0]["path"] == "/bin/sh" and execs[1]["path"] == "/bin/cat"
    assert execs[1]["ppid"] == sh and execs[2]["ppid"] == sh
    assert execs[1]["comm"] == "cat" and execs[0]["uid"] == 0
    assert {e["pid"] for e in got} == {sh, cat1, cat2}, "an event of a process not followed"
    read = [e for e in got if e["event"] == "open" and e["path"] == "/etc/hostname"]
    assert [(e["pid"], e["ret"] >= 0) for e in read] == [(cat1, True)], read
    missing = [e for e in got if e["event"] == "open" and e["path"] == MISSING]
    assert [(e["pid"], e["ret"]) for e in missing] == [(cat2, -2)], missing
    assert missing[0]["error"] == "No such file or directory"
    # time goes forward, from 0 at the start of tracing
    times = [e["time"] for e in got]
    assert times == sorted(times) and 0 <= times[0] < 600


def test_snoop_failed_keeps_only_the_failed_opens(host: Any) -> None:
    script = f"/bin/cat /etc/hostname {MISSING} > /dev/null"  # (stdout: the events only)
    res = host.run(f"tuoba-snoop --json --open --failed -- /bin/sh -c {shlex.quote(script)}")
    said = res.stderr[-2000:]
    assert res.rc == 1 and "tuoba-snoop:" not in said, f"exit {res.rc} (cat's is 1): {said}"
    got = events(res.stdout)
    assert got and all(e["event"] == "open" and e["ret"] < 0 for e in got), got
    assert MISSING in [e["path"] for e in got] and "/etc/hostname" not in [e["path"] for e in got]


# every process, for a while: a cat started by the shell beside it
EVERYONE = r"""
out=/tmp/tuoba-snoop-check.out; err=/tmp/tuoba-snoop-check.err
tuoba-snoop --json --open -d 20 > $out 2> $err &
snoop=$!
i=0
while [ $i -lt 300 ] && ! grep -q 'tuoba-snoop: tracing' $err && kill -0 $snoop 2>/dev/null; do
  sleep 1; i=$((i + 1))
done
grep -q 'tuoba-snoop: tracing open' $err || { echo "tuoba-snoop did not start"; cat $err; exit 1; }
/bin/cat /etc/hostname > /dev/null &
echo "cat $!" >&2
wait $!
wait $snoop
rc=$?
cat $err >&2
cat $out
rm -f $out $err
exit $rc
"""


def test_snoop_sees_every_process_without_a_command(host: Any) -> None:
    res = host.run(f"sh -c {shlex.quote(EVERYONE)}")
    assert res.rc == 0, f"exit {res.rc}: {res.stderr[-3000:]}\n{res.stdout[-2000:]}"
    cat = int(next(x for x in res.stderr.splitlines() if x.startswith("cat ")).split()[1])
    got = events(res.stdout)
    assert got and {e["event"] for e in got} == {"open"}, "--open: no exec events"
    mine = [e for e in got if e["pid"] == cat and e["path"] == "/etc/hostname"]
    assert len(mine) == 1 and mine[0]["ret"] >= 0 and mine[0]["comm"] == "cat", mine


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-d 0", "--duration '0' is not a number of seconds"),
        ("--pid 0", "--pid '0' is not a process id"),
        ("--pid 999999", "--pid 999999: no such process"),
        ("--exec --failed", "--failed with --exec alone traces nothing"),
        ("--pid 1 /bin/true", "--pid 1 and a command '/bin/true' were both given"),
    ],
    ids=["zero-duration", "zero-pid", "no-such-pid", "failed-without-opens", "pid-and-command"],
)
def test_snoop_bad_arguments_are_one_sentence(host: Any, args: str, message: str) -> None:
    res = host.run(f"tuoba-snoop {args}")
    assert res.rc == 2, res.stderr
    assert res.stderr.startswith("tuoba-snoop: ") and message in res.stderr, res.stderr
    assert res.stdout == ""
