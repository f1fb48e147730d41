"""Guest checks for the `virt` recipe (stage 1, arm64): the board is a KVM host.

- /dev/kvm works: KVM initialised at EL2 (QEMU's virt machine with virtualization=on) and a
  VM can be made through the ioctl interface;
- a nested guest runs: tuoba-kvm-smoke boots this image's own kernel (kept at
  /boot/vmlinuz-<release>) with a one-program initramfs under KVM, with qemu-system-aarch64
  directly and as a libvirt domain, and each time the init's marker line comes back.

Everything is TCG underneath, so the nested boots get generous time limits.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.guest

MARKER = "TUOBA-NESTED-GUEST-UP"


def test_kvm_initialised_at_el2_and_makes_a_vm(host: Any) -> None:
    """The kernel says KVM runs in hyp mode, and KVM_CREATE_VM on /dev/kvm gives a VM fd
    (KVM_GET_API_VERSION is 12)."""
    kvm = host.check_output("journalctl -k -b --no-pager -o cat | grep -i kvm || true")
    assert re.search(r"(Hyp|VHE) mode initialized successfully", kvm), kvm[-2000:]
    probe = (
        "import fcntl, os\n"
        "fd = os.open('/dev/kvm', os.O_RDWR)\n"
        "print(fcntl.ioctl(fd, 0xAE00))\n"  # KVM_GET_API_VERSION
        "vm = fcntl.ioctl(fd, 0xAE01, 0)\n"  # KVM_CREATE_VM
        "print('vm', vm > 0)\n"
    )
    out = host.check_output("python3 -c %s", probe)
    assert out.split() == ["12", "vm", "True"], out


def _nested(host: Any, *args: str) -> str:
    run = host.run(f"tuoba-kvm-smoke --timeout 900 {' '.join(args)}")
    assert run.rc == 0, f"rc {run.rc}\n{run.stderr[-3000:]}\n{run.stdout[-3000:]}"
    release = host.check_output("uname -r")
    line = next((x for x in run.stdout.splitlines() if x.startswith(MARKER)), "")
    assert line.split()[1:] == [release, "1", "cpu"], run.stdout[-2000:]
    return run.stdout


def test_a_nested_guest_boots_under_kvm_with_qemu(host: Any) -> None:
    """qemu-system-aarch64 -accel kvm boots the image's own kernel to the initramfs's init,
    which prints the marker with the kernel release it runs on."""
    _nested(host)


def test_a_nested_guest_boots_as_a_libvirt_domain(host: Any) -> None:
    """libvirtd (its QEMU driver, type='kvm') starts the same guest as a transient domain;
    the marker is in the console file libvirt wrote."""
    assert host.service("libvirtd").is_enabled
    caps = host.check_output("virsh -c qemu:///system domcapabilities --virttype kvm")
    assert "<domain>kvm</domain>" in caps, caps[:2000]
    _nested(host, "--libvirt")
