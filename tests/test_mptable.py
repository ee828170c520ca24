"""microvm.boot.mptable against the Intel MultiProcessor Specification 1.4 byte layouts."""
from __future__ import annotations

import struct

import pytest

from microvm.boot.mptable import (
    Bus,
    IoApic,
    IoInterrupt,
    LocalInterrupt,
    MP_EXTINT,
    MP_INT,
    MP_NMI,
    Processor,
    build,
    parse,
)
from microvm.layout import MPTABLE_ADDR

BASE = MPTABLE_ADDR
HDR = 16  # the configuration table follows the 16-byte floating pointer
ENTRIES = HDR + 44


def u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0]


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def table_of(*entries) -> bytes:
    return build(BASE, entries)


# ---- floating pointer structure (spec 4.1) ----------------------------------------------------
def test_floating_pointer_bytes() -> None:
    blob = table_of(Bus(0))
    mpf = blob[:16]
    assert mpf[0:4] == b"_MP_"
    assert u32(mpf, 4) == BASE + 16          # PHYSICAL ADDRESS POINTER
    assert mpf[8] == 1                        # LENGTH in 16-byte paragraphs
    assert mpf[9] == 4                        # SPEC_REV 1.4
    assert sum(mpf) % 256 == 0                # CHECKSUM
    assert mpf[10] == (-sum(mpf[:10])) & 0xFF
    assert mpf[11:16] == bytes(5)             # FEATURE 1 = 0: a configuration table is present


def test_floating_pointer_checksum_depends_on_the_base() -> None:
    a, b = build(0x9FC00, [Bus(0)]), build(0xF0000, [Bus(0)])
    assert u32(b, 4) == 0xF0010
    assert a[10] != b[10]
    assert sum(b[:16]) % 256 == 0


# ---- configuration table header (spec 4.2) --------------------------------------------------
def test_header_bytes() -> None:
    entries = [Processor(0, bsp=True), Bus(0), IoApic(0, 0xFEC00000)]
    blob = build(BASE, entries, lapic_address=0xFEE00000)
    h = blob[HDR:ENTRIES]
    base_len = 44 + 20 + 8 + 8
    assert h[0:4] == b"PCMP"
    assert u16(h, 4) == base_len              # BASE TABLE LENGTH, header included
    assert h[6] == 4                          # SPEC_REV
    assert h[8:16] == b"MICROVM "            # OEM ID, space padded
    assert h[16:28] == b"MICROVM-MPTA"       # PRODUCT ID, 12 bytes
    assert u32(h, 28) == 0                    # OEM TABLE POINTER
    assert u16(h, 32) == 0                    # OEM TABLE SIZE
    assert u16(h, 34) == 3                    # ENTRY COUNT
    assert u32(h, 36) == 0xFEE00000           # ADDRESS OF LOCAL APIC
    assert u16(h, 40) == 0 and h[42] == 0     # no extended table
    assert h[43] == 0                         # reserved
    assert len(blob) == HDR + base_len
    assert sum(blob[HDR : HDR + base_len]) % 256 == 0   # CHECKSUM over the base table


def test_lapic_address_is_passed_through() -> None:
    blob = build(BASE, [Bus(0)], lapic_address=0xFEE10000)
    assert u32(blob, HDR + 36) == 0xFEE10000
    assert sum(blob[HDR:]) % 256 == 0


# ---- entries (spec 4.3) -----------------------------------------------------------------------
def only_entry(e) -> bytes:
    blob = table_of(e)
    assert u16(blob, HDR + 34) == 1
    return blob[ENTRIES:]


def test_processor_entry_bytes() -> None:
    raw = only_entry(Processor(apic_id=3, bsp=False, signature=0x663, features=0x781ABFD))
    assert len(raw) == 20
    assert raw[0] == 0                        # ENTRY TYPE: processor
    assert raw[1] == 3                        # LOCAL APIC ID
    assert raw[2] == 0x14                     # LOCAL APIC VERSION
    assert raw[3] == 0x01                     # CPU FLAGS: EN, not BP
    assert u32(raw, 4) == 0x663               # CPU SIGNATURE
    assert u32(raw, 8) == 0x781ABFD           # FEATURE FLAGS
    assert raw[12:20] == bytes(8)             # reserved


def test_bootstrap_processor_flag() -> None:
    raw = only_entry(Processor(apic_id=0, bsp=True))
    assert raw[3] == 0x03                     # EN | BP
    assert u32(raw, 4) == 0x600 and u32(raw, 8) == 0x201


def test_bus_entry_bytes() -> None:
    raw = only_entry(Bus(bus_id=0, bus_type="ISA"))
    assert raw == bytes([1, 0]) + b"ISA   "


def test_ioapic_entry_bytes() -> None:
    raw = only_entry(IoApic(apic_id=2, address=0xFEC00000))
    assert raw == bytes([2, 2, 0x11, 0x01]) + struct.pack("<I", 0xFEC00000)


