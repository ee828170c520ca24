"""virtio-net-device for microvm (virtio 1.2 §5.1) on a Linux tap interface.

:mod:`.device` is the virtio backend, :mod:`.datapath` moves frames between the virtqueues
and the tap, :mod:`.tap` opens the tap (``/dev/net/tun``), :mod:`.mac` parses and assigns
MAC addresses the way QEMU does, :mod:`.constants` holds the virtio-net numbers. No pluggy
here yet: the hook glue comes with the redesigned plugin contract.
"""
from __future__ import annotations

__version__ = "0.1.0"
