"""microvm.boot.loader: the bzImage 64-bit boot protocol and the ELF/PVH path, with
synthetic kernels built here (no KVM, no real kernel)."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from microvm import layout
from microvm.boot import loader
from microvm.boot.e820 import E820Entry, e820_map
from microvm.errors import BootError

MiB = 1 << 20
SETUP_SECTS = 4
HEADER_END = 0x268  # 0x202 + the jump byte at 0x201


# ---- synthetic images --------------------------------------------------------------------------

def load_paths(mem, kernel, initrd, cmdline, e820):
    """Read and check the files (as Machine does before creating a VM), then load them."""
    return loader.load(mem, loader.read_images(kernel, initrd), cmdline, e820)

def make_bzimage(
    *,
    version: int = 0x20F,
    setup_sects: int = SETUP_SECTS,
    xloadflags: int = loader.XLF_KERNEL_64,
    loadflags: int = 0x01,
    cmdline_size: int = 2047,
    init_size: int = 2 * MiB,
    initrd_addr_max: int = 0x7FFFFFFF,
    boot_flag: int = 0xAA55,
    payload: bytes | None = None,
    pref_address: int = 0x100000,
    kernel_alignment: int = 0x100000,
) -> bytes:
    """A setup block with the boot protocol's header (Documentation/x86/boot.rst) followed by
    a dummy protected-mode kernel."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x200] = 0xEB                       # jmp short: its displacement ends the header
    setup[0x201] = HEADER_END - 0x202
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)        # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = 1                                      # relocatable_kernel
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    struct.pack_into("<I", setup, 0x264, 0x190)           # handover_offset
    setup[HEADER_END : HEADER_END + 8] = b"NOTHDR!!"      # must not be copied
    if payload is None:
        payload = bytes((i * 7 + 3) & 0xFF for i in range(8192))
    struct.pack_into("<I", setup, 0x1F4, (len(payload) + 15) // 16)  # syssize, in paragraphs
    return bytes(setup) + payload


def payload_of(image: bytes, setup_sects: int = SETUP_SECTS) -> bytes:
    return image[(setup_sects + 1) * 512 :]


ELF_SEG_PADDR = 0x1000000
PVH_ENTRY = 0x1000A40


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    n = name + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(n), len(desc), ntype) + pad(n) + pad(desc)


def make_elf(
    *,
    segment: bytes = b"\x90" * 0x300 + b"KERNEL",
    memsz_extra: int = 0x100,
    paddr: int = ELF_SEG_PADDR,
    notes: bytes | None = None,
    phnum_claimed: int | None = None,
    truncate_at: int | None = None,
) -> bytes:
    """An ELF64 executable with one PT_LOAD and one PT_NOTE holding a GNU note and the
    XEN_ELFNOTE_PHYS32_ENTRY (type 18) note, as a CONFIG_PVH vmlinux has."""
    if notes is None:
        notes = note(b"GNU", 3, b"\x11" * 20) + note(b"Xen", 18, struct.pack("<I", PVH_ENTRY))
    phoff, phnum = 64, 2
    seg_off = 0x1000
    note_off = seg_off + len(segment)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9), 2, 0x3E, 1, 0xFFFFFFFF81000000, phoff, 0, 0, 64, 56,
        phnum if phnum_claimed is None else phnum_claimed, 64, 0, 0,
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, seg_off, 0xFFFFFFFF81000000, paddr, len(segment),
                       len(segment) + memsz_extra, 0x200000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    image = bytearray(ehdr + load + pnote)
    image += bytes(seg_off - len(image))
    image += segment + notes
    return bytes(image[:truncate_at] if truncate_at is not None else image)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def e820_for(mem) -> list[E820Entry]:
    return e820_map([(r.gpa, r.size) for r in mem.regions])


def u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0]


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def u64(b: bytes, off: int) -> int:
    return struct.unpack_from("<Q", b, off)[0]


# ---- bzImage --------------------------------------------------------------------------------------
CMDLINE = "console=ttyS0 root=/dev/vda quiet"


@pytest.fixture
def booted(tmp_path, guest_memory):
    """A 64 MiB guest with the synthetic bzImage and an initrd loaded."""
    image = make_bzimage()
    initrd = bytes(range(256)) * 40 + b"tail"
    mem = guest_memory(64 * MiB)
    e820 = e820_for(mem)
    entry = load_paths(mem, write(tmp_path, "bzImage", image), write(tmp_path, "initrd", initrd), CMDLINE, e820)
    return mem, image, initrd, e820, entry


