"""Boot the project's default Linux guest (kernel from linux-source-6.1, busybox initramfs).

Slow (about a minute and a half on an emulating host), so Linux boots are few: this file
holds the core's. The guest is built on first use and cached in ~/.cache/microvm.
"""
from __future__ import annotations

import os
import re

import pytest

from kvm_helpers import requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]
EMULATING = os.path.exists("/sys/module/kvm_pvm")


def test_default_guest_boots_to_init_on_the_serial_console(default_guest):
    """`microvm run --no-reboot` (the README's main job) boots the default guest: the kernel
    log comes out of the 16550, the kernel reaches /init, and the VM ends by itself (guest
    reboot through a triple fault, reboot=t), with status 0."""
    r = run_microvm("run", "--no-reboot", "-v", timeout=600)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert "Command line: console=ttyS0 reboot=t panic=1" in out
    assert re.search(r"ttyS0 at I/O 0x3f8 \(irq = 4, base_baud = 115200\) is a 16550A", out), out[-3000:]
    assert "MPTABLE: OEM ID: MICROVM" in out
    assert "Run /init as init process" in out, out[-3000:]
    if EMULATING:
        # guest user mode cannot make system calls here (docs/emulating-hosts.md): init dies, panic=1 reboots
        assert "Attempted to kill init" in out
    else:
        from microvm.guest import GUEST_OK_MARKER

        assert GUEST_OK_MARKER in out
    assert "triple fault" in err
    assert r.returncode == 0, err[-2000:]


def test_bzimage_through_the_64bit_boot_protocol_with_the_in_kernel_irqchip(default_guest):
    """The same guest's bzImage (setup header, boot_params, long-mode entry; its decompressor
    runs first, about a minute on an emulating host) on KVM's in-kernel PIC/IOAPIC/PIT."""
    r = run_microvm(
        "run", "--kernel", str(default_guest.kernel), "--initrd", str(default_guest.initramfs),
        "--append", default_guest.cmdline, "-M", "microvm,kernel-irqchip=on", "--no-reboot", "-v", timeout=900,
    )
    out = r.stdout.decode(errors="replace")
    assert "Run /init as init process" in out, out[-3000:]
    # KVM's in-kernel IOAPIC reports version 0x11 (ours: 0x20)
    assert "IOAPIC[0]: apic_id 1, version 17, address 0xfec00000, GSI 0-23" in out
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
