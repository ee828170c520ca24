"""x86_load_linux's split of a bzImage into fw_cfg items, against synthetic images."""
from __future__ import annotations

import struct

import pytest

from microvm_fw_cfg.keys import (
    FW_CFG_CMDLINE_ADDR,
    FW_CFG_CMDLINE_DATA,
    FW_CFG_CMDLINE_SIZE,
    FW_CFG_INITRD_ADDR,
    FW_CFG_INITRD_DATA,
    FW_CFG_INITRD_SIZE,
    FW_CFG_KERNEL_ADDR,
    FW_CFG_KERNEL_DATA,
    FW_CFG_KERNEL_ENTRY,
    FW_CFG_KERNEL_SIZE,
    FW_CFG_SETUP_ADDR,
    FW_CFG_SETUP_DATA,
    FW_CFG_SETUP_SIZE,
)
from microvm_fw_cfg.linux import LinuxBootError, load_linux, load_pvh, vga_mode

from fwcfg_images import bzimage

MiB = 1 << 20
RAM = 256 * MiB


def u32(b: bytes) -> int:
    return struct.unpack("<I", b)[0]


def test_split_and_addresses():
    img = bzimage(setup_sects=4)
    boot = load_linux(img, "console=ttyS0", below_4g_mem_size=RAM)
    it = boot.items
    assert u32(it[FW_CFG_SETUP_SIZE]) == 5 * 512
    assert u32(it[FW_CFG_SETUP_ADDR]) == 0x10000
    assert u32(it[FW_CFG_KERNEL_ADDR]) == 0x100000
    assert u32(it[FW_CFG_CMDLINE_ADDR]) == 0x20000
    assert it[FW_CFG_KERNEL_DATA] == img[5 * 512 :]
    assert u32(it[FW_CFG_KERNEL_SIZE]) == len(img) - 5 * 512
    assert it[FW_CFG_CMDLINE_DATA] == b"console=ttyS0\0"
    assert u32(it[FW_CFG_CMDLINE_SIZE]) == 14
    assert boot.option_rom == "linuxboot_dma.bin"
    assert FW_CFG_INITRD_DATA not in it and FW_CFG_KERNEL_ENTRY not in it
    # QEMU's fw_cfg_add order: cmdline, (initrd), kernel, setup
    assert list(it) == [
        FW_CFG_CMDLINE_ADDR, FW_CFG_CMDLINE_SIZE, FW_CFG_CMDLINE_DATA,
        FW_CFG_KERNEL_ADDR, FW_CFG_KERNEL_SIZE, FW_CFG_KERNEL_DATA,
        FW_CFG_SETUP_ADDR, FW_CFG_SETUP_SIZE, FW_CFG_SETUP_DATA,
    ]


def test_setup_header_is_patched_and_the_rest_kept():
    img = bzimage()
    setup = load_linux(img, "root=/dev/vda", below_4g_mem_size=RAM).items[FW_CFG_SETUP_DATA]
    assert len(setup) == 5 * 512
    assert setup[0x210] == 0xB0                                   # type_of_loader: QEMU
    assert setup[0x211] == 0x81                                   # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<H", setup, 0x224)[0] == 0x20000 - 0x10000 - 0x200   # heap_end_ptr
    assert struct.unpack_from("<I", setup, 0x228)[0] == 0x20000   # cmd_line_ptr
    assert struct.unpack_from("<II", setup, 0x218) == (0, 0)      # no initrd
    assert struct.unpack_from("<Q", setup, 0x250)[0] == 0
    fields = {0x210, 0x211, 0x224, 0x225, 0x228, 0x229, 0x22A, 0x22B}   # loader, flags, heap, cmdline
    assert all(setup[i] == img[i] for i in range(len(setup)) if i not in fields)


def test_setup_sects_zero_means_four():
    img = bzimage(setup_sects=0)
    boot = load_linux(img, below_4g_mem_size=RAM)
    assert u32(boot.items[FW_CFG_SETUP_SIZE]) == 5 * 512


def test_large_setup_only_patches_the_first_8k():
    img = bzimage(setup_sects=30)
    boot = load_linux(img, below_4g_mem_size=RAM)
    setup = boot.items[FW_CFG_SETUP_DATA]
    assert len(setup) == 31 * 512
    assert setup[8192:] == img[8192 : 31 * 512]


