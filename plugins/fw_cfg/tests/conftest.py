"""A firmware's view of fw_cfg: port I/O through a real PIO bus, DMA through guest RAM."""
from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Iterator

import pytest
from microvm.testing import Bus
from microvm.api import GuestMemory

from microvm_fw_cfg.device import FwCfg
from microvm_fw_cfg.keys import FW_CFG_FILE_DIR

# the helpers module (fwcfg_images) next to this file: importlib mode puts no test dir on sys.path
sys.path.insert(0, str(Path(__file__).parent))

RAM_SIZE = 1 << 20
DMA_STRUCT = 0x1000      # where the helper puts its FWCfgDmaAccess


class Firmware:
    """Drives the device the way SeaBIOS/qboot/Linux do: ``outw`` the key to 0x510, ``inb``
    from 0x511, ``outl`` the big-endian DMA address halves to 0x514/0x518."""

    def __init__(self, fw: FwCfg, mem: GuestMemory | None) -> None:
        self.fw = fw
        self.mem = mem
        self.bus = Bus("pio", unmapped_read=0xFF, limit=0x10000)
        for base, length, dev, name in fw.port_ranges():
            self.bus.insert(dev, base, length, name)

    # -- raw port I/O, values as the CPU's eax holds them (x86 is little-endian) --
    def out(self, port: int, value: int, size: int) -> None:
        self.bus.write(port, value.to_bytes(size, "little"))

    def inp(self, port: int, size: int) -> int:
        buf = bytearray(size)
        self.bus.read(port, memoryview(buf))
        return int.from_bytes(buf, "little")

    # -- the traditional interface --
    def select(self, key: int) -> None:
        self.out(0x510, key, 2)

    def read(self, n: int) -> bytes:
        return bytes(self.inp(0x511, 1) for _ in range(n))

    def item(self, key: int, n: int) -> bytes:
        self.select(key)
        return self.read(n)

    def directory(self) -> list[tuple[int, int, int, bytes]]:
        """(size, select, reserved, name) of every entry, parsed as a firmware does."""
        self.select(FW_CFG_FILE_DIR)
        (count,) = struct.unpack(">I", self.read(4))
        out = []
        for _ in range(count):
            size, select, reserved, name = struct.unpack(">IHH56s", self.read(64))
            out.append((size, select, reserved, name.rstrip(b"\0")))
        return out

    def find(self, name: bytes) -> tuple[int, int]:
        for size, select, _, n in self.directory():
            if n == name:
                return select, size
        raise KeyError(name)

    # -- the DMA interface --
    def dma_kick(self, access: int) -> None:
        """Write the FWCfgDmaAccess address: high half, then low half (which starts it)."""
        # eax holds bswap32(half): the bytes reach the port in big-endian order
        self.bus.write(0x514, (access >> 32).to_bytes(4, "big"))
        self.bus.write(0x518, (access & 0xFFFFFFFF).to_bytes(4, "big"))

    def dma(self, control: int, length: int = 0, address: int = 0, at: int = DMA_STRUCT) -> int:
        """Run one DMA operation; return the control word read back."""
        assert self.mem is not None
        self.mem.write(at, struct.pack(">IIQ", control, length, address))
        self.dma_kick(at)
        return struct.unpack(">I", self.mem.read(at, 4))[0]


@pytest.fixture
def ram() -> Iterator[GuestMemory]:
    m = GuestMemory(RAM_SIZE)
    yield m
    m.close()


@pytest.fixture
def fw(ram: GuestMemory) -> FwCfg:
    return FwCfg(ram)


@pytest.fixture
def guest(fw: FwCfg, ram: GuestMemory) -> Firmware:
    return Firmware(fw, ram)


@pytest.fixture
def make_guest(ram: GuestMemory):
    """A Firmware for a device the test builds itself (``make_guest(fw)``)."""
    return lambda fw, mem=ram: Firmware(fw, mem)
