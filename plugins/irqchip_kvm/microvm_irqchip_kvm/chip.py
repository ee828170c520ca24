"""KVM's in-kernel interrupt controllers: ``KVM_CREATE_IRQCHIP`` (8259 pair + IOAPIC, with the
LAPICs) and, when the machine asks for a PIT, ``KVM_CREATE_PIT2``. Lines are driven with
``KVM_IRQ_LINE``; a device thread may instead get an eventfd bound with ``KVM_IRQFD`` and
raise an edge without a vCPU exit.

KVM's default routing sends GSI n to 8259 input n and IOAPIC pin n (``irq_comm.c``), so an
ISA IRQ's MP table entry names pin n too.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from microvm.api import ConfigError, IoApic, IoInterrupt, get_logger, layout

log = get_logger("microvm.irqchip_kvm")


class KvmIrqLine:
    """One GSI of the in-kernel irqchip."""

    def __init__(self, vm: Any, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self._level = False
        self._lock = threading.Lock()
        self._eventfd: int | None = None

    def set_level(self, level: bool) -> None:
        level = bool(level)
        with self._lock:
            if level == self._level:
                return
            self._level = level
            self.vm.irq_line(self.gsi, level)

    def pulse(self) -> None:
        with self._lock:
            self.vm.irq_line(self.gsi, 1)
            self.vm.irq_line(self.gsi, 0)
            self._level = False

    def eventfd(self) -> int | None:
        with self._lock:
            if self._eventfd is None:
                fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self.vm.irqfd(fd, self.gsi)
                self._eventfd = fd
            return self._eventfd

    def close(self) -> None:
        if self._eventfd is not None:
            os.close(self._eventfd)
            self._eventfd = None


class KernelIrqChip:
    """The :class:`microvm.api.IrqChip` of ``kernel-irqchip=on``."""

    name = "on"

    def __init__(self, ctx: Any) -> None:
        vm = ctx.vm
        self.vm = vm
        vm.create_irqchip()
        #: KVM's 8254 serves the PIT the machine options ask for
        self.pit = ctx.legacy.pit
        if self.pit:
            vm.create_pit2(speaker_dummy=True)
        self.builtin = frozenset({"pic", "pit"} if self.pit else {"pic"})
        #: MP-spec APIC IDs must be unique: the IOAPIC takes the one after the vCPUs' highest
        self.ioapic_id = max(ctx.apic_ids) + 1
        self._lines: dict[int, KvmIrqLine] = {}

    def line(self, gsi: int) -> KvmIrqLine:
        if not 0 <= gsi < layout.IOAPIC_PINS:
            raise ValueError(f"GSI {gsi} is outside the IOAPIC's {layout.IOAPIC_PINS} pins")
        if gsi not in self._lines:
            self._lines[gsi] = KvmIrqLine(self.vm, gsi)
        return self._lines[gsi]

    def isa_pin(self, irq: int) -> int:
        return irq

    def attach_pic(self, pic: Any) -> None:
        raise ConfigError("kernel-irqchip=on: KVM's in-kernel irqchip has its own 8259s; no userspace 8259 can be attached")

    def extint_source(self) -> None:
        return None  # KVM's own 8259 answers the INTA cycle

    def has_pic(self) -> bool:
        return True

    def eoi(self, vector: int) -> None:
        pass  # KVM's IOAPIC sees EOIs itself; no KVM_EXIT_IOAPIC_EOI comes with this chip

    def mptable_entries(self) -> list[Any]:
        entries: list[Any] = [IoApic(self.ioapic_id, layout.IOAPIC_ADDR)]
        if self.pit:
            entries.append(IoInterrupt(src_irq=layout.PIT_IRQ, dst_ioapic=self.ioapic_id, dst_pin=layout.PIT_IRQ))
        return entries

    def close(self) -> None:
        for line in self._lines.values():
            line.close()
