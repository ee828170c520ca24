"""Hook glue: ``--device isa-debug-exit[,iobase=0xf4][,iosize=0x4]``.

Everything comes from :mod:`microvm.api`, as in a third-party package.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import ConfigError, hookimpl

DEFAULT_IOBASE = 0x501   # QEMU's default iobase; tests usually pick 0xf4
DEFAULT_IOSIZE = 0x02


def _int(name: str, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"isa-debug-exit: {name}={text} is not a number") from None


def create(machine: Any, props: dict[str, str]) -> None:
    unknown = sorted(set(props) - {"iobase", "iosize"})
    if unknown:
        raise ConfigError(f"isa-debug-exit: unknown property {', '.join(unknown)} (valid: iobase, iosize)")
    iobase = _int("iobase", props.pop("iobase", hex(DEFAULT_IOBASE)))
    iosize = _int("iosize", props.pop("iosize", hex(DEFAULT_IOSIZE)))
    if not (0 < iosize <= 4 and 0 <= iobase and iobase + iosize <= 0x10000):
        raise ConfigError(f"isa-debug-exit: iobase={iobase:#x},iosize={iosize} is not a valid port range")
    from .device import DebugExit  # lazily: loading the plugin stays cheap

    dev = DebugExit(machine.request_stop)
    machine.add_pio_device(dev, iobase, iosize, "isa-debug-exit")
    machine.devices["isa-debug-exit"] = dev


@hookimpl
def register_device_types(register: Callable[..., None]) -> None:
    register("isa-debug-exit", create, "guest-controlled exit status (QEMU's isa-debug-exit)")
