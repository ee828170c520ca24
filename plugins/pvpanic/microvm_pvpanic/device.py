"""The pvpanic device (QEMU's ``hw/misc/pvpanic.c``, ``docs/specs/pvpanic.txt``): one port.

Reading it gives the events the device supports (bit 0 ``PVPANIC_PANICKED``, bit 1
``PVPANIC_CRASH_LOADED``: QEMU 7.2's ``events`` property, default both). Writing reports an
event: PANICKED (the guest panicked: QMP ``GUEST_PANICKED``, the VM stops or ends as the
run-state rules say), else CRASH_LOADED (a crash kernel was loaded and takes over: QMP
``GUEST_CRASHLOADED``, the guest runs on). As QEMU, PANICKED wins when both bits are set and
unknown bits are logged once and otherwise ignored.

Linux finds the device only through ACPI (``QEMU0001``) or a device tree, which a microvm
guest without ACPI lacks (docs/qmp.md): a guest that knows the port (a test guest, another
OS, a firmware) can use it.
"""
from __future__ import annotations

from typing import Callable

from microvm.api import get_logger

log = get_logger("microvm.pvpanic")

PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1
PVPANIC_EVENTS = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED


class PvPanic:
    """Bus device of one byte (wider accesses see the byte, then zeros, as a 1-byte ISA port)."""

    def __init__(self, events: int, panicked: Callable[[str], None], crash_loaded: Callable[[], None]) -> None:
        self.events = events
        self.panicked = panicked
        self.crash_loaded = crash_loaded
        self._logged = False

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))
        if offset == 0:
            data[0] = self.events

    def write(self, offset: int, data: bytes) -> None:
        if offset != 0:
            return
        event = data[0]
        if event & ~PVPANIC_EVENTS and not self._logged:
            log.warning("pvpanic: unknown event %#x", event)
            self._logged = True
        if event & PVPANIC_PANICKED:
            self.panicked("pvpanic")
        elif event & PVPANIC_CRASH_LOADED:
            self.crash_loaded()
