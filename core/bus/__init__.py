"""The PIO and MMIO buses: placement of devices and dispatch of guest accesses."""
from .bus import Bus, BusDevice, Mapping

__all__ = ["Bus", "BusDevice", "Mapping"]
