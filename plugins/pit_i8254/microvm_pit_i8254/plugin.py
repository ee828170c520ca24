"""Hook glue: ``-M microvm,pit=on|off|auto`` and the 8254 in split-irqchip mode.

With ``kernel-irqchip=on`` the in-kernel PIT (KVM_CREATE_PIT2, made by that irqchip when
``ctx.legacy.pit`` asks for one; it is then in the irqchip's ``builtin``) serves instead. In
split mode the 8254 sits at 0x40-0x43, port 0x61 gates channel 2 (Linux's TSC calibration
reads OUT2 there), channel 0 drives IRQ 0, and the core's timer thread runs it against the
host clock.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import MachineOption, hookimpl, layout


@hookimpl
def register_machine_options(register: Callable[..., None]) -> None:
    register(MachineOption("pit", "OnOffAuto", "auto", "Enable i8254 PIT", auto_means="on", auto_value=True, plugin="pit_i8254"))


@hookimpl
def create_devices(ctx: Any) -> None:
    chip = ctx.irqchip
    if not ctx.legacy.pit or chip is None or "pit" in chip.builtin:
        return
    from .device import I8254, Port61

    timers = ctx.timers
    pit = I8254(irq=ctx.irq(layout.PIT_IRQ), on_timer_change=timers.wake)
    ctx.add_pio_device(pit, layout.PIT_PORT, 4, "pit")
    ctx.add_pio_device(Port61(pit), layout.PORT_61, 1, "port61")
    timers.add(pit)
    ctx.devices["pit"] = pit


@hookimpl
def mptable_entries(ctx: Any) -> list[Any] | None:
    if "pit" not in ctx.devices:
        return None
    return [ctx.isa_irq_entry(layout.PIT_IRQ)]
