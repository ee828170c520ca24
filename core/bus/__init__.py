"""The PIO and MMIO buses: placement of devices and dispatch of guest accesses."""
from __future__ import annotations

from typing import Any

from .bus import Bus, Mapping

__all__ = ["Bus", "BusDevice", "Mapping"]


def __getattr__(name: str) -> Any:
    if name == "BusDevice":
        from .protocol import BusDevice

        return BusDevice
    raise AttributeError(name)