def test_bzimage_entry_point(booted) -> None:
    mem, image, _, _, entry = booted
    assert entry.mode == "linux64"
    assert entry.rip == 0x100200                # 64-bit entry: load address + 0x200
    assert entry.boot_info == layout.ZERO_PAGE_ADDR
    assert entry.kernel_end == 0x100000 + 2 * MiB   # init_size, larger than the payload


def test_bzimage_kernel_bytes_at_1mib(booted) -> None:
    mem, image, *_ = booted
    payload = payload_of(image)
    assert mem.read(0x100000, len(payload)) == payload
    assert mem.read(0x100000 - 16, 16) == bytes(16)   # nothing of the setup code below it


def test_zero_page_has_the_setup_header(booted) -> None:
    mem, image, *_ = booted
    zp = mem.read(layout.ZERO_PAGE_ADDR, 4096)
    written_by_loader = {0x210, 0x211, *range(0x218, 0x220), *range(0x224, 0x22C)}
    for off in range(0x1F1, HEADER_END):
        if off not in written_by_loader:
            assert zp[off] == image[off], f"setup header byte {off:#x} not copied"
    assert zp[0x1F1] == SETUP_SECTS
    assert zp[0x202:0x206] == b"HdrS"
    assert u16(zp, 0x206) == 0x20F
    assert u16(zp, 0x236) == loader.XLF_KERNEL_64
    assert u32(zp, 0x238) == 2047
    assert u32(zp, 0x260) == 2 * MiB
    assert zp[HEADER_END : HEADER_END + 8] == bytes(8)   # beyond the header: not copied
    assert zp[:0x1E8] == bytes(0x1E8)


def test_zero_page_loader_fields(booted) -> None:
    mem, *_ = booted
    zp = mem.read(layout.ZERO_PAGE_ADDR, 4096)
    assert zp[0x210] == 0xFF                     # type_of_loader: undefined
    assert zp[0x211] == 0x81                     # LOADED_HIGH | CAN_USE_HEAP
    assert u16(zp, 0x224) == 0xFE00              # heap_end_ptr
    assert u32(zp, 0x228) == layout.CMDLINE_ADDR  # cmd_line_ptr
    raw = (CMDLINE + "\0").encode()
    assert mem.read(layout.CMDLINE_ADDR, len(raw)) == raw


def test_loadflags_gain_both_bits(tmp_path, guest_memory) -> None:
    mem = guest_memory(16 * MiB)
    load_paths(mem, write(tmp_path, "k", make_bzimage(loadflags=0x20)), None, "", e820_for(mem))
    zp = mem.read(layout.ZERO_PAGE_ADDR, 4096)
    assert zp[0x211] == 0x20 | loader.LOADED_HIGH | loader.CAN_USE_HEAP
    assert u32(zp, 0x218) == 0 and u32(zp, 0x21C) == 0   # no initrd
    assert mem.read(layout.CMDLINE_ADDR, 1) == b"\0"


def test_zero_page_ramdisk(booted) -> None:
    mem, _, initrd, _, entry = booted
    zp = mem.read(layout.ZERO_PAGE_ADDR, 4096)
    addr, size = u32(zp, 0x218), u32(zp, 0x21C)   # ramdisk_image, ramdisk_size
    assert size == len(initrd)
    assert addr == (64 * MiB - len(initrd)) & ~0xFFF  # as high as possible, page aligned
    assert addr >= entry.kernel_end
    assert mem.read(addr, size) == initrd


def test_initrd_respects_initrd_addr_max(tmp_path, guest_memory) -> None:
    mem = guest_memory(64 * MiB)
    initrd = b"\xee" * 5000
    load_paths(mem, write(tmp_path, "k", make_bzimage(initrd_addr_max=32 * MiB - 1)),
                write(tmp_path, "i", initrd), "", e820_for(mem))
    zp = mem.read(layout.ZERO_PAGE_ADDR, 4096)
    addr = u32(zp, 0x218)
    assert addr == (32 * MiB - len(initrd)) & ~0xFFF
    assert addr + len(initrd) <= 32 * MiB
    assert mem.read(addr, len(initrd)) == initrd


