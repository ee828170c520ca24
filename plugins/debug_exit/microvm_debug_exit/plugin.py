"""Hook glue: ``--device isa-debug-exit[,iobase=0xf4][,iosize=0x4]``.

Everything comes from :mod:`microvm.api`, as in a third-party package: the properties are
declared once, and the core converts and checks what the user wrote against them (unknown
keys, non-numbers) before the factory runs.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import ConfigError, Property, hookimpl

DEFAULT_IOBASE = 0x501   # QEMU's default iobase; tests usually pick 0xf4
DEFAULT_IOSIZE = 0x02
PROPERTIES = (
    Property("iobase", "int", DEFAULT_IOBASE, "first I/O port"),
    Property("iosize", "int", DEFAULT_IOSIZE, "number of ports, 1 to 4"),
)


def create(ctx: Any, props: Any) -> None:
    iobase, iosize = props.iobase, props.iosize
    if not (0 < iosize <= 4 and 0 <= iobase and iobase + iosize <= 0x10000):
        raise ConfigError(f"isa-debug-exit: iobase={iobase:#x},iosize={iosize} is not a valid port range")
    from .device import DebugExit  # lazily: loading the plugin stays cheap

    dev = DebugExit(ctx.request_stop)
    ctx.add_pio_device(dev, iobase, iosize, "isa-debug-exit")
    ctx.devices["isa-debug-exit"] = dev


@hookimpl
def register_device_types(register: Callable[..., None]) -> None:
    register("isa-debug-exit", create, "guest-controlled exit status (QEMU's isa-debug-exit)", properties=PROPERTIES)
