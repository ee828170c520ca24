"""Hook glue for ``--device virtio-blk-device,drive=ID[,serial=S]`` (QEMU's spelling).

The drive itself comes from ``--drive id=ID,file=PATH,format=raw,if=none[,readonly=on]``;
the machine parses it and hands us its properties through ``machine.drive(ID)``.
"""
from __future__ import annotations

from typing import Any

from microvm import hookimpl
from microvm.errors import ConfigError

DEVICE_PROPS = ("drive", "serial")
DRIVE_PROPS = ("id", "file", "format", "if", "readonly")
SUPPORTED_FORMATS = ("raw",)
_BOOLS = {"on": True, "off": False, "yes": True, "no": False, "true": True, "false": False}


def _onoff(drive_id: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return _BOOLS[str(value).lower()]
    except KeyError:
        raise ConfigError(f"drive {drive_id}: readonly={value} is not on or off") from None


def create_virtio_blk(machine: Any, props: dict[str, str]) -> Any:
    """Factory for ``virtio-blk-device``: consumes ``drive`` and ``serial`` from ``props``."""
    unknown = sorted(set(props) - set(DEVICE_PROPS))
    if unknown:
        raise ConfigError(
            f"virtio-blk-device: unknown propert{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)} (valid: {', '.join(DEVICE_PROPS)})"
        )
    drive_id = props.pop("drive", None)
    serial = props.pop("serial", "") or ""
    if not drive_id:
        raise ConfigError("virtio-blk-device needs drive=ID naming a --drive id=ID,file=...,format=raw,if=none")
    drive = machine.drive(drive_id)
    if drive is None:
        raise ConfigError(f"virtio-blk-device: no --drive with id={drive_id}")
    extra = sorted(set(drive) - set(DRIVE_PROPS))
    if extra:
        raise ConfigError(
            f"drive {drive_id}: virtio-blk-device does not support {', '.join(extra)} "
            f"(supported drive properties: {', '.join(DRIVE_PROPS)})"
        )
    fmt = drive.get("format", "raw")
    if fmt not in SUPPORTED_FORMATS:
        raise ConfigError(f"drive {drive_id}: format={fmt} is not supported (supported formats: {', '.join(SUPPORTED_FORMATS)})")
    iface = drive.get("if", "none")
    if iface != "none":
        raise ConfigError(f"drive {drive_id}: if={iface} is not supported on microvm; use if=none with -device virtio-blk-device")
    path = drive.get("file")
    if not path:
        raise ConfigError(f"drive {drive_id}: file=PATH is required")
    readonly = _onoff(drive_id, drive.get("readonly", "off"))

    from .device import VirtioBlk  # lazily: plugin loading stays cheap

    backend = VirtioBlk(path, readonly=readonly, serial=serial)
    try:
        return machine.add_virtio_device(backend, name=f"virtio-blk:{drive_id}")
    except BaseException:
        backend.close()
        raise


@hookimpl
def register_device_types(register: Any) -> None:
    register("virtio-blk-device", create_virtio_blk, "virtio block device on a -drive")