def test_zero_page_e820(booted) -> None:
    mem, _, _, e820, _ = booted
    zp = mem.read(layout.ZERO_PAGE_ADDR, 4096)
    assert e820 == [
        E820Entry(0, 0x9FC00, 1), E820Entry(0x9FC00, 0x400, 2), E820Entry(0x100000, 63 * MiB, 1),
    ]
    assert zp[0x1E8] == 3                        # e820_entries
    for i, e in enumerate(e820):
        assert struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) == (e.addr, e.size, e.type)
    assert zp[0x2D0 + 60 : 0x2D0 + 80] == bytes(20)


def test_write_boot_params_directly(guest_memory) -> None:
    mem = guest_memory(8 * MiB)
    image = make_bzimage()
    hdr = loader.parse_setup_header(image)
    assert (hdr.setup_sects, hdr.version, hdr.cmdline_size, hdr.init_size, hdr.header_end) == (
        SETUP_SECTS, 0x20F, 2047, 2 * MiB, HEADER_END,
    )
    e820 = [E820Entry(0, 0x9FC00, 1), E820Entry(0x100000, 7 * MiB, 1)]
    zp_addr = loader.write_boot_params(mem, image, hdr, 0x20000, 5, e820, (0x700000, 0x1234))
    assert zp_addr == layout.ZERO_PAGE_ADDR
    zp = mem.read(zp_addr, 4096)
    assert (u32(zp, 0x218), u32(zp, 0x21C)) == (0x700000, 0x1234)
    assert u32(zp, 0x228) == 0x20000
    assert zp[0x1E8] == 2
    assert struct.unpack_from("<QQI", zp, 0x2D0 + 20) == (0x100000, 7 * MiB, 1)


def test_setup_sects_zero_means_four() -> None:
    image = make_bzimage(setup_sects=4)
    patched = bytearray(image)
    patched[0x1F1] = 0
    assert loader.parse_setup_header(bytes(patched)).setup_sects == 4


# ---- bzImage errors -----------------------------------------------------------------------------
def load_error(tmp_path, mem, kernel: bytes | Path, cmdline: str = "", initrd: bytes | None = None) -> str:
    kpath = kernel if isinstance(kernel, Path) else write(tmp_path, "kernel", kernel)
    ipath = write(tmp_path, "initrd", initrd) if initrd is not None else None
    with pytest.raises(BootError) as info:
        load_paths(mem, kpath, ipath, cmdline, e820_for(mem))
    return str(info.value)


def test_missing_kernel_file(tmp_path, guest_memory) -> None:
    missing = tmp_path / "no-such-bzImage"
    msg = load_error(tmp_path, guest_memory(16 * MiB), missing)
    assert msg == f"kernel {missing}: no such file"


def test_kernel_is_a_directory(tmp_path, guest_memory) -> None:
    assert "is a directory" in load_error(tmp_path, guest_memory(16 * MiB), tmp_path)


def test_missing_initrd_file(tmp_path, guest_memory) -> None:
    mem = guest_memory(16 * MiB)
    with pytest.raises(BootError, match="initrd .*nope: no such file"):
        load_paths(mem, write(tmp_path, "k", make_bzimage()), tmp_path / "nope", "", e820_for(mem))


def test_empty_kernel_file(tmp_path, guest_memory) -> None:
    assert load_error(tmp_path, guest_memory(16 * MiB), b"").endswith("file is empty")


def test_text_file_is_not_a_kernel(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(16 * MiB), b"#!/bin/sh\necho this is not a kernel\n" * 40)
    assert "not a kernel image" in msg and "bzImage" in msg and "ELF" in msg


def test_truncated_setup_header(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(16 * MiB), make_bzimage()[:0x240])
    assert "truncated" in msg


def test_truncated_bzimage_without_kernel(tmp_path, guest_memory) -> None:
    image = make_bzimage()[: (SETUP_SECTS + 1) * 512]
    msg = load_error(tmp_path, guest_memory(16 * MiB), image)
    assert "truncated" in msg and "protected-mode kernel" in msg


def test_missing_boot_flag(tmp_path, guest_memory) -> None:
    assert "0xAA55" in load_error(tmp_path, guest_memory(16 * MiB), make_bzimage(boot_flag=0))


def test_no_64bit_entry(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(16 * MiB), make_bzimage(xloadflags=0x2))
    assert "XLF_KERNEL_64" in msg and "64-bit" in msg


def test_protocol_too_old(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(16 * MiB), make_bzimage(version=0x20B))
    assert "boot protocol 2.11 is too old" in msg and "2.12" in msg


