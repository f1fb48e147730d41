"""Guest checks for the `security` recipe (stage 1): each guard is made to act on something the
check does, on the running TuobaOS kernel.

- nftables: a port a guest program listens on does not answer from the host (through QEMU's
  probe forward, so the traffic arrives from outside) while ssh does; with an accept rule for
  it, it answers — so the silence was the firewall's;
- AppArmor: a program confined by a profile in enforce mode reads what the profile allows, is
  denied what it does not, and the denial is in the audit log;
- auditd: an exec the rules watch is recorded, with the check's own process id;
- fail2ban: failed ssh logins from an address (a network namespace in the guest) get it banned,
  its next connection is refused, and the test's own connection is untouched.

Everything runs under QEMU TCG: time limits are generous. Each check removes what it made.
"""

from __future__ import annotations

import json
import shlex
import socket
import time
from typing import Any

import pytest

pytestmark = pytest.mark.guest

BANNER = b"tuoba-probe\n"
PROBE_RULE = "tuoba-check-probe"

# Runs in the guest: answer every connection on PORT with BANNER, for at most 300 s.
LISTENER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"tuoba-probe\n")
    c.close()
"""


def _banner(port: int, timeout: float) -> bytes:
    """What the probe forward's far end says first ('' when nothing answers in time)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64)
    except OSError:
        return b""


def _journal_cursor(host: Any) -> str:
    """The journal's position now: what a check logs is read after it, never a rerun's."""
    out = host.check_output("journalctl -n 0 --show-cursor --no-pager")
    return out.rsplit("-- cursor: ", 1)[1].strip()


def test_firewall_drops_an_unlisted_port_from_outside(
    host: Any, probe: Any, guest_port: int
) -> None:
    """A guest program listening on an unlisted port does not answer from the host while ssh
    does; once the port is accepted, the same program answers."""
    program = shlex.quote(LISTENER.replace("PORT", str(probe.guest_port)))
    host.run(
        f"nohup timeout 300 python3 -c {program} >/dev/null 2>&1 & echo $! > /tmp/tuoba-probe.pid"
    )
    cursor = _journal_cursor(host)
    try:
        reach = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)'"
        for _ in range(60):  # the listener is up once the guest itself reaches it
            if host.run(reach.format(port=probe.guest_port)).rc == 0:
                break
            time.sleep(1)
        assert _banner(guest_port, 10).startswith(b"SSH-"), "ssh does not answer from the host"
        dropped = _banner(probe.host_port, 15)
        host.check_output(
            "nft insert rule inet tuoba_filter input "
            f'tcp dport {probe.guest_port} accept comment "{PROBE_RULE}"'
        )
        accepted = _banner(probe.host_port, 30)
    finally:
        host.run(  # the check's rule, found by its comment, whatever happened above
            f"nft -a list chain inet tuoba_filter input | sed -n 's/.*{PROBE_RULE}.* handle //p'"
            " | xargs -r -n1 nft delete rule inet tuoba_filter input handle"
        )
        host.run("kill $(cat /tmp/tuoba-probe.pid); rm -f /tmp/tuoba-probe.pid")
    assert dropped == b"", f"an unlisted port answered from outside: {dropped!r}"
    assert accepted == BANNER, (
        f"the listener did not answer once its port was accepted: {accepted!r}"
    )
    log = host.check_output(
        f"journalctl -k --no-pager -o cat --after-cursor='{cursor}' --grep tuoba-nft-drop || true"
    )
    assert f"DPT={probe.guest_port} " in log, "the dropped connection was not logged"


CONFINED = "/usr/local/bin/tuoba-confined-cat"
AUDIT_LOG = "/var/log/audit/audit.log"
PROFILE = f"""abi <abi/3.0>,
include <tunables/global>
profile tuoba-confined-cat {CONFINED} {{
  include <abstractions/base>
  {CONFINED} mr,
  /etc/hostname r,
}}
"""


def test_apparmor_is_the_lsm_and_enforces(host: Any) -> None:
    """AppArmor is among the running kernel's LSMs and enabled, with the image's profiles
    loaded in enforce mode."""
    assert "apparmor" in host.file("/sys/kernel/security/lsm").content_string.split(",")
    assert host.run("aa-status --enabled").rc == 0
    status = json.loads(host.check_output("aa-status --json"))
    enforced = [name for name, mode in status["profiles"].items() if mode == "enforce"]
    assert enforced, f"no profile in enforce mode: {status['profiles']}"


