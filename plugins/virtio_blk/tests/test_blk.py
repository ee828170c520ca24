"""virtio-blk (virtio 1.2 §5.2) on a temporary raw image, through the virtio-mmio transport,
with a driver written the way Linux's virtio_blk + virtio_ring do it. No KVM."""
from __future__ import annotations

import importlib.metadata
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microvm.api as C
from microvm.api import ConfigError, GuestMemory, QueueError, RecordingIrqLine, Virtqueue
from microvm.testing import TestMachine
from microvm.virtio.testing import DriverQueue, MmioDriver, VirtioMmioTransport, assert_only_changed
from microvm_virtio_blk import device as D
from microvm_virtio_blk.device import VirtioBlk
from microvm_virtio_blk.plugin import PROPERTIES, create_virtio_blk, register_device_types

MEM_SIZE = 16 << 20
SECTORS = 64
HDR, DATA, STATUS = 0x100000, 0x200000, 0x300000
OK, IOERR, UNSUPP = D.VIRTIO_BLK_S_OK, D.VIRTIO_BLK_S_IOERR, D.VIRTIO_BLK_S_UNSUPP


# -- a guest driver ---------------------------------------------------------------------------
class BlkDriver(MmioDriver):
    """Linux's probe over the mmio registers, then virtio_blk requests (header, data, status)."""

    dq: DriverQueue
    capacity: int

    def driver_probe(self) -> None:
        """virtblk_probe: reads the config with the generation check of virtio_cread."""
        assert self.read(C.VIRTIO_MMIO_DEVICE_ID) == C.VIRTIO_ID_BLOCK
        self.capacity = self.read_config(0, 8)

    def probe(self, features: int | None = None, queues: int = 1, size: int = 16, base: int = 0x10000) -> list[DriverQueue]:
        dqs = super().probe(features, queues, size, base)
        assert dqs, "FEATURES_OK refused"
        assert self.transport.activated
        self.dq = dqs[0]
        return dqs

    def request(self, rtype: int, sector: int = 0, out: bytes = b"", in_len: int = 0, *, indirect: bool = False) -> tuple[int, int, bytes]:
        """Submit one request; returns (status, used length, data read)."""
        self.memory.write(HDR, struct.pack("<IIQ", rtype, 0, sector))
        self.memory.write_u8(STATUS, 0xFF)
        bufs = [(HDR, 16, False)]
        if out:
            self.memory.write(DATA, out)
            bufs.append((DATA, len(out), False))
        if in_len:
            self.memory.fill(DATA, in_len, 0xEE)
            bufs.append((DATA, in_len, True))
        bufs.append((STATUS, 1, True))
        head = self.dq.make_indirect(bufs, table=0x80000) if indirect else self.dq.make_chain(bufs)
        return self.submit(head, in_len)

    def submit(self, head: int, in_len: int = 0) -> tuple[int, int, bytes]:
        self.dq.publish(head)
        self.notify(0)
        used = self.dq.get_used()
        assert [h for h, _ in used] == [head]
        return self.memory.read_u8(STATUS), used[0][1], self.memory.read(DATA, in_len)


def sector_pattern(n: int) -> bytes:
    return bytes([n & 0xFF]) * 256 + struct.pack("<I", n) * 64


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(sector_pattern(i) for i in range(SECTORS)))
    return path


def make(mem, image, **kw):
    mem.fill(0, MEM_SIZE)
    blk = VirtioBlk(image, **kw)
    t = VirtioMmioTransport(blk, mem, RecordingIrqLine(gsi=5), name="virtio-blk:test")
    drv = BlkDriver(t)
    return blk, t, drv


@pytest.fixture
def disk(mem, image):
    blk, t, drv = make(mem, image, serial="SERIAL-0001")
    drv.probe()
    yield blk, t, drv
    t.close()


