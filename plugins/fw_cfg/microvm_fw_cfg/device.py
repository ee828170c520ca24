"""QEMU's fw_cfg device on I/O ports, as ``hw/i386/microvm.c`` (QEMU 7.2) creates it.

microvm calls ``fw_cfg_init_io_dma(0x510, 0x514, &address_space_memory)``, so the DMA
interface is **enabled** and firmware (qboot, SeaBIOS, the ``linuxboot_dma.bin`` option ROM,
Linux's ``qemu_fw_cfg`` driver) finds it at:

======================  =====================================================================
port                    what
======================  =====================================================================
0x510, 16-bit write     selector (little-endian key); resets the data offset to 0
0x510/0x511, 8-bit read data: the next byte of the selected item, 0 past its end (both ports:
                        QEMU's "comb" region does not look at the offset)
0x510/0x511, 8-bit wr.  ignored (data writes were removed in QEMU 2.4)
0x514-0x51b, read       the DMA signature "QEMU CFG", byte ``i`` at port ``0x514 + i``
0x514, 32-bit write     DMA address, high half (big-endian); clears the low half
0x518, 32-bit write     DMA address, low half (big-endian); starts the transfer
======================  =====================================================================

Any other access width is what QEMU calls an invalid access: reads return 0, writes are
dropped. Accesses that run past a range are the bus's business (it reads all ones), so the
device is two bus devices: :attr:`FwCfg.io` (2 ports) and :attr:`FwCfg.dma_io` (8 ports);
:meth:`FwCfg.port_ranges` lists them for the glue.

Items QEMU 7.2's x86 microvm provides. "device" items this class adds itself (they come from
``fw_cfg_common_realize``, which every fw_cfg runs); "machine" ones :mod:`.machine` adds as
``microvm_memory_init`` does; "kernel" ones come from :mod:`.linux` (``x86_load_linux``):

======  ======================  =========  =====================================================
key     name                    who        content (numbers little-endian)
======  ======================  =========  =====================================================
0x0000  FW_CFG_SIGNATURE        device     ``b"QEMU"``
0x0001  FW_CFG_ID               device     u32: bit 0 traditional interface, bit 1 DMA (3)
0x0002  FW_CFG_UUID             device     16 bytes, ``-uuid`` (zeros by default)
0x0003  FW_CFG_RAM_SIZE         machine    u64 RAM bytes
0x0004  FW_CFG_NOGRAPHIC        device     u16: 1 without a display (``-nographic``)
0x0005  FW_CFG_NB_CPUS          machine    u16 CPUs
0x0007  FW_CFG_KERNEL_ADDR      kernel     u32 where the protected-mode part goes (PVH: low)
0x0008  FW_CFG_KERNEL_SIZE      kernel     u32
0x000a  FW_CFG_INITRD_ADDR      kernel     u32, with an initrd
0x000b  FW_CFG_INITRD_SIZE      kernel     u32, with an initrd
0x000e  FW_CFG_BOOT_MENU        device     u16 ``-boot menu=on``
0x000f  FW_CFG_MAX_CPUS         machine    u16 ``maxcpus``
0x0010  FW_CFG_KERNEL_ENTRY     kernel     u32 PVH entry (ELF kernels only)
0x0011  FW_CFG_KERNEL_DATA      kernel     the bzImage after its setup sectors
0x0012  FW_CFG_INITRD_DATA      kernel     the initrd
0x0013  FW_CFG_CMDLINE_ADDR     kernel     u32 (bzImage only)
0x0014  FW_CFG_CMDLINE_SIZE     kernel     u32 strlen + 1
0x0015  FW_CFG_CMDLINE_DATA     kernel     the command line and its NUL
0x0016  FW_CFG_SETUP_ADDR       kernel     u32 (bzImage only)
0x0017  FW_CFG_SETUP_SIZE       kernel     u32
0x0018  FW_CFG_SETUP_DATA       kernel     setup sectors, header patched (PVH: first 8 KiB)
0x0019  FW_CFG_FILE_DIR         device     the file directory (below)
0x8002  FW_CFG_IRQ0_OVERRIDE    machine    u32 1
file    etc/boot-fail-wait      device     u32 ms, 0xffffffff = never reboot
file    etc/boot-menu-wait      device     u16 ms, only with a splash time
file    etc/e820                machine    see :mod:`.items`
file    genroms/*.bin           machine    the boot option ROM, with ``x-option-roms=on``
file    bootorder               machine    see :mod:`.items` (first reset)
file    bios-geometry           machine    empty on microvm (first reset)
======  ======================  =========  =====================================================

Not on microvm: MACHINE_ID (0x06), KERNEL_CMDLINE (0x09), BOOT_DEVICE (0x0c), NUMA (0x0d),
ACPI_TABLES/SMBIOS_ENTRIES/E820_TABLE/HPET (0x8000/1/3/4), ``etc/smbios/*`` (pc only);
``etc/fdt`` and the ACPI files (``etc/acpi/*``, ``etc/table-loader``) are microvm's but not
built here (no device-tree builder yet; this VMM has no ACPI).

**File directory.** Key 0x19 holds ``be32 count`` and then ``file_slots`` (0x20, QEMU's
``x-file-slots`` default) entries ``{be32 size, be16 select, u16 reserved, char name[56]}``,
unused ones zero: the item is always ``4 + 64 * file_slots`` bytes. Files are kept **sorted
by name** (``strcmp``), as ``fw_cfg_add_file_callback`` does for every machine type without
``legacy_fw_cfg_order`` (microvm sets none): a file's selector is ``0x20 + its index``, so
adding a name that sorts earlier moves the later files (and their selectors) up by one.

**Selecting.** ``(key & 0x3fff) >= 0x20 + file_slots`` selects nothing (FW_CFG_INVALID);
a key below that limit without an item selects an empty item. Bit 15 picks the arch-local
table, bit 14 (the old write channel) is ignored. Either way reads return 0.

**DMA** (``fw_cfg_dma_transfer``). The address register names a ``FWCfgDmaAccess`` in guest
RAM: ``be32 control, be32 length, be64 address``. SELECT (bit 3) selects ``control >> 16``
first; then READ (bit 1) copies ``length`` bytes of the item to ``address`` (zeros past its
end), else WRITE (bit 4) copies guest bytes into the item, else SKIP (bit 2) only advances
the offset. When done, ``control`` is written back as 0, or as ERROR (bit 0) when:

* the 16-byte structure is not wholly inside RAM (ERROR is then written to its ``control``
  word if that word is in RAM; if not, nothing is written anywhere);
* a READ buffer is not wholly inside RAM: **nothing** is written (QEMU would write the part
  that is RAM; here a transfer is all or nothing, so no byte outside the buffer's RAM part
  is ever touched either way);
* a WRITE targets a read-only item, an invalid/empty key, runs past the item's end, or its
  buffer is not in RAM (the item is then unchanged).

The offset advances over every chunk the transfer got to, as in QEMU. Guest addresses are
checked by :class:`microvm.memory.GuestMemory`; only RAM is a DMA target (QEMU would also
reach MMIO). The address register reads back the signature, never the address, and is
reset to 0 when a transfer starts.

**Threads.** Every guest access and every host call takes one re-entrant lock, so vCPU
threads may use the ports at once (each sees whole transfers). Select/write callbacks run
under it and may call the host API.
"""
from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

