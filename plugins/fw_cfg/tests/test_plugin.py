"""The hook glue on a real machine context (microvm.testing.TestMachine): fw_cfg is in every
machine at QEMU microvm's ports, fed from the machine; a firmware boot gets the kernel items
and the option ROM; other plugins add files through ctx.devices["fw_cfg"]."""
from __future__ import annotations

import struct

import pytest
from microvm.api import BootError, hookimpl
from microvm.testing import TestMachine

from microvm_fw_cfg.items import E820_RAM, E820_RESERVED, E820Entry, parse_e820
from microvm_fw_cfg.keys import (
    FW_CFG_CMDLINE_DATA,
    FW_CFG_CMDLINE_SIZE,
    FW_CFG_ID,
    FW_CFG_INITRD_DATA,
    FW_CFG_INITRD_SIZE,
    FW_CFG_IRQ0_OVERRIDE,
    FW_CFG_KERNEL_ADDR,
    FW_CFG_KERNEL_DATA,
    FW_CFG_KERNEL_ENTRY,
    FW_CFG_KERNEL_SIZE,
    FW_CFG_MAX_CPUS,
    FW_CFG_NB_CPUS,
    FW_CFG_NOGRAPHIC,
    FW_CFG_RAM_SIZE,
    FW_CFG_SETUP_DATA,
    FW_CFG_SETUP_SIZE,
    FW_CFG_SIGNATURE,
    FW_CFG_UUID,
)
from microvm_fw_cfg.linux import load_linux

from fwcfg_images import bzimage

ROM = b"\x55\xaa\x01" + bytes(509)


class Port:
    """fw_cfg as a firmware drives it, through the machine's own PIO bus and RAM."""

    def __init__(self, m: TestMachine) -> None:
        self.m = m

    def item(self, key: int, n: int) -> bytes:
        self.m.pio_bus.write(0x510, key.to_bytes(2, "little"))
        out = bytearray()
        for _ in range(n):
            b = bytearray(1)
            self.m.pio_bus.read(0x511, memoryview(b))
            out += b
        return bytes(out)

    def directory(self) -> dict[str, tuple[int, int]]:
        (count,) = struct.unpack(">I", self.item(0x19, 4))
        raw = self.item(0x19, 4 + 64 * count)[4:]
        out = {}
        for i in range(count):
            size, select, _, name = struct.unpack_from(">IHH56s", raw, 64 * i)
            out[name.rstrip(b"\0").decode()] = (select, size)
        return out

    def file(self, name: str) -> bytes:
        select, size = self.directory()[name]
        return self.item(select, size)

    def dma(self, control: int, length: int, address: int, at: int = 0x1000) -> int:
        mem = self.m.ctx.memory
        mem.write(at, struct.pack(">IIQ", control, length, address))
        self.m.pio_bus.write(0x514, (at >> 32).to_bytes(4, "big"))
        self.m.pio_bus.write(0x518, (at & 0xFFFFFFFF).to_bytes(4, "big"))
        return struct.unpack(">I", mem.read(at, 4))[0]


def fake_roms(monkeypatch, seen: list[str] | None = None) -> None:
    """Serve option ROMs without reading /usr/share/qemu (the Linux tests use the real ones)."""
    def load(name: str, max_size: int = 1 << 20) -> bytes:
        if seen is not None:
            seen.append(name)
        return ROM

    import microvm.api as api

    monkeypatch.setattr(api, "load_firmware_file", load, raising=False)


def test_max_cpus_is_the_topologys_maxcpus():
    """QEMU 7.2 microvm publishes machine->smp.max_cpus: -smp 2,maxcpus=4 gives 4 (key 0x0f)
    while NB_CPUS stays 2."""
    with TestMachine(smp="2,maxcpus=4") as m:
        m.create_devices()
        assert (m.ctx.smp, m.ctx.max_cpus) == (2, 4)
        p = Port(m)
        assert p.item(FW_CFG_NB_CPUS, 2) == b"\2\0"
        assert p.item(FW_CFG_MAX_CPUS, 2) == b"\4\0"


