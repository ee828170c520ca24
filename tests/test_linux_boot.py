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
        # guest user mode cannot make system calls here (HOST.md): init dies, panic=1 reboots
        assert "Attempted to kill init" in out
    else:
        from microvm.guest import GUEST_OK_MARKER

        assert GUEST_OK_MARKER in out
    assert "triple fault" in err
    assert r.returncode == 0, err[-2000:]
