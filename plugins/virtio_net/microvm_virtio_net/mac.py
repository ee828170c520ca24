"""MAC addresses: parsing, formatting, and QEMU's default assignment.

QEMU gives a NIC without ``mac=`` the address 52:54:00:12:34:XX with XX the lowest value
from 0x56 up that no other NIC of the machine uses (``qemu_macaddr_default_if_unset`` in
``net/net.c``): the first NIC gets ...:56, the second ...:57, and an explicit
``mac=52:54:00:12:34:57`` on another NIC makes the next default skip 57. Guests and their
configuration (DHCP reservations, udev rules) rely on these addresses, so microvm assigns
them the same way. The table is per machine (:class:`MacAllocator`), not global as in QEMU,
so that two machines in one process (tests) don't influence each other.
"""
from __future__ import annotations

from microvm.api import ConfigError

#: 52:54:00 is the QEMU/KVM OUI; QEMU's default NICs use 52:54:00:12:34:xx.
DEFAULT_MAC_PREFIX = bytes((0x52, 0x54, 0x00, 0x12, 0x34))
FIRST_DEFAULT_SUFFIX = 0x56
#: QEMU's table runs to 0xFE.
LAST_DEFAULT_SUFFIX = 0xFE
#: The address of the first default NIC.
DEFAULT_MAC = DEFAULT_MAC_PREFIX + bytes((FIRST_DEFAULT_SUFFIX,))


def parse_mac(text: str) -> bytes:
    """``"52:54:00:12:34:56"`` (``:`` or ``-`` separators, as QEMU accepts) -> 6 bytes.

    Raises ConfigError for anything else, and for a multicast or all-zero address, which a
    NIC cannot have (Linux would replace it with a random one)."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ConfigError(f"mac={text}: not a MAC address (want six hex bytes like 52:54:00:12:34:56)")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(f"mac={text}: not a MAC address (want six hex bytes like 52:54:00:12:34:56)") from None
    if mac[0] & 1:
        raise ConfigError(f"mac={text}: a multicast address can't be a NIC's address")
    if mac == bytes(6):
        raise ConfigError(f"mac={text}: the all-zero address can't be a NIC's address")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def default_mac(index: int) -> bytes:
    """The address QEMU gives the ``index``-th default NIC when no address is taken
    explicitly (0 -> 52:54:00:12:34:56)."""
    suffix = FIRST_DEFAULT_SUFFIX + index
    if not 0 <= index or suffix > LAST_DEFAULT_SUFFIX:
        raise ValueError(f"default MAC index {index} out of range")
    return DEFAULT_MAC_PREFIX + bytes((suffix,))


class MacAllocator:
    """One machine's table of default MAC suffixes, as QEMU's ``mac_table``.

    Call :meth:`use` for every NIC with an explicit address (in command-line order, as QEMU
    realizes devices) and :meth:`allocate` for each one without.
    """

    def __init__(self) -> None:
        self._used: dict[int, int] = {}

    def use(self, mac: bytes) -> None:
        """Note an explicitly given address: one in 52:54:00:12:34:56-fe takes its suffix."""
        if mac[:5] == DEFAULT_MAC_PREFIX and FIRST_DEFAULT_SUFFIX <= mac[5] <= LAST_DEFAULT_SUFFIX:
            self._used[mac[5]] = self._used.get(mac[5], 0) + 1

    def release(self, mac: bytes) -> None:
        """A NIC went away (hot-unplug): its default suffix is free again."""
        n = self._used.get(mac[5], 0) if mac[:5] == DEFAULT_MAC_PREFIX else 0
        if n > 1:
            self._used[mac[5]] = n - 1
        elif n == 1:
            del self._used[mac[5]]

    def allocate(self) -> bytes:
        """The lowest free default address; it is marked used."""
        for suffix in range(FIRST_DEFAULT_SUFFIX, LAST_DEFAULT_SUFFIX + 1):
            if suffix not in self._used:
                mac = DEFAULT_MAC_PREFIX + bytes((suffix,))
                self.use(mac)
                return mac
        raise ConfigError(
            f"no free default MAC address left (52:54:00:12:34:{FIRST_DEFAULT_SUFFIX:02x}-{LAST_DEFAULT_SUFFIX:02x} "
            "all taken); give the NIC a mac="
        )