@pytest.mark.parametrize("machine, nographic", [("microvm", 0), ("microvm,graphics=on", 0), ("microvm,graphics=off", 1)])
def test_nographic_follows_the_graphics_machine_option(machine: str, nographic: int):
    """QEMU writes !machine->enable_graphics: graphics=off (what -nographic, and in microvm
    a line without a display option, sets) gives 1; the default, graphics=on, 0."""
    with TestMachine(machine) as m:
        m.create_devices()
        assert Port(m).item(FW_CFG_NOGRAPHIC, 2) == bytes([nographic, 0])


def test_every_machine_has_fw_cfg_fed_from_the_machine():
    with TestMachine(smp=2, mem_size=64 << 20) as m:
        m.create_devices()
        m.start()
        fw = m.ctx.devices["fw_cfg"]
        assert [(b, n) for b, n, _, _ in fw.port_ranges()] == [(0x510, 2), (0x514, 8)]
        p = Port(m)
        assert p.item(FW_CFG_SIGNATURE, 4) == b"QEMU"
        assert p.item(FW_CFG_ID, 4) == (3).to_bytes(4, "little")           # traditional + DMA
        assert p.item(FW_CFG_UUID, 16) == bytes(16)
        assert p.item(FW_CFG_RAM_SIZE, 8) == (64 << 20).to_bytes(8, "little")
        assert p.item(FW_CFG_NB_CPUS, 2) == b"\2\0"
        assert p.item(FW_CFG_MAX_CPUS, 2) == b"\2\0"
        assert p.item(FW_CFG_NOGRAPHIC, 2) == b"\0\0"          # QEMU: 0 unless -nographic
        assert p.item(FW_CFG_IRQ0_OVERRIDE, 4) == b"\1\0\0\0"
        files = p.directory()
        assert sorted(files) == ["bios-geometry", "bootorder", "etc/boot-fail-wait", "etc/e820"]
        assert parse_e820(p.file("etc/e820")) == [
            E820Entry(0xFEFFC000, 0x4000, E820_RESERVED), E820Entry(0, 64 << 20, E820_RAM)]
        assert p.file("etc/boot-fail-wait") == b"\xff\xff\xff\xff"          # never reboot
        assert p.file("bootorder") == b"" and p.file("bios-geometry") == b""
        # a direct kernel boot hands nothing over: no kernel items, no option ROM
        assert fw.item(FW_CFG_KERNEL_SIZE) is None and m.ctx.boot.handled_by is None


def test_e820_above_4g():
    with TestMachine(mem_size=(3 << 30) + (64 << 20)) as m:
        m.create_devices()
        assert parse_e820(Port(m).file("etc/e820"))[1:] == [
            E820Entry(0, 3 << 30, E820_RAM), E820Entry(1 << 32, 64 << 20, E820_RAM)]


def test_dma_outside_ram_sets_the_error_bit_and_the_machine_goes_on():
    with TestMachine(mem_size=16 << 20) as m:
        m.create_devices()
        p = Port(m)
        read_sig = (FW_CFG_SIGNATURE << 16) | 0x08 | 0x02
        assert p.dma(read_sig, 4, 0x2000) == 0
        assert m.ctx.memory.read(0x2000, 4) == b"QEMU"
        assert p.dma(read_sig, 4, 16 << 20) == 1               # just past RAM
        assert p.dma(read_sig, 4, 0xFEC00000) == 1             # the MMIO hole
        assert p.dma(read_sig, 8, (16 << 20) - 4) == 1         # straddling the end of RAM
        # a DMA structure outside RAM: nothing is written, the device still works
        m.pio_bus.write(0x518, (64 << 20).to_bytes(4, "big"))
        assert p.dma(read_sig, 4, 0x3000) == 0 and m.ctx.memory.read(0x3000, 4) == b"QEMU"
        # an unknown key reads as zeros by port and by DMA
        assert p.item(0x1234, 4) == bytes(4)
        m.ctx.memory.write(0x4000, b"\xee" * 4)
        assert p.dma((0x1234 << 16) | 0x08 | 0x02, 4, 0x4000) == 0
        assert m.ctx.memory.read(0x4000, 4) == bytes(4)


