"""fw_cfg selector keys, register bits and port numbers.

Names and values are QEMU's (``include/standard-headers/linux/qemu_fw_cfg.h``,
``hw/nvram/fw_cfg.c``, ``hw/i386/fw_cfg.h``, QEMU 7.2), so a reader can grep QEMU, SeaBIOS,
qboot or Linux's ``drivers/firmware/qemu_fw_cfg.c`` for the same names.
"""
from __future__ import annotations

# ---- where microvm puts it (hw/i386/microvm.c: fw_cfg_init_io_dma(FW_CFG_IO_BASE,
#      FW_CFG_IO_BASE + 4, &address_space_memory)) -----------------------------------------
FW_CFG_IO_BASE = 0x510      # selector (16-bit write) and data (8-bit) overlap here
FW_CFG_CTL_SIZE = 0x02      # the "comb" port range: 0x510 selector, 0x511 data
FW_CFG_DATA_PORT = FW_CFG_IO_BASE + 1
FW_CFG_DMA_IO_BASE = FW_CFG_IO_BASE + 4   # 0x514: 64-bit big-endian DMA address register
FW_CFG_DMA_SIZE = 0x08      # sizeof(dma_addr_t)

# ---- well-known selector keys -------------------------------------------------------------
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_KERNEL_ADDR = 0x07
FW_CFG_KERNEL_SIZE = 0x08
FW_CFG_KERNEL_CMDLINE = 0x09
FW_CFG_INITRD_ADDR = 0x0A
FW_CFG_INITRD_SIZE = 0x0B
FW_CFG_BOOT_DEVICE = 0x0C
FW_CFG_NUMA = 0x0D
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_KERNEL_ENTRY = 0x10
FW_CFG_KERNEL_DATA = 0x11
FW_CFG_INITRD_DATA = 0x12
FW_CFG_CMDLINE_ADDR = 0x13
FW_CFG_CMDLINE_SIZE = 0x14
FW_CFG_CMDLINE_DATA = 0x15
FW_CFG_SETUP_ADDR = 0x16
FW_CFG_SETUP_SIZE = 0x17
FW_CFG_SETUP_DATA = 0x18
FW_CFG_FILE_DIR = 0x19

FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS_MIN = 0x10
FW_CFG_FILE_SLOTS_DFLT = 0x20   # fw_cfg_io's "x-file-slots" default: keys 0x20-0x3f

FW_CFG_WRITE_CHANNEL = 0x4000   # ignored since QEMU 2.4, but still masked off
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0xFFFF & ~(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL)   # 0x3fff
FW_CFG_INVALID = 0xFFFF

# x86 arch-local keys (hw/i386/fw_cfg.h)
FW_CFG_ACPI_TABLES = FW_CFG_ARCH_LOCAL + 0
FW_CFG_SMBIOS_ENTRIES = FW_CFG_ARCH_LOCAL + 1
FW_CFG_IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL + 2
FW_CFG_E820_TABLE = FW_CFG_ARCH_LOCAL + 3
FW_CFG_HPET = FW_CFG_ARCH_LOCAL + 4

FW_CFG_MAX_FILE_PATH = 56       # name[56] in the directory entry, NUL included
FW_CFG_SIG_SIZE = 4
FW_CFG_SIGNATURE_BYTES = b"QEMU"

# FW_CFG_ID bits
FW_CFG_VERSION = 0x01           # the traditional (port) interface; always set
FW_CFG_VERSION_DMA = 0x02

# FWCfgDmaAccess.control bits
FW_CFG_DMA_CTL_ERROR = 0x01
FW_CFG_DMA_CTL_READ = 0x02
FW_CFG_DMA_CTL_SKIP = 0x04
FW_CFG_DMA_CTL_SELECT = 0x08
FW_CFG_DMA_CTL_WRITE = 0x10

FW_CFG_DMA_SIGNATURE = 0x51454D5520434647   # "QEMU CFG", read back from the DMA register
FW_CFG_DMA_ACCESS_SIZE = 16                 # be32 control, be32 length, be64 address

KEY_NAMES: dict[int, str] = {
    FW_CFG_SIGNATURE: "signature",
    FW_CFG_ID: "id",
    FW_CFG_UUID: "uuid",
    FW_CFG_RAM_SIZE: "ram_size",
    FW_CFG_NOGRAPHIC: "nographic",
    FW_CFG_NB_CPUS: "nb_cpus",
    FW_CFG_MACHINE_ID: "machine_id",
    FW_CFG_KERNEL_ADDR: "kernel_addr",
    FW_CFG_KERNEL_SIZE: "kernel_size",
    FW_CFG_KERNEL_CMDLINE: "kernel_cmdline",
    FW_CFG_INITRD_ADDR: "initrd_addr",
    FW_CFG_INITRD_SIZE: "initrd_size",
    FW_CFG_BOOT_DEVICE: "boot_device",
    FW_CFG_NUMA: "numa",
    FW_CFG_BOOT_MENU: "boot_menu",
    FW_CFG_MAX_CPUS: "max_cpus",
    FW_CFG_KERNEL_ENTRY: "kernel_entry",
    FW_CFG_KERNEL_DATA: "kernel_data",
    FW_CFG_INITRD_DATA: "initrd_data",
    FW_CFG_CMDLINE_ADDR: "cmdline_addr",
    FW_CFG_CMDLINE_SIZE: "cmdline_size",
    FW_CFG_CMDLINE_DATA: "cmdline_data",
    FW_CFG_SETUP_ADDR: "setup_addr",
    FW_CFG_SETUP_SIZE: "setup_size",
    FW_CFG_SETUP_DATA: "setup_data",
    FW_CFG_FILE_DIR: "file_dir",
    FW_CFG_ACPI_TABLES: "acpi_tables",
    FW_CFG_SMBIOS_ENTRIES: "smbios_entries",
    FW_CFG_IRQ0_OVERRIDE: "irq0_override",
    FW_CFG_E820_TABLE: "e820_table",
    FW_CFG_HPET: "hpet",
}


def key_name(key: int) -> str:
    """A key's name for logs (``file[N]`` for the file slots), as QEMU's trace points print it."""
    base = key & (FW_CFG_ENTRY_MASK | FW_CFG_ARCH_LOCAL)
    if base in KEY_NAMES:
        return KEY_NAMES[base]
    if not base & FW_CFG_ARCH_LOCAL and base >= FW_CFG_FILE_FIRST:
        return f"file[{base - FW_CFG_FILE_FIRST}]"
    return "unknown"
