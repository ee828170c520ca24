"""microvm.memory: the RAM layout around the 32-bit hole and bounds-checked guest access."""
from __future__ import annotations

import pytest

from microvm.errors import GuestMemoryError
from microvm.memory import ABOVE_4G_START, BELOW_4G_MAX, GuestMemory, ram_layout

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SMALL = 4 * MiB


# ---- ram_layout ---------------------------------------------------------------------------
def test_layout_constants_are_qemus() -> None:
    assert BELOW_4G_MAX == 0xC0000000
    assert ABOVE_4G_START == 0x100000000


@pytest.mark.parametrize(
    "size, layout",
    [
        (128 * MiB, [(0, 128 * MiB)]),
        (2 * MiB, [(0, 2 * MiB)]),
        (3 * GiB - 4 * KiB, [(0, 3 * GiB - 4 * KiB)]),
        (3 * GiB, [(0, 3 * GiB)]),
        (3 * GiB + 4 * KiB, [(0, 3 * GiB), (4 * GiB, 4 * KiB)]),
        (4 * GiB, [(0, 3 * GiB), (4 * GiB, 1 * GiB)]),
        (16 * GiB, [(0, 3 * GiB), (4 * GiB, 13 * GiB)]),
    ],
)
def test_ram_layout(size: int, layout: list[tuple[int, int]]) -> None:
    assert ram_layout(size) == layout
    assert sum(n for _, n in layout) == size


