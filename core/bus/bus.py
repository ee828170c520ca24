"""An address bus mapping ranges to devices.

As in Firecracker's ``vstate/bus.rs``, a device sees only the offset of an access inside its
own range, never its base: placement belongs to the bus (and the core's layout module).
Ranges may not overlap and may not be empty. An access that hits no device is logged at
debug level and reads as all ones (an undriven ISA data bus floats high) or all zeros on the
MMIO bus, as the bus was built to.
"""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from ..errors import BusError
from ..log import get_logger

log = get_logger("microvm.bus")

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .protocol import BusDevice


def _uncounted() -> None:
    pass


class Mapping(NamedTuple):
    base: int
    length: int
    device: BusDevice
    name: str
    #: count one guest read / write of this device (its counter group's ``<bus>_reads``)
    count_read: Callable[[], Any] = _uncounted
    count_write: Callable[[], Any] = _uncounted

    @property
    def end(self) -> int:
        return self.base + self.length


class Bus:
    """A sorted, non-overlapping set of :class:`Mapping`. Lookups are O(log n), lock-free.

    Inserting is done while the machine is built; the vCPU threads only look up, and each
    insert swaps in new lists atomically, so readers never see a half-made table.
    """

    def __init__(self, name: str, unmapped_read: int = 0xFF, limit: int = 1 << 64, metrics: "Metrics | None" = None) -> None:
        self.name = name
        #: where each mapped device's accesses are counted (group ``devices``/its name)
        self.metrics = metrics
        self.unmapped_read = unmapped_read
        self.limit = limit
        self._bases: list[int] = []
        self._maps: list[Mapping] = []
        #: unmapped addresses already logged: a guest probing absent ports does so in loops
        #: (Linux's 8250 autoconfig, 30,000 accesses per boot), so each is logged once
        self._unmapped_seen: set[int] = set()
        self.unmapped_accesses = 0

    def insert(self, device: BusDevice, base: int, length: int, name: str | None = None) -> Mapping:
        label = name or type(device).__name__
        if length <= 0:
            raise BusError(f"{self.name} bus: {label} has an empty range at {base:#x}")
        if base < 0 or base + length > self.limit:
            raise BusError(f"{self.name} bus: {label} range [{base:#x}, +{length:#x}) is outside the bus")
        m = Mapping(base, length, device, label)
        i = bisect.bisect_right(self._bases, base)
        for other in self._maps[max(i - 1, 0) : i + 1]:
            if m.base < other.end and other.base < m.end:
                raise BusError(
                    f"{self.name} bus: {label} [{base:#x}, {m.end:#x}) overlaps {other.name} [{other.base:#x}, {other.end:#x})"
                )
        if self.metrics is not None:
            group = self.metrics.group("devices", label)
            m = m._replace(count_read=group.counter(f"{self.name}_reads").inc,
                           count_write=group.counter(f"{self.name}_writes").inc)
        bases, maps = list(self._bases), list(self._maps)
        bases.insert(i, base)
        maps.insert(i, m)
        self._bases, self._maps = bases, maps
        return m

    def remove(self, base: int) -> None:
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise BusError(f"{self.name} bus: nothing mapped at {base:#x}")
        bases, maps = list(self._bases), list(self._maps)
        del bases[i], maps[i]
        self._bases, self._maps = bases, maps

    def find(self, addr: int) -> Mapping | None:
        maps = self._maps
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            m = maps[i]
            if addr < m.end:
                return m
        return None

    def mappings(self) -> list[Mapping]:
        return list(self._maps)

    def read(self, addr: int, data: memoryview) -> None:
        """Fill ``data`` from the device at ``addr``; unmapped reads float to ``unmapped_read``."""
        m = self.find(addr)
        if m is None or addr + len(data) > m.end:
            self._log_unmapped(addr, "%s bus: read of %d bytes at unmapped %#x", len(data))
            data[:] = bytes([self.unmapped_read]) * len(data)
            return
        m.count_read()
        m.device.read(addr - m.base, data)

    def _log_unmapped(self, addr: int, fmt: str, arg: object) -> None:
        """Debug-log the first access to each unmapped address; count them all."""
        self.unmapped_accesses += 1
        if addr not in self._unmapped_seen and len(self._unmapped_seen) < 4096:
            self._unmapped_seen.add(addr)
            log.debug(fmt, self.name, arg, addr)

    def write(self, addr: int, data: bytes) -> None:
        m = self.find(addr)
        if m is None or addr + len(data) > m.end:
            self._log_unmapped(addr, "%s bus: write of %s at unmapped %#x ignored", bytes(data).hex())
            return
        m.count_write()
        m.device.write(addr - m.base, data)