def test_io_interrupt_entry_bytes() -> None:
    # level-triggered, active-low (PO=11b, EL=11b -> 0x0f), ISA bus 0, IRQ 9 -> IOAPIC 2 pin 9
    raw = only_entry(IoInterrupt(src_irq=9, dst_ioapic=2, dst_pin=9, irq_type=MP_INT, flags=0x0F, src_bus=0))
    assert raw == bytes([3, MP_INT, 0x0F, 0x00, 0, 9, 2, 9])


def test_io_interrupt_defaults_conform_to_the_bus() -> None:
    raw = only_entry(IoInterrupt(src_irq=4, dst_ioapic=0, dst_pin=4))
    assert raw == bytes([3, 0, 0, 0, 0, 4, 0, 4])


def test_local_interrupt_entry_bytes() -> None:
    raw = only_entry(LocalInterrupt(MP_NMI, dst_lint=1))
    assert raw == bytes([4, MP_NMI, 0, 0, 0, 0, 0xFF, 1])
    raw = only_entry(LocalInterrupt(MP_EXTINT, dst_lint=0, dst_lapic=0, src_bus=0, src_irq=0, flags=0x5))
    assert raw == bytes([4, MP_EXTINT, 0x05, 0x00, 0, 0, 0, 0])


# ---- order, count, dedup, round trip ------------------------------------------------------------
MIXED = [
    LocalInterrupt(MP_NMI, dst_lint=1),
    IoInterrupt(src_irq=4, dst_ioapic=0, dst_pin=4),
    LocalInterrupt(MP_EXTINT, dst_lint=0),
    IoApic(0, 0xFEC00000),
    IoInterrupt(src_irq=0, dst_ioapic=0, dst_pin=2),
    Bus(0),
    Processor(1),
    Processor(0, bsp=True),
]


def entry_types(blob: bytes) -> list[int]:
    count = u16(blob, HDR + 34)
    p, out = ENTRIES, []
    for _ in range(count):
        out.append(blob[p])
        p += 20 if blob[p] == 0 else 8
    assert p == len(blob) == HDR + u16(blob, HDR + 4)
    return out


def test_entries_are_sorted_by_type() -> None:
    blob = build(BASE, MIXED)
    assert entry_types(blob) == [0, 0, 1, 2, 3, 3, 4, 4]
    assert u16(blob, HDR + 34) == 8
    assert u16(blob, HDR + 4) == 44 + 2 * 20 + 6 * 8
    assert sum(blob[HDR:]) % 256 == 0


def test_entries_of_one_type_are_ordered() -> None:
    got = parse(build(BASE, MIXED), BASE)
    assert [e.apic_id for e in got if isinstance(e, Processor)] == [0, 1]
    assert [e.src_irq for e in got if isinstance(e, IoInterrupt)] == [0, 4]
    assert [e.irq_type for e in got if isinstance(e, LocalInterrupt)] == [MP_NMI, MP_EXTINT]


def test_duplicates_are_written_once() -> None:
    serial = IoInterrupt(src_irq=4, dst_ioapic=0, dst_pin=4)
    blob = build(BASE, [Bus(0), serial, Bus(0), serial, IoInterrupt(src_irq=4, dst_ioapic=0, dst_pin=4)])
    assert u16(blob, HDR + 34) == 2
    assert entry_types(blob) == [1, 3]


def test_round_trip() -> None:
    got = parse(build(BASE, MIXED + MIXED[:3]), BASE)
    assert got == [
        Processor(0, bsp=True),
        Processor(1),
        Bus(0),
        IoApic(0, 0xFEC00000),
        IoInterrupt(src_irq=0, dst_ioapic=0, dst_pin=2),
        IoInterrupt(src_irq=4, dst_ioapic=0, dst_pin=4),
        LocalInterrupt(MP_NMI, dst_lint=1),
        LocalInterrupt(MP_EXTINT, dst_lint=0),
    ]


def test_round_trip_keeps_every_field() -> None:
    entries = [
        Processor(7, bsp=False, signature=0x806EA, features=0xBFEBFBFF),
        Bus(1, "PCI"),
        IoApic(5, 0xFEC01000, version=0x20),
        IoInterrupt(src_irq=11, dst_ioapic=5, dst_pin=23, irq_type=MP_INT, flags=0x0F, src_bus=1),
        LocalInterrupt(MP_NMI, dst_lint=1, dst_lapic=7, src_bus=1, src_irq=3, flags=0x05),
    ]
    assert parse(build(0xF0000, entries), 0xF0000) == entries


@pytest.mark.parametrize("offset", [2, 10, HDR + 2, HDR + 50])
def test_parse_rejects_a_corrupt_table(offset: int) -> None:
    blob = bytearray(build(BASE, MIXED))
    blob[offset] ^= 0x01
    with pytest.raises(ValueError, match="bad MP"):
        parse(bytes(blob), BASE)
