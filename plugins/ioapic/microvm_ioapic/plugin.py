"""Hook glue: offers ``kernel-irqchip=split`` (QEMU microvm's default), answers the IOAPIC EOI
exits, and describes the IOAPIC in the MP table."""
from __future__ import annotations

from typing import Any, Callable

from microvm import hookimpl


@hookimpl
def register_irqchips(register: Callable[..., None]) -> None:
    from .chip import SplitIrqChip

    register("split", SplitIrqChip, "LAPIC in KVM; IOAPIC, PIC and PIT emulated by microvm")


@hookimpl
def handle_exit(machine: Any, vcpu: Any, exit_reason: int) -> bool | None:
    from microvm.kvm import lib

    if exit_reason != lib.KVM_EXIT_IOAPIC_EOI or machine.irqchip_mode != "split":
        return None
    machine.irqchip.eoi(vcpu.run_ptr.eoi.vector)
    return True


@hookimpl
def mptable_entries(machine: Any) -> list[Any] | None:
    if machine.irqchip_mode != "split":
        return None
    return machine.irqchip.mptable_entries()