from microvm.api import GuestMemoryError, get_logger

from .keys import (
    FW_CFG_ARCH_LOCAL,
    FW_CFG_BOOT_MENU,
    FW_CFG_CTL_SIZE,
    FW_CFG_DMA_ACCESS_SIZE,
    FW_CFG_DMA_CTL_ERROR,
    FW_CFG_DMA_CTL_READ,
    FW_CFG_DMA_CTL_SELECT,
    FW_CFG_DMA_CTL_SKIP,
    FW_CFG_DMA_CTL_WRITE,
    FW_CFG_DMA_IO_BASE,
    FW_CFG_DMA_SIGNATURE,
    FW_CFG_DMA_SIZE,
    FW_CFG_ENTRY_MASK,
    FW_CFG_FILE_DIR,
    FW_CFG_FILE_FIRST,
    FW_CFG_FILE_SLOTS_DFLT,
    FW_CFG_FILE_SLOTS_MIN,
    FW_CFG_ID,
    FW_CFG_INVALID,
    FW_CFG_IO_BASE,
    FW_CFG_MAX_FILE_PATH,
    FW_CFG_NOGRAPHIC,
    FW_CFG_SIGNATURE,
    FW_CFG_SIGNATURE_BYTES,
    FW_CFG_UUID,
    FW_CFG_VERSION,
    FW_CFG_VERSION_DMA,
    key_name,
)