def test_oldest_usable_protocol(tmp_path, guest_memory) -> None:
    mem = guest_memory(16 * MiB)
    entry = load_paths(mem, write(tmp_path, "k", make_bzimage(version=0x20C)), None, "", e820_for(mem))
    assert entry.mode == "linux64"


def test_command_line_longer_than_cmdline_size(tmp_path, guest_memory) -> None:
    mem = guest_memory(16 * MiB)
    image = make_bzimage(cmdline_size=64)
    msg = load_error(tmp_path, mem, image, cmdline="x" * 65)
    assert msg == "kernel command line is 65 bytes; this kernel accepts at most 64"
    # exactly cmdline_size bytes (without the NUL) fits
    load_paths(mem, write(tmp_path, "k64", image), None, "y" * 64, e820_for(mem))
    assert mem.read(layout.CMDLINE_ADDR, 65) == b"y" * 64 + b"\0"


def test_initrd_that_does_not_fit(tmp_path, guest_memory) -> None:
    # 4 MiB of RAM: the kernel needs up to 3 MiB (1 MiB + init_size), 2 MiB of initrd cannot fit
    msg = load_error(tmp_path, guest_memory(4 * MiB), make_bzimage(), initrd=b"\x01" * (2 * MiB))
    assert "initrd" in msg and "does not fit" in msg and "-m" in msg


def test_kernel_init_size_larger_than_ram(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(16 * MiB), make_bzimage(init_size=64 * MiB))
    assert "64 MiB" in msg and "16 MiB" in msg and "decompress" in msg


# ---- ELF + PVH ------------------------------------------------------------------------------------
@pytest.fixture
def pvh(tmp_path, guest_memory):
    mem = guest_memory(64 * MiB)
    image = make_elf()
    mem.fill(ELF_SEG_PADDR, 0x1000, 0xAA)   # the bss must be cleared, not left as found
    initrd = b"initramfs" * 1000
    e820 = e820_for(mem)
    entry = load_paths(mem, write(tmp_path, "vmlinux", image), write(tmp_path, "initrd", initrd), "console=hvc0", e820)
    return mem, image, initrd, e820, entry


def test_pvh_entry_from_the_note(pvh) -> None:
    *_, entry = pvh
    assert entry.mode == "pvh"
    assert entry.rip == PVH_ENTRY                 # the note, not e_entry
    assert entry.boot_info == layout.PVH_START_INFO_ADDR
    assert entry.kernel_end == ELF_SEG_PADDR + 0x306 + 0x100


def test_pvh_segments_loaded(pvh) -> None:
    mem = pvh[0]
    assert mem.read(ELF_SEG_PADDR, 0x306) == b"\x90" * 0x300 + b"KERNEL"
    assert mem.read(ELF_SEG_PADDR + 0x306, 0x100) == bytes(0x100)     # memsz > filesz: zeroed
    assert mem.read(ELF_SEG_PADDR + 0x406, 4) == b"\xaa" * 4          # beyond memsz: untouched


def test_hvm_start_info(pvh) -> None:
    mem, _, initrd, e820, entry = pvh
    si = mem.read(layout.PVH_START_INFO_ADDR, 56)
    assert u32(si, 0) == 0x336EC578               # magic
    assert u32(si, 4) == 1                        # version
    assert u32(si, 8) == 0                        # flags
    assert u32(si, 12) == 1                       # nr_modules
    modlist = u64(si, 16)
    cmdline = u64(si, 24)
    assert u64(si, 32) == 0                       # rsdp_paddr: no ACPI
    memmap = u64(si, 40)
    assert u32(si, 48) == len(e820) == 3          # memmap_entries
    assert mem.read(cmdline, 13) == b"console=hvc0\0"
    # hvm_modlist_entry: paddr, size, cmdline_paddr, reserved
    paddr, size, mcmd, res = struct.unpack("<QQQQ", mem.read(modlist, 32))
    assert (size, mcmd, res) == (len(initrd), 0, 0)
    assert paddr % 4096 == 0 and paddr >= entry.kernel_end and paddr + size <= 64 * MiB
    assert paddr == (64 * MiB - len(initrd)) & ~0xFFF
    assert mem.read(paddr, size) == initrd
    # hvm_memmap_table_entry: addr, size, type, reserved
    for i, e in enumerate(e820):
        assert struct.unpack("<QQII", mem.read(memmap + 24 * i, 24)) == (e.addr, e.size, e.type, 0)


