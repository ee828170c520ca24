"""Firmware boot: a ``-bios`` image mapped below 4 GiB and the boot vCPU at the reset vector.

What QEMU 7.2's microvm does (``x86_bios_rom_init(..., isapc_ram_fw=true)`` in
``hw/i386/microvm.c`` / ``hw/i386/x86.c``), and what this module reproduces:

* the image is found as a path, or by its bare name in the firmware directories (Debian's
  QEMU is configured with ``--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu``;
  ``qemu_find_file`` tries the name as given first);
* its size must be a positive multiple of 64 KiB (QEMU: ``could not load PC BIOS 'NAME'``)
  and, here, at most 16 MiB: a larger image would cover KVM's identity-map and TSS pages
  at 0xfeffc000 and the LAPIC/IOAPIC below them;
* it is mapped so that it ends at 4 GiB, and its last 128 KiB (or all of it, when smaller)
  appear again at 1 MiB - that size (0xe0000 for 128 KiB, 0xf0000 for qboot's 64 KiB),
  shadowing RAM there, as the ISA BIOS window of a PC. Both views share the same bytes.
* microvm passes ``isapc_ram_fw=true``: the firmware is **RAM**, not ROM. qboot and
  SeaBIOS keep their data and stack in the f-segment and, without a PCI host bridge's PAM
  registers to make a shadow copy writable, write it in place: a read-only mapping
  (``KVM_MEM_READONLY``) makes qboot lose its own variables. A guest reset rebuilds the
  machine from the file's bytes, as QEMU's ``rom_reset`` restores them.

The boot vCPU starts in the architectural reset state (real mode, CS selector 0xf000 with
base 0xffff0000, IP 0xfff0, so the first fetch is at 0xfffffff0); the other vCPUs wait for
INIT/SIPI in ``KVM_MP_STATE_UNINITIALIZED``, as QEMU's ``kvm_arch_reset_vcpu`` leaves them
(the in-kernel LAPIC then runs INIT/SIPI itself).
"""
from __future__ import annotations

import mmap
import os
from typing import Any, NamedTuple

from ..errors import BootError

#: where Debian's QEMU looks for firmware by bare name, in its order
FIRMWARE_DIRS: tuple[str, ...] = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
#: QEMU's microvm default without ACPI (MICROVM_QBOOT_FILENAME); this VMM has no ACPI
DEFAULT_FIRMWARE = "qboot.rom"
BIOS_ALIGN = 64 << 10
BIOS_MAX = 16 << 20
ISA_BIOS_MAX = 128 << 10
FOUR_GIB = 1 << 32
ONE_MIB = 1 << 20
#: the architectural reset state (Intel SDM vol. 3, 9.1.4; AMD APM vol. 2, 14.1.3)
RESET_CS_SELECTOR = 0xF000
RESET_CS_BASE = 0xFFFF0000
RESET_IP = 0xFFF0
RESET_CR0 = 0x60000010          # CD, NW, ET
RESET_RFLAGS = 0x2


class Firmware(NamedTuple):
    """A ``-bios`` image: the name the user gave, the file found, and its bytes."""

    name: str
    path: str
    data: bytes

    @property
    def base(self) -> int:
        """Where the image starts: it ends at 4 GiB."""
        return FOUR_GIB - len(self.data)

    @property
    def isa_size(self) -> int:
        """How much of its end also appears below 1 MiB (the ISA BIOS window)."""
        return min(len(self.data), ISA_BIOS_MAX)


def find_firmware(name: str, dirs: tuple[str, ...] | None = None) -> str | None:
    """``qemu_find_file``: ``name`` as a path first, then a bare name in the firmware
    directories. None when nothing is found."""
    if os.path.exists(name):
        return name
    if "/" in name:
        return None
    for d in FIRMWARE_DIRS if dirs is None else dirs:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    return None


def read_bounded(path: str, max_size: int, what: str) -> bytes:
    """Read a regular file of at most ``max_size`` bytes (:func:`microvm.boot.files.
    read_regular_file`); ``what`` starts the error message."""
    from .files import read_regular_file

    return read_regular_file(path, what, max_size)


def load_firmware(name: str) -> Firmware:
    """Find and read a ``-bios`` image and check its size as QEMU does; a
    :class:`BootError` (one line, status 2) says why it cannot be used."""
    what = f"could not load PC BIOS '{name}'"
    if not name:
        raise BootError(f"{what}: empty file name")
    path = find_firmware(name)
    if path is None:
        where = "" if "/" in name else f" (searched {', '.join(FIRMWARE_DIRS)})"
        raise BootError(f"{what}: no such file{where}")
    if path != name:
        what = f"{what} ({path})"
    data = read_bounded(path, BIOS_MAX, what)
    if len(data) % BIOS_ALIGN:
        raise BootError(f"{what}: {len(data)} bytes is not a multiple of 64 KiB")
    return Firmware(name, path, data)


def load_firmware_file(name: str, max_size: int = 1 << 20) -> bytes:
    """An auxiliary firmware file by name (an option ROM such as ``linuxboot_dma.bin``),
    searched like ``-bios`` and read with a size bound."""
    path = find_firmware(name)
    if path is None:
        raise BootError(f"firmware file '{name}' not found (searched {', '.join(FIRMWARE_DIRS)}; "
                        f"Debian's qemu-system-data provides QEMU's)")
    return read_bounded(path, max_size, f"firmware file '{name}' ({path})")


