"""KVM's in-kernel interrupt controllers: ``KVM_CREATE_IRQCHIP`` (8259 pair + IOAPIC, with the
LAPICs) and ``KVM_CREATE_PIT2``. Lines are driven with ``KVM_IRQ_LINE``; a device thread may
instead get an eventfd bound with ``KVM_IRQFD`` and raise an edge without a vCPU exit.

KVM's default routing sends GSI n to 8259 input n and IOAPIC pin n (``irq_comm.c``), so an
ISA IRQ's MP table entry names pin n too.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from microvm import layout
from microvm.boot.mptable import IoApic, IoInterrupt
from microvm.kvm import ffi, lib
from microvm.log import get_logger

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
    name = "on"

    def __init__(self, machine: Any) -> None:
        vm = machine.vm
        self.vm = vm
        vm.ioctl_int("KVM_CREATE_IRQCHIP")
        if machine.option("pic") == "off":
            log.warning("kernel-irqchip=on: KVM's in-kernel irqchip always has its 8259s; pic=off has no effect")
        pit = machine.option("pit")
        self.pit = pit in (None, "on", "auto")
        if self.pit:
            cfg = ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY})
            vm.ioctl_ptr("KVM_CREATE_PIT2", cfg)
        #: MP-spec APIC IDs must be unique: CPUs take 0..smp-1, the IOAPIC the next one
        self.ioapic_id = machine.smp
        self._lines: dict[int, KvmIrqLine] = {}
        machine.add_cleanup(self.close)

    def line(self, gsi: int) -> KvmIrqLine:
        if not 0 <= gsi < layout.IOAPIC_PINS:
            raise ValueError(f"GSI {gsi} is outside the IOAPIC's {layout.IOAPIC_PINS} pins")
        if gsi not in self._lines:
            self._lines[gsi] = KvmIrqLine(self.vm, gsi)
        return self._lines[gsi]

    def isa_pin(self, irq: int) -> int:
        return irq

    def mptable_entries(self) -> list[Any]:
        entries: list[Any] = [IoApic(self.ioapic_id, layout.IOAPIC_ADDR)]
        if self.pit:
            entries.append(IoInterrupt(src_irq=layout.PIT_IRQ, dst_ioapic=self.ioapic_id, dst_pin=layout.PIT_IRQ))
        return entries

    def close(self) -> None:
        for line in self._lines.values():
            line.close()
