"""The traditional interface: selector at 0x510, data at 0x511, and the DMA register's signature,
byte by byte through a PIO bus as a vCPU would reach them."""
from __future__ import annotations

import struct

import pytest

from microvm_fw_cfg.device import FwCfg, FwCfgError
from microvm_fw_cfg.keys import (
    FW_CFG_ARCH_LOCAL,
    FW_CFG_BOOT_MENU,
    FW_CFG_FILE_DIR,
    FW_CFG_ID,
    FW_CFG_KERNEL_ADDR,
    FW_CFG_NOGRAPHIC,
    FW_CFG_SIGNATURE,
    FW_CFG_UUID,
    FW_CFG_WRITE_CHANNEL,
)


def test_signature_byte_by_byte(guest):
    guest.select(FW_CFG_SIGNATURE)
    assert [guest.inp(0x511, 1) for _ in range(4)] == list(b"QEMU")


def test_signature_is_selected_after_reset(guest):
    """fw_cfg_reset selects FW_CFG_SIGNATURE, so a firmware may read without selecting."""
    assert guest.read(4) == b"QEMU"
    guest.select(FW_CFG_ID)
    guest.read(2)
    guest.fw.reset()
    assert guest.read(4) == b"QEMU"


def test_id_has_traditional_and_dma_bits(guest):
    assert struct.unpack("<I", guest.item(FW_CFG_ID, 4))[0] == 0x3


def test_id_without_dma_and_no_dma_ports(make_guest):
    g = make_guest(FwCfg(None, dma_enabled=False))
    assert struct.unpack("<I", g.item(FW_CFG_ID, 4))[0] == 0x1
    assert [r[:2] for r in g.fw.port_ranges()] == [(0x510, 2)]
    assert g.inp(0x514, 4) == 0xFFFFFFFF      # nothing there: the ISA bus floats high


def test_dma_needs_memory():
    with pytest.raises(FwCfgError):
        FwCfg(None)


def test_port_ranges_are_microvms(fw):
    assert [(b, n, name) for b, n, _, name in fw.port_ranges()] == [(0x510, 2, "fw_cfg"), (0x514, 8, "fw_cfg.dma")]


def test_realize_items(make_guest, ram):
    g = make_guest(FwCfg(ram, uuid=bytes(range(16)), nographic=False, boot_menu=True))
    assert g.item(FW_CFG_UUID, 16) == bytes(range(16))
    assert g.item(FW_CFG_NOGRAPHIC, 2) == b"\0\0"
    assert g.item(FW_CFG_BOOT_MENU, 2) == b"\1\0"
    select, size = g.find(b"etc/boot-fail-wait")
    assert g.item(select, size) == b"\xff\xff\xff\xff"


def test_boot_wait_files(make_guest, ram):
    g = make_guest(FwCfg(ram, splash_time=2500, reboot_timeout=1000))
    select, size = g.find(b"etc/boot-menu-wait")
    assert g.item(select, size) == (2500).to_bytes(2, "little")
    select, size = g.find(b"etc/boot-fail-wait")
    assert g.item(select, size) == (1000).to_bytes(4, "little")


def test_nographic_defaults_on(guest):
    """This VMM has no display: QEMU's -nographic, so NOGRAPHIC reads 1."""
    assert guest.item(FW_CFG_NOGRAPHIC, 2) == b"\1\0"


def test_reads_past_the_end_return_zero(guest):
    guest.select(FW_CFG_SIGNATURE)
    assert guest.read(10) == b"QEMU" + bytes(6)


def test_both_comb_ports_read_data(guest):
    """QEMU's comb region ignores the offset on a byte read: 0x510 reads data too."""
    guest.select(FW_CFG_SIGNATURE)
    assert bytes([guest.inp(0x510, 1), guest.inp(0x511, 1), guest.inp(0x510, 1), guest.inp(0x511, 1)]) == b"QEMU"