def test_apparmor_denies_a_confined_program_and_logs_it(host: Any) -> None:
    """A copy of cat confined by a profile that allows /etc/hostname reads it, is denied
    /etc/passwd, and the kernel's denial is in the audit log."""
    host.check_output(f"cp /usr/bin/cat {CONFINED}")
    offset = int(host.check_output(f"stat -c %s {AUDIT_LOG}"))  # (what this run adds is after)
    try:
        host.check_output(
            f"printf %s {shlex.quote(PROFILE)} > /etc/apparmor.d/tuoba-confined-cat && "
            "apparmor_parser --replace /etc/apparmor.d/tuoba-confined-cat"
        )
        mode = json.loads(host.check_output("aa-status --json"))["profiles"]
        allowed = host.run(f"{CONFINED} /etc/hostname")
        denied = host.run(f"{CONFINED} /etc/passwd")
    finally:
        host.run(
            "apparmor_parser --remove /etc/apparmor.d/tuoba-confined-cat; "
            f"rm -f /etc/apparmor.d/tuoba-confined-cat {CONFINED}"
        )
    assert mode.get("tuoba-confined-cat") == "enforce", mode
    assert allowed.rc == 0 and allowed.stdout.strip() == host.check_output("hostname")
    assert denied.rc != 0 and "Permission denied" in denied.stderr, denied.stderr
    records = ""
    for _ in range(30):  # auditd writes its log a little later (flush = incremental_async)
        # (the log itself: `ausearch -m AVC` missed these records in this guest)
        records = host.check_output(
            f"tail -c +{offset + 1} {AUDIT_LOG} | grep -a 'apparmor=.DENIED' || true"
        )
        if _denial_of_passwd(records):
            break
        time.sleep(1)
    assert _denial_of_passwd(records), f"no AppArmor denial in the audit log: {records[-2000:]}"


def _denial_of_passwd(records: str) -> bool:
    return any(
        'apparmor="DENIED"' in ln and 'profile="tuoba-confined-cat"' in ln
        and 'name="/etc/passwd"' in ln
        for ln in records.splitlines()
    )  # fmt: skip


def test_audit_rule_records_an_exec(host: Any) -> None:
    """The image's rule on /usr/sbin/nft records its run, with the process id the check saw."""
    assert "-k tuoba-firewall" in host.check_output("auditctl -l")
    pid = host.check_output("sh -c 'echo $$ >&2; exec /usr/sbin/nft list tables' 2>&1 >/dev/null")
    for _ in range(30):  # auditd writes the record shortly after
        found = host.run(f"ausearch --input-logs -k tuoba-firewall -p {pid} --raw")
        if found.rc == 0 and "type=SYSCALL" in found.stdout:
            break
        time.sleep(1)
    assert found.rc == 0 and 'exe="/usr/sbin/nft"' in found.stdout, found.stdout + found.stderr


# Runs in the guest: a network namespace whose address (10.77.0.2) reaches the guest's sshd
# over a veth pair; ssh from it with a key root does not accept, a few times.
F2B_SETUP = """
set -e
ip netns add tuoba-f2b
ip link add tuoba-f2b0 type veth peer name tuoba-f2b1
ip link set tuoba-f2b1 netns tuoba-f2b
ip addr add 10.77.0.1/24 dev tuoba-f2b0
ip link set tuoba-f2b0 up
ip -n tuoba-f2b addr add 10.77.0.2/24 dev tuoba-f2b1
ip -n tuoba-f2b link set tuoba-f2b1 up
ip -n tuoba-f2b link set lo up
rm -f /tmp/tuoba-f2b-key /tmp/tuoba-f2b-key.pub
ssh-keygen -q -t ed25519 -N '' -f /tmp/tuoba-f2b-key
"""
# (its exit status is echoed: testinfra takes an exit status of 255, ssh's own for a failed
# login, for a failure of the connection to the guest)
F2B_FAIL = (
    "ip netns exec tuoba-f2b ssh -i /tmp/tuoba-f2b-key -o BatchMode=yes "
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 "
    "root@10.77.0.1 true; echo ssh exit $?"
)
F2B_BANNER = (
    "ip netns exec tuoba-f2b python3 -c 'import socket; "
    's = socket.create_connection(("10.77.0.1", 22), 10); s.settimeout(10); print(s.recv(8))\''
)


def test_fail2ban_bans_an_address_that_fails_ssh_logins(host: Any) -> None:
    """Failed logins from 10.77.0.2 get it banned (nftables); its next connection gets no ssh
    banner, and the check's own ssh connection still works."""
    host.run("ip netns del tuoba-f2b; ip link del tuoba-f2b0; fail2ban-client unban 10.77.0.2")
    try:
        host.check_output(f"sh -c {shlex.quote(F2B_SETUP)}")
        before = host.run(F2B_BANNER)
        assert before.rc == 0 and "SSH-" in before.stdout, f"no ssh banner before: {before.stderr}"
        banned = ""
        for attempt in range(60):
            if attempt < 6:
                host.run(F2B_FAIL)
            banned = host.check_output("fail2ban-client get sshd banned")
            if "10.77.0.2" in banned:
                break
            time.sleep(2)
        after = host.run(F2B_BANNER)
    finally:
        host.run(
            "fail2ban-client set sshd unbanip 10.77.0.2; ip netns del tuoba-f2b; "
            "ip link del tuoba-f2b0; rm -f /tmp/tuoba-f2b-key /tmp/tuoba-f2b-key.pub"
        )
    assert "10.77.0.2" in banned, (
        f"not banned; fail2ban: {host.run('fail2ban-client status sshd').stdout}"
        f"{host.run('journalctl -b -u fail2ban --no-pager -n 30').stdout}"
    )
    assert after.rc != 0 or "SSH-" not in after.stdout, "the banned address still reaches sshd"
    assert host.run("true").rc == 0  # our own connection was not banned


