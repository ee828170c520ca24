"""Hook glue for COM1: the ``isa-serial`` option, placement at 0x3f8, the MP table entry for
IRQ 4 and the host chardev's start. The UART itself is in :mod:`.device`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from microvm.api import MachineOption, hookimpl, layout

from .device import REGISTER_COUNT, Serial16550

if TYPE_CHECKING:
    from microvm.api import MachineContext

DEVICE_NAME = "serial0"
OPTION = MachineOption(
    "isa-serial",
    "bool",
    True,
    "Set off to disable the instantiation an ISA serial port",  # QEMU's wording
    plugin="serial_16550",
)


@hookimpl
def register_machine_options(register: Callable[[MachineOption], None]) -> None:
    register(OPTION)


@hookimpl
def create_devices(ctx: MachineContext) -> None:
    """COM1 exists when ``isa-serial`` is on and ``-serial`` gave it a backend (as in QEMU,
    ``-serial none`` leaves the port out)."""
    if not ctx.legacy.isa_serial:
        return
    chardev = ctx.serial_chardev(0)
    if chardev is None:
        return
    # output never blocks the vCPU (the chardev buffers or drops); input is flow-controlled
    dev = Serial16550(irq=ctx.irq(layout.COM1_IRQ), out=chardev.write, on_input_room=chardev.accept_input)
    ctx.add_pio_device(dev, layout.COM1_PORT, REGISTER_COUNT, DEVICE_NAME)
    chardev.set_handlers(receive=dev.receive, can_receive=dev.input_room, on_break=dev.send_break)
    ctx.devices[DEVICE_NAME] = dev


@hookimpl
def mptable_entries(ctx: MachineContext) -> list[Any] | None:
    """Tell the guest where IRQ 4 goes, only when the port exists (no probe otherwise)."""
    if DEVICE_NAME not in ctx.devices:
        return None
    return [ctx.isa_irq_entry(layout.COM1_IRQ)]


@hookimpl
def machine_start(ctx: MachineContext) -> None:
    if DEVICE_NAME in ctx.devices:
        chardev = ctx.serial_chardev(0)
        if chardev is not None:
            chardev.start()


@hookimpl
def machine_stop(ctx: MachineContext) -> None:
    """Drop the device. ``close`` wakes a chardev reader blocked on a full input queue, so
    the core's ``chardev.close()`` can join it; the core closes the chardev itself."""
    dev = ctx.devices.pop(DEVICE_NAME, None)
    if dev is not None:
        dev.close()