# -- configuration ----------------------------------------------------------------------------
def test_features_and_config(mem, image):
    blk, t, drv = make(mem, image)
    drv.probe()
    features = drv.features
    for bit in (D.VIRTIO_BLK_F_FLUSH, D.VIRTIO_BLK_F_SEG_MAX, D.VIRTIO_BLK_F_BLK_SIZE, C.VIRTIO_F_VERSION_1):
        assert features & (1 << bit)
    assert not features & (1 << D.VIRTIO_BLK_F_RO)
    assert drv.capacity == SECTORS
    assert drv.read(0x100 + 12) == 256 - 2  # seg_max
    assert drv.read(0x100 + 20) == 512  # blk_size
    assert drv.read(0x100 + 34, 2) == 1  # num_queues
    if blk.can_punch:
        assert features & (1 << D.VIRTIO_BLK_F_DISCARD)
        assert drv.read(0x100 + 36) == D.MAX_DISCARD_SECTORS and drv.read(0x100 + 40) == 1 and drv.read(0x100 + 44) == 1
    if blk.can_punch or blk.can_zero:
        assert features & (1 << D.VIRTIO_BLK_F_WRITE_ZEROES)
        assert drv.read(0x100 + 48) == D.MAX_DISCARD_SECTORS and drv.read(0x100 + 52) == 1
    assert D.CONFIG.size == 72
    assert drv.read(0x100 + 72) == 0  # past the structure
    t.close()


def test_probe_changes_nothing(image):
    before = image.read_bytes()
    st_before = os.stat(image)
    VirtioBlk(image).close()
    assert image.read_bytes() == before
    assert os.stat(image).st_blocks == st_before.st_blocks


def test_readonly_features(mem, image):
    blk, t, drv = make(mem, image, readonly=True)
    drv.probe()
    features = drv.features
    assert features & (1 << D.VIRTIO_BLK_F_RO)
    assert not features & ((1 << D.VIRTIO_BLK_F_DISCARD) | (1 << D.VIRTIO_BLK_F_WRITE_ZEROES))
    t.close()


def test_capacity_rounds_down(tmp_path, mem):
    p = tmp_path / "odd.img"
    p.write_bytes(b"\0" * 1000)
    blk = VirtioBlk(p)
    assert blk.capacity == 1
    blk.close()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.img"):
        VirtioBlk(tmp_path / "nope.img")


# -- requests ---------------------------------------------------------------------------------
def test_read(disk):
    blk, t, drv = disk
    status, used, data = drv.request(D.VIRTIO_BLK_T_IN, sector=3, in_len=1024)
    assert (status, used) == (OK, 1025)
    assert data == sector_pattern(3) + sector_pattern(4)
    assert t.irq_line.level


def test_read_last_sector_and_indirect(disk):
    blk, t, drv = disk
    status, used, data = drv.request(D.VIRTIO_BLK_T_IN, sector=SECTORS - 1, in_len=512, indirect=True)
    assert (status, used, data) == (OK, 513, sector_pattern(SECTORS - 1))