AIDE = "aide --config /etc/aide/tuoba.conf"


def test_aide_database_made_on_first_boot_reports_a_changed_file(host: Any) -> None:
    """AIDE's database was made on this machine's first boot (not in the image); once the
    database is brought up to date, an edit this check makes to a file under /etc is reported
    as that file changed, and no other file of /etc (exit status bit 4: changed entries).
    (Other checks change things before this one: podman networks, for one.)"""
    res = host.run("timeout 900 sh -c 'until test -f /var/lib/aide/tuoba.db.gz; do sleep 5; done'")
    assert res.rc == 0, host.run("journalctl -u tuoba-aide-init --no-pager | tail -30").stdout
    assert host.service("tuoba-aide-init").is_enabled
    made = int(host.run("stat -c %Y /var/lib/aide/tuoba.db.gz").stdout)
    booted = int(float(host.run("cut -d' ' -f1 /proc/uptime").stdout))
    now = int(host.run("date +%s").stdout)
    assert made >= now - booted - 5, "the database is older than this boot: made at build time?"
    target = "/etc/tuoba-aide-check.conf"
    host.run(f"echo before > {target}")  # (new since init: also reported, as 'added')
    try:
        # (--update exits non-zero when it found differences: that is expected here)
        # (--limit /etc/: both walk /etc only — each walk of the whole tree is half a minute
        # under TCG; the update copies the entries outside the limit from the old database)
        host.run(f"timeout 900 {AIDE} --update --limit /etc/; mv /var/lib/aide/tuoba.db.new.gz "
                 "/var/lib/aide/tuoba.db.gz")  # fmt: skip
        host.run(f"echo after > {target}")
        res = host.run(f"timeout 900 {AIDE} --check --limit /etc/")
        assert res.rc & 4, f"exit {res.rc}, changed entries expected:\n{res.stdout[-3000:]}"
        # (directories' times may move with what other checks do; files must not)
        changed = [ln for ln in res.stdout.splitlines() if ln.startswith("f ")]
        assert any(target in ln for ln in changed), res.stdout[-3000:]
        assert all(target in ln for ln in changed), f"other files changed too: {changed}"
    finally:
        host.run(f"rm -f {target}")


# Runs in the guest: one UDP datagram to QEMU's host address, port 9 (discard), carrying the
# payload TuobaOS's self-check rule (sid 9000001) matches, from a source port of its own.
SEND_PROBE = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.sendto(b"tuoba-suricata-probe from a check", ("10.0.2.2", 9))
print(s.getsockname()[1])
"""


def test_suricata_raises_an_alert_on_traffic_the_check_makes(host: Any) -> None:
    """Suricata (from bookworm-backports) runs on the wired interface and raises TuobaOS's
    self-check alert (sid 9000001) for the one datagram this check sends, from its port."""
    assert host.package("suricata").version.endswith("~bpo12+1"), "not the backports build"
    started = host.run(
        'timeout 600 sh -c \'until grep -q "Engine started" /var/log/suricata/suricata.log '
        "2>/dev/null; do sleep 5; done'"
    )
    assert started.rc == 0, host.run("journalctl -u suricata --no-pager | tail -40").stdout
    assert host.service("suricata").is_running
    port = int(host.run(f"python3 -c {shlex.quote(SEND_PROBE)}").stdout)
    found = host.run(
        'timeout 120 sh -c \'until grep -h "\\"signature_id\\":9000001" '
        f'/var/log/suricata/eve.json | grep -q "\\"src_port\\":{port},"; do sleep 2; done\''
    )
    assert found.rc == 0, host.run("tail -5 /var/log/suricata/fast.log").stdout
    line = host.run(
        f"grep -h '\"signature_id\":9000001' /var/log/suricata/eve.json | "
        f"grep '\"src_port\":{port},' | tail -n 1"
    ).stdout
    alert = json.loads(line)
    assert alert["event_type"] == "alert" and alert["dest_port"] == 9, alert
    assert alert["alert"]["signature"] == "TuobaOS: IDS self-check probe", alert