@pytest.mark.parametrize("size", [0, -MiB])
def test_ram_layout_refuses_no_memory(size: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ram_layout(size)


def test_guest_memory_regions_follow_the_layout(guest_memory) -> None:
    mem = guest_memory(3 * GiB + 16 * MiB)  # mmap is lazy: nothing is touched
    assert [(r.gpa, r.size, r.end) for r in mem] == [
        (0, 3 * GiB, 3 * GiB), (4 * GiB, 16 * MiB, 4 * GiB + 16 * MiB),
    ]
    assert [len(r.mm) for r in mem.regions] == [3 * GiB, 16 * MiB]


# ---- access -------------------------------------------------------------------------------
def test_new_memory_reads_as_zero(guest_memory) -> None:
    mem = guest_memory(SMALL)
    assert mem.read(0, 16) == bytes(16)
    assert mem.read(SMALL - 16, 16) == bytes(16)


def test_write_then_read(guest_memory) -> None:
    mem = guest_memory(SMALL)
    mem.write(0x1000, b"hello, guest")
    assert mem.read(0x1000, 12) == b"hello, guest"
    assert mem.read(0x0FFF, 14) == b"\0hello, guest\0"
    mem.write(SMALL - 3, bytearray(b"end"))  # the very last bytes
    assert mem.read(SMALL - 3, 3) == b"end"
    mem.write(0x2000, memoryview(b"view"))
    assert mem.read(0x2000, 4) == b"view"


def test_view_is_zero_copy_both_ways(guest_memory) -> None:
    mem = guest_memory(SMALL)
    v = mem.view(0x3000, 8)
    assert len(v) == 8 and not v.readonly
    v[:4] = b"abcd"
    assert mem.read(0x3000, 4) == b"abcd"
    mem.write(0x3004, b"WXYZ")
    assert bytes(v) == b"abcdWXYZ"


def test_fill(guest_memory) -> None:
    mem = guest_memory(SMALL)
    mem.fill(0x100, 4, 0xAB)
    assert mem.read(0xFF, 6) == b"\0\xab\xab\xab\xab\0"
    mem.fill(0x101, 2)
    assert mem.read(0x100, 4) == b"\xab\0\0\xab"


@pytest.mark.parametrize(
    "bits, value, raw",
    [
        (8, 0xA5, b"\xa5"),
        (16, 0xBEEF, b"\xef\xbe"),
        (32, 0xDEADBEEF, b"\xef\xbe\xad\xde"),
        (64, 0x0123456789ABCDEF, b"\xef\xcd\xab\x89\x67\x45\x23\x01"),
    ],
)
def test_little_endian_accessors(guest_memory, bits: int, value: int, raw: bytes) -> None:
    mem = guest_memory(SMALL)
    getattr(mem, f"write_u{bits}")(0x501, value)  # unaligned on purpose
    assert mem.read(0x501, bits // 8) == raw
    assert mem.read(0x500, 1) == b"\0" and mem.read(0x501 + bits // 8, 1) == b"\0"
    assert getattr(mem, f"read_u{bits}")(0x501) == value
    mem.write(0x700, raw)
    assert getattr(mem, f"read_u{bits}")(0x700) == value


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_accessors_truncate_to_their_width(guest_memory, bits: int) -> None:
    mem = guest_memory(SMALL)
    getattr(mem, f"write_u{bits}")(0x800, (1 << bits) | 0x5A)
    assert getattr(mem, f"read_u{bits}")(0x800) == 0x5A
    assert mem.read(0x800 + bits // 8, 1) == b"\0"


def test_high_region_is_addressed_from_4g(guest_memory) -> None:
    mem = guest_memory(3 * GiB + 16 * MiB)
    mem.write_u64(4 * GiB, 0x1122334455667788)
    assert mem.read_u64(4 * GiB) == 0x1122334455667788
    assert mem.regions[1].mm[:8] == bytes.fromhex("8877665544332211")
    assert mem.read(0, 8) == bytes(8)  # not aliased onto low RAM
    mem.write(4 * GiB + 16 * MiB - 2, b"zz")
    assert mem.read(4 * GiB + 16 * MiB - 2, 2) == b"zz"


# ---- bounds -------------------------------------------------------------------------------
def out_of_bounds_cases() -> list[tuple[int, int]]:
    return [
        (-1, 1),                       # negative address
        (-8, 16),                      # negative, reaching into RAM
        (0, -1),                       # negative length
        (SMALL, 1),                    # just past the end
        (SMALL + 0x1000, 4),           # beyond the end
        (SMALL - 2, 4),                # spanning the end
        (0, SMALL + 1),                # longer than RAM
        (1 << 64, 1),                  # absurd
    ]


@pytest.mark.parametrize("gpa, length", out_of_bounds_cases())
def test_out_of_bounds_access_raises(guest_memory, gpa: int, length: int) -> None:
    mem = guest_memory(SMALL)
    assert not mem.contains(gpa, length)
    with pytest.raises(GuestMemoryError) as info:
        mem.read(gpa, length)
    assert (info.value.addr, info.value.length) == (gpa, length)
    with pytest.raises(GuestMemoryError):
        mem.view(gpa, length)
    with pytest.raises(GuestMemoryError):
        mem.fill(gpa, length)
    if length > 0:
        with pytest.raises(GuestMemoryError):
            mem.write(gpa, b"\x01" * length)


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
@pytest.mark.parametrize("where", ["negative", "past-end", "spanning-end"])
def test_out_of_bounds_accessors_raise(guest_memory, bits: int, where: str) -> None:
    mem = guest_memory(SMALL)
    gpa = {"negative": -1, "past-end": SMALL, "spanning-end": SMALL - bits // 8 + 1}[where]
    if bits == 8 and where == "spanning-end":
        gpa = SMALL  # one byte cannot span
    with pytest.raises(GuestMemoryError):
        getattr(mem, f"read_u{bits}")(gpa)
    with pytest.raises(GuestMemoryError):
        getattr(mem, f"write_u{bits}")(gpa, 0)


@pytest.mark.parametrize(
    "gpa, length",
    [
        (3 * GiB, 1),                  # first byte of the hole
        (0xFEC00000, 4),               # the IOAPIC page is MMIO, not RAM
        (4 * GiB - 1, 1),              # last byte of the hole
        (3 * GiB - 4, 8),              # from low RAM into the hole
        (3 * GiB - 1, GiB + 2),        # from low RAM across the hole into high RAM
        (4 * GiB - 4, 8),              # from the hole into high RAM
        (4 * GiB + 16 * MiB, 1),       # past the high region
        (4 * GiB + 16 * MiB - 4, 8),   # spanning the high region's end
    ],
)
def test_the_32bit_hole_is_not_ram(guest_memory, gpa: int, length: int) -> None:
    mem = guest_memory(3 * GiB + 16 * MiB)
    assert not mem.contains(gpa, length)
    with pytest.raises(GuestMemoryError):
        mem.read(gpa, length)
    with pytest.raises(GuestMemoryError):
        mem.write(gpa, b"\xcc" * length)


def test_both_sides_of_the_hole_are_ram(guest_memory) -> None:
    mem = guest_memory(3 * GiB + 16 * MiB)
    assert mem.contains(3 * GiB - 8, 8)
    assert mem.contains(4 * GiB, 8)
    assert mem.contains(0, 3 * GiB)
    assert not mem.contains(0, 3 * GiB + 1)


def test_zero_length_access_at_the_end_is_allowed(guest_memory) -> None:
    mem = guest_memory(SMALL)
    assert mem.read(SMALL, 0) == b""
    assert mem.contains(SMALL, 0)
    assert not mem.contains(SMALL + 1, 0)


def test_error_message_names_the_range(guest_memory) -> None:
    mem = guest_memory(SMALL)
    with pytest.raises(GuestMemoryError, match=r"\[0x3ffffe, \+0x4\) is not entirely inside guest RAM"):
        mem.read(SMALL - 2, 4)


def test_failing_write_changes_nothing(guest_memory) -> None:
    mem = guest_memory(SMALL)
    mem.fill(SMALL - 0x10, 0x10, 0x77)
    before = mem.read(SMALL - 0x10, 0x10)
    with pytest.raises(GuestMemoryError):
        mem.write(SMALL - 4, b"\x00" * 8)
    with pytest.raises(GuestMemoryError):
        mem.write_u64(SMALL - 4, 0)
    with pytest.raises(GuestMemoryError):
        mem.fill(SMALL - 4, 8, 0)
    assert mem.read(SMALL - 0x10, 0x10) == before == b"\x77" * 0x10


def test_failing_write_into_the_hole_changes_nothing(guest_memory) -> None:
    mem = guest_memory(3 * GiB + 16 * MiB)
    mem.fill(3 * GiB - 8, 8, 0x55)
    with pytest.raises(GuestMemoryError):
        mem.write(3 * GiB - 4, b"\x00" * 8)
    assert mem.read(3 * GiB - 8, 8) == b"\x55" * 8
