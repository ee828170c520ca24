"""microvm.bus: placement rules and dispatch of guest accesses (no KVM)."""
from __future__ import annotations

import logging

import pytest

from microvm.bus import Bus, BusDevice, Mapping
from microvm.errors import BusError


class Recorder:
    """A device that records what the bus hands it; reads return offset-derived bytes."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, data: memoryview) -> None:
        self.reads.append((offset, len(data)))
        for i in range(len(data)):
            data[i] = (0x40 + offset + i) & 0xFF

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, bytes(data)))


def read(bus: Bus, addr: int, n: int) -> bytes:
    buf = bytearray(n)
    bus.read(addr, memoryview(buf))
    return bytes(buf)


@pytest.fixture
def pio() -> Bus:
    return Bus("pio", unmapped_read=0xFF, limit=1 << 16)


def test_recorder_is_a_bus_device() -> None:
    assert isinstance(Recorder(), BusDevice)


def test_insert_and_find(pio: Bus) -> None:
    dev = Recorder()
    m = pio.insert(dev, 0x3F8, 8, "serial0")
    assert m == Mapping(0x3F8, 8, dev, "serial0")
    assert m.end == 0x400
    assert pio.find(0x3F8) is m
    assert pio.find(0x3FF) is m
    assert pio.find(0x3F7) is None
    assert pio.find(0x400) is None
    assert pio.mappings() == [m]


def test_name_defaults_to_the_device_class(pio: Bus) -> None:
    assert pio.insert(Recorder(), 0x70, 2).name == "Recorder"


def test_mappings_are_sorted_and_found_among_many(pio: Bus) -> None:
    devs = {base: Recorder() for base in (0x3F8, 0x20, 0x70, 0xA0, 0x40)}
    for base, dev in devs.items():
        pio.insert(dev, base, 2, f"d{base:x}")
    assert [m.base for m in pio.mappings()] == [0x20, 0x40, 0x70, 0xA0, 0x3F8]
    for base, dev in devs.items():
        assert pio.find(base + 1).device is dev
        assert pio.find(base + 2) is None


def test_device_sees_only_the_offset(pio: Bus) -> None:
    dev = Recorder()
    pio.insert(dev, 0x3F8, 8)
    assert read(pio, 0x3FA, 2) == bytes([0x42, 0x43])
    pio.write(0x3FB, b"\x5a")
    assert dev.reads == [(2, 2)]
    assert dev.writes == [(3, b"\x5a")]


@pytest.mark.parametrize(
    "base, length",
    [
        (0x108, 0x10),  # starts inside, ends after
        (0xF8, 0x10),   # starts before, ends inside
        (0xF0, 0x40),   # covers it entirely
        (0x104, 0x4),   # lies inside
        (0x100, 0x10),  # the same range
        (0x10F, 0x1),   # its last byte
        (0xFF, 0x2),    # straddles its first byte
    ],
)
def test_overlap_is_refused(pio: Bus, base: int, length: int) -> None:
    pio.insert(Recorder(), 0x100, 0x10, "first")
    with pytest.raises(BusError, match="overlaps first"):
        pio.insert(Recorder(), base, length, "second")
    assert [m.name for m in pio.mappings()] == ["first"]


def test_overlap_with_a_later_neighbour_is_refused(pio: Bus) -> None:
    pio.insert(Recorder(), 0x100, 0x10, "a")
    pio.insert(Recorder(), 0x200, 0x10, "b")
    with pytest.raises(BusError, match="overlaps b"):
        pio.insert(Recorder(), 0x1F0, 0x11, "c")
    with pytest.raises(BusError, match="overlaps a"):
        pio.insert(Recorder(), 0x50, 0x300, "d")


def test_adjacent_ranges_are_allowed(pio: Bus) -> None:
    pio.insert(Recorder(), 0x100, 0x10, "mid")
    pio.insert(Recorder(), 0xF0, 0x10, "below")
    pio.insert(Recorder(), 0x110, 0x10, "above")
    assert [(m.name, m.base, m.end) for m in pio.mappings()] == [
        ("below", 0xF0, 0x100), ("mid", 0x100, 0x110), ("above", 0x110, 0x120),
    ]


@pytest.mark.parametrize("length", [0, -1])
def test_empty_range_is_refused(pio: Bus, length: int) -> None:
    with pytest.raises(BusError, match="empty range"):
        pio.insert(Recorder(), 0x80, length, "nothing")
    assert pio.mappings() == []


@pytest.mark.parametrize("base, length", [(0xFFFF, 2), (0x10000, 1), (-1, 2)])
def test_range_outside_the_bus_is_refused(pio: Bus, base: int, length: int) -> None:
    with pytest.raises(BusError, match="outside the bus"):
        pio.insert(Recorder(), base, length, "far")


def test_last_byte_of_the_bus_can_be_mapped(pio: Bus) -> None:
    m = pio.insert(Recorder(), 0xFFFF, 1)
    assert pio.find(0xFFFF) is m


def test_unmapped_pio_read_floats_high_and_is_logged(pio: Bus, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="microvm.bus")
    assert read(pio, 0x80, 1) == b"\xff"
    assert read(pio, 0xCF8, 4) == b"\xff\xff\xff\xff"
    recs = [r for r in caplog.records if r.name == "microvm.bus"]
    assert [r.levelno for r in recs] == [logging.DEBUG, logging.DEBUG]
    assert "unmapped 0x80" in recs[0].getMessage()
    assert "4 bytes at unmapped 0xcf8" in recs[1].getMessage()


def test_unmapped_read_uses_the_bus_fill_value() -> None:
    mmio = Bus("mmio", unmapped_read=0x00)
    assert read(mmio, 0xFEB00000, 4) == bytes(4)


def test_unmapped_write_is_ignored_and_logged(pio: Bus, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="microvm.bus")
    dev = Recorder()
    pio.insert(dev, 0x3F8, 8)
    pio.write(0x3F0, b"\x12\x34")
    assert dev.writes == [] and dev.reads == []
    msgs = [r.getMessage() for r in caplog.records if r.name == "microvm.bus"]
    assert msgs == ["pio bus: write of 1234 at unmapped 0x3f0 ignored"]


def test_access_spanning_past_the_device_end_is_unmapped(pio: Bus, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="microvm.bus")
    dev = Recorder()
    neighbour = Recorder()
    pio.insert(dev, 0x3F8, 8)
    pio.insert(neighbour, 0x400, 8)
    assert read(pio, 0x3FF, 2) == b"\xff\xff"
    pio.write(0x3FE, b"\x01\x02\x03\x04")
    assert dev.reads == [] and dev.writes == []
    assert neighbour.reads == [] and neighbour.writes == []
    assert len([r for r in caplog.records if r.name == "microvm.bus"]) == 2
    # the last byte alone is still the device's
    assert read(pio, 0x3FF, 1) == bytes([0x47])
    assert dev.reads == [(7, 1)]


def test_remove(pio: Bus) -> None:
    dev = Recorder()
    pio.insert(dev, 0x3F8, 8, "serial0")
    other = pio.insert(Recorder(), 0x70, 2, "rtc")
    pio.remove(0x3F8)
    assert pio.find(0x3F8) is None
    assert pio.mappings() == [other]
    assert read(pio, 0x3F8, 1) == b"\xff"
    assert dev.reads == []
    again = Recorder()
    pio.insert(again, 0x3F8, 8, "serial0")  # the range is free again
    assert pio.find(0x3FC).device is again


def test_remove_needs_the_exact_base(pio: Bus) -> None:
    pio.insert(Recorder(), 0x3F8, 8, "serial0")
    with pytest.raises(BusError, match="nothing mapped at 0x3f9"):
        pio.remove(0x3F9)
    with pytest.raises(BusError, match="nothing mapped at 0x500"):
        pio.remove(0x500)
    assert len(pio.mappings()) == 1


def test_unmapped_accesses_are_logged_once_per_address_and_counted(pio: Bus, caplog: pytest.LogCaptureFixture) -> None:
    """A guest probing an absent port in a loop must not flood the log."""
    caplog.set_level(logging.DEBUG, logger="microvm.bus")
    buf = memoryview(bytearray(1))
    for _ in range(100):
        pio.read(0x2F8, buf)
        pio.write(0x2F8, b"\x00")
    pio.read(0x2F9, buf)
    msgs = [r.getMessage() for r in caplog.records if r.name == "microvm.bus"]
    assert msgs == ["pio bus: read of 1 bytes at unmapped 0x2f8", "pio bus: read of 1 bytes at unmapped 0x2f9"]
    assert pio.unmapped_accesses == 201
