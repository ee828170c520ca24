"""Linux on the legacy-device machine models (two boots): every legacy device on with the
userspace IOAPIC, and the seed's stripped-down machine relying on kvmclock and TSC-deadline."""
from __future__ import annotations

import os

import pytest

from kvm_helpers import requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]
EMULATING = os.path.exists("/sys/module/kvm_pvm")


def boot(default_guest, machine: str, *extra: str):
    r = run_microvm("run", "--no-reboot", "-v", "-M", machine, *extra, timeout=600)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert "Run /init as init process" in out, out[-3000:] + err[-1000:]
    assert r.returncode == 0, err[-2000:]
    return out


def test_all_legacy_devices_with_the_userspace_ioapic_and_two_vcpus(default_guest):
    """Also --smp 2: the guest starts the AP itself (INIT/SIPI through the in-kernel LAPIC)."""
    out = boot(default_guest, "microvm,kernel-irqchip=split,pit=on,pic=on,rtc=on", "--smp", "2")
    assert "smp: Brought up 1 node, 2 CPUs" in out
    # our 82093AA reports version 0x20 (KVM's in-kernel one 0x11); its MP-table ID follows the CPUs
    assert "IOAPIC[0]: apic_id 2, version 32, address 0xfec00000, GSI 0-23" in out
    assert "rtc_cmos rtc_cmos: setting system clock to" in out
    assert "ttyS0 at I/O 0x3f8 (irq = 4" in out


def test_seed_minimal_machine_pit_pic_rtc_off(default_guest):
    """The seed's second example without virtio: no PIT, PIC or RTC; the serial port kept as
    the console. The guest keeps time with kvmclock and the LAPIC's TSC-deadline timer."""
    out = boot(default_guest, "microvm,pit=off,pic=off,rtc=off")
    assert "clocksource: Switched to clocksource kvm-clock" in out
    assert "TSC deadline timer available" in out
    assert "rtc_cmos rtc_cmos: setting system clock" not in out
