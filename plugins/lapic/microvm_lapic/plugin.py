"""Hook glue: LAPIC LINT0/LINT1 as a BIOS leaves them, and the MP table's CPU entries.

LINT0 is ExtINT (the 8259's INTR reaches the BSP in virtual-wire mode) and LINT1 is NMI,
as the MP spec's default configuration and Firecracker's ``set_lint`` have it.
"""
from __future__ import annotations

import struct
from typing import Any

from microvm.api import ALL_LAPICS, MP_EXTINT, MP_NMI, LocalInterrupt, Processor, hookimpl

APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7


def set_delivery_mode(regs: bytearray, offset: int, mode: int) -> None:
    """Set the delivery-mode field (bits 8-10) of an LVT register in a KVM_GET_LAPIC page."""
    value = struct.unpack_from("<I", regs, offset)[0]
    struct.pack_into("<I", regs, offset, (value & ~0x700) | (mode << 8))


@hookimpl
def configure_vcpu(ctx: Any, vcpu: Any) -> None:
    if ctx.irqchip is None:
        return
    regs = vcpu.get_lapic_regs()
    set_delivery_mode(regs, APIC_LVT0, APIC_MODE_EXTINT)
    set_delivery_mode(regs, APIC_LVT1, APIC_MODE_NMI)
    vcpu.set_lapic_regs(regs)


@hookimpl
def mptable_entries(ctx: Any) -> list[Any]:
    entries: list[Any] = [Processor(apic_id=a, bsp=(i == 0)) for i, a in enumerate(ctx.apic_ids)]
    # LINT0 carries an 8259's INTR; without one (pic=off in split mode) there is none to
    # describe (KVM's in-kernel irqchip always has one)
    if ctx.irqchip is not None and ctx.irqchip.has_pic():
        entries.append(LocalInterrupt(MP_EXTINT, dst_lint=0, dst_lapic=ALL_LAPICS))
    entries.append(LocalInterrupt(MP_NMI, dst_lint=1, dst_lapic=ALL_LAPICS))
    return entries