#: QEMU's FW_CFG_MAX_FILE_PATH (56): a fw_cfg file name is at most 55 bytes
FW_CFG_MAX_FILE_PATH = 56
#: a fw_cfg file's size is a be32 in the directory
FW_CFG_FILE_MAX = 0xFFFFFFFF
_FW_CFG_KEYS = ("name", "file", "string", "gen_id")


def parse_fw_cfg_option(text: str, flags: list[tuple[str, str, str]] | None = None) -> tuple[str, bytes]:
    """QEMU 7.2's ``-fw_cfg [name=]NAME,file=PATH`` or ``-fw_cfg [name=]NAME,string=STR``
    (``parse_fw_cfg`` in ``softmmu/vl.c``): (the file's name, its bytes).

    The text is split as QEMU's QemuOpts splits it (:func:`microvm.options.qemu_opts`:
    ``,,`` is a comma, a key given twice keeps the last value, a bare later item is a
    short-form boolean, appended to ``flags``). As QEMU: the name is required and exactly
    one of ``file``/``string``/``gen_id`` is given (an empty value counts as not given), the
    name is at most 55 bytes, a ``string`` goes in without its NUL. ``gen_id`` (content from
    an ``-object``) is refused: microvm has no ``-object``. The file is read now, as QEMU
    reads it when it creates the devices, by :func:`microvm.boot.files.read_regular_file`
    (a regular file only: a FIFO or a device could block or never end). Whether the name
    starts with ``opt/`` (QEMU warns otherwise) is the caller's to say; duplicates are the
    device's to refuse.
    """
    from ..errors import ConfigError
    from ..options import qemu_opts
    from .files import read_regular_file

    where = f"--fw-cfg {text}"
    try:
        props = qemu_opts(text, "name", _FW_CFG_KEYS, flags, id_ok=True)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    name = props.get("name", "")
    given = [k for k in ("file", "string", "gen_id") if props.get(k)]
    if not name or len(given) != 1:
        raise ConfigError(f"{where}: name, plus exactly one of file, string and gen_id, are needed")
    if len(name.encode()) > FW_CFG_MAX_FILE_PATH - 1:
        raise ConfigError(f"{where}: name too long (max. {FW_CFG_MAX_FILE_PATH - 1} char)")
    if given[0] == "gen_id":
        raise ConfigError(f"{where}: gen_id is unsupported on microvm (it names an -object, which microvm does not have)")
    if given[0] == "string":
        return name, props["string"].encode()
    path = props["file"]
    data = read_regular_file(path, f"{where}: can't load {path}", FW_CFG_FILE_MAX, empty_ok=True,
                             limit="a fw_cfg file holds (4 GiB - 1)", error=ConfigError)
    return name, data


def map_firmware(memory: Any, fw: Firmware) -> mmap.mmap:
    """Put the image in an anonymous mapping and make it guest-visible through ``memory``
    (its overlays): at ``fw.base`` up to 4 GiB, and its last ``fw.isa_size`` bytes below
    1 MiB, where they shadow RAM. Returns the mapping (``memory.close`` releases it)."""
    size = len(fw.data)
    mm = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
    mm[:] = fw.data
    memory.add_overlay(fw.base, mm, 0, size, "bios")
    memory.add_overlay(ONE_MIB - fw.isa_size, mm, size - fw.isa_size, fw.isa_size, "isa-bios")
    return mm


def _real_mode_segment(seg: Any, selector: int, base: int, code: bool) -> None:
    seg.selector = selector
    seg.base = base
    seg.limit = 0xFFFF
    seg.type = 0xB if code else 0x3      # execute/read accessed, read/write accessed
    seg.present = 1
    seg.dpl = 0
    seg.db = 0
    seg.s = 1
    seg.l = 0
    seg.g = 0
    seg.avl = 0
    seg.unusable = 0


def setup_reset_sregs(sregs: Any) -> None:
    """The power-on segment and control registers: real mode, CS.base 0xffff0000."""
    _real_mode_segment(sregs.cs, RESET_CS_SELECTOR, RESET_CS_BASE, True)
    for s in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _real_mode_segment(s, 0, 0, False)
    sregs.tr.selector = 0
    sregs.tr.base = 0
    sregs.tr.limit = 0xFFFF
    sregs.tr.type = 0xB                  # 32-bit busy TSS, as KVM's reset state
    sregs.tr.present = 1
    sregs.tr.s = 0
    sregs.ldt.selector = 0
    sregs.ldt.base = 0
    sregs.ldt.limit = 0xFFFF
    sregs.ldt.type = 0x2
    sregs.ldt.present = 1
    sregs.ldt.s = 0
    sregs.gdt.base = 0
    sregs.gdt.limit = 0xFFFF
    sregs.idt.base = 0
    sregs.idt.limit = 0xFFFF
    sregs.cr0 = RESET_CR0
    sregs.cr2 = 0
    sregs.cr3 = 0
    sregs.cr4 = 0
    sregs.efer = 0


def setup_reset_regs(regs: Any) -> None:
    """General registers at reset: all 0 but RFLAGS bit 1 and IP 0xfff0 (EDX's CPU
    signature is left to KVM: firmware reads CPUID instead)."""
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rflags = RESET_RFLAGS
    regs.rip = RESET_IP
