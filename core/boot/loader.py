"""Direct kernel boot: an ELF ``vmlinux`` through its PVH entry note, or a ``bzImage``
through the 64-bit boot protocol, with an initrd and a command line.

References: Linux ``Documentation/x86/boot.rst`` (setup header, boot_params, 64-bit entry),
the Xen PVH ABI (``XEN_ELFNOTE_PHYS32_ENTRY``, ``struct hvm_start_info``) and the ELF spec.
Everything read from the image is checked, so a broken or hostile kernel file is a
:class:`~microvm.errors.BootError` with a message naming the problem, never a traceback.
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Callable, NamedTuple

from .. import layout
from ..errors import BootError, GuestMemoryError
from ..memory import GuestMemory, ram_layout
from .e820 import E820Entry

if TYPE_CHECKING:
    from .firmware import Firmware

XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336EC578
PT_LOAD = 1
PT_NOTE = 4
#: e_machine values QEMU's load_elf() takes when asked for EM_X86_64 (include/hw/elf_ops.h):
#: a 64-bit x86 kernel, or a 32-bit one (the PVH entry is 32-bit code either way)
EM_386 = 3
EM_X86_64 = 62
#: x86 Linux's COMMAND_LINE_SIZE: the PVH ABI has no limit of its own, the kernel truncates here
PVH_CMDLINE_MAX = 2048
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
BOOT_FLAG_MAGIC = 0xAA55
HDRS_MAGIC = b"HdrS"


class EntryPoint(NamedTuple):
    """How the boot vCPU starts: ``mode`` is ``"pvh"`` (32-bit protected mode, paging off,
    ``ebx`` = start_info) or ``"linux64"`` (long mode, identity paging, ``rsi`` = boot_params)."""

    mode: str
    rip: int
    boot_info: int
    kernel_end: int


def _mib(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size} bytes"


def _read_file(path: str | os.PathLike[str], what: str, max_size: int | None = None, empty_ok: bool = False) -> bytes:
    """The whole of a regular file of at most ``max_size`` bytes (the guest's RAM), read as
    :func:`microvm.boot.files.read_regular_file` reads every file the user names. An empty
    initrd is accepted, as QEMU accepts it (the kernel is then told of none)."""
    from .files import read_regular_file

    limit = f"guest RAM ({_mib(max_size)}); give the guest more memory with -m" if max_size is not None else ""
    return read_regular_file(path, f"{what} {path}", max_size, limit=limit, empty_ok=empty_ok)


def _put(memory: GuestMemory, gpa: int, data: bytes, what: str) -> None:
    try:
        memory.write(gpa, data)
    except GuestMemoryError:
        raise BootError(
            f"{what} [{gpa:#x}, {gpa + len(data):#x}) does not fit in guest RAM ({memory.size >> 20} MiB)"
        ) from None


def detect(image: bytes) -> str:
    if image[:4] == b"\x7fELF":
        return "elf"
    if len(image) > 0x206 and image[0x202:0x206] == HDRS_MAGIC:
        return "bzimage"
    raise BootError("not a kernel image: neither an ELF vmlinux nor a bzImage (no 'HdrS' setup header)")


# ---------------------------------------------------------------------------------------
# ELF + PVH
# ---------------------------------------------------------------------------------------
class Segment(NamedTuple):
    """A PT_LOAD or PT_NOTE program header; ``index`` is its place in the table."""

    index: int
    type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int


def _elf_segments(image: bytes) -> tuple[list[Segment], int]:
    """Return ([Segment], e_entry) for a 32- or 64-bit little-endian x86 ELF."""
    if len(image) < 52:
        raise BootError("ELF kernel: file too short for an ELF header")
    ei_class, ei_data = image[4], image[5]
    if ei_data != 1:
        raise BootError("ELF kernel: not little-endian")
    if ei_class == 2:
        if len(image) < 64:
            raise BootError("ELF kernel: file too short for an ELF64 header")
        e_entry, e_phoff = struct.unpack_from("<QQ", image, 24)
        e_phentsize, e_phnum = struct.unpack_from("<HH", image, 54)
        fmt, want = "<IIQQQQQQ", 56
    elif ei_class == 1:
        e_entry, e_phoff = struct.unpack_from("<II", image, 24)
        e_phentsize, e_phnum = struct.unpack_from("<HH", image, 42)
        fmt, want = "<IIIIIIII", 32
    else:
        raise BootError(f"ELF kernel: unknown ELF class {ei_class}")
    e_machine = struct.unpack_from("<H", image, 18)[0]
    if e_machine not in (EM_X86_64, EM_386):
        # QEMU: load_elf() fails with ELF_LOAD_WRONG_ARCH, "The image is from incompatible
        # architecture", and x86_load_linux() stops with "Error while loading elf kernel"
        raise BootError(
            f"ELF kernel: the image is from incompatible architecture (e_machine {e_machine}); "
            f"an x86 kernel is EM_X86_64 ({EM_X86_64}) or EM_386 ({EM_386})"
        )
    if e_phentsize != want or e_phnum == 0 or e_phoff + e_phnum * e_phentsize > len(image):
        raise BootError("ELF kernel: program headers are missing or truncated")
    segs = []
    for i in range(e_phnum):
        f = struct.unpack_from(fmt, image, e_phoff + i * e_phentsize)
        if ei_class == 2:
            p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = f
        else:
            p_type, off, _vaddr, paddr, filesz, memsz, _flags, _align = f
        if p_type in (PT_LOAD, PT_NOTE):
            if off + filesz > len(image) or filesz > memsz and p_type == PT_LOAD:
                raise BootError(f"ELF kernel: segment {i} points outside the file (truncated image?)")
            segs.append(Segment(i, p_type, off, paddr, filesz, memsz))
    return segs, e_entry


def _pvh_entry(image: bytes, notes: list[tuple[int, int]]) -> int | None:
    for off, size in notes:
        p, end = off, off + size
        while p + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", image, p)
            name_off = p + 12
            desc_off = name_off + ((namesz + 3) & ~3)
            nxt = desc_off + ((descsz + 3) & ~3)
            if nxt > end:
                break
            if image[name_off : name_off + namesz].rstrip(b"\0") == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                if descsz == 4:
                    return struct.unpack_from("<I", image, desc_off)[0]
                if descsz == 8:
                    return struct.unpack_from("<Q", image, desc_off)[0]
            p = nxt
    return None


def _check_loads(segs: list[Segment], fits: Callable[[int, int], bool], ram_size: int) -> list[Segment]:
    """The PT_LOAD segments that load something, each checked against guest RAM from its
    header alone: ``p_memsz`` comes from the file, so a 5 KB ELF can claim 4 GiB (or 2^63
    bytes) and nothing may be allocated or written for it before this check. Every segment is
    checked before the first is written; a segment of p_memsz 0 loads nothing and is skipped."""
    loads = [seg for seg in segs if seg.type == PT_LOAD and seg.memsz]
    if not loads:
        raise BootError("ELF kernel: no loadable segment")
    for seg in loads:
        if not fits(seg.paddr, seg.memsz):
            raise BootError(
                f"ELF kernel: segment {seg.index} [{seg.paddr:#x}, {seg.paddr + seg.memsz:#x}) "
                f"does not fit in guest RAM ({_mib(ram_size)})"
            )
        if seg.paddr < 0xA0000:
            raise BootError(
                f"ELF kernel: segment at {seg.paddr:#x} overlaps base memory below 640 KiB, where the boot data lives"
            )
    return loads


def _fits_layout(ram_size: int) -> Callable[[int, int], bool]:
    """Does [gpa, gpa + length) lie inside one RAM region of a ``ram_size`` guest? (the
    layout :class:`GuestMemory` will have; the check before any memory exists)"""
    regions = ram_layout(ram_size) if ram_size > 0 else []
    return lambda gpa, length: any(base <= gpa and gpa + length <= base + size for base, size in regions)


def elf_layout(image: bytes) -> tuple[int, int, int]:
    """``(PVH entry, lowest, highest loaded address)`` of an ELF kernel (what QEMU's
    ``load_elfboot`` hands a firmware: FW_CFG_KERNEL_ENTRY/ADDR/SIZE)."""
    segs, _ = _elf_segments(image)
    entry = _pvh_entry(image, [(seg.offset, seg.filesz) for seg in segs if seg.type == PT_NOTE])
    loads = [seg for seg in segs if seg.type == PT_LOAD and seg.memsz]
    if entry is None or not loads:
        raise BootError("ELF kernel has no PVH entry note or no loadable segment")
    return entry, min(seg.paddr for seg in loads), max(seg.paddr + seg.memsz for seg in loads)


def load_elf(memory: GuestMemory, image: bytes) -> tuple[int, int]:
    """Load PT_LOAD segments at their physical addresses; return (PVH entry, end of kernel)."""
    segs, _ = _elf_segments(image)
    entry = _pvh_entry(image, [(seg.offset, seg.filesz) for seg in segs if seg.type == PT_NOTE])
    if entry is None:
        raise BootError(
            "ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y, or boot the bzImage"
        )
    end = 0
    for _, _, off, paddr, filesz, memsz in _check_loads(segs, memory.contains, memory.size):
        _put(memory, paddr, image[off : off + filesz], "kernel segment")
        if memsz > filesz:
            try:
                memory.fill(paddr + filesz, memsz - filesz)
            except GuestMemoryError:
                raise BootError(f"kernel segment at {paddr:#x} (+{memsz:#x}) does not fit in guest RAM") from None
        end = max(end, paddr + memsz)
    return entry, end


def write_pvh_start_info(
    memory: GuestMemory, cmdline_addr: int, e820: list[E820Entry], initrd: tuple[int, int] | None
) -> int:
    """Write ``struct hvm_start_info`` (version 1), its module list and memory map."""
    memmap = b"".join(struct.pack("<QQII", e.addr, e.size, e.type, 0) for e in e820)
    memory.write(layout.PVH_MEMMAP_ADDR, memmap)
    nr_modules, modlist = 0, 0
    if initrd:
        memory.write(layout.PVH_MODLIST_ADDR, struct.pack("<QQQQ", initrd[0], initrd[1], 0, 0))
        nr_modules, modlist = 1, layout.PVH_MODLIST_ADDR
    info = struct.pack(
        "<IIIIQQQQII",
        HVM_START_MAGIC, 1, 0, nr_modules, modlist, cmdline_addr, 0, layout.PVH_MEMMAP_ADDR, len(e820), 0,
    )
    memory.write(layout.PVH_START_INFO_ADDR, info)
    return layout.PVH_START_INFO_ADDR


# ---------------------------------------------------------------------------------------
# bzImage
# ---------------------------------------------------------------------------------------
class SetupHeader(NamedTuple):
    setup_sects: int
    version: int
    loadflags: int
    initrd_addr_max: int
    cmdline_size: int
    xloadflags: int
    init_size: int
    header_end: int
    kernel_alignment: int = 0
    pref_address: int = 0
    relocatable: bool = False


def parse_setup_header(image: bytes) -> SetupHeader:
    if len(image) < 0x268 or image[0x202:0x206] != HDRS_MAGIC:
        raise BootError("bzImage: no 'HdrS' setup header (not a bzImage, or truncated)")
    if struct.unpack_from("<H", image, 0x1FE)[0] != BOOT_FLAG_MAGIC:
        raise BootError("bzImage: boot flag 0xAA55 missing (corrupt image)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x20C:
        raise BootError(f"bzImage: boot protocol {version >> 8}.{version & 0xff:02} is too old for 64-bit boot (need 2.12)")
    setup_sects = image[0x1F1] or 4
    xloadflags = struct.unpack_from("<H", image, 0x236)[0]
    if not xloadflags & XLF_KERNEL_64:
        raise BootError("bzImage: kernel has no 64-bit entry point (XLF_KERNEL_64 unset; is it a 32-bit kernel?)")
    hdr = SetupHeader(
        setup_sects=setup_sects,
        version=version,
        loadflags=image[0x211],
        initrd_addr_max=struct.unpack_from("<I", image, 0x22C)[0],
        cmdline_size=struct.unpack_from("<I", image, 0x238)[0],
        xloadflags=xloadflags,
        init_size=struct.unpack_from("<I", image, 0x260)[0],
        header_end=0x202 + image[0x201],
        kernel_alignment=struct.unpack_from("<I", image, 0x230)[0],
        pref_address=struct.unpack_from("<Q", image, 0x258)[0],
        relocatable=bool(image[0x234]),
    )
    if (setup_sects + 1) * 512 >= len(image):
        raise BootError("bzImage: truncated (no protected-mode kernel after the setup sectors)")
    # syssize: the protected-mode kernel's size in 16-byte paragraphs (boot protocol 2.04+)
    syssize = struct.unpack_from("<I", image, 0x1F4)[0] * 16
    have = len(image) - (setup_sects + 1) * 512
    if have < syssize:
        raise BootError(f"bzImage: truncated (the header says {syssize} bytes of kernel, the file has {have})")
    return hdr


def runtime_start(hdr: SetupHeader, load: int) -> int:
    """Where the kernel decompresses and runs (boot.rst, init_size: "starting at the kernel
    runtime start address"): a relocatable kernel loaded below its preferred address moves
    up to max(load aligned to kernel_alignment, pref_address), as head_64.S does."""
    if hdr.version < 0x20A or not hdr.relocatable:
        return max(load, hdr.pref_address)
    align = hdr.kernel_alignment or 1
    return max((load + align - 1) // align * align, hdr.pref_address)


def load_bzimage(memory: GuestMemory, image: bytes) -> tuple[SetupHeader, int, int]:
    """Load the protected-mode kernel at 1 MiB; return (header, 64-bit entry, end of the
    memory the kernel needs: its runtime start + init_size)."""
    hdr = parse_setup_header(image)
    kernel = image[(hdr.setup_sects + 1) * 512 :]
    load = layout.BZIMAGE_LOAD_ADDR
    start = runtime_start(hdr, load)
    end = max(load + len(kernel), start + hdr.init_size)
    if not memory.contains(load, end - load):
        raise BootError(
            f"bzImage needs guest RAM up to {-(-end >> 20)} MiB to decompress and run "
            f"(from {start:#x}, init_size {hdr.init_size >> 20} MiB), more than the guest's "
            f"{memory.size >> 20} MiB; give it more memory with -m"
        )
    _put(memory, load, kernel, "bzImage kernel")
    return hdr, load + 0x200, end


def write_boot_params(
    memory: GuestMemory, image: bytes, hdr: SetupHeader, cmdline_addr: int, cmdline_len: int,
    e820: list[E820Entry], initrd: tuple[int, int] | None,
) -> int:
    """Write the zero page (``struct boot_params``) for the 64-bit entry."""
    zp = bytearray(4096)
    zp[0x1F1 : hdr.header_end] = image[0x1F1 : hdr.header_end]
    zp[0x210] = 0xFF                                   # type_of_loader: undefined boot loader
    zp[0x211] = (hdr.loadflags | LOADED_HIGH | CAN_USE_HEAP) & 0xFF
    struct.pack_into("<H", zp, 0x224, 0xFE00)          # heap_end_ptr
    struct.pack_into("<I", zp, 0x228, cmdline_addr)
    if initrd:
        struct.pack_into("<II", zp, 0x218, initrd[0], initrd[1])
    if len(e820) > 128:
        raise BootError("too many e820 entries")
    zp[0x1E8] = len(e820)
    for i, e in enumerate(e820):
        struct.pack_into("<QQI", zp, 0x2D0 + 20 * i, e.addr, e.size, e.type)
    memory.write(layout.ZERO_PAGE_ADDR, bytes(zp))
    return layout.ZERO_PAGE_ADDR


# ---------------------------------------------------------------------------------------
def place_initrd(memory: GuestMemory, data: bytes, kernel_end: int, addr_max: int) -> tuple[int, int]:
    """Put the initrd as high as allowed in low RAM, page aligned, above the kernel."""
    low_end = memory.regions[0].end
    top = min(low_end, addr_max + 1)
    addr = (top - len(data)) & ~(layout.INITRD_ALIGN - 1)
    if addr < kernel_end:
        raise BootError(
            f"initrd ({len(data)} bytes) does not fit in guest RAM between the kernel end ({kernel_end:#x}) "
            f"and {top:#x}; give the guest more memory with -m"
        )
    memory.write(addr, data)
    return addr, len(data)


class BootImages(NamedTuple):
    """Kernel, initrd and firmware, read and checked once (before any KVM object exists,
    and reused across guest resets). ``kind`` is ``"none"`` for a firmware booting alone."""

    kernel: bytes
    initrd: bytes | None
    kind: str  # "elf", "bzimage" or "none"
    bios: "Firmware | None" = None


def read_images(
    kernel_path: str | os.PathLike[str] | None,
    initrd_path: str | os.PathLike[str] | None,
    max_size: int | None = None,
    bios: str | None = None,
) -> BootImages:
    """Read the files and validate the kernel's headers (and the ``--bios`` image's size),
    so a bad file is a one-line error before a VM is created.

    ``max_size`` is the guest's RAM size in bytes (``MachineSpec.mem_size``): the kernel and
    the initrd must be regular files no larger than that, and an ELF kernel's loadable
    segments must lie in the RAM a guest of that size has. Without it only the file type is
    checked here and the segments when they are loaded."""
    if kernel_path is None and initrd_path is not None:
        raise BootError("--initrd is only allowed with --kernel")
    fw = None
    if bios is not None:
        from .firmware import load_firmware

        fw = load_firmware(bios)
    if kernel_path is None:
        return BootImages(b"", None, "none", fw)
    image = _read_file(kernel_path, "kernel", max_size)
    initrd = _read_file(initrd_path, "initrd", max_size, empty_ok=True) if initrd_path is not None else None
    kind = detect(image)
    if kind == "elf":
        segs, _ = _elf_segments(image)
        if _pvh_entry(image, [(seg.offset, seg.filesz) for seg in segs if seg.type == PT_NOTE]) is None:
            raise BootError(
                "ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y, or boot the bzImage"
            )
        if max_size is not None:
            _check_loads(segs, _fits_layout(max_size), max_size)
    else:
        parse_setup_header(image)
    return BootImages(image, initrd, kind, fw)


def load(memory: GuestMemory, images: BootImages, cmdline: str, e820: list[E820Entry]) -> EntryPoint:
    """Load kernel, initrd and command line; return where and how the boot vCPU starts."""
    image, initrd_data, kind = images.kernel, images.initrd, images.kind
    # the command line is bytes to the kernel: bytes that are not UTF-8 (argv decoded with
    # surrogateescape) go through unchanged, as QEMU passes them
    raw_cmdline = cmdline.encode("utf-8", "surrogateescape") + b"\0"
    if kind == "elf":
        entry, kernel_end = load_elf(memory, image)
        if len(raw_cmdline) > PVH_CMDLINE_MAX:
            raise BootError(f"kernel command line is {len(raw_cmdline) - 1} bytes; x86 Linux accepts at most {PVH_CMDLINE_MAX - 1}")
        memory.write(layout.CMDLINE_ADDR, raw_cmdline)
        initrd = place_initrd(memory, initrd_data, kernel_end, 0xFFFFFFFF) if initrd_data else None
        info = write_pvh_start_info(memory, layout.CMDLINE_ADDR, e820, initrd)
        return EntryPoint("pvh", entry, info, kernel_end)
    hdr, entry, kernel_end = load_bzimage(memory, image)
    limit = hdr.cmdline_size if hdr.version >= 0x206 else 255
    if len(raw_cmdline) - 1 > limit:
        raise BootError(f"kernel command line is {len(raw_cmdline) - 1} bytes; this kernel accepts at most {limit}")
    memory.write(layout.CMDLINE_ADDR, raw_cmdline)
    initrd = place_initrd(memory, initrd_data, kernel_end, hdr.initrd_addr_max or 0x37FFFFFF) if initrd_data else None
    zp = write_boot_params(memory, image, hdr, layout.CMDLINE_ADDR, len(raw_cmdline), e820, initrd)
    return EntryPoint("linux64", entry, zp, kernel_end)