def test_firmware_boot_of_a_bzimage(monkeypatch, caplog):
    caplog.set_level("INFO", logger="microvm.fw_cfg")
    seen: list[str] = []
    fake_roms(monkeypatch, seen)
    kernel = bzimage(payload=bytes(range(256)) * 40)
    with TestMachine(kernel=kernel, initrd=b"INITRD" * 100, append="console=ttyS0", firmware=bytes(65536),
                     devices=["virtio-rng-device"]) as m:
        m.create_devices()
        assert m.ctx.boot.handled_by == "fw_cfg"
        m.start()
        fw = m.ctx.devices["fw_cfg"]
        cmdline = m.ctx.boot.cmdline
        # the final command line: the user's words and the virtio-mmio slot's
        assert cmdline.startswith("console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12")
        ref = load_linux(kernel, cmdline, b"INITRD" * 100, below_4g_mem_size=64 << 20)
        for key in (FW_CFG_KERNEL_ADDR, FW_CFG_KERNEL_SIZE, FW_CFG_KERNEL_DATA, FW_CFG_SETUP_SIZE, FW_CFG_SETUP_DATA,
                    FW_CFG_INITRD_SIZE, FW_CFG_INITRD_DATA, FW_CFG_CMDLINE_SIZE, FW_CFG_CMDLINE_DATA):
            assert fw.item(key) == ref.items[key], hex(key)
        assert fw.item(FW_CFG_CMDLINE_DATA) == cmdline.encode() + b"\0"
        p = Port(m)
        assert seen == ["linuxboot_dma.bin"]
        assert p.file("genroms/linuxboot_dma.bin") == ROM
        assert p.file("bootorder") == b"/rom@genroms/linuxboot_dma.bin\0"
        p.file("genroms/linuxboot_dma.bin")
        # the host-side sign that the firmware took the ROM, said once however often it reads it
        said = [r.getMessage() for r in caplog.records if "selected genroms/" in r.getMessage()]
        assert said == ["fw_cfg: the firmware selected genroms/linuxboot_dma.bin"]


def test_x_option_roms_off_adds_no_rom(monkeypatch):
    seen: list[str] = []
    fake_roms(monkeypatch, seen)
    with TestMachine("microvm,x-option-roms=off", kernel=bzimage(), firmware=bytes(65536)) as m:
        m.create_devices()
        m.start()
        p = Port(m)
        assert seen == []
        assert "genroms/linuxboot_dma.bin" not in p.directory()
        assert p.file("bootorder") == b""
        assert m.ctx.devices["fw_cfg"].item(FW_CFG_SETUP_DATA) is not None    # the kernel is there


def test_firmware_boot_of_a_pvh_elf(monkeypatch, tmp_path):
    seen: list[str] = []
    fake_roms(monkeypatch, seen)
    elf = pvh_elf(entry=0x100040, paddr=0x100000, size=0x3000)
    with TestMachine(kernel=elf, firmware=bytes(65536), append="x=1") as m:
        m.create_devices()
        m.start()
        fw = m.ctx.devices["fw_cfg"]
        assert fw.item(FW_CFG_KERNEL_ENTRY) == (0x100040).to_bytes(4, "little")
        assert fw.item(FW_CFG_KERNEL_ADDR) == (0x100000).to_bytes(4, "little")
        assert fw.item(FW_CFG_KERNEL_SIZE) == (0x3000).to_bytes(4, "little")
        assert fw.item(FW_CFG_SETUP_DATA)[:4] == b"\x7fELF"
        assert seen == ["pvh.bin"]
        assert Port(m).file("bootorder") == b"/rom@genroms/pvh.bin\0"


def test_without_firmware_no_kernel_items():
    with TestMachine(kernel=bzimage()) as m:
        m.create_devices()
        m.start()
        assert m.ctx.boot.firmware is None and m.ctx.boot.handled_by is None
        assert m.ctx.devices["fw_cfg"].item(FW_CFG_KERNEL_DATA) is None


def test_a_kernel_the_firmware_cannot_take_is_one_line(monkeypatch):
    fake_roms(monkeypatch)
    with TestMachine(kernel=bzimage(), append="vga=bogus", firmware=bytes(65536)) as m:
        m.create_devices()
        with pytest.raises(BootError, match="firmware boot: invalid 'vga=' kernel parameter"):
            m.start()


