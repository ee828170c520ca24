"""virtio-net-device for microvm (virtio 1.2 §5.1) on a Linux tap interface.

:mod:`.device` is the virtio backend, :mod:`.datapath` moves frames between the virtqueues
and the tap, :mod:`.tap` opens the tap (``/dev/net/tun``), :mod:`.mac` parses and assigns
MAC addresses the way QEMU does, :mod:`.constants` holds the virtio-net numbers and
:mod:`.plugin` is the hook glue (``--netdev tap``, ``--device virtio-net-device``).

Names are imported lazily so that loading the package costs nothing until a NIC is set up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .device import VirtioNet
    from .mac import MacAllocator
    from .tap import Tap, open_tap

__all__ = ["MacAllocator", "Tap", "VirtioNet", "open_tap"]
__version__ = "0.3.0"

_WHERE = {"VirtioNet": "device", "Tap": "tap", "open_tap": "tap", "MacAllocator": "mac"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
