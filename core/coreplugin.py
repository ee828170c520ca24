"""The core's own hook implementations: options that belong to the machine itself (not to a
device) and the virtio-mmio slots' command line and MP table entries. Registered by
:class:`microvm.plugins.PluginHost` under the name ``core``, always."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

from .options import MachineOption

if TYPE_CHECKING:
    from .machine import Machine

hookimpl = pluggy.HookimplMarker("microvm")


@hookimpl
def register_machine_options(register: Callable[[MachineOption], None]) -> None:
    register(MachineOption(
        "kernel-irqchip", "str", None,
        "Interrupt controller model: split (LAPIC in KVM, IOAPIC/PIC/PIT in microvm) or on (all in KVM)",
        auto_means="split when the ioapic plugin is installed, else on", plugin="core",
    ))
    register(MachineOption(
        "auto-kernel-cmdline", "bool", True,
        "Set off to disable adding virtio-mmio devices to the kernel cmdline", plugin="core",
    ))
    register(MachineOption(
        "x-option-roms", "bool", True,
        "Set off to disable loading option ROMs (accepted for QEMU compatibility: direct kernel boot loads none)",
        plugin="core",
    ))
    register(MachineOption(
        "x-emulation-assist", "bool", True,
        "Step over INT3/FWAIT/CLAC/STAC/POPCNT that an emulating host KVM cannot execute, and on such hosts "
        "add 'noxsave clearcpuid=151,308' to the guest command line",
        plugin="core",
    ))


@hookimpl
def kernel_cmdline(machine: "Machine") -> list[str] | None:
    if not machine.option("auto-kernel-cmdline"):
        return None
    return [t.cmdline_word() for t in machine.virtio_transports]


@hookimpl
def mptable_entries(machine: "Machine") -> list[Any] | None:
    return [machine.isa_irq_entry(t.irq) for t in machine.virtio_transports]
