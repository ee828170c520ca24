"""Bounded inputs (issue 12): a kernel or initrd that is not a regular file, is larger than
guest RAM, or is an ELF whose headers claim more memory than the guest has, is a one-line
BootError before anything is allocated, never an unbounded read or a multi-GiB allocation.

The hostile cases run in a child process with its address space limited (RLIMIT_AS) and a
timeout, so a regression shows up as a failed test, not as a machine out of memory."""
from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from microvm.boot import loader
from microvm.errors import BootError, GuestMemoryError

from kvm_helpers import MICROVM

MiB, GiB = 1 << 20, 1 << 30
PVH_ENTRY = 0x1000040
CHILD_LIMIT = 1 * GiB  # address space for the child: far less than the 4 GiB the old code took


def pvh_note(entry: int = PVH_ENTRY) -> bytes:
    return struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)


def elf64(segments: list[tuple[int, bytes, int]], *, machine: int = 62) -> bytes:
    """A little ELF64 with a PVH note and one PT_LOAD per (paddr, data, memsz)."""
    note = pvh_note()
    phnum = len(segments) + 1
    data_off = 64 + 56 * phnum
    phdrs = b""
    blobs = b""
    off = data_off
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 5, off, paddr, paddr, len(data), memsz, 0x1000)
        blobs += data
        off += len(data)
    phdrs += struct.pack("<IIQQQQQQ", 4, 4, off, 0, 0, len(note), len(note), 4)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, machine, 1, PVH_ENTRY,
                       64, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + phdrs + blobs + note


def elf32(paddr: int, data: bytes, memsz: int, *, machine: int = 3) -> bytes:
    """An ELF32 (EM_386 by default) with a PVH note and one PT_LOAD."""
    note = pvh_note()
    data_off = 52 + 32 * 2
    ehdr = struct.pack("<16sHHIIIIIHHHHHH", b"\x7fELF\x01\x01\x01" + bytes(9), 2, machine, 1, PVH_ENTRY,
                       52, 0, 0, 52, 32, 2, 40, 0, 0)
    load = struct.pack("<IIIIIIII", 1, data_off, paddr, paddr, len(data), memsz, 5, 0x1000)
    pnote = struct.pack("<IIIIIIII", 4, data_off + len(data), 0, 0, len(note), len(note), 4, 4)
    return ehdr + load + pnote + data + note


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def in_child(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter limited to CHILD_LIMIT of address space."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_LIMIT, CHILD_LIMIT))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def read_images_in_child(kernel: str, initrd: str | None = None, max_size: int | None = 128 * MiB) -> str:
    """read_images in a limited child; returns the BootError's message (the test fails on any
    other outcome: success, another exception, a hang)."""
    r = in_child(f"""
        from microvm.boot import loader
        from microvm.errors import BootError
        try:
            loader.read_images({kernel!r}, {initrd!r}, max_size={max_size!r})
        except BootError as e:
            print("BootError:", e)
        else:
            print("no error")
    """)
    assert r.returncode == 0 and r.stdout.startswith("BootError: "), (r.stdout, r.stderr[-2000:])
    msg = r.stdout[len("BootError: "):].rstrip("\n")
    assert "\n" not in msg
    return msg


# ---- not regular files ---------------------------------------------------------------------------
@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/urandom"])
def test_character_device_as_kernel_is_refused_before_reading(dev: str) -> None:
    """Today: read until memory runs out. Now: fstat on the opened fd says it is no file."""
    if not os.path.exists(dev):
        pytest.skip(f"{dev} is missing")
    assert read_images_in_child(dev) == f"kernel {dev}: not a regular file (a character device)"


def test_character_device_as_initrd_is_refused(tmp_path) -> None:
    k = write(tmp_path, "vmlinux", elf64([(0x1000000, b"\x90" * 64, 64)]))
    assert read_images_in_child(str(k), "/dev/zero") == "initrd /dev/zero: not a regular file (a character device)"


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path) -> None:
    """open() of a FIFO blocks until a writer comes: the loader opens non-blocking."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_images_in_child(str(fifo)) == f"kernel {fifo}: not a regular file (a FIFO)"


def test_directory_is_refused(tmp_path) -> None:
    with pytest.raises(BootError, match=r"^kernel .*: is a directory$"):
        loader.read_images(tmp_path, None, max_size=128 * MiB)


# ---- larger than guest RAM -----------------------------------------------------------------------
def test_kernel_larger_than_ram_is_refused_from_fstat(tmp_path) -> None:
    """A sparse 200 MiB file for a 128 MiB guest: refused from its size, never read."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(200 * MiB)
    msg = read_images_in_child(str(big))
    assert msg == f"kernel {big}: 209715200 bytes, larger than guest RAM (128 MiB); give the guest more memory with -m"


