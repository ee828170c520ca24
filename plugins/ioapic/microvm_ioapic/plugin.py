"""Hook glue: offers ``kernel-irqchip=split`` (QEMU microvm's default). The chip itself
(:class:`~.chip.SplitIrqChip`) describes its IOAPIC for the MP table and takes the guest's
EOIs, through the :class:`microvm.api.IrqChip` protocol the core calls."""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import hookimpl


@hookimpl
def register_irqchips(register: Callable[..., None]) -> None:
    def split(ctx: Any) -> Any:
        from .chip import SplitIrqChip  # only when this irqchip is chosen

        return SplitIrqChip(ctx)

    register("split", split, "LAPIC in KVM; IOAPIC, PIC and PIT emulated by microvm")