class Feeder:
    """A third party's plugin feeding its firmware: files added at create_devices (fw_cfg's
    runs first), from a --device factory, and at machine_start."""

    @hookimpl
    def create_devices(self, ctx):
        ctx.devices["fw_cfg"].add_file("opt/org.example/early", b"early")

    @hookimpl
    def machine_start(self, ctx):
        ctx.devices["fw_cfg"].add_file("opt/org.example/late", b"late")


def test_other_plugins_add_files():
    with TestMachine(plugins=[Feeder()]) as m:
        m.create_devices()
        m.start()
        p = Port(m)
        assert p.file("opt/org.example/early") == b"early"
        assert p.file("opt/org.example/late") == b"late"
        names = list(p.directory())
        assert names == sorted(names)        # QEMU's order: by name


def test_duplicate_file_is_refused():
    from microvm_fw_cfg.device import FwCfgError

    with TestMachine() as m:
        m.create_devices()
        with pytest.raises(FwCfgError):
            m.ctx.devices["fw_cfg"].add_file("etc/e820", b"")


def test_fw_cfg_option_files_are_in_the_directory(tmp_path):
    """--fw-cfg (QEMU's -fw_cfg) files: taken by the plugin, sorted into the directory among
    the machine's; a string goes in without its NUL, a file byte for byte."""
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 3)
    with TestMachine(fw_cfg=["opt/org.example/greeting,string=hi", f"name=opt/a,file={blob}", ("opt/z", b"z")]) as m:
        m.create_devices()
        m.start()
        assert m.ctx.boot.fw_cfg_files_taken_by == "fw_cfg"
        p = Port(m)
        assert list(p.directory()) == ["bios-geometry", "bootorder", "etc/boot-fail-wait", "etc/e820", "opt/a",
                                       "opt/org.example/greeting", "opt/z"]
        assert p.file("opt/org.example/greeting") == b"hi"
        assert p.file("opt/a") == blob.read_bytes()
        assert p.file("opt/z") == b"z"


@pytest.mark.parametrize("items, message", [
    (["etc/e820,string=x"], "--fw-cfg etc/e820: duplicate fw_cfg file name: etc/e820"),
    (["etc/boot-fail-wait,string=x"], "--fw-cfg etc/boot-fail-wait: duplicate fw_cfg file name: etc/boot-fail-wait"),
    ([f"opt/f{i:02},string=x" for i in range(29)], "--fw-cfg opt/f28: fw_cfg: no file slot left for opt/f28 (32 slots)"),
])
def test_fw_cfg_option_files_the_device_cannot_take_are_one_line(items, message):
    """A name the machine uses is a duplicate, as QEMU's fw_cfg_add_file refuses it (QEMU
    adds the machine's files first too); more files than the 32 slots is refused (QEMU
    asserts)."""
    from microvm.api import ConfigError

    with TestMachine(fw_cfg=items) as m:
        with pytest.raises(ConfigError) as e:
            m.create_devices()
    assert str(e.value) == message


def test_a_bootorder_from_fw_cfg_option_is_replaced_as_in_qemu():
    """QEMU accepts -fw_cfg bootorder,... (bootorder is added at the first reset) and then
    replaces it with the machine's; so does microvm."""
    with TestMachine(fw_cfg=["bootorder,string=/mine"]) as m:
        m.create_devices()
        assert Port(m).file("bootorder") == b""


def pvh_elf(*, entry: int, paddr: int, size: int) -> bytes:
    """A minimal ELF64 with one PT_LOAD of ``size`` bytes at ``paddr`` and a PVH note."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)
    ehdr_size, phdr_size = 64, 56
    phoff = ehdr_size
    note_off = phoff + 2 * phdr_size
    load_off = 0x1000
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, entry, phoff, 0, 0, ehdr_size, phdr_size, 2, 64, 0, 0)
    ph_note = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    ph_load = struct.pack("<IIQQQQQQ", 1, 5, load_off, paddr, paddr, size, size, 0x1000)
    img = bytearray(ehdr + ph_note + ph_load + note)
    img += bytes(load_off - len(img)) + bytes((i * 3) & 0xFF for i in range(size))
    return bytes(img)
