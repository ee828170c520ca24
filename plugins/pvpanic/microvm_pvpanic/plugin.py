"""Hook glue: ``--device pvpanic[,ioport=0x505][,events=3]`` (QEMU's ISA pvpanic spelling).

Everything from :mod:`microvm.api`. The device reports through the machine context
(``ctx.report_guest_panic``, ``ctx.report_guest_crashloaded``), which applies QEMU's
run-state rules and sends the QMP events.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import ConfigError, Property, hookimpl

PROPERTIES = (
    Property("ioport", "int", 0x505, "the I/O port (QEMU's default 0x505)"),
    Property("events", "int", 3, "events offered to the guest: bit 0 panicked, bit 1 crash-loaded"),
)


def create(ctx: Any, props: Any) -> None:
    ioport, events = props.ioport, props.events
    if not 0 <= ioport <= 0xFFFF:
        raise ConfigError(f"pvpanic: ioport={ioport:#x} is not an I/O port")
    if events & ~3:
        raise ConfigError(f"pvpanic: events={events:#x}: only bits 0 (panicked) and 1 (crash-loaded) exist")
    from .device import PvPanic  # lazily: loading the plugin stays cheap

    dev = PvPanic(events, ctx.report_guest_panic, ctx.report_guest_crashloaded)
    ctx.add_pio_device(dev, ioport, 1, "pvpanic")
    ctx.devices["pvpanic"] = dev


@hookimpl
def register_device_types(register: Callable[..., None]) -> None:
    register("pvpanic", create, "guest panic notification through an I/O port (QEMU's ISA pvpanic)",
             properties=PROPERTIES)
