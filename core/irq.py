"""The interrupt interfaces: the line devices drive, and the interrupt controller behind it.

A device gets an :class:`IrqLine` from the machine context and calls ``set_level``
(level-sensitive sources such as a 16550's INTR pin or a virtio-mmio transport) or ``pulse``
(edge events). Which interrupt controller is behind the line is the irqchip plugin's
business; devices never know.

:class:`IrqChip` is everything the core and other plugins may ask of any interrupt
controller (Cloud Hypervisor's ``InterruptController`` trait is the model): nobody probes an
irqchip with ``hasattr``. Both irqchip plugins (``kernel-irqchip=split``, the userspace
IOAPIC, and ``kernel-irqchip=on``, KVM's) implement all of it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .metrics import Counter


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
class ExtIntSource(Protocol):
    """What answers the CPU's interrupt-acknowledge cycle for an ExtINT interrupt: an 8259
    pair in virtual-wire mode (its INTR reaches the boot CPU's LINT0)."""

    def has_interrupt(self) -> bool:
        """Whether INTR is asserted (an unmasked request is pending)."""

    def acknowledge(self) -> int:
        """The INTA cycle: the vector of the highest-priority request, now in service."""


@runtime_checkable
class Pic(ExtIntSource, Protocol):
    """An 8259A pair emulated in userspace, as the irqchip sees it: ISA IRQ inputs, plus
    the ExtINT side."""

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ input ``irq`` (0-15)."""


@runtime_checkable
class IrqChip(Protocol):
    """Everything the machine and the plugins may ask of an interrupt controller.

    Created by an irqchip plugin's factory (``register_irqchips``) before any vCPU exists.
    """

    #: the ``kernel-irqchip`` value it implements (``"split"``, ``"on"``)
    name: str
    #: APIC ID of its IOAPIC, for the MP table (unique among the CPUs' LAPIC IDs)
    ioapic_id: int
    #: legacy devices the chip emulates itself (KVM's in-kernel chip: ``{"pic"}`` and,
    #: when asked for, ``"pit"``); a plugin for such a device then adds nothing
    builtin: frozenset[str]

    def line(self, gsi: int) -> IrqLine:
        """The line for GSI ``gsi`` (0-23). ISA IRQs are GSIs 0-15; the chip routes each to
        its IOAPIC pin (:meth:`isa_pin`) and, if present, to an 8259 input."""

    def isa_pin(self, irq: int) -> int:
        """The IOAPIC pin ISA IRQ ``irq`` arrives on (QEMU's split IOAPIC takes IRQ 0 on pin
        2; KVM's default routing keeps pin 0). For the MP table's I/O interrupt entries."""

    def attach_pic(self, pic: Pic) -> None:
        """Connect an 8259 pair emulated in userspace: ISA IRQs reach it too, and it becomes
        the ExtINT source. A chip with its own 8259s (``"pic" in builtin``) refuses with
        :class:`~microvm.errors.ConfigError`."""

    def extint_source(self) -> ExtIntSource | None:
        """The 8259 pair the boot vCPU takes ExtINT vectors from (KVM_INTERRUPT), when one
        is emulated in userspace; None otherwise (KVM's own PIC needs no help)."""

    def has_pic(self) -> bool:
        """Whether an 8259 pair drives LINT0 (built in, or attached)."""

    def eoi(self, vector: int) -> None:
        """The guest signalled end-of-interrupt for ``vector`` at its LAPIC
        (``KVM_EXIT_IOAPIC_EOI``, level-triggered routes only). The core calls this."""

    def mptable_entries(self) -> list[object]:
        """MP table entries describing the chip (its IOAPIC, routes it adds itself)."""

    def close(self) -> None:
        """Release host resources (eventfds)."""


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


class CountingIrqLine:
    """An irqchip's line that also counts the interrupts raised on it (rising edges and
    pulses), for the machine's counters. What :meth:`MachineContext.irq` hands out."""

    __slots__ = ("line", "gsi", "_raised", "_level", "_set_level", "_pulse")

    def __init__(self, line: IrqLine, raised: "Counter") -> None:
        self.line = line
        self.gsi = line.gsi
        self._raised = raised.inc
        self._level = False
        # bound once: this sits on every interrupt's path
        self._set_level = line.set_level
        self._pulse = line.pulse

    def set_level(self, level: bool) -> None:
        if level:
            if not self._level:
                self._level = True
                self._raised()
        else:
            self._level = False
        self._set_level(level)

    def pulse(self) -> None:
        self._raised()
        self._pulse()

    def eventfd(self) -> int | None:
        return self.line.eventfd()


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
