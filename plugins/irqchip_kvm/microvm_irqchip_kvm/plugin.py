"""Hook glue: offers ``kernel-irqchip=on``."""
from __future__ import annotations

from typing import Any, Callable

from microvm import hookimpl


@hookimpl
def register_irqchips(register: Callable[..., None]) -> None:
    def kernel(machine: Any) -> Any:
        from .chip import KernelIrqChip  # only when this irqchip is chosen

        return KernelIrqChip(machine)

    register("on", kernel, "PIC, IOAPIC and PIT emulated inside KVM")


@hookimpl
def mptable_entries(machine: Any) -> list[Any] | None:
    if machine.irqchip_mode != "on":
        return None
    return machine.irqchip.mptable_entries()
