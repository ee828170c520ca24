"""Guest physical memory: anonymous mmap RAM registered as KVM memslots, with bounds-checked access.

The layout follows QEMU's microvm (``hw/i386/microvm.c``, ``x86_machine``): RAM below
3 GiB stays below; the rest is placed from 4 GiB up, leaving the 32-bit hole for MMIO
(IOAPIC at 0xfec00000, virtio-mmio at 0xfeb00000, LAPIC at 0xfee00000).

Every access is checked: a guest-controlled address or length that is not entirely inside
one RAM region raises :class:`~microvm.errors.GuestMemoryError`, so a hostile guest can
never make the VMM read or write host memory outside guest RAM.
"""
from __future__ import annotations

import mmap
import struct
from typing import Iterator

from .errors import GuestMemoryError

GiB = 1 << 30
MiB = 1 << 20
#: Highest RAM address below 4 GiB (the issue's "RAM below 3 GiB").
BELOW_4G_MAX = 3 * GiB
#: Where RAM above the 32-bit hole starts.
ABOVE_4G_START = 4 * GiB
#: Largest pattern :meth:`GuestMemory.fill` builds at once.
_FILL_CHUNK = 256 * 1024


class Region:
    """One contiguous range of guest RAM backed by one host mapping."""

    __slots__ = ("gpa", "size", "mm")

    def __init__(self, gpa: int, size: int, mm: mmap.mmap) -> None:
        self.gpa = gpa
        self.size = size
        self.mm = mm

    @property
    def end(self) -> int:
        return self.gpa + self.size


def ram_layout(size: int) -> list[tuple[int, int]]:
    """Return ``[(gpa, size), ...]`` for ``size`` bytes of RAM, split around the 32-bit hole."""
    if size <= 0:
        raise ValueError("guest RAM size must be positive")
    low = min(size, BELOW_4G_MAX)
    layout = [(0, low)]
    if size > low:
        layout.append((ABOVE_4G_START, size - low))
    return layout


class Overlay:
    """Guest-visible memory that is not RAM: a firmware image or an alias of part of it.
    It shadows any RAM at the same addresses (for the guest and for device DMA alike)."""

    __slots__ = ("gpa", "size", "mm", "offset", "name")

    def __init__(self, gpa: int, size: int, mm: mmap.mmap, offset: int, name: str) -> None:
        self.gpa = gpa
        self.size = size
        self.mm = mm
        self.offset = offset
        self.name = name

    @property
    def end(self) -> int:
        return self.gpa + self.size


