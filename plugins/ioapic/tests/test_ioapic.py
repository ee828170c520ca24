"""The 82093AA I/O APIC against its datasheet and the SDM's MSI format, without KVM."""
from __future__ import annotations

import struct
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from microvm_ioapic.device import (
    IOAPICARB,
    IOAPICID,
    IOAPICVER,
    IOEOI,
    IOREGSEL,
    IOWIN,
    NUM_PINS,
    RTE_DELIVS,
    RTE_MASK,
    RTE_REMOTE_IRR,
    RTE_TRIGGER,
    IoApic,
    RedirectionEntry,
)

LEVEL = RTE_TRIGGER
MASKED = RTE_MASK


class Apic:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.changed: list[int] = []
        self.dev = IoApic(deliver=lambda a, d: self.sent.append((a, d)), on_redirection_change=self.changed.append)

    def w32(self, offset: int, value: int) -> None:
        self.dev.write(offset, struct.pack("<I", value))

    def r32(self, offset: int) -> int:
        buf = bytearray(4)
        self.dev.read(offset, memoryview(buf))
        return struct.unpack("<I", buf)[0]

    def reg_write(self, index: int, value: int) -> None:
        """Linux's io_apic_write(): index, then data."""
        self.w32(IOREGSEL, index)
        self.w32(IOWIN, value)

    def reg_read(self, index: int) -> int:
        self.w32(IOREGSEL, index)
        return self.r32(IOWIN)

    def set_entry(self, pin: int, low: int, dest: int = 0) -> None:
        """Linux's __ioapic_write_entry(): high dword first, then low."""
        self.reg_write(0x11 + 2 * pin, dest << 24)
        self.reg_write(0x10 + 2 * pin, low)

    def entry(self, pin: int) -> int:
        return self.reg_read(0x11 + 2 * pin) << 32 | self.reg_read(0x10 + 2 * pin)


# ---- registers -------------------------------------------------------------------------------
def test_reset_values() -> None:
    a = Apic()
    assert a.reg_read(IOAPICID) == 0
    assert a.reg_read(IOAPICVER) == 0x00170020   # 24 entries (max index 23), version 0x20
    assert a.reg_read(IOAPICARB) == 0
    for pin in range(NUM_PINS):
        assert a.entry(pin) == RTE_MASK


def test_id_and_arbitration_registers() -> None:
    a = Apic()
    a.reg_write(IOAPICID, 0xFFFFFFFF)
    assert a.reg_read(IOAPICID) == 0x0F000000      # only bits 27-24 are the ID
    assert a.reg_read(IOAPICARB) == 0x0F000000     # loaded from the ID
    a.reg_write(IOAPICARB, 0)                      # read-only
    a.reg_write(IOAPICVER, 0)                      # read-only
    assert a.reg_read(IOAPICARB) == 0x0F000000
    assert a.reg_read(IOAPICVER) == 0x00170020
    assert a.dev.ioapic_id == 0xF
    assert IoApic(deliver=lambda a, d: None, ioapic_id=2).ioapic_id == 2


def test_ioregsel_reads_back_low_byte() -> None:
    a = Apic()
    a.w32(IOREGSEL, 0x12345678)
    assert a.r32(IOREGSEL) == 0x78


def test_reserved_registers_and_offsets() -> None:
    a = Apic()
    for index in (0x03, 0x0F, 0x40, 0xFF):
        a.reg_write(index, 0xFFFFFFFF)
        assert a.reg_read(index) == 0
    assert a.r32(IOEOI) == 0                       # write-only
    assert a.r32(0x20) == 0 and a.r32(0xFFC) == 0
    a.w32(0x20, 0xFFFFFFFF)
    assert a.sent == [] and a.changed == []


def test_redirection_entry_read_write_and_read_only_bits() -> None:
    a = Apic()
    a.set_entry(3, 0x0001FFFF, dest=0xAB)          # tries to set delivery status and remote IRR
    e = a.entry(3)
    assert e & RTE_DELIVS == 0 and e & RTE_REMOTE_IRR == 0
    assert e & 0xFFFFFFFF == 0x0001FFFF & ~(RTE_DELIVS | RTE_REMOTE_IRR)
    assert e >> 56 == 0xAB
    assert 3 in a.changed


