"""Firmware boot (--bios): finding and checking the image, mapping it below 4 GiB and below
1 MiB, the reset state, and tiny guests on /dev/kvm that read fw_cfg from real mode (started
at the reset vector) and from 32-bit protected mode (PVH, direct boot)."""
from __future__ import annotations

import os
import subprocess
import types
from pathlib import Path

import pytest

from kvm_helpers import build_bios, build_guest, kvm_reason, requires_kvm, run_microvm
from microvm.boot import firmware
from microvm.errors import BootError, ConfigError, GuestMemoryError
from microvm.memory import GuestMemory

MiB = 1 << 20


@pytest.fixture(scope="module")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fw-guests")


# ---- finding and checking the image -------------------------------------------------------
def write(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)      # sparse: a 17 MiB file costs nothing
    return path


def test_a_bare_name_is_searched_in_the_firmware_dirs_a_path_is_taken_as_is(tmp_path, monkeypatch):
    d1, d2 = tmp_path / "qemu", tmp_path / "seabios"
    d1.mkdir()
    d2.mkdir()
    write(d2 / "x.rom", 64 << 10)
    write(d1 / "y.rom", 128 << 10)
    write(d2 / "y.rom", 64 << 10)
    monkeypatch.setattr(firmware, "FIRMWARE_DIRS", (str(d1), str(d2)))
    monkeypatch.chdir(tmp_path)
    assert firmware.load_firmware("x.rom").path == str(d2 / "x.rom")
    fw = firmware.load_firmware("y.rom")                        # the first directory wins
    assert fw.path == str(d1 / "y.rom") and len(fw.data) == 128 << 10
    write(tmp_path / "y.rom", 192 << 10)                         # the name as a path first, as QEMU
    assert len(firmware.load_firmware("y.rom").data) == 192 << 10
    with pytest.raises(BootError, match=r"could not load PC BIOS 'qemu/x.rom': no such file$"):
        firmware.load_firmware("qemu/x.rom")                     # a path is not searched


@pytest.mark.parametrize("size, why", [
    (0, "file is empty"),
    (1000, "1000 bytes is not a multiple of 64 KiB"),
    ((64 << 10) + 512, "is not a multiple of 64 KiB"),
    (17 * MiB, "17825792 bytes, larger than 16 MiB"),
])
def test_bad_sizes(tmp_path, size, why):
    p = write(tmp_path / "bad.bin", size)
    with pytest.raises(BootError, match=f"could not load PC BIOS '{p}': .*{why}"):
        firmware.load_firmware(str(p))


def test_16_mib_is_the_largest(tmp_path):
    fw = firmware.load_firmware(str(write(tmp_path / "big.bin", 16 * MiB)))
    assert fw.base == 0xFF000000 and fw.isa_size == 128 << 10   # above KVM's pages at 0xfeffc000


def test_not_a_regular_file_is_never_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BootError, match="not a regular file"):
        firmware.load_firmware(str(fifo))                        # a read would block forever
    with pytest.raises(BootError, match="is a directory"):
        firmware.load_firmware(str(tmp_path))
    with pytest.raises(BootError, match="could not load PC BIOS 'nothing-here.rom': no such file .searched"):
        firmware.load_firmware("nothing-here.rom")


def _kernel_error(path: str) -> str:
    from microvm.boot.loader import read_images

    with pytest.raises(BootError) as e:
        read_images(path, None, 128 * MiB)
    return str(e.value)


def _bios_error(path: str) -> str:
    with pytest.raises(BootError) as e:
        firmware.load_firmware(path)
    return str(e.value)


def _fw_cfg_error(path: str) -> str:
    with pytest.raises(ConfigError) as e:
        firmware.parse_fw_cfg_option(f"opt/x,file={path}")
    return str(e.value)