def test_initrd_larger_than_ram_is_refused(tmp_path) -> None:
    k = write(tmp_path, "vmlinux", elf64([(0x1000000, b"\x90" * 64, 64)]))
    big = tmp_path / "initrd"
    with open(big, "wb") as f:
        f.truncate(128 * MiB + 1)
    with pytest.raises(BootError, match=r"^initrd .*: 134217729 bytes, larger than guest RAM \(128 MiB\)"):
        loader.read_images(k, big, max_size=128 * MiB)


def test_exactly_ram_sized_initrd_passes_the_read_check(tmp_path) -> None:
    k = write(tmp_path, "vmlinux", elf64([(0x100000, b"\x90" * 64, 64)]))
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        f.truncate(4 * MiB)
    images = loader.read_images(k, initrd, max_size=4 * MiB)
    assert len(images.initrd) == 4 * MiB


# ---- ELF headers against RAM -----------------------------------------------------------------------
def test_small_elf_claiming_4gib_segment_allocates_nothing(tmp_path) -> None:
    """A 5 KB ELF whose PT_LOAD has p_memsz 4 GiB: today 4.2 GB allocated by fill(); now a
    BootError from read_images, in a child that could not even allocate 1 GiB."""
    k = write(tmp_path, "vmlinux", elf64([(0x1000000, b"\x90" * 4096, 4 * GiB)]))
    assert k.stat().st_size < 6000
    msg = read_images_in_child(str(k))
    assert msg == "ELF kernel: segment 0 [0x1000000, 0x101000000) does not fit in guest RAM (128 MiB)"


@pytest.mark.parametrize("memsz", [(1 << 63) - 1, (1 << 64) - 1])
def test_memsz_near_2_pow_63_is_a_boot_error(tmp_path, memsz: int) -> None:
    k = write(tmp_path, "vmlinux", elf64([(0x1000000, b"\x90" * 64, memsz)]))
    msg = read_images_in_child(str(k))
    assert msg.startswith("ELF kernel: segment 0 [0x1000000, ") and msg.endswith("does not fit in guest RAM (128 MiB)")


