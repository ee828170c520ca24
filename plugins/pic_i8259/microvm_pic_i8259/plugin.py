"""Hook glue: ``-M microvm,pic=on|off|auto`` and the 8259A pair in split-irqchip mode.

With ``kernel-irqchip=on`` KVM has its own 8259s; this plugin then adds nothing. In split mode
the pair sits at 0x20/0xa0 with the ELCR at 0x4d0, receives ISA IRQs 0-15 next to the IOAPIC,
and its INTR output reaches the boot CPU's LINT0 (ExtINT) through KVM_INTERRUPT.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm import hookimpl, layout


class IntrToLint0:
    """The 8259's INTR pin: a rising level asks the boot vCPU to take the vector."""

    gsi = -1

    def __init__(self, machine: Any) -> None:
        self.machine = machine

    def set_level(self, level: bool) -> None:
        if level:
            self.machine.request_extint()

    def pulse(self) -> None:
        self.machine.request_extint()

    def eventfd(self) -> None:
        return None


def pic_enabled(machine: Any) -> bool:
    """QEMU 7.2 microvm: ``auto`` means on."""
    return machine.option("pic") in ("on", "auto")


@hookimpl
def register_machine_options(register: Callable[..., None]) -> None:
    from microvm.options import MachineOption

    register(MachineOption("pic", "OnOffAuto", "auto", "Enable i8259 PIC", auto_means="on", plugin="pic_i8259"))


@hookimpl
def create_devices(machine: Any) -> None:
    if not pic_enabled(machine) or machine.irqchip_mode != "split":
        return
    from .device import PicPair

    pic = PicPair(intr=IntrToLint0(machine))
    machine.add_pio_device(pic.master, layout.PIC_MASTER_PORT, 2, "pic-master")
    machine.add_pio_device(pic.slave, layout.PIC_SLAVE_PORT, 2, "pic-slave")
    machine.add_pio_device(pic.elcr, layout.PIC_ELCR_PORT, 2, "pic-elcr")
    machine.irqchip.attach_pic(pic)
    machine.extint_source = pic
    machine.devices["pic"] = pic
