"""Which plugin distribution provides a device type, backend, irqchip or machine option that
is not installed, so an error can say what to install instead of only "unknown".

An operator may install only the devices they need (``pip install microvm-core
microvm-virtio-blk``); a QEMU command line naming ``virtio-net-device`` then fails, and the
message names ``microvm-virtio-net``. Only the project's own plugins are listed: a third
party's plugin announces itself once installed.
"""
from __future__ import annotations

#: (kind, name) → distribution; kinds: device, chardev, netdev, irqchip, machine (an -M key)
KNOWN: dict[tuple[str, str], str] = {
    ("device", "virtio-blk-device"): "microvm-virtio-blk",
    ("device", "virtio-net-device"): "microvm-virtio-net",
    ("device", "virtio-rng-device"): "microvm-virtio-rng",
    ("device", "isa-debug-exit"): "microvm-debug-exit",
    ("device", "virtio-serial-device"): "microvm-virtio-console",
    ("device", "virtconsole"): "microvm-virtio-console",
    ("device", "virtserialport"): "microvm-virtio-console",
    ("netdev", "tap"): "microvm-virtio-net",
    ("irqchip", "split"): "microvm-ioapic",
    ("irqchip", "on"): "microvm-irqchip-kvm",
    ("machine", "isa-serial"): "microvm-serial-16550",
    ("machine", "pic"): "microvm-pic-i8259",
    ("machine", "pit"): "microvm-pit-i8254",
    ("machine", "rtc"): "microvm-rtc-mc146818",
    ("machine", "rtc-base"): "microvm-rtc-mc146818",
}


def provider(kind: str, name: str) -> str | None:
    return KNOWN.get((kind, name))


def hint(kind: str, name: str) -> str:
    """`` (provided by the microvm-X plugin, not installed: pip install microvm-X)`` or ''."""
    dist = KNOWN.get((kind, name))
    return f" (provided by the {dist} plugin, not installed: pip install {dist})" if dist else ""


def missing(kind: str, installed: set[str]) -> list[tuple[str, str]]:
    """(name, distribution) of the known ``kind`` entries not in ``installed``."""
    return sorted((n, d) for (k, n), d in KNOWN.items() if k == kind and n not in installed)