def test_load_elf_checks_every_segment_before_writing(tmp_path, guest_memory) -> None:
    """load() on an 8 MiB guest: the second segment does not fit, so not even the first one is
    written (a half-loaded kernel in RAM helps nobody), and fill() is never asked for 4 GiB."""
    mem = guest_memory(8 * MiB)
    image = elf64([(0x100000, b"\xAA" * 4096, 4096), (0x200000, b"\x90" * 16, 4 * GiB)])
    images = loader.read_images(write(tmp_path, "vmlinux", image), None)  # no max_size: caller's old call
    tracemalloc.start()
    try:
        with pytest.raises(BootError, match=r"segment 1 \[0x200000, 0x100200000\) does not fit in guest RAM \(8 MiB\)"):
            loader.load(mem, images, "", [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB
    assert mem.read(0x100000, 16) == bytes(16)


def test_segment_in_the_32bit_hole_is_refused(tmp_path) -> None:
    """With 4 GiB of RAM the guest has [0, 3 GiB) and [4 GiB, 5 GiB): a segment at 3.5 GiB is
    in neither, however small."""
    k = write(tmp_path, "vmlinux", elf64([(0xE0000000, b"\x90" * 64, 64)]))
    with pytest.raises(BootError, match=r"segment 0 \[0xe0000000, 0xe0000040\) does not fit in guest RAM \(4096 MiB\)"):
        loader.read_images(k, None, max_size=4 * GiB)
    ok = write(tmp_path, "high", elf64([(0x100000000, b"\x90" * 64, 64)]))
    loader.read_images(ok, None, max_size=4 * GiB)


def test_empty_segments_are_ignored(tmp_path) -> None:
    """p_memsz 0 loads nothing, wherever it claims to be (linkers emit such headers)."""
    k = write(tmp_path, "vmlinux", elf64([(0x1000000, b"\x90" * 64, 64), (0xFFFFFFFFFFFF0000, b"", 0)]))
    assert loader.read_images(k, None, max_size=128 * MiB).kind == "elf"


# ---- e_machine ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("machine, name", [(183, "AArch64"), (40, "ARM"), (243, "RISC-V"), (0, "no machine")])
def test_elf_for_another_architecture_is_refused(tmp_path, machine: int, name: str) -> None:
    """QEMU's load_elf with EM_X86_64 takes EM_X86_64 and EM_386 only (ELF_LOAD_WRONG_ARCH,
    "The image is from incompatible architecture"; x86_load_linux then says "Error while
    loading elf kernel")."""
    k = write(tmp_path, "vmlinux", elf64([(0x1000000, b"\x90" * 64, 64)], machine=machine))
    with pytest.raises(BootError) as info:
        loader.read_images(k, None, max_size=128 * MiB)
    assert str(info.value) == (
        f"ELF kernel: the image is from incompatible architecture (e_machine {machine}); "
        "an x86 kernel is EM_X86_64 (62) or EM_386 (3)"
    )


def test_em_386_elf_is_accepted_as_qemu_accepts_it(tmp_path, guest_memory) -> None:
    mem = guest_memory(32 * MiB)
    k = write(tmp_path, "vmlinux32", elf32(0x1000000, b"\xCC" * 32, 64))
    entry = loader.load(mem, loader.read_images(k, None, max_size=32 * MiB), "", [])
    assert entry.rip == PVH_ENTRY
    assert mem.read(0x1000000, 33) == b"\xCC" * 32 + b"\0"


# ---- the command line -------------------------------------------------------------------------------
def test_cli_kernel_dev_zero_is_one_line_status_2() -> None:
    """`microvm run --kernel /dev/zero`: one line on stderr and status 2, at once, in a child
    whose address space could not hold what the old code read."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * GiB, 4 * GiB))

    r = subprocess.run([*MICROVM, "run", "--kernel", "/dev/zero", "--serial", "null"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, preexec_fn=limit)
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2, (r.returncode, lines[-5:])
    assert len(lines) == 1 and "/dev/zero: not a regular file (a character device)" in lines[0], lines


# ---- GuestMemory --------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1 << 40, (1 << 63) - 1])
def test_fill_outside_ram_builds_nothing(guest_memory, length: int) -> None:
    """fill() used to build ``bytes([byte]) * length`` first: a MemoryError (or terabytes)."""
    mem = guest_memory(4 * MiB)
    with pytest.raises(GuestMemoryError):
        mem.fill(0x1000, length)


def test_fill_just_past_ram_allocates_little(guest_memory) -> None:
    mem = guest_memory(4 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(GuestMemoryError):
            mem.fill(0, 64 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB


def test_fill_in_chunks_sets_every_byte_and_nothing_else(guest_memory) -> None:
    mem = guest_memory(8 * MiB)
    mem.write(0x1000 - 1, b"\x11")
    mem.write(0x1000 + 3 * MiB + 5, b"\x22")
    tracemalloc.start()
    try:
        mem.fill(0x1000, 3 * MiB + 5, 0xAB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB  # a bounded chunk, not the whole range at once
    assert mem.read(0x1000 - 1, 1) == b"\x11"
    assert mem.read(0x1000, 3 * MiB + 5) == b"\xAB" * (3 * MiB + 5)
    assert mem.read(0x1000 + 3 * MiB + 5, 1) == b"\x22"
    mem.fill(0x2000, 0)  # nothing at all
    with pytest.raises(ValueError):
        mem.fill(0, 1, 256)


def test_write_takes_any_buffer_and_checks_bounds_first(guest_memory) -> None:
    mem = guest_memory(4 * MiB)
    words = memoryview(struct.pack("<4I", 1, 2, 3, 4)).cast("I")
    mem.write(0x100, words)  # four elements, sixteen bytes
    assert mem.read(0x100, 16) == struct.pack("<4I", 1, 2, 3, 4)
    with pytest.raises(GuestMemoryError):
        mem.write(4 * MiB - 8, words)
    assert mem.read(4 * MiB - 8, 8) == bytes(8)