def test_read_scattered_any_layout(disk, mem):
    """Header split over two descriptors; data over three; the status shares the last one."""
    blk, t, drv = disk
    mem.write(HDR, struct.pack("<IIQ", D.VIRTIO_BLK_T_IN, 0, 5))
    bufs = [(HDR, 10, False), (HDR + 10, 6, False), (DATA, 100, True), (DATA + 0x1000, 312, True), (DATA + 0x2000, 101, True)]
    head = drv.dq.make_chain(bufs)
    drv.dq.publish(head)
    drv.write(C.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    assert drv.dq.get_used() == [(head, 513)]
    got = mem.read(DATA, 100) + mem.read(DATA + 0x1000, 312) + mem.read(DATA + 0x2000, 100)
    assert got == sector_pattern(5)
    assert mem.read_u8(DATA + 0x2000 + 100) == OK


def test_write(disk, image):
    blk, t, drv = disk
    payload = b"\x42" * 512 + b"\x43" * 512
    status, used, _ = drv.request(D.VIRTIO_BLK_T_OUT, sector=10, out=payload)
    assert (status, used) == (OK, 1)
    data = image.read_bytes()
    assert data[10 * 512 : 12 * 512] == payload
    assert data[9 * 512 : 10 * 512] == sector_pattern(9) and data[12 * 512 : 13 * 512] == sector_pattern(12)


def test_flush_syncs_before_status(disk, monkeypatch, mem):
    blk, t, drv = disk
    seen = []
    real = os.fdatasync

    def fake(fd):
        seen.append(mem.read_u8(STATUS))  # status not yet written when the sync happens
        real(fd)

    monkeypatch.setattr(D.os, "fdatasync", fake)
    status, used, _ = drv.request(D.VIRTIO_BLK_T_FLUSH)
    assert (status, used, seen) == (OK, 1, [0xFF])


def test_flush_error(disk, monkeypatch):
    blk, t, drv = disk

    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(D.os, "fdatasync", fail)
    assert drv.request(D.VIRTIO_BLK_T_FLUSH)[:2] == (IOERR, 1)
    assert not drv.needs_reset()


def test_get_id(disk):
    blk, t, drv = disk
    status, used, data = drv.request(D.VIRTIO_BLK_T_GET_ID, in_len=20)
    assert (status, used, data) == (OK, 21, b"SERIAL-0001".ljust(20, b"\0"))


def test_get_id_short_buffer_and_long_serial(mem, image):
    blk, t, drv = make(mem, image, serial="S" * 30)
    drv.probe()
    assert drv.request(D.VIRTIO_BLK_T_GET_ID, in_len=8) == (OK, 9, b"S" * 8)
    assert drv.request(D.VIRTIO_BLK_T_GET_ID, in_len=20)[2] == b"S" * 20
    t.close()


def discard_payload(sector: int, num: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, num, flags)


def test_discard(disk, image):
    blk, t, drv = disk
    if not blk.can_punch:
        pytest.skip("host file system cannot punch holes")
    # make the area big enough to own whole blocks: sectors 8..15 = one 4 KiB block
    status, used, _ = drv.request(D.VIRTIO_BLK_T_DISCARD, out=discard_payload(8, 8))
    assert (status, used) == (OK, 1)
    data = image.read_bytes()
    assert data[8 * 512 : 16 * 512] == bytes(4096)
    assert data[7 * 512 : 8 * 512] == sector_pattern(7) and data[16 * 512 : 17 * 512] == sector_pattern(16)
    assert os.path.getsize(image) == SECTORS * 512


@pytest.mark.parametrize("flags", [0, D.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP])
@pytest.mark.parametrize("can_zero", [True, False])
def test_write_zeroes(disk, image, flags, can_zero):
    blk, t, drv = disk
    if not (blk.can_punch or blk.can_zero):
        pytest.skip("host file system has neither punch-hole nor zero-range")
    blk.can_zero = blk.can_zero and can_zero  # also exercise the punch + posix_fallocate fallback
    status, used, _ = drv.request(D.VIRTIO_BLK_T_WRITE_ZEROES, out=discard_payload(20, 3, flags))
    assert (status, used) == (OK, 1)
    data = image.read_bytes()
    assert data[20 * 512 : 23 * 512] == bytes(3 * 512)
    assert data[19 * 512 : 20 * 512] == sector_pattern(19) and data[23 * 512 : 24 * 512] == sector_pattern(23)
    assert os.path.getsize(image) == SECTORS * 512


@pytest.mark.parametrize(
    "rtype,payload,expected",
    [
        (D.VIRTIO_BLK_T_DISCARD, discard_payload(0, 1, D.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), UNSUPP),
        (D.VIRTIO_BLK_T_WRITE_ZEROES, discard_payload(0, 1, 0x80), UNSUPP),
        (D.VIRTIO_BLK_T_DISCARD, discard_payload(0, 1) * 2, UNSUPP),  # max_discard_seg is 1
        (D.VIRTIO_BLK_T_DISCARD, discard_payload(SECTORS - 1, 2), IOERR),
        (D.VIRTIO_BLK_T_WRITE_ZEROES, discard_payload(SECTORS + 5, 1), IOERR),
        (D.VIRTIO_BLK_T_DISCARD, discard_payload(0, 1)[:10], IOERR),
        (D.VIRTIO_BLK_T_DISCARD, b"", IOERR),
    ],
)
def test_discard_write_zeroes_errors(disk, image, rtype, payload, expected):
    blk, t, drv = disk
    if not blk.can_punch:
        pytest.skip("host file system cannot punch holes")
    before = image.read_bytes()
    assert drv.request(rtype, out=payload)[:2] == (expected, 1)
    assert image.read_bytes() == before


def test_unknown_request_type(disk):
    blk, t, drv = disk
    for rtype in (2, D.VIRTIO_BLK_T_GET_LIFETIME, D.VIRTIO_BLK_T_SECURE_ERASE, 0xFFFFFFFF):
        assert drv.request(rtype, in_len=512)[:2] == (UNSUPP, 1)


def test_readonly_disk_refuses_writes(mem, image):
    blk, t, drv = make(mem, image, readonly=True)
    drv.probe()
    before = image.read_bytes()
    assert drv.request(D.VIRTIO_BLK_T_OUT, sector=0, out=b"x" * 512)[:2] == (IOERR, 1)
    assert drv.request(D.VIRTIO_BLK_T_DISCARD, out=discard_payload(0, 8))[:2] == (IOERR, 1)
    assert drv.request(D.VIRTIO_BLK_T_WRITE_ZEROES, out=discard_payload(0, 8))[:2] == (IOERR, 1)
    assert drv.request(D.VIRTIO_BLK_T_IN, sector=1, in_len=512)[2] == sector_pattern(1)
    assert drv.request(D.VIRTIO_BLK_T_FLUSH)[0] == OK
    assert image.read_bytes() == before
    assert not drv.needs_reset()
    t.close()


def test_no_discard_when_unsupported(disk):
    blk, t, drv = disk
    blk.can_punch = blk.can_zero = False
    assert drv.request(D.VIRTIO_BLK_T_DISCARD, out=discard_payload(0, 8))[:2] == (UNSUPP, 1)
    assert drv.request(D.VIRTIO_BLK_T_WRITE_ZEROES, out=discard_payload(0, 8))[:2] == (UNSUPP, 1)


# -- malformed requests: IOERR, device keeps working, nothing outside the buffers changes -----
def run_isolated(drv: BlkDriver, mem: GuestMemory, bufs):
    head = drv.dq.make_chain(bufs)
    drv.dq.publish(head)
    before = mem.read(0, MEM_SIZE)
    drv.write(C.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    allowed = [(a, a + n) for a, n, w in bufs if w] + [drv.dq.used_ring_range()]
    assert_only_changed(mem, before, allowed)
    return drv.dq.get_used()


def test_short_header(disk, mem):
    blk, t, drv = disk
    mem.write(HDR, struct.pack("<II", D.VIRTIO_BLK_T_IN, 0))
    mem.write_u8(STATUS, 0xFF)
    mem.fill(DATA, 512, 0xEE)
    used = run_isolated(drv, mem, [(HDR, 8, False), (DATA, 512, True), (STATUS, 1, True)])
    assert used[0][1] == 1 and mem.read_u8(STATUS) == IOERR
    assert mem.read(DATA, 512) == b"\xee" * 512


def test_short_header_status_is_last_byte(disk, mem):
    blk, t, drv = disk
    mem.write(HDR, struct.pack("<II", D.VIRTIO_BLK_T_IN, 0))
    mem.write_u8(STATUS, 0xFF)
    used = run_isolated(drv, mem, [(HDR, 8, False), (STATUS, 1, True)])
    assert used[0][1] == 1 and mem.read_u8(STATUS) == IOERR
    assert drv.request(D.VIRTIO_BLK_T_IN, sector=0, in_len=512)[:2] == (OK, 513)


def test_no_status_byte(disk, mem):
    blk, t, drv = disk
    mem.write(HDR, struct.pack("<IIQ", D.VIRTIO_BLK_T_IN, 0, 0))
    used = run_isolated(drv, mem, [(HDR, 16, False)])
    assert used[0][1] == 0
    assert not drv.needs_reset()
    assert drv.request(D.VIRTIO_BLK_T_IN, sector=0, in_len=512)[:2] == (OK, 513)


@pytest.mark.parametrize(
    "sector,in_len",
    [(SECTORS, 512), (SECTORS - 1, 1024), (1 << 63, 512), ((1 << 64) - 1, 512), (0, 100), (0, 513)],
)
def test_read_out_of_range_or_unaligned(disk, mem, sector, in_len):
    blk, t, drv = disk
    mem.write(HDR, struct.pack("<IIQ", D.VIRTIO_BLK_T_IN, 0, sector))
    mem.fill(DATA, in_len, 0xEE)
    used = run_isolated(drv, mem, [(HDR, 16, False), (DATA, in_len, True), (STATUS, 1, True)])
    assert used[0][1] == 1 and mem.read_u8(STATUS) == IOERR
    assert mem.read(DATA, in_len) == b"\xee" * in_len


@pytest.mark.parametrize("sector,length", [(SECTORS, 512), (SECTORS - 1, 1024), (0, 100)])
def test_write_out_of_range_or_unaligned(disk, image, sector, length):
    blk, t, drv = disk
    before = image.read_bytes()
    assert drv.request(D.VIRTIO_BLK_T_OUT, sector=sector, out=b"z" * length)[:2] == (IOERR, 1)
    assert image.read_bytes() == before


def test_zero_length_read_at_end(disk):
    blk, t, drv = disk
    assert drv.request(D.VIRTIO_BLK_T_IN, sector=SECTORS)[:2] == (OK, 1)


def test_host_read_error(disk, monkeypatch):
    blk, t, drv = disk

    def fail(*a):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(D.os, "preadv", fail)
    assert drv.request(D.VIRTIO_BLK_T_IN, sector=0, in_len=512)[:2] == (IOERR, 1)
    assert not drv.needs_reset()


def test_file_shrank(disk, image):
    blk, t, drv = disk
    os.truncate(image, 512 * 10)
    status, used, data = drv.request(D.VIRTIO_BLK_T_IN, sector=9, in_len=1024)
    assert status == IOERR and used == 513 and data[:512] == sector_pattern(9)


# -- broken rings: DEVICE_NEEDS_RESET ----------------------------------------------------------
def broken(drv: BlkDriver, mem: GuestMemory, setup) -> None:
    head = setup(drv.dq)
    drv.dq.publish(head)
    snapshot_after_setup = mem.read(0, MEM_SIZE)
    drv.write(C.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    assert drv.needs_reset()
    assert drv.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) & C.VIRTIO_MMIO_INT_CONFIG
    assert_only_changed(mem, snapshot_after_setup, [drv.dq.used_ring_range()])


def test_buffer_outside_ram(disk, mem):
    blk, t, drv = disk
    mem.write(HDR, struct.pack("<IIQ", D.VIRTIO_BLK_T_IN, 0, 0))
    broken(drv, mem, lambda dq: dq.make_chain([(HDR, 16, False), (MEM_SIZE - 256, 512, True), (STATUS, 1, True)]))


def test_header_outside_ram(disk, mem):
    blk, t, drv = disk
    broken(drv, mem, lambda dq: dq.make_chain([(0xFEC00000, 16, False), (STATUS, 1, True)]))


def test_descriptor_loop(disk, mem):
    blk, t, drv = disk

    def setup(dq):
        dq.write_desc(0, HDR, 16, C.VIRTQ_DESC_F_NEXT, 1)
        dq.write_desc(1, STATUS, 1, C.VIRTQ_DESC_F_NEXT | C.VIRTQ_DESC_F_WRITE, 0)
        return 0

    broken(drv, mem, setup)


def test_chain_too_long(disk, mem):
    blk, t, drv = disk

    def setup(dq):
        for i in range(dq.size):
            dq.write_desc(i, DATA + 512 * i, 512, C.VIRTQ_DESC_F_NEXT | C.VIRTQ_DESC_F_WRITE, (i + 1) % dq.size)
        return 0

    broken(drv, mem, setup)


def test_indirect_in_indirect(disk, mem):
    blk, t, drv = disk

    def setup(dq):
        dq.write_desc(0, HDR, 16, C.VIRTQ_DESC_F_NEXT, 1, table=0x80000)
        dq.write_desc(1, 0x90000, 16, C.VIRTQ_DESC_F_INDIRECT, 0, table=0x80000)
        dq.write_desc(0, STATUS, 1, C.VIRTQ_DESC_F_WRITE, 0, table=0x90000)
        dq.write_desc(0, 0x80000, 32, C.VIRTQ_DESC_F_INDIRECT)
        return 0

    broken(drv, mem, setup)


def test_device_recovers_after_reset(disk, mem):
    blk, t, drv = disk
    broken(drv, mem, lambda dq: dq.make_chain([(MEM_SIZE, 16, False)]))
    drv.probe()  # Linux's virtio_break_device + reset path: probe again
    assert not drv.needs_reset()
    assert drv.request(D.VIRTIO_BLK_T_IN, sector=2, in_len=512) == (OK, 513, sector_pattern(2))


# -- locking ----------------------------------------------------------------------------------
def test_second_writer_is_refused(image):
    a = VirtioBlk(image)
    with pytest.raises(ConfigError, match=str(image)) as e:
        VirtioBlk(image)
    assert "locked" in str(e.value)
    with pytest.raises(ConfigError, match="locked"):
        VirtioBlk(image, readonly=True)
    a.close()
    VirtioBlk(image).close()  # released on close


def test_readers_share(image):
    a = VirtioBlk(image, readonly=True)
    b = VirtioBlk(image, readonly=True)
    with pytest.raises(ConfigError, match="locked"):
        VirtioBlk(image)
    a.close()
    b.close()


# -- plugin glue --------------------------------------------------------------------------------
def machine(image, device="virtio-blk-device,drive=d0", **drv_kw):
    """A machine without KVM (microvm.testing) with one --drive and one --device."""
    d = {"id": "d0", "file": str(image), "format": "raw", "if": "none", "readonly": "off", **drv_kw}
    return TestMachine(devices=[device] if device else [], drives=[",".join(f"{k}={v}" for k, v in d.items())])


def test_register_device_types():
    seen = []
    register_device_types(lambda *a, **kw: seen.append((a, kw)))
    assert seen == [(("virtio-blk-device", create_virtio_blk, "virtio block device on a -drive"),
                     {"properties": PROPERTIES, "virtio": True})]


def test_entry_point():
    eps = importlib.metadata.entry_points(group="microvm")
    assert any(ep.name == "virtio_blk" and ep.value == "microvm_virtio_blk.plugin" for ep in eps)


def test_factory(image):
    with machine(image, "virtio-blk-device,drive=d0,serial=abc", readonly="on") as m:
        m.create_devices()
        [slot] = m.virtio_transports
        backend = slot.transport.backend
        assert slot.name == "virtio-blk:d0" and (slot.base, slot.irq) == (0xFEB00E00, 12)
        assert backend.readonly and backend.serial.rstrip(b"\0") == b"abc"
        assert slot.transport.legacy  # QEMU 7.2's default
    with machine(image, "virtio-blk-device,drive=d0,force-legacy=off,id=root") as m:
        m.create_devices()
        [slot] = m.virtio_transports
        assert not slot.transport.legacy and slot.name == "root"


@pytest.mark.parametrize(
    "device,drv_kw,match",
    [
        ("virtio-blk-device,drive=d0,bogus=1", {}, "bogus .*valid: drive, force-legacy, id, serial"),
        ("virtio-blk-device", {}, "drive=... is required"),
        ("virtio-blk-device,drive=d0", {"format": "qcow2"}, "format=qcow2 .*supported formats: raw"),
        ("virtio-blk-device,drive=d0", {"if": "virtio"}, "if=virtio"),
        ("virtio-blk-device,drive=d0", {"readonly": "maybe"}, "readonly=maybe"),
        ("virtio-blk-device,drive=d0", {"cache": "none"}, "unknown property cache"),
        ("virtio-blk-device,drive=d1", {}, "drive 'd1' not found"),
    ],
)
def test_factory_errors(image, device, drv_kw, match):
    with pytest.raises(ConfigError, match=match):
        with machine(image, device, **drv_kw) as m:
            m.create_devices()


def test_one_drive_one_device(image):
    with pytest.raises(ConfigError, match="drive d0 is already used by --device virtio-blk-device"):
        with TestMachine(devices=["virtio-blk-device,drive=d0"] * 2, drives=[f"id=d0,file={image}"]) as m:
            m.create_devices()


def test_factory_releases_file_when_placement_fails(image, tmp_path):
    """The ninth virtio device finds no slot: its backend is closed (the image lock dropped)."""
    drives = [f"id=d{i},file={tmp_path / f'{i}.img'},readonly=on" for i in range(8)]
    for i in range(8):
        (tmp_path / f"{i}.img").write_bytes(bytes(512))
    devices = [f"virtio-blk-device,drive=d{i}" for i in range(8)] + ["virtio-blk-device,drive=x"]
    with pytest.raises(ConfigError, match="slot"):
        with TestMachine(devices=devices, drives=drives + [f"id=x,file={image}"]) as m:
            m.create_devices()
    VirtioBlk(image).close()  # the lock was released


# -- random descriptor tables against the device -----------------------------------------------
FUZZ_MEM = 1 << 20
_fuzz = {}


def fuzz_setup(tmp_path_factory):
    if not _fuzz:
        p = tmp_path_factory.mktemp("fuzz") / "fuzz.img"
        p.write_bytes(bytes(16 * 512))
        _fuzz["mem"] = GuestMemory(FUZZ_MEM)
        _fuzz["blk"] = VirtioBlk(p)
    return _fuzz["mem"], _fuzz["blk"]


# Mostly plausible buffers (headers at 0x8000 + 0x1000*k, data pages after them) and the usual
# flag combinations, so that many chains are valid requests; the rest is noise.
addrs = st.one_of(
    st.sampled_from([0x8000 + 0x1000 * k for k in range(4)] + [0x10000 + 0x1000 * k for k in range(8)]),
    st.sampled_from([0, 0x1000, 0x6000, FUZZ_MEM - 1, FUZZ_MEM - 512, 0xFEB00000]),
    st.integers(0, FUZZ_MEM),
    st.integers(0, (1 << 64) - 1),
)
lengths = st.one_of(st.sampled_from([1, 16, 16, 32, 512, 512, 1024, 20, 0]), st.integers(0, 0x1200), st.just(0xFFFFFFFF))
flags = st.sampled_from([1, 1, 3, 3, 2, 2, 0, 4, 5, 6, 7])
descs = st.tuples(addrs, lengths, flags, st.integers(0, 9))
headers = st.tuples(st.sampled_from([0, 1, 4, 8, 11, 13, 2, 99]), st.sampled_from([0, 1, 15, 16, 17, 1 << 63]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    table=st.lists(descs, min_size=8, max_size=8),
    itable=st.lists(descs, max_size=8),
    heads=st.lists(st.one_of(st.integers(0, 7), st.integers(0, 9)), min_size=1, max_size=8),
    hdrs=st.lists(headers, min_size=4, max_size=4),
)
def test_random_requests(tmp_path_factory, table, itable, heads, hdrs):
    """Random descriptor tables: the device either serves requests or raises QueueError,
    and never writes a byte outside the device-writable buffers it popped and the used ring."""
    mem, blk = fuzz_setup(tmp_path_factory)
    mem.fill(0, FUZZ_MEM)
    for k, (rtype, sector) in enumerate(hdrs):  # plausible headers where buffers may point
        mem.write(0x8000 + 0x1000 * k, struct.pack("<IIQ", rtype, 0, sector))
    dq = DriverQueue(mem, size=8, base=0x1000)
    vq = Virtqueue(mem, 8)
    vq.desc_addr, vq.avail_addr, vq.used_addr, vq.ready = dq.desc, dq.avail, dq.used, True
    for i, (a, n, f, nx) in enumerate(table):
        dq.write_desc(i, a, n, f, nx if nx < 9 else i + 1)  # 9: "the next one", as drivers do
    for i, (a, n, f, nx) in enumerate(itable):
        dq.write_desc(i, a, n, f, nx if nx < 9 else i + 1, table=0x6000)
    dq.publish(*heads)
    popped = []
    real_pop = vq.pop

    def recording_pop():
        chain = real_pop()
        if chain is not None:
            popped.append(chain)
        return chain

    vq.pop = recording_pop
    blk.activate([vq], lambda: None, mem)
    before = mem.read(0, FUZZ_MEM)
    try:
        blk.process_queue(0)
    except QueueError:
        pass
    allowed = [dq.used_ring_range()] + [(d.addr, d.addr + d.length) for c in popped for d in c if d.write]
    assert_only_changed(mem, before, allowed)
    for used_id, used_len in dq.get_used():
        chain = next(c for c in popped if c.head == used_id)
        assert used_len <= chain.writable_len


@pytest.mark.parametrize("accept_flush", [True, False])
def test_writes_are_durable_when_the_driver_did_not_accept_flush(mem, image, monkeypatch, accept_flush):
    """Without VIRTIO_BLK_F_FLUSH a driver may assume a write-through cache (Linux and QEMU
    do): each OUT is then synced before its status is written; with FLUSH, only FLUSH syncs."""
    blk, t, drv = make(mem, image)
    offered = t.device_features
    drv.probe(features=offered if accept_flush else offered & ~(1 << D.VIRTIO_BLK_F_FLUSH))
    synced = []
    monkeypatch.setattr(D.os, "fdatasync", lambda fd: synced.append(mem.read_u8(STATUS)))
    status, _, _ = drv.request(D.VIRTIO_BLK_T_OUT, sector=1, out=bytes(512))
    assert status == OK
    assert synced == ([] if accept_flush else [0xFF])  # before the status byte was written
    t.close()