def test_pvh_without_initrd_has_no_modules(tmp_path, guest_memory) -> None:
    mem = guest_memory(32 * MiB)
    load_paths(mem, write(tmp_path, "vmlinux", make_elf()), None, "", e820_for(mem))
    si = mem.read(layout.PVH_START_INFO_ADDR, 56)
    assert u32(si, 12) == 0 and u64(si, 16) == 0
    assert mem.read(u64(si, 24), 1) == b"\0"


def test_pvh_note_with_64bit_descriptor(tmp_path, guest_memory) -> None:
    mem = guest_memory(32 * MiB)
    image = make_elf(notes=note(b"Xen", 18, struct.pack("<Q", 0x1000123)))
    assert load_paths(mem, write(tmp_path, "vmlinux", image), None, "", e820_for(mem)).rip == 0x1000123


def test_elf_without_pvh_note(tmp_path, guest_memory) -> None:
    image = make_elf(notes=note(b"GNU", 3, b"\x22" * 20) + note(b"Xen", 17, struct.pack("<I", PVH_ENTRY)))
    msg = load_error(tmp_path, guest_memory(32 * MiB), image)
    assert "PVH" in msg and "CONFIG_PVH" in msg


def test_elf_truncated_program_headers(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(32 * MiB), make_elf(truncate_at=64 + 56 + 20))
    assert "program headers" in msg and "truncated" in msg
    msg = load_error(tmp_path, guest_memory(32 * MiB), make_elf(phnum_claimed=200))
    assert "program headers" in msg


def test_elf_truncated_segment(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(32 * MiB), make_elf(truncate_at=0x1100))
    assert "outside the file" in msg


def test_elf_segment_beyond_ram(tmp_path, guest_memory) -> None:
    msg = load_error(tmp_path, guest_memory(8 * MiB), make_elf())
    assert "does not fit in guest RAM (8 MiB)" in msg


def test_pvh_command_line_limit(tmp_path, guest_memory) -> None:
    mem = guest_memory(32 * MiB)
    msg = load_error(tmp_path, mem, make_elf(), cmdline="a" * 2048)
    assert msg == "kernel command line is 2048 bytes; x86 Linux accepts at most 2047"
    load_paths(mem, write(tmp_path, "ok", make_elf()), None, "b" * 2047, e820_for(mem))
    assert mem.read(layout.CMDLINE_ADDR, 2048) == b"b" * 2047 + b"\0"


def test_truncated_bzimage_is_refused_by_its_syssize(tmp_path, guest_memory) -> None:
    """A bzImage cut short (a failed download) would otherwise boot into garbage and spin."""
    image = make_bzimage()
    with pytest.raises(BootError, match=r"bzImage: truncated \(the header says 8192 bytes of kernel, the file has 4096\)"):
        loader.read_images(write(tmp_path, "k", image[: len(image) - 4096]), None)


def test_relocatable_kernel_runs_from_its_preferred_address(tmp_path, guest_memory) -> None:
    """Like the real default guest (pref_address 16 MiB, 2 MiB alignment): loaded at 1 MiB, it
    decompresses at 16 MiB and needs init_size from there, so the initrd must go above
    16 MiB + init_size, and RAM must reach that far (a 32 MiB guest used to get its initrd
    inside the decompression area: "Initramfs unpacking failed")."""
    image = make_bzimage(pref_address=16 * MiB, kernel_alignment=2 * MiB, init_size=15 * MiB)
    initrd = b"\xab" * (20 * MiB)
    with pytest.raises(BootError, match="initrd .* does not fit"):
        small = guest_memory(48 * MiB)
        load_paths(small, write(tmp_path, "k", image), write(tmp_path, "i", initrd), "", e820_for(small))
    mem = guest_memory(64 * MiB)
    entry = load_paths(mem, write(tmp_path, "k", image), write(tmp_path, "i", initrd), "", e820_for(mem))
    assert entry.kernel_end == 16 * MiB + 15 * MiB
    ramdisk = u32(mem.read(layout.ZERO_PAGE_ADDR, 4096), 0x218)
    assert ramdisk >= 31 * MiB
    msg = load_error(tmp_path, guest_memory(24 * MiB), image)
    assert "needs guest RAM up to 31 MiB" in msg and "the guest's 24 MiB" in msg
