"""The DMA interface: FWCfgDmaAccess in guest RAM, control bits, errors, bounds and threads."""
from __future__ import annotations

import struct
import threading

import pytest
from microvm.api import GuestMemory

from microvm_fw_cfg.device import FwCfg
from microvm_fw_cfg.keys import (
    FW_CFG_DMA_CTL_ERROR as ERROR,
    FW_CFG_DMA_CTL_READ as READ,
    FW_CFG_DMA_CTL_SELECT as SELECT,
    FW_CFG_DMA_CTL_SKIP as SKIP,
    FW_CFG_DMA_CTL_WRITE as WRITE,
    FW_CFG_FILE_DIR,
    FW_CFG_ID,
    FW_CFG_SIGNATURE,
)

RAM = 1 << 20
BUF = 0x2000


def sel(key: int) -> int:
    return SELECT | (key << 16)


def test_select_and_read(guest, ram):
    assert guest.dma(sel(FW_CFG_SIGNATURE) | READ, 4, BUF) == 0
    assert ram.read(BUF, 4) == b"QEMU"


def test_read_continues_and_skip_advances(guest, ram):
    guest.fw.add_file("opt/t", bytes(range(100)))
    select = guest.fw.file_select("opt/t")
    assert guest.dma(sel(select) | READ, 10, BUF) == 0
    assert guest.dma(SKIP, 20) == 0
    assert guest.dma(READ, 5, BUF + 10) == 0
    assert ram.read(BUF, 15) == bytes(range(10)) + bytes(range(30, 35))
    # and the port interface continues at the same offset
    assert guest.read(2) == bytes([35, 36])


def test_read_past_the_end_zero_fills(guest, ram):
    ram.write(BUF, b"\xaa" * 16)
    assert guest.dma(sel(FW_CFG_SIGNATURE) | READ, 12, BUF) == 0
    assert ram.read(BUF, 16) == b"QEMU" + bytes(8) + b"\xaa" * 4


def test_read_of_unknown_key_zero_fills(guest, ram):
    for key in (0x0C, 0x3F, 0x40, 0xFFFF):
        ram.write(BUF, b"\xaa" * 8)
        assert guest.dma(sel(key) | READ, 8, BUF) == 0
        assert ram.read(BUF, 8) == bytes(8)


def test_select_only_and_no_operation(guest, ram):
    """SELECT without READ/WRITE/SKIP selects and transfers nothing; control comes back 0."""
    assert guest.dma(sel(FW_CFG_ID), 100, BUF) == 0
    assert guest.read(4) == b"\3\0\0\0"


def test_read_wins_over_write_and_skip(guest, ram):
    """fw_cfg_dma_transfer tests READ first, then WRITE, then SKIP."""
    assert guest.dma(sel(FW_CFG_SIGNATURE) | READ | WRITE | SKIP, 4, BUF) == 0
    assert ram.read(BUF, 4) == b"QEMU"


