"""The isa-debug-exit device: a guest write ends the VMM with status ``(value << 1) | 1``.

Test guests use it to report a result through the exit status, as with QEMU's
``-device isa-debug-exit,iobase=0xf4,iosize=0x04`` (``hw/misc/debugexit.c``). The status is
always odd, so a guest-chosen status can be told apart from the VMM's own 0.
"""
from __future__ import annotations

from typing import Any, Callable


class DebugExit:
    """Bus device: any write ends the machine; reads float high (there is nothing to read)."""

    def __init__(self, stop: Callable[..., Any]) -> None:
        self.stop = stop

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = b"\xff" * len(data)

    def write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        # the guest ended the VM: a QMP client gets SHUTDOWN guest-shutdown (QEMU exits
        # without an event here)
        self.stop((value << 1) | 1, f"isa-debug-exit: guest wrote {value:#x}", "guest-shutdown")
