"""Everything a plugin may use from the core, in one place.

A device package imports from here only (a test walks every plugin's imports to keep it
so)::

    from microvm.api import hookimpl, MachineContext, Property, ConfigError, VirtioBackend

What a plugin gets at run time is ``ctx``, the :class:`MachineContext` every machine-time
hook receives (``docs/plugins.md`` lists it member by member). Anything not exported here
may change without notice.

Names resolve on first use (module ``__getattr__``), so importing this module costs nothing
at start-up; a plugin module that imports ``hookimpl`` and ``Property`` loads no device,
KVM or virtio code.
"""
from __future__ import annotations

from typing import Any

_EXPORTS: dict[str, tuple[str, str]] = {
    # hooks and declarations
    "hookimpl": ("microvm", "hookimpl"),
    "MachineOption": ("microvm.config", "MachineOption"),
    "Property": ("microvm.config", "Property"),
    "Properties": ("microvm.config", "Properties"),
    "parse_bool": ("microvm.config", "parse_bool"),
    # what hooks receive
    "MachineContext": ("microvm.context", "MachineContext"),
    "LegacyDevices": ("microvm.config", "LegacyDevices"),
    "DriveConfig": ("microvm.config", "DriveConfig"),
    "BootConfig": ("microvm.config", "BootConfig"),
    "VirtioTransportConfig": ("microvm.config", "VirtioTransportConfig"),
    "Vcpu": ("microvm.context", "VcpuView"),
    "KvmVm": ("microvm.context", "KvmVm"),
    "VirtioDeviceInfo": ("microvm.context", "VirtioDeviceInfo"),
    "Timers": ("microvm.context", "Timers"),
    # errors a plugin raises or handles
    "MicrovmError": ("microvm.errors", "MicrovmError"),
    "ConfigError": ("microvm.errors", "ConfigError"),
    "GuestMemoryError": ("microvm.errors", "GuestMemoryError"),
    "PluginError": ("microvm.errors", "PluginError"),
    # the machine's parts
    "GuestMemory": ("microvm.memory", "GuestMemory"),
    "BusDevice": ("microvm.bus.protocol", "BusDevice"),
    "IrqLine": ("microvm.irq", "IrqLine"),
    "IrqChip": ("microvm.irq", "IrqChip"),
    "ExtIntSource": ("microvm.irq", "ExtIntSource"),
    "Pic": ("microvm.irq", "Pic"),
    "RecordingIrqLine": ("microvm.irq", "RecordingIrqLine"),
    "Chardev": ("microvm.chardev", "Chardev"),
    "CharBackend": ("microvm.chardev", "CharBackend"),
    "ChardevInfo": ("microvm.chardev", "ChardevInfo"),
    "TimerService": ("microvm.timers", "TimerService"),
    "Counter": ("microvm.metrics", "Counter"),
    "CounterGroup": ("microvm.metrics", "CounterGroup"),
    "layout": ("microvm", "layout"),
    "get_logger": ("microvm.log", "get_logger"),
    "BootError": ("microvm.errors", "BootError"),
    # firmware files by name, as -bios finds them (option ROMs for fw_cfg)
    "load_firmware_file": ("microvm.boot.firmware", "load_firmware_file"),
    "FIRMWARE_DIRS": ("microvm.boot.firmware", "FIRMWARE_DIRS"),
    "EventLog": ("microvm.log", "EventLog"),
    # virtio devices
    "VirtioBackend": ("microvm.virtio.backend", "VirtioBackend"),
    "Virtqueue": ("microvm.virtio.queue", "Virtqueue"),
    "DescriptorChain": ("microvm.virtio.queue", "DescriptorChain"),
    "QueueError": ("microvm.virtio.queue", "QueueError"),
    "Descriptor": ("microvm.virtio.queue", "Descriptor"),
    # MP table entries (the mptable_entries hook, IrqChip.mptable_entries)
    "Processor": ("microvm.boot.mptable", "Processor"),
    "Bus": ("microvm.boot.mptable", "Bus"),
    "IoApic": ("microvm.boot.mptable", "IoApic"),
    "IoInterrupt": ("microvm.boot.mptable", "IoInterrupt"),
    "LocalInterrupt": ("microvm.boot.mptable", "LocalInterrupt"),
    "MP_INT": ("microvm.boot.mptable", "MP_INT"),
    "MP_NMI": ("microvm.boot.mptable", "MP_NMI"),
    "MP_EXTINT": ("microvm.boot.mptable", "MP_EXTINT"),
    "ALL_LAPICS": ("microvm.boot.mptable", "ALL_LAPICS"),
    # CPUID (the cpuid hook): KVM's paravirtual leaf and kvmclock's bits in it
    "KVM_CPUID_FEATURES": ("microvm.boot.cpu", "KVM_CPUID_FEATURES"),
    "KVM_CLOCK_FEATURES": ("microvm.boot.cpu", "KVM_CLOCK_FEATURES"),
}

#: every name of these modules with one of these prefixes is exported too: virtio 1.2's
#: feature bits, device IDs and ring flags, and KVM's exit reasons and capabilities
#: (``KVM_EXIT_IOAPIC_EOI``, for ``ctx.add_exit_handler`` and ``handle_exit``)
_PREFIXED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("microvm.virtio.constants", ("VIRTIO_", "VIRTQ_")),
    ("microvm.kvm._loader", ("KVM_EXIT_", "KVM_CAP_")),
)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    import importlib

    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        for module, prefixes in _PREFIXED:
            if name.startswith(prefixes):
                mod = importlib.import_module(module)
                value = getattr(getattr(mod, "lib", mod), name, None)
                if value is not None:
                    globals()[name] = value
                    return value
        raise AttributeError(f"microvm.api has no {name!r}") from None
    mod = importlib.import_module(module)
    value = getattr(mod, attr) if module != "microvm" or attr == "hookimpl" else importlib.import_module(f"microvm.{attr}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every exported name, the prefixed constants included (this imports their modules)."""
    import importlib

    names = set(__all__)
    for module, prefixes in _PREFIXED:
        mod = importlib.import_module(module)
        names.update(n for n in dir(getattr(mod, "lib", mod)) if n.startswith(prefixes))
    return sorted(names)
