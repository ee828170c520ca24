"""``kernel-irqchip=split``: the LAPICs stay in KVM, the IOAPIC (and the 8259 and 8254 when
their plugins are installed) are emulated here, as QEMU's microvm does by default.

How an interrupt travels: a device drives its :class:`SplitIrqLine`; ISA IRQs 0-15 go to the
8259 pair (if present) and to the IOAPIC, IRQ 0 to pin 2 as QEMU's ``ioapic_set_irq`` wires
it (the ISA override every PC has). The IOAPIC turns an unmasked edge or level into an MSI,
which ``KVM_SIGNAL_MSI`` hands to the in-kernel LAPIC: any thread may do that, so a device
worker never needs a vCPU exit. Level-triggered pins need the guest's EOI back: KVM reports it
as ``KVM_EXIT_IOAPIC_EOI`` only for vectors it finds as level-triggered MSI routes on GSIs
0-23, so every redirection-table write re-programs those routes (``KVM_SET_GSI_ROUTING``),
as QEMU's ``ioapic_update_kvm_routes`` does.
"""
from __future__ import annotations

import threading
from typing import Any

from microvm.api import ConfigError, IoApic as MpIoApic, get_logger, layout

from .device import IoApic

log = get_logger("microvm.ioapic")
DELIVERY_EXTINT = 7


class SplitIrqLine:
    """GSI ``gsi`` of the split irqchip (level semantics; ``pulse`` is an edge)."""

    def __init__(self, chip: "SplitIrqChip", gsi: int) -> None:
        self.chip = chip
        self.gsi = gsi
        self.pin = chip.isa_pin(gsi) if gsi < layout.ISA_IRQS else gsi

    def set_level(self, level: bool) -> None:
        pic = self.chip.pic
        if pic is not None and self.gsi < layout.ISA_IRQS:
            pic.set_irq(self.gsi, level)
        self.chip.ioapic.set_irq(self.pin, level)

    def pulse(self) -> None:
        self.set_level(True)
        self.set_level(False)

    def eventfd(self) -> int | None:
        return None  # KVM_SIGNAL_MSI already avoids the vCPU exit an eventfd would save


class SplitIrqChip:
    """The :class:`microvm.api.IrqChip` of ``kernel-irqchip=split``."""

    name = "split"
    #: the 8259 pair and the 8254 are plugins of their own in split mode
    builtin: frozenset[str] = frozenset()

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.vm = ctx.vm
        # must precede KVM_CREATE_VCPU; reserves GSIs 0-23 for the userspace IOAPIC's routes
        self.vm.enable_cap("KVM_CAP_SPLIT_IRQCHIP", layout.IOAPIC_PINS)
        #: MP-spec APIC IDs must be unique: the IOAPIC takes the one after the vCPUs' highest
        self.ioapic_id = max(ctx.apic_ids) + 1
        self.ioapic = IoApic(self._deliver, self._route_changed, ioapic_id=self.ioapic_id)
        ctx.add_mmio_device(self.ioapic, layout.IOAPIC_ADDR, layout.IOAPIC_SIZE, "ioapic")
        self.pic: Any = None
        self._msi_failure_logged = False
        self._lines: dict[int, SplitIrqLine] = {}
        self._routes_lock = threading.Lock()
        self._update_routes()

    # -- what devices and other plugins use ---------------------------------------------
    def line(self, gsi: int) -> SplitIrqLine:
        if not 0 <= gsi < layout.IOAPIC_PINS:
            raise ValueError(f"GSI {gsi} is outside the IOAPIC's {layout.IOAPIC_PINS} pins")
        if gsi not in self._lines:
            self._lines[gsi] = SplitIrqLine(self, gsi)
        return self._lines[gsi]

    def isa_pin(self, irq: int) -> int:
        return 2 if irq == 0 else irq

    def attach_pic(self, pic: Any) -> None:
        """Let ISA IRQs reach an 8259 pair too, and take ExtINT vectors from it (the pic
        plugin calls this)."""
        if self.pic is not None:
            raise ConfigError("kernel-irqchip=split: an 8259 pair is already attached")
        self.pic = pic

    def extint_source(self) -> Any:
        return self.pic

    def has_pic(self) -> bool:
        return self.pic is not None

    def eoi(self, vector: int) -> None:
        """KVM_EXIT_IOAPIC_EOI: the guest EOI'd a level-triggered vector at its LAPIC."""
        self.ioapic.eoi(vector)

    def mptable_entries(self) -> list[Any]:
        return [MpIoApic(self.ioapic_id, layout.IOAPIC_ADDR, version=0x20)]

    def close(self) -> None:
        pass  # no host resources: MSIs go through KVM_SIGNAL_MSI

    # -- internals ------------------------------------------------------------------------
    def _deliver(self, address: int, data: int) -> None:
        if (data >> 8) & 7 == DELIVERY_EXTINT:
            self.ctx.extint_line.pulse()  # the vector comes from the 8259's INTA cycle
            return
        try:
            self.vm.signal_msi(address, data)
        except OSError as e:
            # KVM found no LAPIC to take it (the guest disabled them or aimed at a missing
            # APIC ID): the message is lost, as on a real bus. Never an exception out of a
            # device register access.
            if not self._msi_failure_logged:
                self._msi_failure_logged = True
                log.warning("IOAPIC message %#x/%#x not delivered: %s (logged once)", address, data, e)

    def _route_changed(self, pin: int) -> None:
        self._update_routes()

    def _update_routes(self) -> None:
        with self._routes_lock:  # snapshot and commit together, or a stale table could win
            entries = [
                {"gsi": pin, "type": "msi", "address": e.msi_address, "data": e.msi_data}
                for pin, e in enumerate(self.ioapic.redirection_entries())
            ]
            self.vm.set_gsi_routing(entries)
