"""virtio-blk-device for microvm (virtio 1.2 §5.2) on a raw image file.

:mod:`.device` is the backend (no pluggy); :mod:`.plugin` is the hook glue. The backend is
imported lazily so that loading the plugin costs nothing until a disk is configured.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .device import VirtioBlk

__all__ = ["VirtioBlk"]
__version__ = "0.3.0"


def __getattr__(name: str):
    if name == "VirtioBlk":
        from .device import VirtioBlk

        return VirtioBlk
    raise AttributeError(name)
