"""The one interrupt interface devices use.

A device gets an :class:`IrqLine` from the machine and calls ``set_level`` (level-sensitive
sources such as a 16550's INTR pin or a PCI-style line) or ``pulse`` (edge events). Which
interrupt controller is behind the line (the in-kernel PIC/IOAPIC or the userspace IOAPIC of
``kernel-irqchip=split``) is the irqchip plugin's business; devices never know.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class IrqLine(Protocol):
    """An interrupt input of the machine's interrupt controller (a GSI)."""

    gsi: int

    def set_level(self, level: bool) -> None:
        """Drive the line: True asserts, False deasserts. Idempotent."""

    def pulse(self) -> None:
        """Raise and lower the line (one edge-triggered event)."""

    def eventfd(self) -> int | None:
        """An eventfd whose write raises an edge on this line without a vCPU exit (irqfd), or
        None when the irqchip cannot offer one. Used by device worker threads."""


@runtime_checkable
class IrqChip(Protocol):
    """What an irqchip plugin provides to the machine."""

    name: str

    def line(self, gsi: int) -> IrqLine:
        """The line for GSI ``gsi`` (ISA IRQs are GSIs 0-15 with the usual remapping of 0 to 2
        done by the irqchip itself)."""

    def mptable_entries(self) -> list[object]:
        """MP table entries (IOAPIC and interrupt assignments) this chip contributes."""


class NullIrqLine:
    """The line of a machine without an interrupt controller (no irqchip plugin installed):
    nothing is connected, so the guest must poll, as with a masked interrupt."""

    def __init__(self, gsi: int) -> None:
        self.gsi = gsi

    def set_level(self, level: bool) -> None:
        pass

    def pulse(self) -> None:
        pass

    def eventfd(self) -> int | None:
        return None


class RecordingIrqLine:
    """A fake line for device unit tests: records every level change and pulse."""

    def __init__(self, gsi: int = 0) -> None:
        self.gsi = gsi
        self.level = False
        self.events: list[str] = []
        self.pulses = 0

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.events.append("high" if level else "low")
        self.level = level

    def pulse(self) -> None:
        self.pulses += 1
        self.events.append("pulse")

    def eventfd(self) -> int | None:
        return None
