"""Everything a plugin needs from the core, in one place.

A third-party device package imports from here only::

    from microvm.api import hookimpl, MachineOption, ConfigError, VirtioBackend

Names resolve on first use (module ``__getattr__``), so importing this module costs nothing
at start-up. What a plugin gets at run time is the ``machine`` argument of the hooks; its
public methods are listed in ``docs/plugins.md``.
"""
from __future__ import annotations

from typing import Any

_EXPORTS: dict[str, tuple[str, str]] = {
    # hooks and options
    "hookimpl": ("microvm", "hookimpl"),
    "MachineOption": ("microvm.options", "MachineOption"),
    # errors a plugin raises or handles
    "MicrovmError": ("microvm.errors", "MicrovmError"),
    "ConfigError": ("microvm.errors", "ConfigError"),
    "GuestMemoryError": ("microvm.errors", "GuestMemoryError"),
    "PluginError": ("microvm.errors", "PluginError"),
    # the machine's parts
    "GuestMemory": ("microvm.memory", "GuestMemory"),
    "BusDevice": ("microvm.bus", "BusDevice"),
    "IrqLine": ("microvm.irq", "IrqLine"),
    "RecordingIrqLine": ("microvm.irq", "RecordingIrqLine"),
    "Chardev": ("microvm.chardev", "Chardev"),
    "TimerService": ("microvm.timers", "TimerService"),
    "layout": ("microvm", "layout"),
    "get_logger": ("microvm.log", "get_logger"),
    # virtio devices
    "VirtioBackend": ("microvm.virtio.backend", "VirtioBackend"),
    "Virtqueue": ("microvm.virtio.queue", "Virtqueue"),
    "DescriptorChain": ("microvm.virtio.queue", "DescriptorChain"),
    "QueueError": ("microvm.virtio.queue", "QueueError"),
    "Descriptor": ("microvm.virtio.queue", "Descriptor"),
    # MP table entries (the mptable_entries hook)
    "Processor": ("microvm.boot.mptable", "Processor"),
    "Bus": ("microvm.boot.mptable", "Bus"),
    "IoApic": ("microvm.boot.mptable", "IoApic"),
    "IoInterrupt": ("microvm.boot.mptable", "IoInterrupt"),
    "LocalInterrupt": ("microvm.boot.mptable", "LocalInterrupt"),
}

__all__ = sorted(_EXPORTS)


#: every name of these modules with one of these prefixes is exported too (virtio 1.2's
#: feature bits, device IDs and ring flags)
_PREFIXED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("microvm.virtio.constants", ("VIRTIO_", "VIRTQ_")),
)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        for module, prefixes in _PREFIXED:
            if name.startswith(prefixes):
                import importlib

                value = getattr(importlib.import_module(module), name, None)
                if value is not None:
                    globals()[name] = value
                    return value
        raise AttributeError(f"microvm.api has no {name!r}") from None
    import importlib

    mod = importlib.import_module(module)
    value = getattr(mod, attr) if module != "microvm" or attr == "hookimpl" else importlib.import_module(f"microvm.{attr}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
