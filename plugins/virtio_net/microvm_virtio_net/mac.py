"""MAC addresses: parsing, formatting, and QEMU's default assignment.

QEMU gives a NIC without ``mac=`` the address 52:54:00:12:34:XX with XX the lowest value
from 0x56 up that no other NIC of the machine uses (``qemu_macaddr_default_if_unset`` in
``net/net.c``): the first NIC gets ...:56, the second ...:57, and an explicit
``mac=52:54:00:12:34:57`` on another NIC makes the next default skip 57. Guests and their
configuration (DHCP reservations, udev rules) rely on these addresses, so microvm assigns
them the same way, also to a NIC given ``mac=00:00:00:00:00:00`` (all zeros is "unset" in
QEMU). The table is per machine (:class:`MacAllocator`), not global as in QEMU,
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


_HEX = frozenset("0123456789abcdefABCDEF")


def parse_mac(text: str) -> bytes:
    """``"52:54:00:12:34:56"`` -> 6 bytes, as QEMU's ``mac`` property reads it: exactly six
    octets of two hex digits each, separated by ``:`` or ``-`` (QEMU takes either, also
    mixed), nothing else (no single digits, signs or blanks).

    Raises ConfigError for anything else and for a multicast address (odd first octet),
    which a NIC cannot have: QEMU's ``-net nic`` refuses one ("NIC cannot have multicast
    MAC address"), its ``-device`` does not check and the guest's NIC then takes traffic
    it should not; microvm refuses it for every NIC. All zeros is returned as it is: the
    glue takes it, as QEMU does, for "no address given" (a default is assigned)."""
    bad = ConfigError(f"mac={text}: not a MAC address (want six hex octets like 52:54:00:12:34:56)")
    if len(text) != 17 or any(text[i] not in ":-" for i in range(2, 17, 3)):
        raise bad
    octets = [text[i : i + 2] for i in range(0, 17, 3)]
    if not all(o[0] in _HEX and o[1] in _HEX for o in octets):
        raise bad
    mac = bytes(int(o, 16) for o in octets)
    if mac[0] & 1:
        raise ConfigError(f"mac={text}: a multicast address (odd first octet) can't be a NIC's address")
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
