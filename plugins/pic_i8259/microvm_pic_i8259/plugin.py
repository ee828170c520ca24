"""Hook glue: ``-M microvm,pic=on|off|auto`` and the 8259A pair in split-irqchip mode.

With ``kernel-irqchip=on`` KVM has its own 8259s (the irqchip lists ``"pic"`` in its
``builtin``); this plugin then adds nothing. In split mode the pair sits at 0x20/0xa0 with
the ELCR at 0x4d0, receives ISA IRQs 0-15 next to the IOAPIC (``ctx.irqchip.attach_pic``),
and its INTR output drives the boot CPU's LINT0 (``ctx.extint_line``): the vCPU then takes
the vector through KVM_INTERRUPT.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import MachineOption, get_logger, hookimpl, layout

log = get_logger("microvm.pic_i8259")


@hookimpl
def register_machine_options(register: Callable[..., None]) -> None:
    register(MachineOption("pic", "OnOffAuto", "auto", "Enable i8259 PIC", auto_means="on", auto_value=True, plugin="pic_i8259"))


@hookimpl
def create_devices(ctx: Any) -> None:
    chip = ctx.irqchip
    if chip is not None and "pic" in chip.builtin and not ctx.legacy.pic:
        log.warning("kernel-irqchip=%s: the irqchip has its own 8259s; pic=off has no effect", chip.name)
    if not ctx.legacy.pic or chip is None or "pic" in chip.builtin:
        return
    from .device import PicPair

    pic = PicPair(intr=ctx.extint_line)
    ctx.add_pio_device(pic.master, layout.PIC_MASTER_PORT, 2, "pic-master")
    ctx.add_pio_device(pic.slave, layout.PIC_SLAVE_PORT, 2, "pic-slave")
    ctx.add_pio_device(pic.elcr, layout.PIC_ELCR_PORT, 2, "pic-elcr")
    chip.attach_pic(pic)
    ctx.devices["pic"] = pic
