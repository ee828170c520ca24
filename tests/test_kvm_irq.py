"""Interrupt paths on /dev/kvm with tiny purpose-built guests (tests/guests/*.S): the userspace
IOAPIC of kernel-irqchip=split with the PIT and the RTC, level-triggered re-delivery, and the
8259 path (ExtINT through LINT0) in both irqchip modes."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from kvm_helpers import build_guest, converse, microvm_cmd, requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, requires_kvm]


@pytest.fixture(scope="module")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests-irq")


def test_pit_and_rtc_interrupts_reach_the_guest_through_the_userspace_ioapic(guest_cache):
    """PIT channel 0 at 100 Hz on IRQ 0 (IOAPIC pin 2) and the RTC periodic interrupt at 64 Hz
    on IRQ 8: over 100 PIT ticks the guest counts about 64 RTC interrupts. Both devices run on
    the host clock, so the ratio holds however slowly the guest runs; the band allows for a
    tick lost at either end and for coalescing on a loaded host."""
    elf = build_guest("pit-rtc", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "-M", "microvm,kernel-irqchip=split,rtc=on,pit=on")
    m = re.fullmatch(rb"PIT=(\d+) RTC=(\d+)\n", r.stdout)
    assert m, (r.stdout, r.stderr[-2000:])
    assert int(m.group(1)) == 100
    assert 48 <= int(m.group(2)) <= 80, r.stdout
    assert r.returncode == 0


def test_pit_off_means_no_timer_interrupt(guest_cache):
    """pit=off takes the 8254 off the bus: the guest waits for a tick that never comes."""
    elf = build_guest("pit-rtc", guest_cache)
    with pytest.raises(subprocess.TimeoutExpired):
        run_microvm("run", "--kernel", str(elf), "--no-reboot", "-M", "microvm,rtc=on,pit=off", timeout=3)


def test_level_triggered_pin_is_redelivered_until_the_guest_acknowledges(guest_cache):
    """The 16550's interrupt, routed level-triggered: each EOI without reading RBR brings the
    interrupt back (remote IRR cleared by KVM_EXIT_IOAPIC_EOI, line still high); reading RBR
    lowers the line and the deliveries stop at exactly 4."""
    elf = build_guest("level", guest_cache)
    out, rc = converse(microvm_cmd("run", "--kernel", str(elf), "--no-reboot"), [(b"READY\n", b"Z")])
    assert out == b"READY\nLEVEL 4 Z\n"
    assert rc == 0


@pytest.mark.parametrize("irqchip", ["split", "on"])
def test_pic_path_extint_through_lint0(guest_cache, irqchip):
    """IRQ 4 masked at the IOAPIC and unmasked at the 8259: input reaches the guest only
    through the PIC's INTR, LINT0 in ExtINT mode and the PIC's vector (0x20 + 4)."""
    elf = build_guest("pic-echo", guest_cache)
    out, rc = converse(
        microvm_cmd("run", "--kernel", str(elf), "--no-reboot", "-M", f"microvm,kernel-irqchip={irqchip}"),
        [(b"READY\n", b"ab"), (b"<b>", b"q")],
    )
    assert out == b"READY\n<a><b>\nBYE\n"
    assert rc == 0


def test_pic_off_in_split_mode_leaves_no_8259(guest_cache):
    """pic=off: nothing answers at 0x20 any more; the guest's input interrupt, routed only
    through the (absent) PIC, never arrives."""
    elf = build_guest("pic-echo", guest_cache)
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), "--no-reboot", "-M", "microvm,pic=off"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(2)
        p.stdin.write(b"ab")
        p.stdin.flush()
        time.sleep(2)
    finally:
        p.kill()
        out, _ = p.communicate()
    assert out == b"READY\n"