@pytest.mark.parametrize("kind, why", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("fifo", "not a regular file (a FIFO)"),
    ("device", "not a regular file (a character device)"),
])
def test_the_three_file_readers_say_the_same(tmp_path, kind, why):
    """A kernel, a -bios image and a -fw_cfg file are read by one helper
    (microvm.boot.files): the same bad file is the same words after each one's prefix."""
    path = {"missing": str(tmp_path / "none"), "directory": str(tmp_path), "device": "/dev/zero"}.get(kind)
    if kind == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    assert _kernel_error(path) == f"kernel {path}: {why}"
    assert _bios_error(path) == f"could not load PC BIOS '{path}': {why}"
    assert _fw_cfg_error(path) == f"--fw-cfg opt/x,file={path}: can't load {path}: {why}"


def test_a_fw_cfg_file_may_be_empty_a_kernel_may_not(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert firmware.parse_fw_cfg_option(f"opt/x,file={empty}") == ("opt/x", b"")   # as QEMU's g_file_get_contents
    assert _kernel_error(str(empty)) == f"kernel {empty}: file is empty"
    assert _bios_error(str(empty)) == f"could not load PC BIOS '{empty}': file is empty"


def test_option_rom_files_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(firmware, "FIRMWARE_DIRS", (str(tmp_path),))
    write(tmp_path / "big.bin", 2 * MiB)
    with pytest.raises(BootError, match="larger than 1 MiB"):
        firmware.load_firmware_file("big.bin", 1 * MiB)
    with pytest.raises(BootError, match="'none.bin' not found"):
        firmware.load_firmware_file("none.bin")


@pytest.mark.parametrize("args, message", [
    (["--bios", "no-such-firmware.bin"], "could not load PC BIOS 'no-such-firmware.bin': no such file"),
    (["--bios", "/dev/null"], "not a regular file"),
    (["--bios", "qboot.rom", "--initrd", "/etc/hostname"], "--initrd is only allowed with --kernel"),
    (["--bios", "qboot.rom", "--append", "console=ttyS0"], "--append is only allowed with --kernel"),
])
def test_cli_errors_are_one_line_status_2(args, message):
    r = run_microvm("run", *args, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert message in err and err.count("\n") == 1, err


def test_cli_empty_and_unaligned(tmp_path):
    for size, why in ((0, "file is empty"), (4096, "not a multiple of 64 KiB"), (32 * MiB, "larger than 16 MiB")):
        p = write(tmp_path / f"fw{size}.bin", size)
        r = run_microvm("run", "--bios", str(p), timeout=30)
        assert r.returncode == 2 and why in r.stderr.decode() and r.stderr.count(b"\n") == 1, r.stderr


# ---- mapping -------------------------------------------------------------------------------
def image(size: int) -> bytes:
    return bytes((i * 7 + (i >> 16)) & 0xFF for i in range(size))


@pytest.mark.parametrize("size", [64 << 10, 128 << 10, 256 << 10])
def test_the_image_ends_at_4g_and_its_end_shadows_ram_below_1m(size):
    mem = GuestMemory(64 * MiB)
    try:
        mem.write(0xF0000, b"RAM!")
        fw = firmware.Firmware("t", "t", image(size))
        firmware.map_firmware(mem, fw)
        isa = min(size, 128 << 10)
        assert mem.read((1 << 32) - size, size) == fw.data
        assert mem.read(MiB - isa, isa) == fw.data[-isa:]
        assert mem.read(0xFFFFFFF0, 16) == fw.data[-16:]          # the reset vector
        # one set of bytes: a write below 1 MiB shows at the top (the firmware is RAM)
        mem.write(0xFFFF0, b"\x90\x90")
        assert mem.read(0xFFFFFFF0, 2) == b"\x90\x90"
        if isa < 128 << 10:
            assert mem.read(0xE0000, 4) == bytes(4)               # RAM stays RAM below the window
        # a range that runs from RAM into the window is neither
        with pytest.raises(GuestMemoryError):
            mem.read(MiB - isa - 2, 4)
        with pytest.raises(GuestMemoryError):
            mem.read(0xFFFFFFFE, 4)                               # past 4 GiB
        # KVM's view: RAM cut around the window, then both firmware ranges
        host = {gpa: (size_, addr) for gpa, size_, addr in mem.memslots()}
        assert sorted((g, s) for g, (s, _) in host.items()) == sorted(
            [(0, MiB - isa), (MiB, 63 * MiB), ((1 << 32) - size, size), (MiB - isa, isa)])
        assert host[MiB - isa][1] == host[(1 << 32) - size][1] + size - isa   # the same bytes
    finally:
        mem.close()


def test_overlays_above_4g_ram_leave_it_whole():
    mem = GuestMemory((3 << 30) + 16 * MiB)
    try:
        firmware.map_firmware(mem, firmware.Firmware("t", "t", image(64 << 10)))
        slots = sorted((g, s) for g, s, _ in mem.memslots())
        assert slots == [(0, MiB - (64 << 10)), (MiB - (64 << 10), 64 << 10), (MiB, (3 << 30) - MiB),
                         ((1 << 32) - (64 << 10), 64 << 10), (1 << 32, 16 * MiB)]
    finally:
        mem.close()


def test_reset_state():
    def seg():
        return types.SimpleNamespace()
    sregs = types.SimpleNamespace(**{n: seg() for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt", "gdt", "idt")})
    firmware.setup_reset_sregs(sregs)
    regs = types.SimpleNamespace()
    firmware.setup_reset_regs(regs)
    assert (sregs.cs.selector, sregs.cs.base, sregs.cs.limit, regs.rip) == (0xF000, 0xFFFF0000, 0xFFFF, 0xFFF0)
    assert sregs.cs.base + regs.rip == 0xFFFFFFF0
    assert sregs.cr0 == 0x60000010 and sregs.efer == 0 and sregs.cr4 == 0
    assert regs.rflags == 2 and regs.rsp == 0
    assert all(getattr(sregs, s).base == 0 and getattr(sregs, s).selector == 0 for s in ("ds", "ss"))


# ---- on /dev/kvm ----------------------------------------------------------------------------
@pytest.mark.kvm
@requires_kvm
def test_real_mode_firmware_reads_fw_cfg_by_port_and_dma(guest_cache):
    """The reset vector (0xfffffff0) far-jumps into the ISA window (0xf0000), which proves
    both mappings; the image then reads fw_cfg in real mode and exits via isa-debug-exit."""
    rom = build_bios("fwcfg-bios", guest_cache)
    r = run_microvm("run", "--bios", str(rom), "-m", "128M", "--device", "isa-debug-exit,iobase=0xf4", "--no-reboot")
    assert r.stdout.decode() == (
        "FWCFG-RM CS=f000 SIG=QEMU ID=00000003 DMA-SIG=QEMU CFG\n"
        "FILES=00000004 E820=0023/00000028\n"
        "DMA E820 CTL=00000000 ADDR=00000000 LEN=08000000 TYPE=00000001\n"
        "DMA OUTSIDE-RAM CTL=00000001\n"
        "KEY 1234=00000000\n"
        "DONE\n"
    )
    assert r.returncode == 99, r.stderr                           # (0x31 << 1) | 1


@pytest.mark.kvm
@requires_kvm
def test_pvh_guest_reads_fw_cfg_by_port_and_dma(guest_cache):
    """The same device from 32-bit protected mode in a direct boot (every machine has it)."""
    elf = build_guest("fwcfg-pvh", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "-m", "128M", "--no-reboot")
    assert r.stdout.decode() == (
        "FWCFG SIG=QEMU ID=3 DMA-SIG=QEMU CFG\n"
        "CPUS=1 MAX=1 NOGRAPHIC=1\n"      # no display option: as -nographic
        "FILES=4\n"
        " 0020 0 bios-geometry\n"
        " 0021 0 bootorder\n"
        " 0022 4 etc/boot-fail-wait\n"
        " 0023 40 etc/e820\n"
        "DMA etc/e820 CTL=0\n"
        "E820 00000000feffc000 0000000000004000 2\n"
        "E820 0000000000000000 0000000008000000 1\n"
        "DONE\n"
    )
    assert r.returncode == 0, r.stderr
    # -display none keeps QEMU's graphics=on: NOGRAPHIC 0, as QEMU 7.2 gives it
    r = run_microvm("-kernel", str(elf), "-no-reboot", "-display", "none", "-serial", "stdio")
    assert r.stdout.decode().splitlines()[1] == "CPUS=1 MAX=1 NOGRAPHIC=0", r.stderr


@pytest.mark.kvm
@requires_kvm
def test_fw_cfg_option_files_cpu_counts_and_nographic_reach_the_guest(guest_cache, tmp_path):
    """QEMU's spelling with -fw_cfg (a string and a file), -smp 2,maxcpus=4 and -nographic:
    the guest finds the files in the directory, sorted among the machine's, reads the first
    one's bytes by port, and sees MAX_CPUS 4 and NOGRAPHIC 1. QEMU 7.2 prints the same for
    this line (-M microvm,acpi=off,x-option-roms=off), plus its etc/fdt."""
    elf = build_guest("fwcfg-pvh", guest_cache)
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"bytes from a host file")
    r = run_microvm("-M", "microvm,acpi=off,x-option-roms=off", "-kernel", str(elf), "-m", "128M", "-no-reboot",
                    "-smp", "2,maxcpus=4", "-nographic",
                    "-fw_cfg", "opt/org.example/greeting,string=hello from the host",
                    "-fw_cfg", f"name=opt/a.blob,file={blob}")
    assert r.stdout.decode() == (
        "FWCFG SIG=QEMU ID=3 DMA-SIG=QEMU CFG\n"
        "CPUS=2 MAX=4 NOGRAPHIC=1\n"
        "FILES=6\n"
        " 0020 0 bios-geometry\n"
        " 0021 0 bootorder\n"
        " 0022 4 etc/boot-fail-wait\n"
        " 0023 40 etc/e820\n"
        " 0024 22 opt/a.blob\n"
        " 0025 19 opt/org.example/greeting\n"
        "DMA etc/e820 CTL=0\n"
        "E820 00000000feffc000 0000000000004000 2\n"
        "E820 0000000000000000 0000000008000000 1\n"
        "OPT opt/a.blob=bytes from a host file\n"
        "DONE\n"
    ), r.stderr
    assert (r.returncode, r.stderr) == (0, b"")


@pytest.mark.kvm
@requires_kvm
def test_a_firmware_that_triple_faults_stops_with_the_register_dump(guest_cache):
    """Rebooting into the same firmware would fault again forever: stop, status 1, dump."""
    rom = build_bios("triple-fault-bios", guest_cache)
    r = run_microvm("run", "--bios", str(rom), timeout=30)          # no --no-reboot: still stops
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert f"the firmware {rom} triple-faulted on vCPU 0" in err
    assert "RIP=00000000000f00" in err and "CR0=60000011" in err and "code at RIP:" in err


@pytest.mark.kvm
@requires_kvm
def test_the_aps_wait_for_init_sipi(tmp_path):
    """--smp 2 with a firmware: the boot vCPU runs, the other is UNINITIALIZED (KVM's in-kernel
    LAPIC then handles the INIT/SIPI the firmware or the kernel sends)."""
    from microvm.kvm import lib
    from microvm.machine import Machine
    from microvm.spec import MachineSpec

    rom = tmp_path / "rom.bin"
    rom.write_bytes(image(64 << 10))
    m = Machine(MachineSpec(bios=str(rom), smp=2, serial=["null"]))
    try:
        m.build()
        assert m.vcpus[0].get_mp_state() == lib.KVM_MP_STATE_RUNNABLE
        assert m.vcpus[1].get_mp_state() == lib.KVM_MP_STATE_UNINITIALIZED
        s, r = m.vcpus[0].get_sregs(), m.vcpus[0].get_regs()
        assert (s.cs.selector, s.cs.base, r.rip, s.cr0 & 1) == (0xF000, 0xFFFF0000, 0xFFF0, 0)
        assert m.memory.read(0xFFFFFFF0, 16) == open(m.images.bios.path, "rb").read()[-16:]
    finally:
        m.close()


@pytest.mark.kvm
@requires_kvm
def test_bios_with_kernel_needs_fw_cfg(guest_cache):
    elf = build_guest("hello-pvh", guest_cache)
    rom = build_bios("triple-fault-bios", guest_cache)
    r = run_microvm("run", "--bios", str(rom), "--kernel", str(elf), env={"MICROVM_PLUGINS_DENY": "fw_cfg"})
    assert r.returncode == 2
    assert b"no installed plugin hands the kernel to the firmware" in r.stderr


@pytest.mark.kvm
@requires_kvm
def test_fw_cfg_option_without_the_fw_cfg_plugin_is_refused(guest_cache):
    """QEMU refuses -fw_cfg when the machine has no fw_cfg device ("fw_cfg device not
    available"); without the microvm-fw-cfg plugin nothing would publish the file."""
    elf = build_guest("hello-pvh", guest_cache)
    r = run_microvm("-kernel", str(elf), "-no-reboot", "-fw_cfg", "opt/x,string=1", env={"MICROVM_PLUGINS_DENY": "fw_cfg"})
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == b"microvm: -fw_cfg opt/x: fw_cfg device not available (install microvm-fw-cfg)\n"


# ---- pseudo-files and short reads (microvm.boot.files) --------------------------------------------
def test_proc_and_sys_files_are_read_to_their_end():
    """/proc files say size 0, sysfs ones 4096, neither is their content: read to the end,
    as QEMU's g_file_get_contents does (before: an EMPTY fw_cfg file, 'changed while it was
    read', 'file is empty')."""
    cpuinfo = open("/proc/cpuinfo", "rb").read()
    name, data = firmware.parse_fw_cfg_option("opt/x,file=/proc/cpuinfo")
    assert name == "opt/x" and data[:9] == b"processor" and len(data) > 100
    assert data.count(b"processor\t:") == cpuinfo.count(b"processor\t:")
    online = "/sys/devices/system/cpu/online"
    assert os.stat(online).st_size == 4096
    assert firmware.parse_fw_cfg_option(f"opt/y,file={online}")[1] == open(online, "rb").read()
    # a kernel that is /proc/self/status is not a kernel, but it is not empty either
    assert "file is empty" not in _kernel_error("/proc/self/status")
    # the caller's bound holds for a file whose size says 0
    from microvm.boot.files import read_regular_file

    with pytest.raises(BootError, match=r"^cpuinfo: more than 16 bytes, larger than 16 bytes$"):
        read_regular_file("/proc/cpuinfo", "cpuinfo", 16)


def test_a_short_read_is_worded_for_what_happened(tmp_path, monkeypatch):
    from microvm.boot import files

    path = write(tmp_path / "k", 8192)
    real_readv, real_fstat = os.readv, os.fstat

    def shrink_then_read(fd, bufs):  # the file really is truncated between fstat and read
        os.truncate(path, 100)
        return real_readv(fd, bufs)

    monkeypatch.setattr(files.os, "readv", shrink_then_read)
    assert _kernel_error(str(path)) == f"kernel {path}: the file changed while it was read"
    monkeypatch.setattr(files.os, "readv", real_readv)

    def bigger(fd):  # a file system that reports more than it delivers, the same both times
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                               st.st_size + 50, st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(files.os, "fstat", bigger)
    assert _kernel_error(str(path)) == f"kernel {path}: shorter than its size (100 of 150 bytes read)"


def test_an_empty_initrd_is_accepted_as_qemu_accepts_it(tmp_path):
    from microvm.boot.loader import read_images

    kernel = build_guest("spin", tmp_path)   # a PVH ELF (skips without binutils)
    empty = tmp_path / "initrd"
    empty.write_bytes(b"")
    images = read_images(str(kernel), str(empty), 64 * MiB)
    assert images.initrd is not None and len(images.initrd) == 0   # the kernel is told of no initrd