class GuestMemory:
    """Guest RAM. Thread-safe for concurrent access to distinct bytes (it is plain memory).

    ``regions`` are the RAM; ``overlays`` (empty unless a firmware image is mapped, see
    :mod:`microvm.boot.firmware`) are other memory the guest sees, shadowing RAM where
    they overlap it. Every access resolves overlays first, so DMA reaches what a vCPU
    would read at the same address.
    """

    def __init__(self, size: int, merge: bool = True, dump: bool = True) -> None:
        """``merge`` and ``dump`` are QEMU's ``-M mem-merge`` and ``-M dump-guest-core``
        (both on by default there too): RAM is advised ``MADV_MERGEABLE`` (the host's KSM,
        when it runs, may share identical pages; QEMU's ``memory_try_enable_merging``), and
        without ``dump`` ``MADV_DONTDUMP`` (a core dump of the VMM leaves the guest's memory
        out; QEMU's ``qemu_ram_setup_dump``)."""
        self.size = size
        self.regions: list[Region] = []
        dontdump_failed = False
        for gpa, length in ram_layout(size):
            mm = mmap.mmap(-1, length, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
            # transparent huge pages shorten the KVM page walk; KSM needs CONFIG_KSM (EINVAL
            # without, as QEMU ignores it); all three are advice, harmless where unsupported.
            # QEMU warns only when MADV_DONTDUMP fails (qemu_ram_setup_dump): the core dump
            # the user asked to keep small would hold the guest's RAM
            for advice, wanted in (("MADV_HUGEPAGE", True), ("MADV_MERGEABLE", merge), ("MADV_DONTDUMP", not dump)):
                if wanted:
                    try:
                        mm.madvise(getattr(mmap, advice))
                    except (AttributeError, OSError):
                        dontdump_failed = dontdump_failed or advice == "MADV_DONTDUMP"
            self.regions.append(Region(gpa, length, mm))
        if dontdump_failed:
            from .log import say

            say("microvm: warning: madvise doesn't support MADV_DONTDUMP, but dump_guest_core=off specified\n")
        self._views = [memoryview(r.mm) for r in self.regions]
        self.overlays: list[Overlay] = []
        self._overlay_views: list[memoryview] = []

    def add_overlay(self, gpa: int, mm: mmap.mmap, offset: int, size: int, name: str) -> None:
        """Make ``mm[offset:offset+size]`` guest memory at ``gpa`` (before the memslots are
        registered). Overlays may not overlap each other; ``mm`` is closed with this object."""
        if size <= 0 or offset < 0 or offset + size > len(mm) or gpa < 0:
            raise ValueError(f"overlay {name}: bad range")
        for o in self.overlays:
            if gpa < o.end and o.gpa < gpa + size:
                raise ValueError(f"overlay {name} overlaps {o.name}")
        self.overlays.append(Overlay(gpa, size, mm, offset, name))
        self._overlay_views.append(memoryview(mm)[offset : offset + size])

    def memslots(self) -> list[tuple[int, int, int]]:
        """``(gpa, size, host address)`` of every range KVM must map: RAM with the overlays
        cut out of it, then the overlays."""
        cuts = sorted((o.gpa, o.end) for o in self.overlays)
        out: list[tuple[int, int, int]] = []
        for r in self.regions:
            base = self.host_address(r)
            pos = r.gpa
            for lo, hi in cuts:
                if hi <= pos or lo >= r.end:
                    continue
                if lo > pos:
                    out.append((pos, lo - pos, base + pos - r.gpa))
                pos = max(pos, hi)
            if pos < r.end:
                out.append((pos, r.end - pos, base + pos - r.gpa))
        from .kvm import ffi

        for o in self.overlays:
            out.append((o.gpa, o.size, int(ffi.cast("uintptr_t", ffi.from_buffer(o.mm))) + o.offset))
        return out

    # -- lookup ---------------------------------------------------------------------------
    def _locate(self, gpa: int, length: int) -> tuple[memoryview, int]:
        """Return (view of the whole region, offset) for a range wholly inside one region
        (an overlay, else RAM)."""
        if gpa < 0 or length < 0:
            raise GuestMemoryError(gpa, length, "negative")
        if self.overlays:
            for i, o in enumerate(self.overlays):
                if o.gpa <= gpa < o.end or (length == 0 and gpa == o.end):
                    if gpa + length > o.end:
                        raise GuestMemoryError(gpa, length, f"not entirely inside {o.name}")
                    return self._overlay_views[i], gpa - o.gpa
                if gpa < o.gpa < gpa + length:
                    raise GuestMemoryError(gpa, length, f"partly inside {o.name}")
        for i, r in enumerate(self.regions):
            if r.gpa <= gpa < r.end or (length == 0 and gpa == r.end):
                if gpa + length > r.end:
                    raise GuestMemoryError(gpa, length, "not entirely inside guest RAM")
                return self._views[i], gpa - r.gpa
        raise GuestMemoryError(gpa, length)

    def contains(self, gpa: int, length: int) -> bool:
        try:
            self._locate(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of ``[gpa, gpa+length)``: zero-copy for preadv/pwritev into the guest."""
        v, off = self._locate(gpa, length)
        return v[off : off + length]

    # -- access ---------------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` (any C-contiguous buffer, counted in bytes) to ``gpa``; the range is
        checked before a byte moves."""
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        self.view(gpa, src.nbytes)[:] = src

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes from ``gpa`` to ``byte``. The range is checked first and the
        pattern is a bounded chunk, so a hostile length (an ELF's p_memsz, a guest's request)
        costs nothing but the GuestMemoryError."""
        if not 0 <= byte <= 0xFF:
            raise ValueError(f"fill byte {byte} is not 0-255")
        dst = self.view(gpa, length)
        if length == 0:
            return
        chunk = memoryview(bytes([byte]) * min(length, _FILL_CHUNK))
        step = len(chunk)
        for off in range(0, length - step + 1, step):
            dst[off : off + step] = chunk
        tail = length % step
        if tail:
            dst[length - tail :] = chunk[:tail]

    def read_u8(self, gpa: int) -> int:
        return self.view(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.view(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.view(gpa, 1)[0] = value & 0xFF

    def write_u16(self, gpa: int, value: int) -> None:
        struct.pack_into("<H", self.view(gpa, 2), 0, value & 0xFFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        struct.pack_into("<I", self.view(gpa, 4), 0, value & 0xFFFFFFFF)

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.view(gpa, 8), 0, value & 0xFFFFFFFFFFFFFFFF)

    # -- KVM ------------------------------------------------------------------------------
    def host_address(self, region: Region) -> int:
        """Host virtual address of a region's mapping (for KVM_SET_USER_MEMORY_REGION)."""
        from .kvm import ffi

        return int(ffi.cast("uintptr_t", ffi.from_buffer(region.mm)))

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def close(self) -> None:
        for v in self._views + self._overlay_views:
            v.release()
        for o in self.overlays:
            try:
                o.mm.close()
            except BufferError:
                pass
        for r in self.regions:
            try:
                r.mm.close()
            except BufferError:
                pass