def test_initrd_placement():
    """(initrd_max - size) & ~4095, with initrd_max from initrd_addr_max, below RAM's end."""
    initrd = b"I" * 10000
    boot = load_linux(bzimage(initrd_addr_max=0x7FFFFFFF), initrd=initrd, below_4g_mem_size=RAM)
    addr = (RAM - 1 - len(initrd)) & ~4095
    assert u32(boot.items[FW_CFG_INITRD_ADDR]) == addr == boot.initrd_addr
    assert u32(boot.items[FW_CFG_INITRD_SIZE]) == len(initrd)
    assert boot.items[FW_CFG_INITRD_DATA] == initrd
    assert struct.unpack_from("<II", boot.items[FW_CFG_SETUP_DATA], 0x218) == (addr, len(initrd))

    low = load_linux(bzimage(initrd_addr_max=0x1000000 - 1), initrd=initrd, below_4g_mem_size=RAM)
    assert low.initrd_addr == (0x1000000 - 1 - len(initrd)) & ~4095


def test_initrd_limits_by_protocol():
    initrd = b"I" * 4096
    big = 3 << 30
    # XLF_CAN_BE_LOADED_ABOVE_4G (protocol >= 2.12): as high as RAM below 4 GiB allows
    above = load_linux(bzimage(xloadflags=2, initrd_addr_max=0x7FFFFFFF), initrd=initrd, below_4g_mem_size=big)
    assert above.initrd_addr == (big - 1 - 4096) & ~4095
    # the flag on an older protocol is ignored
    old = load_linux(bzimage(protocol=0x20B, xloadflags=2), initrd=initrd, below_4g_mem_size=big)
    assert old.initrd_addr == (0x7FFFFFFF - 4096) & ~4095
    # before 2.03 the limit is 0x37ffffff
    ancient = load_linux(bzimage(protocol=0x202), initrd=initrd, below_4g_mem_size=big)
    assert ancient.initrd_addr == (0x37FFFFFF - 4096) & ~4095
    # acpi_data_size is kept free at the top (microvm passes 0)
    acpi = load_linux(bzimage(), initrd=initrd, below_4g_mem_size=RAM, acpi_data_size=0x20000)
    assert acpi.initrd_addr == (RAM - 0x20000 - 1 - 4096) & ~4095


def test_initrd_too_large():
    with pytest.raises(LinuxBootError, match="too large"):
        load_linux(bzimage(), initrd=bytes(RAM), below_4g_mem_size=RAM)


def test_old_protocols():
    """2.01: high but ancient (setup at 0x90000, cmdline below 0x9a000, old cmdline magic);
    no LOADED_HIGH: a low kernel at 0x10000."""
    cmd = "a" * 20
    boot = load_linux(bzimage(protocol=0x201), cmd, below_4g_mem_size=RAM)
    cmdline_addr = 0x9A000 - ((20 + 16) & ~15)
    assert (boot.setup_addr, boot.kernel_addr, boot.cmdline_addr) == (0x90000, 0x100000, cmdline_addr)
    setup = boot.items[FW_CFG_SETUP_DATA]
    assert struct.unpack_from("<HH", setup, 0x20) == (0xA33F, cmdline_addr - 0x90000)
    assert struct.unpack_from("<I", setup, 0x228)[0] == 0                 # not written before 2.02
    assert struct.unpack_from("<H", setup, 0x224)[0] == cmdline_addr - 0x90000 - 0x200
    assert setup[0x210] == 0xB0 and setup[0x211] == 0x81

    low = load_linux(bzimage(loadflags=0), below_4g_mem_size=RAM)
    assert (low.setup_addr, low.kernel_addr) == (0x90000, 0x10000)

    v200 = load_linux(bzimage(protocol=0x200), below_4g_mem_size=RAM).items[FW_CFG_SETUP_DATA]
    assert v200[0x210] == 0xB0 and v200[0x211] == 0x01                   # no heap before 2.01


def test_no_hdrs_is_an_ancient_zimage():
    """Without HdrS (and not ELF/multiboot) QEMU boots it as protocol 0: low, no loader id,
    and no initrd."""
    img = bzimage(hdrs=False)
    boot = load_linux(img, below_4g_mem_size=RAM)
    assert boot.protocol == 0
    assert (boot.setup_addr, boot.kernel_addr) == (0x90000, 0x10000)
    assert boot.items[FW_CFG_SETUP_DATA][0x210] == img[0x210]
    with pytest.raises(LinuxBootError, match="too old"):
        load_linux(img, initrd=b"x", below_4g_mem_size=RAM)


