"""The kernel items QEMU's ``x86_load_linux`` (``hw/i386/x86.c``, QEMU 7.2) puts in fw_cfg.

A firmware boot does not load the kernel itself: the option ROM (``linuxboot_dma.bin``, or
``pvh.bin`` for an ELF ``vmlinux``) reads these items and places them. For a bzImage QEMU
splits the file at ``(setup_sects + 1) * 512`` (4 setup sectors when the field is 0):

* the **setup** part (boot sector + real-mode setup) goes to ``SETUP_DATA``, with its header
  patched as a boot loader would: ``cmd_line_ptr`` (0x228; before protocol 2.02 the old
  ``0xA33F`` magic and offset at 0x20/0x22), ``vid_mode`` (0x1fa, from ``vga=``),
  ``type_of_loader`` 0xB0 (QEMU's loader id, protocol >= 2.00), ``loadflags`` |= CAN_USE_HEAP
  with ``heap_end_ptr`` (0x224; protocol >= 2.01), ``ramdisk_image``/``ramdisk_size``
  (0x218/0x21c) and ``setup_data`` (0x250, a DTB);
* the **protected-mode** part goes to ``KERNEL_DATA``, a DTB appended as a ``setup_data``
  node (16-byte aligned) when one is given.

Addresses depend on the protocol version: recent kernels (>= 2.02, loaded high) get setup at
0x10000, the command line at 0x20000 and the kernel at 1 MiB; older ones 0x90000 and
``0x9a000 - cmdline_size``, and kernel 0x10000 when not loaded high. The initrd goes as high
as the kernel allows below ``below_4g_mem_size - acpi_data_size``, page aligned.

QEMU 7.2.0 also appended a 32-byte random ``SETUP_RNG_SEED`` node; that was reverted in
7.2.1 and 8.0 (it broke measured and some firmware boots) and is not done here.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from .keys import (
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

HEADER_SIZE = 8192          # what x86_load_linux reads first ("uint8_t header[8192]")
HDRS_MAGIC = b"HdrS"        # at 0x202
LOADER_TYPE_QEMU = 0xB0     # type_of_loader: high nybble B is QEMU's, revision 0
LOADED_HIGH = 0x01          # loadflags bits
CAN_USE_HEAP = 0x80
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1   # xloadflags
SETUP_DTB = 2               # setup_data types
OLD_CMDLINE_MAGIC = 0xA33F

# header offsets (Documentation/x86/boot.rst)
OFF_SETUP_SECTS = 0x1F1
OFF_VID_MODE = 0x1FA
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_XLOADFLAGS = 0x236
OFF_SETUP_DATA = 0x250
OFF_OLD_CMD_LINE_MAGIC = 0x20
OFF_OLD_CMD_LINE_OFFSET = 0x22


class LinuxBootError(ValueError):
    """The kernel, initrd or command line cannot be booted (QEMU prints and exits)."""


@dataclass(frozen=True)
class LinuxBoot:
    """What x86_load_linux leaves: the fw_cfg items (in QEMU's order) and the option ROM
    the firmware runs to boot them."""

    items: dict[int, bytes]
    option_rom: str
    protocol: int = 0
    setup_addr: int | None = None
    kernel_addr: int | None = None
    cmdline_addr: int | None = None
    initrd_addr: int | None = None
    setup: bytes = field(default=b"", repr=False)
    kernel: bytes = field(default=b"", repr=False)


def _u16(b: bytes | bytearray, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "little")


def _u32(b: bytes | bytearray, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "little")


def _le32(v: int) -> bytes:
    return (v & 0xFFFFFFFF).to_bytes(4, "little")


def _cmdline_bytes(cmdline: str | bytes) -> bytes:
    raw = cmdline.encode() if isinstance(cmdline, str) else bytes(cmdline)
    if b"\0" in raw:
        raise LinuxBootError("the kernel command line contains a NUL byte")
    return raw


_NUMBER = re.compile(rb"\s*\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def vga_mode(cmdline: bytes) -> int | None:
    """The ``vga=`` value QEMU writes to ``vid_mode`` (``normal``/``ext``/``ask`` or a C
    number), or None without one. Like QEMU, the first ``vga=`` anywhere counts."""
    pos = cmdline.find(b"vga=")
    if pos < 0:
        return None
    rest = cmdline[pos + 4 :]
    for word, mode in ((b"normal", 0xFFFF), (b"ext", 0xFFFE), (b"ask", 0xFFFD)):
        if rest.startswith(word):
            return mode
    m = _NUMBER.match(rest)
    end = rest[m.end() : m.end() + 1] if m else b"?"
    if m is None or end not in (b"", b" "):
        raise LinuxBootError("invalid 'vga=' kernel parameter")
    value = int(m.group(1), 0) if not re.fullmatch(rb"0[0-7]+", m.group(1)) else int(m.group(1), 8)
    if value > 0xFFFFFFFF:
        raise LinuxBootError("invalid 'vga=' kernel parameter")
    return value & 0xFFFF


def _initrd_addr(initrd_max: int, size: int) -> int:
    if size >= initrd_max:
        raise LinuxBootError(f"initrd is too large (max: {initrd_max}, need {size})")
    return (initrd_max - size) & ~4095


def load_linux(
    kernel: bytes,
    cmdline: str | bytes = b"",
    initrd: bytes | None = None,
    *,
    below_4g_mem_size: int,
    dtb: bytes | None = None,
    acpi_data_size: int = 0,
    dma: bool = True,
) -> LinuxBoot:
    """Split a Linux boot-protocol image (bzImage, or the ancient zImage QEMU falls back to
    when there is no ``HdrS``) into the fw_cfg kernel items, as x86_load_linux does.

    ``dma`` is microvm's case (``fwcfg_dma_enabled`` and a DMA-capable fw_cfg): the ROM is
    ``linuxboot_dma.bin``, else ``linuxboot.bin``.
    """
    cmd = _cmdline_bytes(cmdline)
    kernel_size = len(kernel)
    if kernel_size == 0:
        raise LinuxBootError("the kernel file is empty")
    header = bytearray(kernel[:HEADER_SIZE])
    header += bytes(HEADER_SIZE - len(header))   # QEMU reads min(8192, size); the rest unused
    protocol = _u16(header, OFF_VERSION) if header[0x202:0x206] == HDRS_MAGIC else 0

    cmdline_size = (len(cmd) + 16) & ~15   # "align to 16 bytes as a paranoia measure"
    if protocol < 0x200 or not header[OFF_LOADFLAGS] & LOADED_HIGH:
        real_addr, cmdline_addr, prot_addr = 0x90000, 0x9A000 - cmdline_size, 0x10000   # low kernel
    elif protocol < 0x202:
        real_addr, cmdline_addr, prot_addr = 0x90000, 0x9A000 - cmdline_size, 0x100000  # high, ancient
    else:
        real_addr, cmdline_addr, prot_addr = 0x10000, 0x20000, 0x100000                 # high, recent

    if protocol >= 0x20C and _u16(header, OFF_XLOADFLAGS) & XLF_CAN_BE_LOADED_ABOVE_4G:
        initrd_max = 0xFFFFFFFF
    elif protocol >= 0x203:
        initrd_max = _u32(header, OFF_INITRD_ADDR_MAX)
    else:
        initrd_max = 0x37FFFFFF
    if initrd_max >= below_4g_mem_size - acpi_data_size:
        initrd_max = below_4g_mem_size - acpi_data_size - 1

    items: dict[int, bytes] = {
        FW_CFG_CMDLINE_ADDR: _le32(cmdline_addr),
        FW_CFG_CMDLINE_SIZE: _le32(len(cmd) + 1),
        FW_CFG_CMDLINE_DATA: cmd + b"\0",
    }

    if protocol >= 0x202:
        struct.pack_into("<I", header, OFF_CMD_LINE_PTR, cmdline_addr)
    else:
        struct.pack_into("<HH", header, OFF_OLD_CMD_LINE_MAGIC, OLD_CMDLINE_MAGIC, (cmdline_addr - real_addr) & 0xFFFF)

    mode = vga_mode(cmd)
    if mode is not None:
        struct.pack_into("<H", header, OFF_VID_MODE, mode)

    if protocol >= 0x200:
        header[OFF_TYPE_OF_LOADER] = LOADER_TYPE_QEMU
    if protocol >= 0x201:
        header[OFF_LOADFLAGS] |= CAN_USE_HEAP
        struct.pack_into("<H", header, OFF_HEAP_END_PTR, (cmdline_addr - real_addr - 0x200) & 0xFFFF)

    initrd_addr = None
    if initrd is not None:
        if protocol < 0x200:
            raise LinuxBootError("linux kernel too old to load a ram disk")
        initrd_addr = _initrd_addr(initrd_max, len(initrd))
        items[FW_CFG_INITRD_ADDR] = _le32(initrd_addr)
        items[FW_CFG_INITRD_SIZE] = _le32(len(initrd))
        items[FW_CFG_INITRD_DATA] = bytes(initrd)
        struct.pack_into("<II", header, OFF_RAMDISK_IMAGE, initrd_addr, len(initrd))

    setup_sects = header[OFF_SETUP_SECTS] or 4
    setup_size = (setup_sects + 1) * 512
    if setup_size > kernel_size:
        raise LinuxBootError("invalid kernel header (setup is larger than the file)")
    setup = bytearray(kernel[:setup_size])
    prot = bytes(kernel[setup_size:])

    if dtb is not None:
        if protocol < 0x209:
            raise LinuxBootError("Linux kernel too old to load a dtb")
        if not dtb:
            raise LinuxBootError("the dtb is empty")
        offset = (len(prot) + 15) & ~15
        node = struct.pack("<QII", 0, SETUP_DTB, len(dtb)) + bytes(dtb)   # next, type, len, data
        prot = prot + bytes(offset - len(prot)) + node
        struct.pack_into("<Q", header, OFF_SETUP_DATA, prot_addr + offset)

    n = min(HEADER_SIZE, setup_size)
    setup[:n] = header[:n]

    items[FW_CFG_KERNEL_ADDR] = _le32(prot_addr)
    items[FW_CFG_KERNEL_SIZE] = _le32(len(prot))
    items[FW_CFG_KERNEL_DATA] = prot
    items[FW_CFG_SETUP_ADDR] = _le32(real_addr)
    items[FW_CFG_SETUP_SIZE] = _le32(setup_size)
    items[FW_CFG_SETUP_DATA] = bytes(setup)

    return LinuxBoot(
        items=items,
        option_rom="linuxboot_dma.bin" if dma else "linuxboot.bin",
        protocol=protocol,
        setup_addr=real_addr,
        kernel_addr=prot_addr,
        cmdline_addr=cmdline_addr,
        initrd_addr=initrd_addr,
        setup=bytes(setup),
        kernel=prot,
    )


def load_pvh(
    header: bytes,
    *,
    entry: int,
    load_low: int,
    load_high: int,
    cmdline: str | bytes = b"",
    initrd: bytes | None = None,
    below_4g_mem_size: int,
    acpi_data_size: int = 0,
) -> LinuxBoot:
    """The items of an ELF kernel with a PVH entry note (load_elfboot and what follows it).

    The ELF itself is loaded into RAM by the VMM (QEMU does it with ROM blobs), so the caller
    gives what its ELF loader found: the PVH ``entry`` (XEN_ELFNOTE_PHYS32_ENTRY) and the
    lowest and highest loaded addresses. ``header`` is the file's first bytes; QEMU hands
    8192 of them to the firmware as ``SETUP_DATA`` (zero-padded here for a shorter file).
    There is no ``CMDLINE_ADDR``: ``pvh.bin`` places the command line itself.
    """
    if not header.startswith(b"\x7fELF"):
        raise LinuxBootError("not an ELF file")
    if not entry:
        raise LinuxBootError("Error loading uncompressed kernel without PVH ELF Note")
    cmd = _cmdline_bytes(cmdline)
    setup = bytes(header[:HEADER_SIZE]) + bytes(max(0, HEADER_SIZE - len(header)))
    items: dict[int, bytes] = {
        FW_CFG_KERNEL_ENTRY: _le32(entry),
        FW_CFG_KERNEL_ADDR: _le32(load_low),
        FW_CFG_KERNEL_SIZE: _le32(load_high - load_low),
        FW_CFG_CMDLINE_SIZE: _le32(len(cmd) + 1),
        FW_CFG_CMDLINE_DATA: cmd + b"\0",
        FW_CFG_SETUP_SIZE: _le32(HEADER_SIZE),
        FW_CFG_SETUP_DATA: setup,
    }
    initrd_addr = None
    if initrd is not None:
        initrd_addr = _initrd_addr(below_4g_mem_size - acpi_data_size - 1, len(initrd))
        items[FW_CFG_INITRD_ADDR] = _le32(initrd_addr)
        items[FW_CFG_INITRD_SIZE] = _le32(len(initrd))
        items[FW_CFG_INITRD_DATA] = bytes(initrd)
    return LinuxBoot(items=items, option_rom="pvh.bin", kernel_addr=load_low, initrd_addr=initrd_addr, setup=setup)