def test_selecting_restarts_at_offset_zero(guest):
    guest.select(FW_CFG_SIGNATURE)
    guest.read(3)
    guest.select(FW_CFG_SIGNATURE)
    assert guest.read(4) == b"QEMU"


@pytest.mark.parametrize("key", [FW_CFG_KERNEL_ADDR, 0x1A, 0x3F, 0x40, 0x3FFF, FW_CFG_ARCH_LOCAL | 0x10, 0xBFFF, 0xFFFF])
def test_unknown_keys_read_zero(guest, key):
    """An unset key inside the table selects an empty item, one past it selects nothing:
    reads are 0 either way and the device keeps working."""
    guest.select(key)
    assert guest.read(8) == bytes(8)
    guest.select(FW_CFG_SIGNATURE)
    assert guest.read(4) == b"QEMU"


def test_write_channel_bit_is_ignored(guest):
    guest.select(FW_CFG_WRITE_CHANNEL | FW_CFG_SIGNATURE)
    assert guest.read(4) == b"QEMU"


def test_data_writes_are_ignored(guest):
    guest.select(FW_CFG_SIGNATURE)
    guest.out(0x511, 0x41, 1)
    guest.out(0x510, 0x41, 1)      # a byte write to 0x510 is a data write, not a select
    assert guest.read(4) == b"QEMU"


def test_invalid_widths(guest):
    """Only 16-bit selector writes and 8-bit data reads are valid; QEMU reads the rest as 0."""
    guest.select(FW_CFG_SIGNATURE)
    assert guest.inp(0x510, 2) == 0
    assert guest.read(4) == b"QEMU"                 # the bad read consumed nothing
    guest.select(FW_CFG_SIGNATURE)
    guest.out(0x510, FW_CFG_ID, 4)                  # straddles past the range: the bus drops it
    assert guest.read(4) == b"QEMU"
    guest.out(0x511, FW_CFG_ID, 2)                  # likewise
    assert guest.inp(0x511, 2) == 0xFFFF            # and floats high


def test_dma_register_reads_signature(guest):
    assert bytes(guest.inp(0x514 + i, 1) for i in range(8)) == b"QEMU CFG"
    # 32-bit reads: the bytes in port order, i.e. eax = "QEMU" little-endian
    assert guest.inp(0x514, 4).to_bytes(4, "little") == b"QEMU"
    assert guest.inp(0x518, 4).to_bytes(4, "little") == b" CFG"
    assert guest.inp(0x516, 2).to_bytes(2, "little") == b"MU"


def test_file_directory_format(guest):
    """Key 0x19: be32 count, then 64-byte entries, the whole x-file-slots array (0x20)."""
    guest.fw.add_file("opt/b", b"bb")
    guest.fw.add_file("opt/a", b"a")
    guest.select(FW_CFG_FILE_DIR)
    raw = guest.read(4 + 64 * 0x20 + 4)
    assert raw[-4:] == bytes(4)                      # 2052 bytes, then past the end
    assert guest.fw.item(FW_CFG_FILE_DIR) == raw[:-4]
    (count,) = struct.unpack_from(">I", raw)
    assert count == 3
    entries = [struct.unpack_from(">IHH56s", raw, 4 + 64 * i) for i in range(count)]
    assert [(s, sel, r, n.rstrip(b"\0")) for s, sel, r, n in entries] == [
        (4, 0x20, 0, b"etc/boot-fail-wait"),
        (1, 0x21, 0, b"opt/a"),
        (2, 0x22, 0, b"opt/b"),
    ]
    assert raw[4 + 64 * count : 4 + 64 * 0x20] == bytes(64 * (0x20 - count))