def test_write_to_read_only_is_an_error(guest, ram):
    ram.write(BUF, b"XXXX")
    assert guest.dma(sel(FW_CFG_SIGNATURE) | WRITE, 4, BUF) == ERROR
    assert guest.item(FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_write_to_unknown_key_is_an_error(guest, ram):
    assert guest.dma(sel(0x30) | WRITE, 4, BUF) == ERROR
    assert guest.dma(sel(0xFFFF) | WRITE, 4, BUF) == ERROR


def test_write_to_writable_file(guest, ram):
    writes = []
    guest.fw.add_file("etc/rw", bytes(8), read_only=False, on_write=lambda off, n: writes.append((off, n)))
    select = guest.fw.file_select("etc/rw")
    ram.write(BUF, b"abcd")
    assert guest.dma(sel(select) | SKIP, 2) == 0
    assert guest.dma(WRITE, 4, BUF) == 0
    assert guest.fw.file_data("etc/rw") == b"\0\0abcd\0\0"
    assert writes == [(2, 4)]
    # the directory still says 8 bytes, and a read sees the new bytes
    assert guest.dma(sel(select) | READ, 8, BUF + 0x100) == 0
    assert ram.read(BUF + 0x100, 8) == b"\0\0abcd\0\0"


def test_write_past_the_end_is_an_error_and_changes_nothing(guest, ram):
    guest.fw.add_file("etc/rw", bytes(4), read_only=False)
    select = guest.fw.file_select("etc/rw")
    ram.write(BUF, b"abcdef")
    assert guest.dma(sel(select) | WRITE, 6, BUF) == ERROR
    assert guest.fw.file_data("etc/rw") == bytes(4)


def test_dma_address_register_resets_after_a_transfer(guest, ram):
    """A 32-bit address needs only the low-half write: the register is 0 after each transfer."""
    ram.write(0x1000, struct.pack(">IIQ", sel(FW_CFG_SIGNATURE) | READ, 4, BUF))
    guest.bus.write(0x518, (0x1000).to_bytes(4, "big"))
    assert ram.read(0x1000, 4) == bytes(4)
    assert ram.read(BUF, 4) == b"QEMU"
    # a high half alone starts nothing
    ram.write(0x1000, struct.pack(">IIQ", sel(FW_CFG_ID) | READ, 4, BUF))
    guest.bus.write(0x514, (0).to_bytes(4, "big"))
    assert ram.read(BUF, 4) == b"QEMU"
    guest.bus.write(0x518, (0x1000).to_bytes(4, "big"))
    assert ram.read(BUF, 4) == b"\3\0\0\0"


def test_dma_register_ignores_other_widths(guest, ram):
    ram.write(0x1000, struct.pack(">IIQ", sel(FW_CFG_SIGNATURE) | READ, 4, BUF))
    guest.bus.write(0x518, b"\x00\x10")         # 16-bit: invalid
    guest.bus.write(0x51B, b"\x00")             # 8-bit: invalid
    assert ram.read(BUF, 4) == bytes(4)
    assert ram.read(0x1000, 4) != bytes(4)


def test_64bit_write_at_offset_0(fw, ram):
    """Port I/O is at most 32 bits, but the register takes a 64-bit write (MMIO fw_cfg)."""
    ram.write(0x1000, struct.pack(">IIQ", sel(FW_CFG_SIGNATURE) | READ, 4, BUF))
    fw.dma_io.write(0, (0x1000).to_bytes(8, "big"))
    assert ram.read(BUF, 4) == b"QEMU"


# ---- guest addresses outside RAM -----------------------------------------------------------


@pytest.mark.parametrize("access", [RAM, RAM + 0x1000, 0xFEE00000, (1 << 64) - 8, 0xFFFFFFFF_FFFFFFF0])
def test_access_structure_outside_ram(make_guest, access):
    """Nothing can be read or written: no exception, the device still works."""
    mem = GuestMemory(RAM)
    try:
        g = make_guest(FwCfg(mem), mem)
        before = mem.read(0, RAM)
        g.dma_kick(access)
        assert mem.read(0, RAM) == before
        assert g.dma(sel(FW_CFG_SIGNATURE) | READ, 4, BUF) == 0
    finally:
        mem.close()


def test_access_structure_straddling_the_end_of_ram(guest, ram):
    """control is in RAM, the rest is not: ERROR lands in control."""
    at = RAM - 8
    ram.write(at, struct.pack(">II", sel(FW_CFG_SIGNATURE) | READ, 4))
    guest.dma_kick(at)
    assert struct.unpack(">I", ram.read(at, 4))[0] == ERROR


@pytest.mark.parametrize("address", [RAM, RAM - 2, 0xFEC00000, (1 << 64) - 2, (1 << 64) - 1])
def test_read_buffer_outside_ram(guest, ram, address):
    """A READ buffer not wholly in RAM: ERROR, and no byte of RAM changed (all or nothing)."""
    ram.write(RAM - 2, b"\x55\x66")
    assert guest.dma(sel(FW_CFG_SIGNATURE) | READ, 4, address) == ERROR
    assert ram.read(RAM - 2, 2) == b"\x55\x66"


def test_zero_fill_buffer_outside_ram(guest, ram):
    ram.write(RAM - 2, b"\x55\x66")
    assert guest.dma(sel(0x30) | READ, 4, RAM - 2) == ERROR
    assert ram.read(RAM - 2, 2) == b"\x55\x66"


def test_huge_lengths_are_cheap_errors(guest, ram):
    """length up to 4 GiB - 1: bounds are checked before anything is allocated or copied."""
    assert guest.dma(sel(0x30) | READ, 0xFFFFFFFF, BUF) == ERROR
    assert guest.dma(sel(FW_CFG_SIGNATURE) | READ, 0xFFFFFFFF, BUF) == ERROR
    assert ram.read(BUF, 4) == b"QEMU"                  # the part that fitted was copied
    assert guest.dma(sel(FW_CFG_SIGNATURE) | SKIP, 0xFFFFFFFF, BUF) == 0


def test_zero_fill_of_most_of_ram(guest, ram):
    ram.write(0x10000, b"\xaa" * 16)
    ram.write(RAM - 16, b"\xbb" * 16)
    assert guest.dma(sel(0x30) | READ, RAM - 0x10000, 0x10000) == 0
    assert ram.read(0x10000, 16) == bytes(16)
    assert ram.read(RAM - 16, 16) == bytes(16)


def test_write_buffer_outside_ram(guest, ram):
    guest.fw.add_file("etc/rw", b"keep", read_only=False)
    select = guest.fw.file_select("etc/rw")
    assert guest.dma(sel(select) | WRITE, 4, RAM - 2) == ERROR
    assert guest.fw.file_data("etc/rw") == b"keep"


def test_offset_advances_over_a_failed_chunk(guest, ram):
    """As QEMU: the offset moves over the chunk even when its copy failed."""
    assert guest.dma(sel(FW_CFG_SIGNATURE) | READ, 2, RAM) == ERROR
    assert guest.read(2) == b"MU"


def test_above_4g_ram(make_guest):
    """A 64-bit DMA address into RAM above 4 GiB (RAM > 3 GiB is split around the hole)."""
    mem = GuestMemory(3 * (1 << 30) + (1 << 20))
    try:
        g = make_guest(FwCfg(mem), mem)
        at = 1 << 32
        mem.write(at, struct.pack(">IIQ", sel(FW_CFG_SIGNATURE) | READ, 4, at + 0x100))
        g.dma_kick(at)
        assert mem.read(at, 4) == bytes(4)
        assert mem.read(at + 0x100, 4) == b"QEMU"
        # the hole between 3 GiB and 4 GiB is not RAM
        assert g.dma(sel(FW_CFG_SIGNATURE) | READ, 4, 0xC0000000) == ERROR
    finally:
        mem.close()


def test_file_directory_by_dma(guest, ram):
    guest.fw.add_file("opt/x", b"12345")
    assert guest.dma(sel(FW_CFG_FILE_DIR) | READ, 4 + 64 * 2, BUF) == 0
    raw = ram.read(BUF, 4 + 64 * 2)
    assert struct.unpack_from(">I", raw)[0] == 2
    assert struct.unpack_from(">IHH", raw, 4 + 64) == (5, 0x21, 0)
    assert raw[4 + 64 + 8 : 4 + 64 + 8 + 6] == b"opt/x\0"


def test_concurrent_dma_from_many_vcpus(guest, ram):
    """Each transfer (select + read) is atomic: threads reading different files at once each
    get their own file's bytes."""
    fw = guest.fw
    files = {f"opt/{i}": bytes([i]) * (1000 + i) for i in range(8)}
    for name, data in files.items():
        fw.add_file(name, data)
    errors: list[str] = []

    def vcpu(i: int) -> None:
        name = f"opt/{i}"
        select = fw.file_select(name)
        at = 0x10000 + i * 0x1000
        buf = 0x40000 + i * 0x2000
        for _ in range(50):
            ram.write(at, struct.pack(">IIQ", sel(select) | READ, len(files[name]), buf))
            fw.dma_io.write(0, (0).to_bytes(4, "big"))   # high half (a racing thread may clear it)
            fw.dma_io.write(4, at.to_bytes(4, "big"))
            if ram.read(at, 4) != bytes(4) or ram.read(buf, len(files[name])) != files[name]:
                errors.append(name)

    threads = [threading.Thread(target=vcpu, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
