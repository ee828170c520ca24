"""The device filled as QEMU 7.2's microvm fills it, read back the way a firmware would."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from microvm_fw_cfg.items import E820_RAM, E820_RESERVED, E820Entry, parse_e820
from microvm_fw_cfg.keys import (
    FW_CFG_DMA_CTL_READ,
    FW_CFG_DMA_CTL_SELECT,
    FW_CFG_FILE_DIR,
    FW_CFG_ID,
    FW_CFG_IRQ0_OVERRIDE,
    FW_CFG_KERNEL_DATA,
    FW_CFG_MAX_CPUS,
    FW_CFG_NB_CPUS,
    FW_CFG_RAM_SIZE,
    FW_CFG_SETUP_DATA,
    FW_CFG_SIGNATURE,
)
from microvm_fw_cfg.linux import load_linux, load_pvh
from microvm_fw_cfg.machine import MicrovmFwCfgConfig, microvm_fw_cfg

from fwcfg_images import bzimage

RAM = 1 << 20
QEMU_ROMS = Path("/usr/share/qemu")
FAKE_ROM = b"\x55\xaa\x03" + bytes(3 * 512 - 3)


def cfg(**kw) -> MicrovmFwCfgConfig:
    base = dict(ram_size=RAM, ram_regions=[(0, RAM)], cpus=2, max_cpus=4)
    base.update(kw)
    return MicrovmFwCfgConfig(**base)


def test_without_kernel(ram, make_guest):
    g = make_guest(microvm_fw_cfg(ram, cfg()))
    assert g.item(FW_CFG_SIGNATURE, 4) == b"QEMU"
    assert g.item(FW_CFG_ID, 4) == b"\3\0\0\0"
    assert g.item(FW_CFG_NB_CPUS, 2) == b"\2\0"
    assert g.item(FW_CFG_MAX_CPUS, 2) == b"\4\0"
    assert g.item(FW_CFG_RAM_SIZE, 8) == RAM.to_bytes(8, "little")
    assert g.item(FW_CFG_IRQ0_OVERRIDE, 4) == b"\1\0\0\0"
    assert [(n, size, sel) for size, sel, _, n in g.directory()] == [
        (b"bios-geometry", 0, 0x20),
        (b"bootorder", 0, 0x21),
        (b"etc/boot-fail-wait", 4, 0x22),
        (b"etc/e820", 40, 0x23),
    ]
    select, size = g.find(b"etc/e820")
    assert parse_e820(g.item(select, size)) == [
        E820Entry(0xFEFFC000, 0x4000, E820_RESERVED),
        E820Entry(0, RAM, E820_RAM),
    ]


def test_with_bzimage_and_option_roms(ram, make_guest):
    img = bzimage()
    boot = load_linux(img, "console=ttyS0", b"initrd", below_4g_mem_size=RAM)
    asked = []
    fw = microvm_fw_cfg(ram, cfg(linux=boot, rom_loader=lambda name: asked.append(name) or FAKE_ROM,
                                 boot_devices=[(1, "/virtio-mmio@00000000feb00e00/")]))
    g = make_guest(fw)
    assert asked == ["linuxboot_dma.bin"]
    names = [n for _, _, _, n in g.directory()]
    assert names == [b"bios-geometry", b"bootorder", b"etc/boot-fail-wait", b"etc/e820", b"genroms/linuxboot_dma.bin"]
    select, size = g.find(b"bootorder")
    assert g.item(select, size) == b"/rom@genroms/linuxboot_dma.bin\n/virtio-mmio@00000000feb00e00/\0"
    select, size = g.find(b"genroms/linuxboot_dma.bin")
    assert g.item(select, size) == FAKE_ROM
    for key, data in boot.items.items():
        assert fw.item(key) == data
    # the kernel by DMA, as linuxboot_dma.bin fetches it
    kernel = boot.items[FW_CFG_KERNEL_DATA]
    assert g.dma(FW_CFG_DMA_CTL_SELECT | (FW_CFG_KERNEL_DATA << 16) | FW_CFG_DMA_CTL_READ, len(kernel), 0x10000) == 0
    assert ram.read(0x10000, len(kernel)) == kernel


def test_without_option_roms(ram, make_guest):
    boot = load_linux(bzimage(), below_4g_mem_size=RAM)
    g = make_guest(microvm_fw_cfg(ram, cfg(linux=boot, option_roms=False)))
    assert b"genroms/linuxboot_dma.bin" not in [n for _, _, _, n in g.directory()]
    assert g.find(b"bootorder")[1] == 0
    assert g.fw.item(FW_CFG_SETUP_DATA) == boot.items[FW_CFG_SETUP_DATA]


def test_option_roms_need_a_loader(ram):
    boot = load_linux(bzimage(), below_4g_mem_size=RAM)
    with pytest.raises(ValueError):
        microvm_fw_cfg(ram, cfg(linux=boot))


def test_pvh_kernel_uses_pvh_rom(ram, make_guest):
    boot = load_pvh(b"\x7fELF", entry=0x100000, load_low=0x100000, load_high=0x101000, below_4g_mem_size=RAM)
    g = make_guest(microvm_fw_cfg(ram, cfg(linux=boot, rom_loader=lambda name: b"\x55\xaa\x01" + bytes(509))))
    select, size = g.find(b"bootorder")
    assert g.item(select, size) == b"/rom@genroms/pvh.bin\0"


def test_extra_files_and_strict(ram, make_guest):
    g = make_guest(microvm_fw_cfg(ram, cfg(extra_files=[("opt/org.example/x", b"hello"), ("etc/fdt", b"\xd0\x0d\xfe\xed")],
                                          boot_devices=[(0, "/a")], boot_strict=True)))
    names = [n for _, _, _, n in g.directory()]
    assert names == sorted(names)
    assert b"opt/org.example/x" in names and b"etc/fdt" in names
    select, size = g.find(b"bootorder")
    assert g.item(select, size) == b"/a\nHALT\0"


@pytest.mark.parametrize("name", ["linuxboot_dma.bin", "pvh.bin"])
def test_real_option_rom(ram, make_guest, name):
    """With Debian's qemu-system-data installed, the ROM QEMU itself would put there."""
    path = QEMU_ROMS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (apt-get install qemu-system-data provides it)")
    rom = path.read_bytes()
    assert rom[:2] == b"\x55\xaa" and rom[2] * 512 == len(rom)     # an option ROM, size in sectors
    boot = (load_linux(bzimage(), below_4g_mem_size=RAM) if name == "linuxboot_dma.bin"
            else load_pvh(b"\x7fELF", entry=0x100000, load_low=0x100000, load_high=0x200000, below_4g_mem_size=RAM))
    g = make_guest(microvm_fw_cfg(ram, cfg(linux=boot, rom_loader=lambda n: (QEMU_ROMS / n).read_bytes())))
    select, size = g.find(f"genroms/{name}".encode())
    assert size == len(rom)
    assert g.dma(FW_CFG_DMA_CTL_SELECT | (select << 16) | FW_CFG_DMA_CTL_READ, size, 0x20000) == 0
    assert ram.read(0x20000, size) == rom
    g.select(FW_CFG_FILE_DIR)
    assert struct.unpack(">I", g.read(4))[0] == 5