def test_invalid_header():
    with pytest.raises(LinuxBootError):
        load_linux(bzimage()[:1000], below_4g_mem_size=RAM)
    with pytest.raises(LinuxBootError):
        load_linux(b"", below_4g_mem_size=RAM)
    with pytest.raises(LinuxBootError):
        load_linux(bzimage(), "a\0b", below_4g_mem_size=RAM)


@pytest.mark.parametrize(
    "cmdline, mode",
    [
        (b"console=ttyS0", None),
        (b"vga=normal", 0xFFFF),
        (b"vga=ext quiet", 0xFFFE),
        (b"x vga=ask", 0xFFFD),
        (b"vga=0x317", 0x317),
        (b"vga=791 quiet", 791),
        (b"vga=017", 0o17),
        (b"vga=0", 0),
        (b"novga=5", 5),          # QEMU's strstr matches inside another word too
    ],
)
def test_vga_mode(cmdline, mode):
    assert vga_mode(cmdline) == mode


@pytest.mark.parametrize("cmdline", [b"vga=", b"vga=foo", b"vga=12x", b"vga=08", b"vga=0x", b"vga=99999999999"])
def test_vga_mode_invalid(cmdline):
    with pytest.raises(LinuxBootError, match="vga="):
        vga_mode(cmdline)


def test_vga_written_to_vid_mode():
    setup = load_linux(bzimage(), "vga=0x317", below_4g_mem_size=RAM).items[FW_CFG_SETUP_DATA]
    assert struct.unpack_from("<H", setup, 0x1FA)[0] == 0x317


def test_dtb_appended_as_setup_data():
    payload = b"K" * 1001
    dtb = b"\xd0\x0d\xfe\xed" + b"D" * 60
    boot = load_linux(bzimage(payload=payload), dtb=dtb, below_4g_mem_size=RAM)
    kernel = boot.items[FW_CFG_KERNEL_DATA]
    offset = (1001 + 15) & ~15
    assert kernel[:1001] == payload and kernel[1001:offset] == bytes(offset - 1001)
    assert struct.unpack_from("<QII", kernel, offset) == (0, 2, len(dtb))
    assert kernel[offset + 16 :] == dtb
    assert u32(boot.items[FW_CFG_KERNEL_SIZE]) == offset + 16 + len(dtb)
    assert struct.unpack_from("<Q", boot.items[FW_CFG_SETUP_DATA], 0x250)[0] == 0x100000 + offset
    with pytest.raises(LinuxBootError, match="too old"):
        load_linux(bzimage(protocol=0x208), dtb=dtb, below_4g_mem_size=RAM)


def test_option_rom_without_dma():
    assert load_linux(bzimage(), below_4g_mem_size=RAM, dma=False).option_rom == "linuxboot.bin"


def test_pvh_items():
    header = b"\x7fELF" + bytes(100)
    boot = load_pvh(header, entry=0x1000123, load_low=0x1000000, load_high=0x1800000,
                    cmdline="console=ttyS0", initrd=b"R" * 5000, below_4g_mem_size=RAM)
    it = boot.items
    assert boot.option_rom == "pvh.bin"
    assert u32(it[FW_CFG_KERNEL_ENTRY]) == 0x1000123
    assert u32(it[FW_CFG_KERNEL_ADDR]) == 0x1000000
    assert u32(it[FW_CFG_KERNEL_SIZE]) == 0x800000
    assert it[FW_CFG_CMDLINE_DATA] == b"console=ttyS0\0" and u32(it[FW_CFG_CMDLINE_SIZE]) == 14
    assert u32(it[FW_CFG_SETUP_SIZE]) == 8192
    assert it[FW_CFG_SETUP_DATA] == header + bytes(8192 - len(header))
    assert u32(it[FW_CFG_INITRD_ADDR]) == (RAM - 1 - 5000) & ~4095
    assert FW_CFG_CMDLINE_ADDR not in it and FW_CFG_KERNEL_DATA not in it and FW_CFG_SETUP_ADDR not in it
    with pytest.raises(LinuxBootError):
        load_pvh(header, entry=0, load_low=0, load_high=0, below_4g_mem_size=RAM)
    with pytest.raises(LinuxBootError):
        load_pvh(b"MZ", entry=1, load_low=0, load_high=0, below_4g_mem_size=RAM)
