"""Hook glue: offers ``kernel-irqchip=split`` (QEMU microvm's default) and describes the IOAPIC
in the MP table. The chip handles KVM_EXIT_IOAPIC_EOI itself (``machine.add_exit_handler``)."""
from __future__ import annotations

from typing import Any, Callable

from microvm import hookimpl


@hookimpl
def register_irqchips(register: Callable[..., None]) -> None:
    def split(machine: Any) -> Any:
        from .chip import SplitIrqChip  # only when this irqchip is chosen

        return SplitIrqChip(machine)

    register("split", split, "LAPIC in KVM; IOAPIC, PIC and PIT emulated by microvm")


@hookimpl
def mptable_entries(machine: Any) -> list[Any] | None:
    if machine.irqchip_mode != "split":
        return None
    return machine.irqchip.mptable_entries()