def test_byte_and_wide_accesses() -> None:
    a = Apic()
    a.dev.write(IOREGSEL, bytes([0x10]))           # byte write of IOREGSEL
    a.dev.write(IOWIN, bytes([0x31]))              # byte write: vector only, rest kept
    assert a.entry(0) == RTE_MASK | 0x31
    a.w32(IOREGSEL, 0x10)
    buf = bytearray(1)
    a.dev.read(IOWIN + 2, memoryview(buf))         # byte 2 of the low dword: the mask bit
    assert buf[0] == 0x01
    a.dev.write(IOREGSEL, struct.pack("<Q", 0x12))  # 64-bit write: dword 0x04 is reserved
    assert a.r32(IOREGSEL) == 0x12
    buf8 = bytearray(8)
    a.dev.read(IOREGSEL, memoryview(buf8))
    assert buf8 == b"\x12\x00\x00\x00\x00\x00\x00\x00"


# ---- edge-triggered pins ---------------------------------------------------------------------
def test_edge_triggered_delivers_on_rising_edge_only() -> None:
    a = Apic()
    a.set_entry(4, 0x34, dest=0)                    # fixed, physical, edge, high, unmasked
    a.dev.set_irq(4, True)
    assert a.sent == [(0xFEE00000, 0x34)]
    a.dev.set_irq(4, True)                          # still high: no edge
    assert len(a.sent) == 1
    a.dev.set_irq(4, False)
    a.dev.set_irq(4, True)
    assert len(a.sent) == 2
    a.dev.pulse(4)                                  # already high: raising again is no edge
    a.dev.pulse(4)
    assert len(a.sent) == 3
    assert a.entry(4) & RTE_REMOTE_IRR == 0


def test_masked_edge_is_ignored_not_held() -> None:
    a = Apic()
    a.set_entry(1, MASKED | 0x31)
    a.dev.pulse(1)
    assert a.sent == []
    a.set_entry(1, 0x31)
    assert a.sent == []                             # not held pending
    a.dev.pulse(1)
    assert a.sent == [(0xFEE00000, 0x31)]


# ---- level-triggered pins --------------------------------------------------------------------
def test_level_triggered_remote_irr_and_redelivery_after_eoi() -> None:
    a = Apic()
    a.set_entry(9, LEVEL | 0x49, dest=1)
    a.dev.set_irq(9, True)
    msg = (0xFEE01000, 0x49 | 0x8000 | 0x4000)
    assert a.sent == [msg]
    assert a.entry(9) & RTE_REMOTE_IRR
    a.dev.set_irq(9, True)                          # asserted again: Remote IRR blocks
    assert len(a.sent) == 1
    a.dev.eoi(0x49)                                 # still asserted: delivered again
    assert a.sent == [msg, msg]
    assert a.entry(9) & RTE_REMOTE_IRR
    a.dev.set_irq(9, False)
    a.dev.eoi(0x49)
    assert len(a.sent) == 2
    assert a.entry(9) & RTE_REMOTE_IRR == 0
    a.dev.set_irq(9, True)
    assert len(a.sent) == 3


def test_eoi_register_at_0x40() -> None:
    a = Apic()
    a.set_entry(10, LEVEL | 0x50)
    a.dev.set_irq(10, True)
    a.dev.set_irq(10, False)
    a.w32(IOEOI, 0x51)                              # another vector: nothing
    assert a.entry(10) & RTE_REMOTE_IRR
    a.w32(IOEOI, 0x50)
    assert a.entry(10) & RTE_REMOTE_IRR == 0
    a.dev.write(IOEOI, bytes([0x50]))               # byte write works too
    assert len(a.sent) == 1


