"""File contents: etc/e820, bootorder, bios-geometry, the boot wait times."""
from __future__ import annotations

import struct

import pytest

from microvm_fw_cfg.items import (
    E820_RAM,
    E820_RESERVED,
    E820Entry,
    bios_geometry,
    boot_fail_wait,
    boot_menu_wait,
    bootorder,
    e820_table,
    microvm_e820,
    parse_e820,
    rom_devpath,
    sort_boot_devices,
)

GiB = 1 << 30


def test_e820_entry_layout():
    """struct e820_entry is packed: u64 address, u64 length, u32 type, little-endian, 20 bytes."""
    raw = e820_table([(0x1122334455667788, 0x99, 7)])
    assert raw == struct.pack("<QQI", 0x1122334455667788, 0x99, 7)
    assert len(raw) == 20


def test_microvm_e820_small():
    """kvm_arch_init's reservation comes first, then RAM from 0 as one entry (no EBDA hole)."""
    entries = microvm_e820([(0, 256 << 20)])
    assert entries == [
        E820Entry(0xFEFFC000, 0x4000, E820_RESERVED),
        E820Entry(0, 256 << 20, E820_RAM),
    ]
    assert parse_e820(e820_table(entries)) == entries


def test_microvm_e820_above_4g():
    entries = microvm_e820([(0, 3 * GiB), (4 * GiB, 2 * GiB)])
    assert entries[1:] == [E820Entry(0, 3 * GiB, E820_RAM), E820Entry(4 * GiB, 2 * GiB, E820_RAM)]


def test_microvm_e820_without_kvm():
    assert microvm_e820([(0, 1 << 20)], kvm=False) == [E820Entry(0, 1 << 20, E820_RAM)]


def test_parse_e820_rejects_partial_entries():
    with pytest.raises(ValueError):
        parse_e820(bytes(21))


def test_boot_waits():
    assert boot_fail_wait() == b"\xff\xff\xff\xff"
    assert boot_fail_wait(5000) == (5000).to_bytes(4, "little")
    assert boot_menu_wait(300) == (300).to_bytes(2, "little")


def test_bootorder_format():
    """Lines joined by newlines, one NUL at the end; nothing at all when empty."""
    assert bootorder([]) == b""
    assert bootorder(["/rom@genroms/linuxboot_dma.bin"]) == b"/rom@genroms/linuxboot_dma.bin\0"
    assert bootorder(["/a", "/b"]) == b"/a\n/b\0"
    assert bootorder(["/a", "/b"], strict=True) == b"/a\n/b\nHALT\0"
    assert bootorder([], strict=True) == b""


def test_sort_boot_devices():
    assert sort_boot_devices([(2, "/b"), (0, "/rom"), (-1, "/none"), (1, "/a")]) == ["/rom", "/a", "/b"]
    with pytest.raises(ValueError):
        sort_boot_devices([(0, "/a"), (0, "/b")])


def test_rom_devpath():
    assert rom_devpath("linuxboot_dma.bin") == "/rom@genroms/linuxboot_dma.bin"


def test_bios_geometry():
    assert bios_geometry([]) == b""
    assert bios_geometry([("/disk@0", 1024, 16, 63), ("/disk@1", 1, 2, 3)]) == b"/disk@0 1024 16 63\n/disk@1 1 2 3\0"
