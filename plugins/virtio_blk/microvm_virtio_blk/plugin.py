"""Hook glue for ``--device virtio-blk-device,drive=ID[,serial=S]`` (QEMU's spelling).

The drive comes from ``--drive id=ID,file=PATH,format=raw,if=none[,readonly=on]``, parsed
and checked by the core into a :class:`microvm.api.DriveConfig`. The core places the
device on its virtio-mmio transport (``virtio=True``), including ``force-legacy``.
"""
from __future__ import annotations

from typing import Any

from microvm.api import Property, hookimpl

PROPERTIES = (
    Property("drive", "str", required=True, help="the --drive id=ID holding the image"),
    Property("serial", "str", "", "the disk's serial number (VIRTIO_BLK_T_GET_ID, at most 20 bytes)"),
)


def create_virtio_blk(ctx: Any, props: Any) -> Any:
    """Factory for ``virtio-blk-device``: the backend on the drive ``props.drive``."""
    drive = ctx.drive(props.drive)
    from .device import VirtioBlk  # lazily: plugin loading stays cheap

    backend = VirtioBlk(drive.file, readonly=drive.readonly, serial=props.serial)
    backend.label = f"virtio-blk:{drive.id}"
    return backend


@hookimpl
def register_device_types(register: Any) -> None:
    register("virtio-blk-device", create_virtio_blk, "virtio block device on a -drive", properties=PROPERTIES, virtio=True)
