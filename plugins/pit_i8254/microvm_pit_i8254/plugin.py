"""Hook glue: ``-M microvm,pit=on|off|auto`` and the 8254 in split-irqchip mode.

With ``kernel-irqchip=on`` the in-kernel PIT (KVM_CREATE_PIT2, made by the irqchip_kvm
plugin, which reads this option) serves instead. In split mode the 8254 sits at 0x40-0x43,
port 0x61 gates channel 2 (Linux's TSC calibration reads OUT2 there), channel 0 drives
IRQ 0, and the core's timer thread runs it against the host clock.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm import hookimpl, layout


def pit_enabled(machine: Any) -> bool:
    """QEMU 7.2 microvm: ``auto`` means on."""
    return machine.option("pit") in ("on", "auto")


@hookimpl
def register_machine_options(register: Callable[..., None]) -> None:
    from microvm.options import MachineOption

    register(MachineOption("pit", "OnOffAuto", "auto", "Enable i8254 PIT", auto_means="on", plugin="pit_i8254"))


@hookimpl
def create_devices(machine: Any) -> None:
    if not pit_enabled(machine) or machine.irqchip_mode != "split":
        return
    from .device import I8254, Port61

    timers = machine.timers
    pit = I8254(irq=machine.irq(layout.PIT_IRQ), on_timer_change=timers.wake)
    machine.add_pio_device(pit, layout.PIT_PORT, 4, "pit")
    machine.add_pio_device(Port61(pit), layout.PORT_61, 1, "port61")
    timers.add(pit)
    machine.devices["pit"] = pit


@hookimpl
def mptable_entries(machine: Any) -> list[Any] | None:
    if "pit" not in machine.devices:
        return None
    return [machine.isa_irq_entry(layout.PIT_IRQ)]
