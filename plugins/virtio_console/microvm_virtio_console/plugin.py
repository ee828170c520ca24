"""Hook glue for QEMU's virtio console spellings::

    --device virtio-serial-device[,max_ports=N][,emergency-write=on|off][,id=ID]
    --device virtconsole[,chardev=ID][,name=NAME][,nr=N][,bus=ID]
    --device virtserialport[,chardev=ID][,name=NAME][,nr=N][,bus=ID]

``virtio-serial-device`` is a virtio device (the core places it on a virtio-mmio transport).
The ports are device types of their own that attach to a serial device, as QEMU's attach to
a virtio-serial bus: to the one named by ``bus=`` (its ``id``, or QEMU's bus name
``ID.0``), else to the last ``virtio-serial-device`` given before them on the command line
(``--device`` factories run in command-line order).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from microvm.api import ConfigError, Property, hookimpl

if TYPE_CHECKING:
    from microvm.api import MachineContext, Properties

from .constants import DEFAULT_MAX_PORTS

#: where this plugin keeps its serial devices in ctx.devices: a list of (id, device)
BUSES = "virtio_console.buses"

SERIAL_PROPERTIES = (
    Property("max_ports", "int", DEFAULT_MAX_PORTS, "the most ports the device may have (1 to 511)"),
    Property("emergency-write", "bool", True, "offer VIRTIO_CONSOLE_F_EMERG_WRITE (one byte of output on port 0 "
             "through the configuration space)"),
)
PORT_PROPERTIES = (
    Property("chardev", "str", None, "the host character device (--chardev ID)"),
    Property("name", "str", None, "the port's name for the guest (/sys/class/virtio-ports/vportNpM/name)"),
    Property("nr", "int", None, "the port number (default: 0 for the first console, else the lowest free from 1)"),
    Property("bus", "str", None, "the virtio-serial-device to attach to (its id; default: the last one given)"),
)


def create_serial(ctx: "MachineContext", props: "Properties") -> Any:
    from .device import VirtioSerial

    dev = VirtioSerial(max_ports=props.max_ports, emergency_write=props["emergency-write"])
    ctx.devices.setdefault(BUSES, []).append((props["id"], dev))
    return dev


def _bus(ctx: "MachineContext", driver: str, bus: str | None) -> Any:
    buses = ctx.devices.get(BUSES) or []
    if bus:
        name = bus[:-2] if bus.endswith(".0") else bus
        for ident, dev in buses:
            if ident == name:
                return dev
        raise ConfigError(f"--device {driver}: Bus '{bus}' not found")
    if not buses:
        raise ConfigError(f"--device {driver}: No 'virtio-serial-bus' bus found for device '{driver}' "
                          "(give --device virtio-serial-device before it)")
    return buses[-1][1]


def _create_port(ctx: "MachineContext", props: "Properties", console: bool) -> None:
    driver = "virtconsole" if console else "virtserialport"
    owner = f"--device {driver}" + (f",id={props['id']}" if props["id"] else "")
    dev = _bus(ctx, driver, props.bus)
    nr = props.nr
    if nr is not None and nr < 0:
        raise ConfigError(f"{owner}: nr={nr}: expected a port number >= 0")
    chardev = ctx.chardev(props.chardev) if props.chardev else None
    dev.add_port(nr, props.name, console, chardev, owner)


def create_console(ctx: "MachineContext", props: "Properties") -> None:
    _create_port(ctx, props, console=True)


def create_serialport(ctx: "MachineContext", props: "Properties") -> None:
    _create_port(ctx, props, console=False)


@hookimpl
def register_device_types(register: Callable[..., None]) -> None:
    register("virtio-serial-device", create_serial, "virtio console with ports (virtconsole, virtserialport)",
             properties=SERIAL_PROPERTIES, virtio=True)
    register("virtconsole", create_console, "a console port (the guest's hvcN) on a virtio-serial-device",
             properties=PORT_PROPERTIES)
    register("virtserialport", create_serialport, "a serial port (the guest's /dev/vportNpM) on a virtio-serial-device",
             properties=PORT_PROPERTIES)
