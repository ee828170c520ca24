"""Intel MultiProcessor Specification 1.4 tables: how a no-ACPI guest finds its CPUs,
its IOAPIC and the routing of ISA interrupts.

Plugins contribute entries through the ``mptable_entries`` hook; the core adds the ISA bus
entry and writes the floating pointer and the configuration table at
:data:`microvm.layout.MPTABLE_ADDR` (the last KiB of base memory, which Linux scans).
"""
from __future__ import annotations

import struct
from typing import Iterable, NamedTuple, Union

# Interrupt types (MP spec table 4-12)
MP_INT = 0
MP_NMI = 1
MP_SMI = 2
MP_EXTINT = 3
# Entry types
MP_PROCESSOR = 0
MP_BUS = 1
MP_IOAPIC = 2
MP_IOINTR = 3
MP_LINTR = 4
CPU_ENABLED = 0x01
CPU_BOOTPROCESSOR = 0x02
APIC_VERSION = 0x14          # integrated LAPIC, as KVM models it
IOAPIC_VERSION = 0x11        # 82093AA as KVM's in-kernel IOAPIC reports it
ISA_BUS_ID = 0
ALL_LAPICS = 0xFF
OEM_ID = b"MICROVM "
PRODUCT_ID = b"MICROVM-MPTAB"[:12]


class Processor(NamedTuple):
    apic_id: int
    bsp: bool = False
    signature: int = 0x600    # family 6; Linux only prints it
    features: int = 0x201     # FPU | APIC


class Bus(NamedTuple):
    bus_id: int
    bus_type: str = "ISA"


class IoApic(NamedTuple):
    apic_id: int
    address: int
    version: int = IOAPIC_VERSION


class IoInterrupt(NamedTuple):
    src_irq: int
    dst_ioapic: int
    dst_pin: int
    irq_type: int = MP_INT
    flags: int = 0            # 0: polarity and trigger conform to the bus (ISA: edge, high)
    src_bus: int = ISA_BUS_ID


class LocalInterrupt(NamedTuple):
    irq_type: int
    dst_lint: int
    dst_lapic: int = ALL_LAPICS
    src_bus: int = ISA_BUS_ID
    src_irq: int = 0
    flags: int = 0


Entry = Union[Processor, Bus, IoApic, IoInterrupt, LocalInterrupt]
_ORDER = {Processor: 0, Bus: 1, IoApic: 2, IoInterrupt: 3, LocalInterrupt: 4}


def _typed_eq(self: tuple, other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]


def _typed_ne(self: tuple, other: object) -> bool:
    return not _typed_eq(self, other)


def _typed_hash(self: tuple) -> int:
    return hash((type(self).__name__, tuple(self)))


# NamedTuples (cheap to define at start-up, unlike dataclasses) compare as plain tuples;
# entries of different kinds must never be equal, so equality and hashing include the type.
for _cls in _ORDER:
    _cls.__eq__ = _typed_eq  # type: ignore[method-assign,assignment]
    _cls.__ne__ = _typed_ne  # type: ignore[method-assign,assignment]
    _cls.__hash__ = _typed_hash  # type: ignore[method-assign,assignment]


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _encode(e: Entry) -> bytes:
    if isinstance(e, Processor):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if e.bsp else 0)
        return struct.pack("<BBBBII8x", MP_PROCESSOR, e.apic_id, APIC_VERSION, flags, e.signature, e.features)
    if isinstance(e, Bus):
        return struct.pack("<BB6s", MP_BUS, e.bus_id, e.bus_type.encode().ljust(6))
    if isinstance(e, IoApic):
        return struct.pack("<BBBBI", MP_IOAPIC, e.apic_id, e.version, 1, e.address)
    if isinstance(e, IoInterrupt):
        return struct.pack("<BBHBBBB", MP_IOINTR, e.irq_type, e.flags, e.src_bus, e.src_irq, e.dst_ioapic, e.dst_pin)
    if isinstance(e, LocalInterrupt):
        return struct.pack("<BBHBBBB", MP_LINTR, e.irq_type, e.flags, e.src_bus, e.src_irq, e.dst_lapic, e.dst_lint)
    raise TypeError(f"not an MP table entry: {e!r}")


def build(base: int, entries: Iterable[Entry], lapic_address: int = 0xFEE00000) -> bytes:
    """Return the floating pointer followed by the configuration table, for address ``base``.

    Entries are sorted by type as the spec requires (processors, buses, IOAPICs, I/O
    interrupts, local interrupts) and de-duplicated.
    """
    entries = list(entries)
    for e in entries:
        if type(e) not in _ORDER:
            raise TypeError(f"not an MP table entry: {e!r} (expected Processor, Bus, IoApic, IoInterrupt or LocalInterrupt)")
    unique = sorted(set(entries), key=lambda e: (_ORDER[type(e)], e))
    body = b"".join(_encode(e) for e in unique)
    header_len = 44
    table_addr = base + 16
    header = struct.pack(
        "<4sHBB8s12sIHHIHBB",
        b"PCMP", header_len + len(body), 4, 0, OEM_ID, PRODUCT_ID.ljust(12), 0, 0, len(unique), lapic_address, 0, 0, 0,
    )
    table = bytearray(header + body)
    table[7] = _checksum(bytes(table))
    mpf = bytearray(struct.pack("<4sIBBBB4x", b"_MP_", table_addr, 1, 4, 0, 0))
    mpf[10] = _checksum(bytes(mpf))
    return bytes(mpf) + bytes(table)


def parse(blob: bytes, base: int) -> list[Entry]:
    """Decode what :func:`build` wrote (used by tests, and handy for debugging a guest)."""
    sig, table_addr, length, rev, csum, f1 = struct.unpack_from("<4sIBBBB", blob, 0)
    if sig != b"_MP_" or sum(blob[:16]) & 0xFF:
        raise ValueError("bad MP floating pointer")
    off = table_addr - base
    hdr = struct.unpack_from("<4sHBB8s12sIHHIHBB", blob, off)
    if hdr[0] != b"PCMP" or sum(blob[off : off + hdr[1]]) & 0xFF:
        raise ValueError("bad MP configuration table")
    count = hdr[8]
    p = off + 44
    out: list[Entry] = []
    for _ in range(count):
        t = blob[p]
        if t == MP_PROCESSOR:
            _, apic, _, flags, sig_, feat = struct.unpack_from("<BBBBII", blob, p)
            out.append(Processor(apic, bool(flags & CPU_BOOTPROCESSOR), sig_, feat))
            p += 20
            continue
        if t == MP_BUS:
            _, bid, btype = struct.unpack_from("<BB6s", blob, p)
            out.append(Bus(bid, btype.decode().strip()))
        elif t == MP_IOAPIC:
            _, aid, ver, _, addr = struct.unpack_from("<BBBBI", blob, p)
            out.append(IoApic(aid, addr, ver))
        elif t == MP_IOINTR:
            _, it, fl, sb, si, da, dp = struct.unpack_from("<BBHBBBB", blob, p)
            out.append(IoInterrupt(si, da, dp, it, fl, sb))
        elif t == MP_LINTR:
            _, it, fl, sb, si, dl, lint = struct.unpack_from("<BBHBBBB", blob, p)
            out.append(LocalInterrupt(it, lint, dl, sb, si, fl))
        else:
            raise ValueError(f"unknown MP entry type {t}")
        p += 8
    return out