if TYPE_CHECKING:  # annotations only: building typing aliases costs start-up time
    from typing import Callable, Union

    from microvm.api import GuestMemory

    Data = Union[bytes, bytearray, memoryview]
    SelectCallback = Callable[[], None]
    WriteCallback = Callable[[int, int], None]   # (offset, length) of the bytes the guest wrote

log = get_logger("microvm.fw_cfg")

_DIR_ENTRY = struct.Struct(">IHH56s")     # FWCfgFile
_DMA_ACCESS = struct.Struct(">IIQ")       # FWCfgDmaAccess
_MASK64 = (1 << 64) - 1
_ZERO_CHUNK_SIZE = 1 << 20               # zero-filling a READ past the end, 1 MiB at a time
_zero_chunk: bytes | None = None          # made on first use: most boots never need it


class FwCfgError(ValueError):
    """Host-side misuse: a key set twice, a duplicate or over-long file name, no slot left.
    (QEMU asserts or exits on these; the glue turns it into a ConfigError where it is the
    user's doing.)"""


class FwCfgFile(tuple):
    """One directory entry as the guest sees it: ``(name, size, select)``, a tuple whose
    items also have these names. Written out rather than a ``typing.NamedTuple``, whose
    class creation costs about 0.1 ms at import, and every machine imports this module."""

    __slots__ = ()
    _fields = ("name", "size", "select")

    def __new__(cls, name: str, size: int, select: int) -> "FwCfgFile":
        return tuple.__new__(cls, (name, size, select))

    @property
    def name(self) -> str:
        return self[0]

    @property
    def size(self) -> int:
        return self[1]

    @property
    def select(self) -> int:
        return self[2]

    def __repr__(self) -> str:
        return f"FwCfgFile(name={self[0]!r}, size={self[1]!r}, select={self[2]!r})"


class _Entry:
    """FWCfgEntry: the bytes, whether the guest may DMA-write them, and the callbacks.
    (A plain class: ``dataclasses`` costs start-up time, and every machine has a fw_cfg.)"""

    __slots__ = ("data", "read_only", "on_select", "on_write")

    def __init__(self, data: bytes | bytearray, read_only: bool = True,
                 on_select: SelectCallback | None = None, on_write: WriteCallback | None = None) -> None:
        self.data = data
        self.read_only = read_only
        self.on_select = on_select
        self.on_write = on_write