def test_files_are_sorted_by_name_and_move(guest):
    """fw_cfg_add_file_callback keeps the directory in strcmp order: a later, smaller name
    takes an earlier selector and moves the others up."""
    fw = guest.fw
    assert fw.add_file("z", b"zz") == 0x21
    assert fw.add_file("a", b"a") == 0x20
    assert fw.add_file("m", b"mmm") == 0x22   # after etc/boot-fail-wait
    assert fw.add_file("B", b"B") == 0x20            # uppercase sorts before lowercase
    names = [(sel, n) for _, sel, _, n in guest.directory()]
    assert names == [(0x20, b"B"), (0x21, b"a"), (0x22, b"etc/boot-fail-wait"), (0x23, b"m"), (0x24, b"z")]
    for name, data in [(b"B", b"B"), (b"a", b"a"), (b"m", b"mmm"), (b"z", b"zz")]:
        select, size = guest.find(name)
        assert guest.item(select, size + 1) == data + b"\0"
        assert fw.file_select(name) == select
        assert fw.file_data(name) == data


def test_modify_file_keeps_its_slot(guest):
    fw = guest.fw
    fw.add_file("bootorder", b"")
    before = fw.file_select("bootorder")
    fw.modify_file("bootorder", b"/rom@genroms/x\0")
    assert fw.file_select("bootorder") == before
    assert guest.find(b"bootorder") == (before, 15)
    fw.modify_file("new", b"n")                        # absent: added
    assert guest.find(b"new")[1] == 1


def test_host_side_errors(fw):
    with pytest.raises(FwCfgError, match="duplicate"):
        fw.add_file("etc/boot-fail-wait", b"")
    with pytest.raises(FwCfgError, match="longer"):
        fw.add_file("x" * 56, b"")
    fw.add_file("x" * 55, b"")
    with pytest.raises(FwCfgError):
        fw.add_file("", b"")
    with pytest.raises(FwCfgError, match="already set"):
        fw.add_bytes(FW_CFG_SIGNATURE, b"XXXX")
    with pytest.raises(FwCfgError, match="outside"):
        fw.add_bytes(0x40, b"")
    for i in range(0x20 - 2):
        fw.add_file(f"opt/{i:02}", b"")
    with pytest.raises(FwCfgError, match="no file slot"):
        fw.add_file("opt/full", b"")


def test_file_slots_setting(make_guest, ram):
    g = make_guest(FwCfg(ram, file_slots=0x10))
    g.select(FW_CFG_FILE_DIR)
    assert len(g.fw.item(FW_CFG_FILE_DIR)) == 4 + 64 * 0x10
    g.select(0x30)                                     # past 0x20 + 0x10: nothing
    assert g.read(2) == b"\0\0"
    with pytest.raises(FwCfgError):
        FwCfg(ram, file_slots=0x0F)


def test_numbered_items_and_modify(guest):
    fw = guest.fw
    fw.add_i16(0x05, 3)
    fw.add_i32(0x07, 0x100000)
    fw.add_i64(0x03, 1 << 33)
    fw.add_string(0x15, "console=ttyS0")
    fw.add_i32(FW_CFG_ARCH_LOCAL | 2, 1)
    assert guest.item(0x05, 2) == b"\3\0"
    assert guest.item(0x07, 4) == b"\0\0\x10\0"
    assert guest.item(0x03, 8) == (1 << 33).to_bytes(8, "little")
    assert guest.item(0x15, 14) == b"console=ttyS0\0"
    assert guest.item(FW_CFG_ARCH_LOCAL | 2, 4) == b"\1\0\0\0"
    assert guest.item(0x02 | FW_CFG_ARCH_LOCAL, 4) == b"\1\0\0\0"   # arch table, not generic UUID
    fw.modify_string(0x15, "x")
    fw.modify_i16(0x05, 4)
    assert guest.item(0x15, 3) == b"x\0\0"
    assert guest.item(0x05, 2) == b"\4\0"


def test_select_callback(guest):
    seen = []
    guest.fw.add_file("etc/cb", b"data", on_select=lambda: seen.append(1))
    select, _ = guest.find(b"etc/cb")
    guest.select(select)
    assert seen == [1]
    assert guest.read(4) == b"data"
