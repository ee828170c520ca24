"""The e820 memory map handed to the guest (boot_params or the PVH memmap)."""
from __future__ import annotations

from typing import NamedTuple

from .. import layout

E820_RAM = 1
E820_RESERVED = 2


class E820Entry(NamedTuple):
    addr: int
    size: int
    type: int


def e820_map(regions: list[tuple[int, int]]) -> list[E820Entry]:
    """RAM as usable, except the EBDA/MP-table KiB below 640 KiB and the legacy
    0xa0000-0x100000 hole, which firmware would also keep from the OS."""
    out: list[E820Entry] = []
    for gpa, size in regions:
        end = gpa + size
        if gpa == 0:
            out.append(E820Entry(0, min(layout.EBDA_START, end), E820_RAM))
            if end > layout.EBDA_START:
                out.append(E820Entry(layout.EBDA_START, 0xA0000 - layout.EBDA_START, E820_RESERVED))
            if end > layout.HIMEM_START:
                out.append(E820Entry(layout.HIMEM_START, end - layout.HIMEM_START, E820_RAM))
        else:
            out.append(E820Entry(gpa, size, E820_RAM))
    return out