def _le(value: int, size: int) -> bytes:
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _file_name(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if not raw or b"\0" in raw:
        raise FwCfgError(f"fw_cfg: invalid file name {name!r}")
    if len(raw) >= FW_CFG_MAX_FILE_PATH:
        raise FwCfgError(f"fw_cfg: file name {name!r} is longer than {FW_CFG_MAX_FILE_PATH - 1} bytes")
    return raw


class FwCfg:
    """The fw_cfg device: item table, file directory, selector/data ports and DMA.

    ``memory`` is the guest RAM DMA reads and writes (required when ``dma_enabled``). The
    keyword arguments are the machine settings ``fw_cfg_common_realize`` publishes:
    ``uuid`` (16 bytes), ``nographic`` (True: this VMM has no display, as ``-nographic``),
    ``boot_menu``, ``splash_time`` (ms; adds ``etc/boot-menu-wait``) and ``reboot_timeout``
    (ms, -1 = never; ``etc/boot-fail-wait``). ``file_slots`` is QEMU's ``x-file-slots``.
    """

    def __init__(
        self,
        memory: GuestMemory | None = None,
        *,
        dma_enabled: bool = True,
        file_slots: int = FW_CFG_FILE_SLOTS_DFLT,
        uuid: bytes = bytes(16),
        nographic: bool = True,
        boot_menu: bool = False,
        splash_time: int | None = None,
        reboot_timeout: int = -1,
    ) -> None:
        if dma_enabled and memory is None:
            raise FwCfgError("fw_cfg: the DMA interface needs guest memory")
        if not FW_CFG_FILE_SLOTS_MIN <= file_slots <= FW_CFG_ENTRY_MASK - FW_CFG_FILE_FIRST + 1:
            raise FwCfgError(f"fw_cfg: file_slots must be {FW_CFG_FILE_SLOTS_MIN:#x}..0x3fe0")
        if len(uuid) != 16:
            raise FwCfgError("fw_cfg: the UUID is 16 bytes")
        if splash_time is not None and not 0 <= splash_time <= 0xFFFF:
            raise FwCfgError("fw_cfg: splash-time must be 0..65535")
        if not (reboot_timeout == -1 or 0 <= reboot_timeout <= 0xFFFF):
            raise FwCfgError("fw_cfg: reboot-timeout must be -1..65535")
        self._memory = memory
        self.dma_enabled = dma_enabled
        self.file_slots = file_slots
        self._lock = threading.RLock()
        # entries[0] generic, entries[1] arch-local; index = key & FW_CFG_ENTRY_MASK
        self._entries: tuple[dict[int, _Entry], dict[int, _Entry]] = ({}, {})
        self._files: list[bytes] = []           # names, sorted; file i has key 0x20 + i
        self._dir: bytearray | None = None      # FW_CFG_FILE_DIR's bytes, kept live
        self._cur_entry = FW_CFG_INVALID
        self._cur_offset = 0
        self._dma_addr = 0
        self.io = _IoPorts(self)
        self.dma_io = _DmaPorts(self)

        # fw_cfg_common_realize
        self.add_bytes(FW_CFG_SIGNATURE, FW_CFG_SIGNATURE_BYTES)
        self.add_bytes(FW_CFG_UUID, uuid)
        self.add_i16(FW_CFG_NOGRAPHIC, int(nographic))
        self.add_i16(FW_CFG_BOOT_MENU, int(boot_menu))
        if splash_time is not None:          # fw_cfg_bootsplash (the splash image: not here)
            self.add_file("etc/boot-menu-wait", _le(splash_time, 2))
        self.add_file("etc/boot-fail-wait", _le(reboot_timeout, 4))   # fw_cfg_reboot
        version = FW_CFG_VERSION | (FW_CFG_VERSION_DMA if dma_enabled else 0)
        self.add_i32(FW_CFG_ID, version)
        self.reset()

    # ---- placement -------------------------------------------------------------------------
    def port_ranges(self) -> list[tuple[int, int, object, str]]:
        """``(base, length, bus device, name)`` for each I/O port range, as microvm maps them."""
        ranges: list[tuple[int, int, object, str]] = [(FW_CFG_IO_BASE, FW_CFG_CTL_SIZE, self.io, "fw_cfg")]
        if self.dma_enabled:
            ranges.append((FW_CFG_DMA_IO_BASE, FW_CFG_DMA_SIZE, self.dma_io, "fw_cfg.dma"))
        return ranges

    def reset(self) -> None:
        """fw_cfg_reset: select the signature (the DMA address register keeps its value)."""
        with self._lock:
            self._select(FW_CFG_SIGNATURE)

    # ---- host side: numbered items ---------------------------------------------------------
    def _slot(self, key: int) -> tuple[dict[int, _Entry], int]:
        index = key & FW_CFG_ENTRY_MASK
        if not 0 <= key <= 0xFFFF or index >= self._max_entry:
            raise FwCfgError(f"fw_cfg: key {key:#x} is outside the item table")
        return self._entries[1 if key & FW_CFG_ARCH_LOCAL else 0], index

    @property
    def _max_entry(self) -> int:
        return FW_CFG_FILE_FIRST + self.file_slots

    def _add(self, key: int, entry: _Entry) -> None:
        table, index = self._slot(key)
        if index in table:
            raise FwCfgError(f"fw_cfg: key {key:#x} ({key_name(key)}) is already set")
        table[index] = entry

    def add_bytes(self, key: int, data: Data) -> None:
        """fw_cfg_add_bytes: a read-only item at ``key``."""
        with self._lock:
            self._add(key, _Entry(bytes(data)))

    def add_string(self, key: int, value: str | bytes) -> None:
        """fw_cfg_add_string: the string and its terminating NUL."""
        raw = value.encode() if isinstance(value, str) else bytes(value)
        self.add_bytes(key, raw + b"\0")

    def add_i16(self, key: int, value: int) -> None:
        self.add_bytes(key, _le(value, 2))

    def add_i32(self, key: int, value: int) -> None:
        self.add_bytes(key, _le(value, 4))

    def add_i64(self, key: int, value: int) -> None:
        self.add_bytes(key, _le(value, 8))

    def modify_bytes(self, key: int, data: Data) -> None:
        """fw_cfg_modify_bytes_read: replace an item (read-only, callbacks dropped)."""
        with self._lock:
            table, index = self._slot(key)
            table[index] = _Entry(bytes(data))

    def modify_string(self, key: int, value: str | bytes) -> None:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        self.modify_bytes(key, raw + b"\0")

    def modify_i16(self, key: int, value: int) -> None:
        self.modify_bytes(key, _le(value, 2))

    def modify_i32(self, key: int, value: int) -> None:
        self.modify_bytes(key, _le(value, 4))

    def modify_i64(self, key: int, value: int) -> None:
        self.modify_bytes(key, _le(value, 8))

    def item(self, key: int) -> bytes | None:
        """The current bytes of the item at ``key`` (None if none), as the guest would read them."""
        with self._lock:
            table, index = self._slot(key)
            entry = table.get(index)
            return None if entry is None else bytes(entry.data)

    # ---- host side: files --------------------------------------------------------------------
    def add_file(
        self,
        name: str | bytes,
        data: Data,
        *,
        read_only: bool = True,
        on_select: SelectCallback | None = None,
        on_write: WriteCallback | None = None,
    ) -> int:
        """fw_cfg_add_file_callback: a named item; returns the selector it has *now*.

        A writable file (``read_only=False``) takes guest DMA writes that stay inside it;
        ``on_write(offset, length)`` runs after each. ``on_select()`` runs whenever the guest
        selects it. The selector can move when a name that sorts before it is added later:
        look it up with :meth:`file_select` once the machine is built.
        """
        raw = _file_name(name)
        entry = _Entry(bytearray(data) if not read_only else bytes(data), read_only, on_select, on_write)
        with self._lock:
            if raw in self._files:
                raise FwCfgError(f"duplicate fw_cfg file name: {raw.decode(errors='replace')}")  # QEMU's words
            count = len(self._files)
            if count >= self.file_slots:
                raise FwCfgError(f"fw_cfg: no file slot left for {raw.decode(errors='replace')} ({self.file_slots} slots)")
            if self._dir is None:
                self._dir = bytearray(4 + _DIR_ENTRY.size * self.file_slots)
                self._add(FW_CFG_FILE_DIR, _Entry(self._dir))
            index = count
            while index > 0 and raw < self._files[index - 1]:   # strcmp order
                index -= 1
            table = self._entries[0]
            for i in range(count, index, -1):                   # move the later files up one key
                table[FW_CFG_FILE_FIRST + i] = table.pop(FW_CFG_FILE_FIRST + i - 1)
            table[FW_CFG_FILE_FIRST + index] = entry
            self._files.insert(index, raw)
            self._write_dir()
            return FW_CFG_FILE_FIRST + index

    def modify_file(self, name: str | bytes, data: Data) -> None:
        """fw_cfg_modify_file: replace a file's bytes (read-only, callbacks dropped), or add it."""
        raw = _file_name(name)
        with self._lock:
            if raw in self._files:
                index = self._files.index(raw)
                self._entries[0][FW_CFG_FILE_FIRST + index] = _Entry(bytes(data))
                self._write_dir()
            else:
                self.add_file(raw, data)

    def file_select(self, name: str | bytes) -> int | None:
        """The selector a file has now, or None."""
        raw = _file_name(name)
        with self._lock:
            return FW_CFG_FILE_FIRST + self._files.index(raw) if raw in self._files else None

    def file_data(self, name: str | bytes) -> bytes | None:
        """A file's current bytes (for a writable file: what the guest left in it)."""
        select = self.file_select(name)
        return None if select is None else self.item(select)

    def files(self) -> list[FwCfgFile]:
        """The directory, in selector order."""
        with self._lock:
            return [
                FwCfgFile(n.decode(errors="replace"), len(self._entries[0][FW_CFG_FILE_FIRST + i].data), FW_CFG_FILE_FIRST + i)
                for i, n in enumerate(self._files)
            ]

    def _write_dir(self) -> None:
        """Rewrite FWCfgFiles in place, so the FILE_DIR item stays the same (live) object."""
        assert self._dir is not None
        struct.pack_into(">I", self._dir, 0, len(self._files))
        for i, raw in enumerate(self._files):
            size = len(self._entries[0][FW_CFG_FILE_FIRST + i].data)
            _DIR_ENTRY.pack_into(self._dir, 4 + i * _DIR_ENTRY.size, size, FW_CFG_FILE_FIRST + i, 0, raw)

    # ---- guest side: selector and data -------------------------------------------------------
    def _select(self, key: int) -> None:
        """fw_cfg_select: offset 0; a key past the table selects nothing."""
        self._cur_offset = 0
        if (key & FW_CFG_ENTRY_MASK) >= self._max_entry:
            self._cur_entry = FW_CFG_INVALID
            return
        self._cur_entry = key
        entry = self._current()
        if entry is not None and entry.on_select is not None:
            entry.on_select()

    def _current(self) -> _Entry | None:
        if self._cur_entry == FW_CFG_INVALID:
            return None
        table = self._entries[1 if self._cur_entry & FW_CFG_ARCH_LOCAL else 0]
        return table.get(self._cur_entry & FW_CFG_ENTRY_MASK)

    def _read_byte(self) -> int:
        entry = self._current()
        if entry is None or self._cur_offset >= len(entry.data):
            return 0
        value = entry.data[self._cur_offset]
        self._cur_offset += 1
        return value

    def select(self, key: int) -> None:
        """What a 16-bit write of ``key`` to the selector port does."""
        with self._lock:
            self._select(key & 0xFFFF)

    def read_data(self, length: int) -> bytes:
        """What ``length`` 8-bit reads of the data port return."""
        with self._lock:
            return bytes(self._read_byte() for _ in range(length))

    def io_read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            if len(data) == 1:
                data[0] = self._read_byte()
            else:   # fw_cfg_comb_valid: only byte reads; QEMU answers the others with 0
                data[:] = bytes(len(data))

    def io_write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if len(data) == 2 and offset == 0:
                self._select(int.from_bytes(data, "little"))
            # byte writes: fw_cfg_write does nothing since QEMU 2.4; other widths are invalid

    # ---- guest side: DMA -----------------------------------------------------------------
    def dma_read(self, offset: int, data: memoryview) -> None:
        """The address register reads as the signature, big-endian: byte i is "QEMU CFG"[i]."""
        sig = FW_CFG_DMA_SIGNATURE.to_bytes(8, "big")[offset : offset + len(data)]
        data[:] = sig + bytes(len(data) - len(sig))

    def dma_write(self, offset: int, data: bytes) -> None:
        """fw_cfg_dma_mem_write: 32-bit halves at 0 (high) and 4 (low, starts), or 64 bits at 0."""
        value = int.from_bytes(data, "big")
        with self._lock:
            if len(data) == 4 and offset == 0:
                self._dma_addr = value << 32
            elif len(data) == 4 and offset == 4:
                self._dma_addr |= value
                self._dma_transfer()
            elif len(data) == 8 and offset == 0:
                self._dma_addr = value
                self._dma_transfer()

    def _dma_transfer(self) -> None:
        memory = self._memory
        assert memory is not None
        access, self._dma_addr = self._dma_addr, 0   # reset before the next access
        try:
            control, length, address = _DMA_ACCESS.unpack(memory.read(access, FW_CFG_DMA_ACCESS_SIZE))
        except GuestMemoryError:
            log.debug("fw_cfg: DMA access structure at %#x is not in RAM", access)
            self._dma_store(access, FW_CFG_DMA_CTL_ERROR)
            return

        if control & FW_CFG_DMA_CTL_SELECT:
            self._select(control >> 16)
        if control & FW_CFG_DMA_CTL_READ:
            op = FW_CFG_DMA_CTL_READ
        elif control & FW_CFG_DMA_CTL_WRITE:
            op = FW_CFG_DMA_CTL_WRITE
        elif control & FW_CFG_DMA_CTL_SKIP:
            op = FW_CFG_DMA_CTL_SKIP
        else:
            op, length = 0, 0

        status = 0
        entry = self._current()
        while length > 0 and not status & FW_CFG_DMA_CTL_ERROR:
            if entry is None or self._cur_offset >= len(entry.data):
                n = length   # nothing (left) to transfer: reads give zeros, writes fail
                if op == FW_CFG_DMA_CTL_READ and not self._dma_zero(address, n):
                    status |= FW_CFG_DMA_CTL_ERROR
                elif op == FW_CFG_DMA_CTL_WRITE:
                    status |= FW_CFG_DMA_CTL_ERROR
            else:
                off = self._cur_offset
                n = min(length, len(entry.data) - off)
                if op == FW_CFG_DMA_CTL_READ:
                    if not self._dma_to_guest(address, memoryview(entry.data)[off : off + n]):
                        status |= FW_CFG_DMA_CTL_ERROR
                elif op == FW_CFG_DMA_CTL_WRITE:
                    if entry.read_only or n != length or not self._dma_from_guest(address, entry, off, n):
                        status |= FW_CFG_DMA_CTL_ERROR
                    elif entry.on_write is not None:
                        entry.on_write(off, n)
                self._cur_offset += n
            address = (address + n) & _MASK64
            length -= n
        if status:
            log.debug("fw_cfg: DMA %#x on %s failed", op, key_name(self._cur_entry))
        self._dma_store(access, status)

    def _dma_store(self, access: int, control: int) -> None:
        """Write the result into FWCfgDmaAccess.control, if that word is RAM."""
        try:
            self._memory.write(access, control.to_bytes(4, "big"))  # type: ignore[union-attr]
        except GuestMemoryError:
            pass

    def _dma_to_guest(self, address: int, data: memoryview) -> bool:
        try:
            with self._memory.view(address, len(data)) as dst:  # type: ignore[union-attr]
                dst[:] = data
        except GuestMemoryError:
            return False
        return True

    def _dma_zero(self, address: int, length: int) -> bool:
        """Zero ``length`` guest bytes (up to 4 GiB - 1) without allocating them at once."""
        global _zero_chunk
        if _zero_chunk is None:
            _zero_chunk = bytes(_ZERO_CHUNK_SIZE)
        zeros = _zero_chunk
        try:
            with self._memory.view(address, length) as dst:  # type: ignore[union-attr]
                for pos in range(0, length, _ZERO_CHUNK_SIZE):
                    end = min(length, pos + _ZERO_CHUNK_SIZE)
                    dst[pos:end] = zeros[: end - pos]
        except GuestMemoryError:
            return False
        return True

    def _dma_from_guest(self, address: int, entry: _Entry, off: int, n: int) -> bool:
        try:
            with self._memory.view(address, n) as src:  # type: ignore[union-attr]
                entry.data[off : off + n] = src  # type: ignore[index]
        except GuestMemoryError:
            return False
        return True


class _IoPorts:
    """Bus device for 0x510-0x511. Never lets an exception out to the vCPU thread."""

    def __init__(self, fw: FwCfg) -> None:
        self._fw = fw

    def read(self, offset: int, data: memoryview) -> None:
        try:
            self._fw.io_read(offset, data)
        except Exception:
            log.exception("fw_cfg: internal error on a port read at offset %d", offset)
            data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes) -> None:
        try:
            self._fw.io_write(offset, data)
        except Exception:
            log.exception("fw_cfg: internal error on a port write at offset %d", offset)


class _DmaPorts:
    """Bus device for 0x514-0x51b (the DMA address register)."""

    def __init__(self, fw: FwCfg) -> None:
        self._fw = fw

    def read(self, offset: int, data: memoryview) -> None:
        try:
            self._fw.dma_read(offset, data)
        except Exception:
            log.exception("fw_cfg: internal error on a DMA register read at offset %d", offset)
            data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes) -> None:
        try:
            self._fw.dma_write(offset, data)
        except Exception:
            log.exception("fw_cfg: internal error on a DMA register write at offset %d", offset)