def test_eoi_clears_every_level_entry_with_the_vector() -> None:
    a = Apic()
    a.set_entry(5, LEVEL | 0x60)
    a.set_entry(6, LEVEL | 0x60)
    a.dev.set_irq(5, True)
    a.dev.set_irq(6, True)
    assert len(a.sent) == 2
    a.dev.set_irq(5, False)
    a.dev.eoi(0x60)
    assert a.entry(5) & RTE_REMOTE_IRR == 0
    assert a.entry(6) & RTE_REMOTE_IRR           # re-delivered: pin 6 still asserted
    assert len(a.sent) == 3


def test_masked_level_pin_delivers_on_unmask() -> None:
    a = Apic()
    a.set_entry(11, LEVEL | MASKED | 0x70)
    a.dev.set_irq(11, True)
    assert a.sent == [] and a.entry(11) & RTE_REMOTE_IRR == 0
    a.set_entry(11, LEVEL | 0x70)
    assert len(a.sent) == 1 and a.entry(11) & RTE_REMOTE_IRR


def test_level_pin_deasserted_before_unmask_is_not_delivered() -> None:
    a = Apic()
    a.set_entry(11, LEVEL | MASKED | 0x70)
    a.dev.set_irq(11, True)
    a.dev.set_irq(11, False)
    a.set_entry(11, LEVEL | 0x70)
    assert a.sent == []


def test_switching_to_edge_clears_remote_irr() -> None:
    """Linux's __eoi_ioapic_pin() for IOAPICs without an EOI register."""
    a = Apic()
    a.set_entry(7, LEVEL | 0x41)
    a.dev.set_irq(7, True)
    a.dev.set_irq(7, False)
    assert a.entry(7) & RTE_REMOTE_IRR
    a.set_entry(7, MASKED | 0x41)                   # edge, masked
    assert a.entry(7) & RTE_REMOTE_IRR == 0
    a.set_entry(7, LEVEL | 0x41)
    assert len(a.sent) == 1


def test_masking_a_level_entry_keeps_remote_irr() -> None:
    a = Apic()
    a.set_entry(2, LEVEL | 0x42)
    a.dev.set_irq(2, True)
    a.set_entry(2, LEVEL | MASKED | 0x42)
    assert a.entry(2) & RTE_REMOTE_IRR
    a.dev.eoi(0x42)                                 # masked: no re-delivery
    assert len(a.sent) == 1
    a.set_entry(2, LEVEL | 0x42)
    assert len(a.sent) == 2


# ---- MSI encoding ----------------------------------------------------------------------------
def test_msi_encoding_fixed_physical_edge() -> None:
    e = RedirectionEntry(0, 0x03 << 56 | 0x31)
    assert e.msi_address == 0xFEE03000
    assert e.msi_data == 0x0031


def test_msi_encoding_logical_lowest_priority_level() -> None:
    raw = 0xFF << 56 | RTE_TRIGGER | 1 << 11 | 1 << 8 | 0xA5
    e = RedirectionEntry(0, raw)
    assert e.logical and e.delivery_mode == 1 and e.level_triggered
    assert e.msi_address == 0xFEEFF004
    assert e.msi_data == 0xA5 | 1 << 8 | 1 << 14 | 1 << 15


def test_msi_encoding_nmi_and_extint_pass_through() -> None:
    a = Apic()
    a.set_entry(0, 7 << 8, dest=0)                  # ExtINT (the 8259's path)
    a.set_entry(1, 4 << 8 | 0x02, dest=0x0F)        # NMI
    a.dev.pulse(0)
    a.dev.pulse(1)
    assert a.sent == [(0xFEE00000, 0x700), (0xFEE0F000, 0x402)]


def test_polarity_bit_is_kept_but_not_applied() -> None:
    a = Apic()
    a.set_entry(3, 1 << 13 | 0x33)
    assert a.dev.redirection_entries()[3].active_low
    a.dev.set_irq(3, True)
    assert a.sent == [(0xFEE00000, 0x33)]


