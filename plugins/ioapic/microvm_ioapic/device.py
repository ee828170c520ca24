"""An Intel 82093AA I/O APIC (version 0x20, with the EOI register) for a split irqchip.

Register names are those of the 82093AA datasheet (order 290566-001): the indirect access
registers IOREGSEL (0x00) and IOWIN (0x10), and behind them IOAPICID (0x00), IOAPICVER (0x01),
IOAPICARB (0x02) and the 24 64-bit redirection table entries IOREDTBL0-23 (0x10-0x3f, low
dword at the even index). Version 0x20 adds the directed EOI register at 0x40 that Linux uses
instead of toggling the trigger mode. Where the datasheet leaves a choice open the model
follows QEMU's ``hw/intc/ioapic.c``.

Delivery does not go over an APIC bus: an interrupt becomes one call of the injected
``deliver(msi_address, msi_data)`` with the message an MSI would carry (Intel SDM vol. 3,
10.11 "Message Signalled Interrupts"), which the glue hands to ``KVM_SIGNAL_MSI``:

* address = 0xFEE00000 | destination << 12 | destination mode << 2 (RH = 0),
* data = vector | delivery mode << 8 | trigger mode << 15, and for a level-triggered entry
  the Level bit 14 set (assert). For an edge-triggered entry bit 14 is 0 (the SDM says it
  is ignored; QEMU leaves it 0 too).

ExtINT (delivery mode 111) entries are delivered the same way; the glue decides what an
ExtINT message means (ask the 8259 for the vector). Only bits 63-56 of the destination
field are used (no extended destination ID).

Choices a reader should know about:

* **Inputs are logical levels.** ``set_irq(pin, True)`` means "asserted"; the polarity bit
  (INTPOL) is kept but not applied, as in QEMU and KVM, because the MP table describes the
  ISA and virtio lines as active high.
* **Edge-triggered pins** deliver on a rising input edge while unmasked; "edge-sensitive
  interrupts signaled on a masked interrupt pin are ignored (i.e. not delivered or held
  pending)", as the datasheet says.
* **Level-triggered pins** deliver while asserted, unmasked and Remote IRR clear, and set
  Remote IRR; :meth:`IoApic.eoi` (the EOI register, or a ``KVM_EXIT_IOAPIC_EOI``) clears
  Remote IRR of every level entry with that vector and delivers again if the pin is still
  asserted. Unmasking an asserted level pin delivers it. Switching an entry to edge clears
  its Remote IRR, which older Linux relies on to recover a stuck line.
* **Delivery Status** (bit 12) always reads 0: the message is sent at once.
* **IOAPICARB** reads the arbitration ID, loaded from the ID whenever IOAPICID is written.

Every entry point takes one lock. ``deliver`` is called while it is held (messages leave in
order); it must not call back into the device from another thread while waiting. After an
entry changes, ``on_redirection_change(pin)`` is called with the lock released, so the glue
can reprogram the KVM GSI route of that pin and the EOI exit bitmap.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable
from microvm.api import get_logger

log = get_logger("microvm.ioapic")

# MMIO offsets inside the 4 KiB page.
IOREGSEL = 0x00
IOWIN = 0x10
IOEOI = 0x40        # version 0x20 and later: write a vector to EOI it
MMIO_SIZE = 0x1000

# Register indexes behind IOREGSEL.
IOAPICID = 0x00
IOAPICVER = 0x01
IOAPICARB = 0x02
IOREDTBL_BASE = 0x10

NUM_PINS = 24
VERSION = 0x20
IOAPICVER_VALUE = (NUM_PINS - 1) << 16 | VERSION   # Maximum Redirection Entry | version
ID_SHIFT = 24
ID_MASK = 0x0F

# Redirection table entry bits.
RTE_VECTOR = 0xFF
RTE_DELMOD_SHIFT = 8
RTE_DELMOD = 0x7 << RTE_DELMOD_SHIFT
RTE_DESTMOD = 1 << 11       # 0 physical, 1 logical
RTE_DELIVS = 1 << 12        # delivery status (RO)
RTE_INTPOL = 1 << 13        # 1 = active low
RTE_REMOTE_IRR = 1 << 14    # (RO) level interrupt accepted, EOI not yet received
RTE_TRIGGER = 1 << 15       # 1 = level
RTE_MASK = 1 << 16
RTE_DEST_SHIFT = 56
RTE_RO_BITS = RTE_DELIVS | RTE_REMOTE_IRR
RTE_RESET = RTE_MASK        # every entry comes up masked

# Delivery modes.
DELMOD_FIXED = 0
DELMOD_LOWEST = 1
DELMOD_SMI = 2
DELMOD_NMI = 4
DELMOD_INIT = 5
DELMOD_EXTINT = 7

# MSI format (SDM 10.11.1 and 10.11.2).
MSI_ADDRESS_BASE = 0xFEE00000
MSI_ADDR_DEST_SHIFT = 12
MSI_ADDR_DEST_MODE_SHIFT = 2
MSI_DATA_DELMOD_SHIFT = 8
MSI_DATA_LEVEL = 1 << 14
MSI_DATA_TRIGGER = 1 << 15


@dataclass(frozen=True)
class RedirectionEntry:
    """One IOREDTBL entry, decoded; ``raw`` is the 64-bit register."""

    pin: int
    raw: int

    @property
    def vector(self) -> int:
        return self.raw & RTE_VECTOR

    @property
    def delivery_mode(self) -> int:
        return (self.raw & RTE_DELMOD) >> RTE_DELMOD_SHIFT

    @property
    def logical(self) -> bool:
        return bool(self.raw & RTE_DESTMOD)

    @property
    def active_low(self) -> bool:
        return bool(self.raw & RTE_INTPOL)

    @property
    def remote_irr(self) -> bool:
        return bool(self.raw & RTE_REMOTE_IRR)

    @property
    def level_triggered(self) -> bool:
        return bool(self.raw & RTE_TRIGGER)

    @property
    def masked(self) -> bool:
        return bool(self.raw & RTE_MASK)

    @property
    def destination(self) -> int:
        return (self.raw >> RTE_DEST_SHIFT) & 0xFF

    @property
    def msi_address(self) -> int:
        return (
            MSI_ADDRESS_BASE
            | self.destination << MSI_ADDR_DEST_SHIFT
            | (1 if self.logical else 0) << MSI_ADDR_DEST_MODE_SHIFT
        )

    @property
    def msi_data(self) -> int:
        data = self.vector | self.delivery_mode << MSI_DATA_DELMOD_SHIFT
        if self.level_triggered:
            data |= MSI_DATA_TRIGGER | MSI_DATA_LEVEL
        return data


class IoApic:
    """The I/O APIC: a bus device of 4 KiB (0xfec00000 on a PC).

    ``deliver(msi_address, msi_data)`` sends one interrupt message.
    """

    def __init__(
        self,
        deliver: Callable[[int, int], None],
        on_redirection_change: Callable[[int], None] | None = None,
        ioapic_id: int = 0,
    ) -> None:
        self.deliver = deliver
        self.on_redirection_change = on_redirection_change
        self._lock = threading.RLock()
        self._id = ioapic_id & ID_MASK
        self._arb = self._id
        self._ioregsel = 0
        self._redtbl = [RTE_RESET] * NUM_PINS
        self._inputs = 0          # asserted input pins (bit per pin)

    # --- bus interface --------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        """Reads are assembled from the aligned dwords they touch (a byte read of IOWIN
        reads that byte of the selected register)."""
        with self._lock:
            for i in range(len(data)):
                addr = offset + i
                dword = self._read_dword(addr & ~3)
                data[i] = (dword >> (8 * (addr & 3))) & 0xFF

    def write(self, offset: int, data: bytes) -> None:
        """Each aligned dword a write touches is written once, its untouched bytes taken
        from the register's current value (IOWIN and IOREGSEL have no read side effects)."""
        data = bytes(data)
        changed: list[int] = []
        with self._lock:
            i = 0
            while i < len(data):
                addr = offset + i
                base = addr & ~3
                value = self._read_dword(base) if base != IOEOI else 0
                while i < len(data) and (offset + i) & ~3 == base:
                    shift = 8 * ((offset + i) & 3)
                    value = (value & ~(0xFF << shift)) | data[i] << shift
                    i += 1
                pin = self._write_dword(base, value)
                if pin is not None:
                    changed.append(pin)
        if self.on_redirection_change is not None:
            for pin in changed:
                self.on_redirection_change(pin)

    # --- inputs and EOI -------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive input ``pin`` (0-23); out-of-range pins are ignored."""
        if not 0 <= pin < NUM_PINS:
            return
        with self._lock:
            mask = 1 << pin
            was = bool(self._inputs & mask)
            if level:
                self._inputs |= mask
            else:
                self._inputs &= ~mask
            entry = self._redtbl[pin]
            if not level or entry & RTE_MASK:
                return
            if entry & RTE_TRIGGER:
                self._service_level(pin)
            elif not was:
                self._send(pin)

    def pulse(self, pin: int) -> None:
        """One edge on ``pin`` (raise then lower)."""
        with self._lock:
            self.set_irq(pin, True)
            self.set_irq(pin, False)

    def eoi(self, vector: int) -> None:
        """End of interrupt for ``vector`` (the EOI register or ``KVM_EXIT_IOAPIC_EOI``)."""
        vector &= 0xFF
        with self._lock:
            for pin, entry in enumerate(self._redtbl):
                if entry & RTE_VECTOR != vector or not entry & RTE_TRIGGER:
                    continue
                if not entry & RTE_REMOTE_IRR:
                    continue
                self._redtbl[pin] = entry & ~RTE_REMOTE_IRR
                self._service_level(pin)

    # --- accessors for the glue -----------------------------------------------------------
    def redirection_entries(self) -> list[RedirectionEntry]:
        with self._lock:
            return [RedirectionEntry(pin, raw) for pin, raw in enumerate(self._redtbl)]

    def level_triggered_vectors(self) -> set[int]:
        """Vectors of unmasked level-triggered entries (the EOI exit bitmap's content)."""
        with self._lock:
            return {
                raw & RTE_VECTOR
                for raw in self._redtbl
                if raw & RTE_TRIGGER and not raw & RTE_MASK
            }

    @property
    def ioapic_id(self) -> int:
        return self._id

    def input_level(self, pin: int) -> bool:
        with self._lock:
            return bool(self._inputs >> pin & 1)

    # --- internals ------------------------------------------------------------------------
    def _service_level(self, pin: int) -> None:
        entry = self._redtbl[pin]
        if entry & RTE_MASK or entry & RTE_REMOTE_IRR or not self._inputs >> pin & 1:
            return
        self._redtbl[pin] = entry | RTE_REMOTE_IRR
        self._send(pin)

    def _send(self, pin: int) -> None:
        e = RedirectionEntry(pin, self._redtbl[pin])
        self.deliver(e.msi_address, e.msi_data)

    def _read_register(self, index: int) -> int:
        if index == IOAPICID:
            return self._id << ID_SHIFT
        if index == IOAPICVER:
            return IOAPICVER_VALUE
        if index == IOAPICARB:
            return self._arb << ID_SHIFT
        if IOREDTBL_BASE <= index < IOREDTBL_BASE + 2 * NUM_PINS:
            entry = self._redtbl[(index - IOREDTBL_BASE) >> 1]
            return entry >> 32 if index & 1 else entry & 0xFFFFFFFF
        return 0

    def _read_dword(self, addr: int) -> int:
        if addr == IOREGSEL:
            return self._ioregsel
        if addr == IOWIN:
            return self._read_register(self._ioregsel)
        return 0   # IOEOI is write-only; the rest of the page is reserved

    def _write_dword(self, addr: int, value: int) -> int | None:
        """Returns the pin whose entry changed, if any."""
        if addr == IOREGSEL:
            self._ioregsel = value & 0xFF
        elif addr == IOWIN:
            return self._write_register(self._ioregsel, value)
        elif addr == IOEOI:
            self.eoi(value & 0xFF)
        return None

    def _write_register(self, index: int, value: int) -> int | None:
        if index == IOAPICID:
            self._id = (value >> ID_SHIFT) & ID_MASK
            self._arb = self._id
            return None
        if not IOREDTBL_BASE <= index < IOREDTBL_BASE + 2 * NUM_PINS:
            return None   # IOAPICVER, IOAPICARB are read-only; other indexes reserved
        pin = (index - IOREDTBL_BASE) >> 1
        old = self._redtbl[pin]
        if index & 1:
            new = (old & 0xFFFFFFFF) | (value & 0xFFFFFFFF) << 32
        else:
            new = (old & ~0xFFFFFFFF) | (value & 0xFFFFFFFF & ~RTE_RO_BITS) | (old & RTE_RO_BITS)
            if not new & RTE_TRIGGER:
                new &= ~RTE_REMOTE_IRR
        self._redtbl[pin] = new
        if not index & 1 and new & RTE_TRIGGER:
            self._service_level(pin)   # e.g. unmasking a still-asserted level pin
        return pin if new != old else None
