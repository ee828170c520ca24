"""Builders for fw_cfg file contents: ``etc/e820``, ``bootorder``, ``bios-geometry``, the boot
wait times. Pure functions of their arguments, byte-for-byte as QEMU 7.2 lays them out.

microvm has no SMBIOS (``etc/smbios/*`` is built only by ``pc_machine_done``) and, in this
VMM, no ACPI (``etc/acpi/*``, ``etc/table-loader``), so there are no builders for those.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterable, Sequence

# e820 types (hw/i386/e820_memory_layout.h)
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5

#: KVM's EPT identity map and TSS (4 pages): kvm_arch_init sets them at 0xfeffc000 and
#: reserves them with e820_add_entry *before* the machine adds RAM, so it comes first.
KVM_IDENTITY_MAP_BASE = 0xFEFFC000
KVM_IDENTITY_MAP_SIZE = 0x4000

ABOVE_4G_START = 1 << 32

_E820_ENTRY = struct.Struct("<QQI")   # struct e820_entry, packed: 20 bytes


class E820Entry(tuple):
    """``struct e820_entry``: ``(address, length, type)``, a tuple whose items also have
    these names (written out: a ``typing.NamedTuple`` costs about 0.1 ms to create at
    import, and every machine builds its e820 table)."""

    __slots__ = ()
    _fields = ("address", "length", "type")

    def __new__(cls, address: int, length: int, type: int) -> "E820Entry":
        return tuple.__new__(cls, (address, length, type))

    @property
    def address(self) -> int:
        return self[0]

    @property
    def length(self) -> int:
        return self[1]

    @property
    def type(self) -> int:
        return self[2]

    def __repr__(self) -> str:
        return f"E820Entry(address={self[0]:#x}, length={self[1]:#x}, type={self[2]})"


def microvm_e820(ram_regions: Iterable[tuple[int, int]], *, kvm: bool = True) -> list[E820Entry]:
    """The e820 table QEMU's microvm publishes under KVM, in QEMU's order.

    ``ram_regions`` are the RAM ranges ``(gpa, size)``: microvm_memory_init adds RAM below
    4 GiB as one entry from 0 (no EBDA or VGA hole: the firmware carves those itself) and
    RAM above 4 GiB as a second. ``kvm`` adds kvm_arch_init's reservation first.
    """
    entries: list[E820Entry] = []
    if kvm:
        entries.append(E820Entry(KVM_IDENTITY_MAP_BASE, KVM_IDENTITY_MAP_SIZE, E820_RESERVED))
    for gpa, size in ram_regions:
        if size > 0:
            entries.append(E820Entry(gpa, size, E820_RAM))
    return entries


def e820_table(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """``etc/e820``: packed little-endian ``{u64 address, u64 length, u32 type}`` entries."""
    return b"".join(_E820_ENTRY.pack(a, n, t) for a, n, t in entries)


def parse_e820(data: bytes) -> list[E820Entry]:
    """What a firmware makes of ``etc/e820`` (for tests and logs)."""
    if len(data) % _E820_ENTRY.size:
        raise ValueError(f"etc/e820 is {len(data)} bytes, not a multiple of {_E820_ENTRY.size}")
    return [E820Entry(*_E820_ENTRY.unpack_from(data, i)) for i in range(0, len(data), _E820_ENTRY.size)]


def boot_fail_wait(reboot_timeout: int = -1) -> bytes:
    """``etc/boot-fail-wait``: le32 ms before rebooting when no boot device works; -1 = never."""
    return (reboot_timeout & 0xFFFFFFFF).to_bytes(4, "little")


def boot_menu_wait(splash_time: int) -> bytes:
    """``etc/boot-menu-wait``: le16 ms the boot menu waits (``-boot splash-time``)."""
    return (splash_time & 0xFFFF).to_bytes(2, "little")


def _string_list(lines: Sequence[str]) -> bytes:
    """get_boot_devices_list's shape: lines joined by ``\\n``, one NUL at the end; nothing
    at all (0 bytes) for an empty list."""
    if not lines:
        return b""
    return "\n".join(lines).encode() + b"\0"


def bootorder(paths: Sequence[str], *, strict: bool = False) -> bytes:
    """``bootorder``: firmware device paths, best first. ``strict`` (``-boot strict=on``)
    appends ``HALT`` so the firmware tries nothing else."""
    data = _string_list(paths)
    if strict and data:
        data = data[:-1] + b"\nHALT\0"
    return data


def sort_boot_devices(devices: Iterable[tuple[int, str]]) -> list[str]:
    """add_boot_device_path's order: by bootindex; a negative one is left out; two devices
    with the same bootindex are an error (QEMU: "Two devices with same boot index")."""
    ordered: list[tuple[int, str]] = []
    for index, path in devices:
        if index < 0:
            continue
        if any(i == index for i, _ in ordered):
            raise ValueError(f"two boot devices with the same bootindex {index}")
        ordered.append((index, path))
    return [path for _, path in sorted(ordered, key=lambda e: e[0])]


def rom_devpath(name: str, fw_dir: str = "genroms") -> str:
    """The boot path rom_add_file gives an option ROM: ``/rom@genroms/NAME``."""
    return f"/rom@{fw_dir}/{name}"


def bios_geometry(entries: Sequence[tuple[str, int, int, int]]) -> bytes:
    """``bios-geometry``: ``"PATH LCYLS LHEADS LSECS"`` lines (get_boot_devices_lchs_list);
    0 bytes when no disk has a logical geometry, which is microvm's case."""
    return _string_list([f"{path} {c} {h} {s}" for path, c, h, s in entries])