def test_destination_uses_bits_63_56_only() -> None:
    a = Apic()
    a.reg_write(0x11, 0x00FFFFFF | 0x12 << 24)
    a.reg_write(0x10, 0x20)
    a.dev.pulse(0)
    assert a.sent == [(0xFEE12000, 0x20)]


# ---- accessors for the glue ------------------------------------------------------------------
def test_redirection_entries_and_level_vectors() -> None:
    a = Apic()
    a.set_entry(5, LEVEL | 0x55, dest=2)
    a.set_entry(6, LEVEL | MASKED | 0x56)
    a.set_entry(7, 0x57)
    entries = a.dev.redirection_entries()
    assert len(entries) == NUM_PINS
    e5 = entries[5]
    assert (e5.pin, e5.vector, e5.destination, e5.level_triggered, e5.masked) == (5, 0x55, 2, True, False)
    assert entries[6].masked and not entries[7].level_triggered
    assert a.dev.level_triggered_vectors() == {0x55}


def test_on_redirection_change_only_for_changes() -> None:
    a = Apic()
    a.set_entry(8, 0x58)
    assert a.changed == [8]
    a.set_entry(8, 0x58)
    assert a.changed == [8]
    a.reg_write(IOAPICID, 1 << 24)
    assert a.changed == [8]


def test_out_of_range_pins_are_ignored() -> None:
    a = Apic()
    a.dev.set_irq(-1, True)
    a.dev.set_irq(24, True)
    assert a.sent == []


def test_concurrent_pins_and_eois() -> None:
    a = Apic()
    for pin in range(8):
        a.set_entry(pin, LEVEL | (0x40 + pin))

    def dev(pin: int) -> None:
        for i in range(500):
            a.dev.set_irq(pin, i % 2 == 0)

    def cpu() -> None:
        for i in range(2000):
            a.dev.eoi(0x40 + i % 8)

    threads = [threading.Thread(target=dev, args=(p,)) for p in range(8)] + [threading.Thread(target=cpu)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pin in range(8):
        a.dev.set_irq(pin, False)
        a.dev.eoi(0x40 + pin)
        assert not a.dev.redirection_entries()[pin].remote_irr


# ---- random traffic --------------------------------------------------------------------------
_op = st.one_of(
    st.tuples(st.just("sel"), st.integers(0, 0x4F), st.just(b"")),
    st.tuples(st.just("win"), st.integers(0, 0xFFFFFFFF), st.just(b"")),
    st.tuples(st.just("mmio"), st.integers(0, 0xFFF), st.binary(max_size=8)),
    st.tuples(st.just("read"), st.integers(0, 0xFFF), st.integers(0, 8)),
    st.tuples(st.just("irq"), st.integers(-1, 25), st.booleans()),
    st.tuples(st.just("eoi"), st.integers(0, 0x1FF), st.just(b"")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=80))
def test_random_register_traffic_never_raises(ops: list[tuple]) -> None:
    a = Apic()
    for kind, x, y in ops:
        if kind == "sel":
            a.w32(IOREGSEL, x)
        elif kind == "win":
            a.w32(IOWIN, x)
        elif kind == "mmio":
            a.dev.write(x, y)
        elif kind == "read":
            buf = bytearray(y)
            a.dev.read(x, memoryview(buf))
        elif kind == "irq":
            a.dev.set_irq(x, y)
        else:
            a.dev.eoi(x)
        entries = a.dev.redirection_entries()
        assert len(entries) == NUM_PINS
        for e in entries:
            assert 0 <= e.raw < 1 << 64
            assert not e.raw & RTE_DELIVS
            if e.remote_irr:
                assert e.level_triggered
            # A level pin that is asserted and unmasked has been delivered (Remote IRR set).
            if e.level_triggered and not e.masked and a.dev.input_level(e.pin):
                assert e.remote_irr
    for address, data in a.sent:
        assert address & 0xFFF00000 == 0xFEE00000 and address & 0b1011 == 0
        assert 0 <= data <= 0xFFFF and not data & 0x3800
