"""virtio-mmio transport and split virtqueues (virtio 1.2, section 4.2).

A device is a :class:`VirtioBackend` (features, config space, ``activate``, ``process_queue``,
``reset``); the machine wraps it in a :class:`VirtioMmioTransport` and maps that on the MMIO
bus. ``docs/virtio-backend.md`` shows how to write a backend.
"""
from __future__ import annotations

from .backend import VirtioBackend
from .mmio import QUEUE_NOTIFY_OFFSET, TRANSPORT_FEATURES, VirtioMmioTransport
from .queue import Descriptor, DescriptorChain, QueueError, Virtqueue, vring_need_event

__all__ = [
    "QUEUE_NOTIFY_OFFSET",
    "TRANSPORT_FEATURES",
    "Descriptor",
    "DescriptorChain",
    "QueueError",
    "VirtioBackend",
    "VirtioMmioTransport",
    "Virtqueue",
    "vring_need_event",
]
