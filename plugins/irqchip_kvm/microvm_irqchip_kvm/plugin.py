"""Hook glue: offers ``kernel-irqchip=on``. The chip describes itself for the MP table
through the :class:`microvm.api.IrqChip` protocol."""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import hookimpl


@hookimpl
def register_irqchips(register: Callable[..., None]) -> None:
    def kernel(ctx: Any) -> Any:
        from .chip import KernelIrqChip  # only when this irqchip is chosen

        return KernelIrqChip(ctx)

    register("on", kernel, "PIC, IOAPIC and PIT emulated inside KVM")
