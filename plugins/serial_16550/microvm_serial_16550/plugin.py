"""Hook glue for COM1: the ``isa-serial`` option, placement at 0x3f8, the MP table entry for
IRQ 4 and the host chardev's start. The UART itself is in :mod:`.device`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from microvm import hookimpl
from microvm.layout import COM1_IRQ, COM1_PORT
from microvm.options import MachineOption

from .device import REGISTER_COUNT, Serial16550

if TYPE_CHECKING:
    from microvm.machine import Machine

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
def create_devices(machine: Machine) -> None:
    """COM1 exists when ``isa-serial`` is on and ``-serial`` gave it a backend (as in QEMU,
    ``-serial none`` leaves the port out)."""
    if not machine.option(OPTION.name):
        return
    chardev = machine.serial_chardev(0)
    if chardev is None:
        return
    dev = Serial16550(irq=machine.irq(COM1_IRQ), out=chardev.write)
    machine.add_pio_device(dev, COM1_PORT, REGISTER_COUNT, DEVICE_NAME)
    chardev.set_receiver(dev.receive, dev.send_break)
    machine.devices[DEVICE_NAME] = dev


@hookimpl
def mptable_entries(machine: Machine) -> list[Any] | None:
    """Tell the guest where IRQ 4 goes, only when the port exists (no probe otherwise)."""
    if DEVICE_NAME not in machine.devices:
        return None
    return [machine.isa_irq_entry(COM1_IRQ)]


@hookimpl
def machine_start(machine: Machine) -> None:
    if DEVICE_NAME in machine.devices:
        machine.serial_chardev(0).start()


@hookimpl
def machine_stop(machine: Machine) -> None:
    """Drop the device. ``close`` wakes a chardev reader blocked on a full input queue, so
    the core's ``chardev.close()`` can join it; the core closes the chardev itself."""
    dev = machine.devices.pop(DEVICE_NAME, None)
    if dev is not None:
        dev.close()
