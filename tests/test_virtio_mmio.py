"""virtio-mmio transport (virtio 1.2 §4.2) without KVM: the register file, Linux's probe
handshake replayed register by register, interrupts, notifications and a hostile driver."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import pytest

from microvm.bus.bus import Bus
from microvm.irq import RecordingIrqLine
from microvm.virtio import QUEUE_NOTIFY_OFFSET, QueueError, VirtioBackend, VirtioMmioTransport, Virtqueue
from microvm.virtio import constants as C
from microvm.virtio.testing import DriverQueue, MmioDriver, assert_only_changed

MEM_SIZE = 16 << 20
BUF = 0x100000
ACK, DRIVER, DRIVER_OK, FEATURES_OK = (
    C.VIRTIO_CONFIG_S_ACKNOWLEDGE,
    C.VIRTIO_CONFIG_S_DRIVER,
    C.VIRTIO_CONFIG_S_DRIVER_OK,
    C.VIRTIO_CONFIG_S_FEATURES_OK,
)
NEEDS_RESET = C.VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET


class ToyBackend(VirtioBackend):
    """A tiny entropy-like device: fills every writable buffer with 0xA5, two queues."""

    device_id = C.VIRTIO_ID_RNG
    num_queues = 2
    queue_max_size = 16

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.config = bytearray(b"\x11\x22\x33\x44\x55\x66\x77\x88")
        self.queues: list[Virtqueue] = []
        self.interrupt: Callable[[], None] = lambda: None
        self.fail_with: BaseException | None = None

    def device_features(self) -> int:
        return 1 << 3

    def config_space(self) -> bytes:
        return bytes(self.config)

    def config_write(self, offset: int, data: bytes) -> None:
        self.config[offset : offset + len(data)] = data

    def activate(self, queues, interrupt, memory) -> None:
        self.calls.append("activate")
        self.queues, self.interrupt = queues, interrupt

    def process_queue(self, index: int) -> None:
        self.calls.append(f"process {index}")
        if self.fail_with is not None:
            raise self.fail_with
        q = self.queues[index]
        while (chain := q.pop()) is not None:
            n = 0
            for v in chain.writable_views():
                v[:] = b"\xa5" * len(v)
                n += len(v)
            q.push(chain.head, n)
        self.interrupt()

    def reset(self) -> None:
        self.calls.append("reset")

    def close(self) -> None:
        self.calls.append("close")


# -- a driver, register by register ------------------------------------------------------------
def linux_probe(t: VirtioMmioTransport, driver_features: int | None = None, queues: int = 2, size: int = 8) -> tuple[MmioDriver, list[DriverQueue]]:
    """vm_probe + virtio_dev_probe + find_vqs + virtio_device_ready, as Linux 6.1 does them."""
    d = MmioDriver(t)
    assert d.read(C.VIRTIO_MMIO_VENDOR_ID) == C.VIRTIO_MMIO_VENDOR_QEMU
    return d, d.probe(driver_features, queues=queues, size=size)


@pytest.fixture
def dev(mem):
    mem.fill(0, MEM_SIZE)
    backend = ToyBackend()
    irq = RecordingIrqLine(gsi=5)
    t = VirtioMmioTransport(backend, mem, irq, name="toy")
    return t, backend, irq


# -- registers ---------------------------------------------------------------------------------
def test_identification_registers(dev):
    t, backend, irq = dev
    d = MmioDriver(t)
    assert d.read(0x000) == C.VIRTIO_MMIO_MAGIC
    assert d.read(0x004) == 2
    assert d.read(0x008) == C.VIRTIO_ID_RNG
    assert d.read(0x00C) == 0x554D4551
    f = d.device_features()
    assert f == (1 << 3) | (1 << C.VIRTIO_F_VERSION_1) | (1 << C.VIRTIO_F_RING_EVENT_IDX) | (1 << C.VIRTIO_F_INDIRECT_DESC)
    d.write(C.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2)
    assert d.read(C.VIRTIO_MMIO_DEVICE_FEATURES) == 0
    assert t.window_size == 0x200 and t.notify_offset == QUEUE_NOTIFY_OFFSET == 0x50


def test_queue_num_max_and_sel(dev):
    t, _, _ = dev
    d = MmioDriver(t)
    for i in (0, 1):
        d.write(C.VIRTIO_MMIO_QUEUE_SEL, i)
        assert d.read(C.VIRTIO_MMIO_QUEUE_NUM_MAX) == 16
    d.write(C.VIRTIO_MMIO_QUEUE_SEL, 2)
    assert d.read(C.VIRTIO_MMIO_QUEUE_NUM_MAX) == 0
    assert d.read(C.VIRTIO_MMIO_QUEUE_READY) == 0
    d.write(C.VIRTIO_MMIO_QUEUE_NUM, 8)  # ignored, no crash


def test_no_shared_memory_regions(dev):
    d = MmioDriver(dev[0])
    d.write(C.VIRTIO_MMIO_SHM_SEL, 0)
    assert d.read(C.VIRTIO_MMIO_SHM_LEN_LOW) == d.read(C.VIRTIO_MMIO_SHM_LEN_HIGH) == 0xFFFFFFFF


def test_unaligned_and_narrow_register_access(dev):
    t, _, _ = dev
    buf = bytearray(b"\xff\xff")
    t.read(C.VIRTIO_MMIO_MAGIC_VALUE, memoryview(buf))
    assert buf == b"\0\0"
    buf = bytearray(b"\xff" * 4)
    t.read(0x002, memoryview(buf))
    assert buf == b"\0" * 4
    t.write(C.VIRTIO_MMIO_STATUS, b"\x01")  # byte write to Status: ignored
    assert MmioDriver(t).read(C.VIRTIO_MMIO_STATUS) == 0
    buf = bytearray(8)
    t.read(0x10, memoryview(buf))
    assert buf == bytes(8)


def test_config_space_any_width(dev):
    t, backend, _ = dev
    one = bytearray(1)
    t.read(0x101, memoryview(one))
    assert one == b"\x22"
    eight = bytearray(8)
    t.read(0x100, memoryview(eight))
    assert eight == backend.config
    beyond = bytearray(b"\xff" * 4)
    t.read(0x106, memoryview(beyond))
    assert beyond == b"\x77\x88\0\0"
    t.write(0x102, b"\xaa\xbb")
    assert backend.config[2:4] == b"\xaa\xbb"


def test_through_the_bus(dev):
    t, _, _ = dev
    bus = Bus("mmio", unmapped_read=0)
    bus.insert(t, C.VIRTIO_MMIO_WINDOW * 0 + 0xFEB00000, t.window_size, "virtio-mmio.0")
    buf = bytearray(4)
    bus.read(0xFEB00000, memoryview(buf))
    assert buf == b"virt"


# -- the handshake -----------------------------------------------------------------------------
def test_linux_handshake(dev):
    t, backend, irq = dev
    d, dqs = linux_probe(t)
    assert d.read(C.VIRTIO_MMIO_STATUS) == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert backend.calls == ["activate"]
    assert t.activated
    assert backend.acked_features == d.device_features()
    assert all(q.event_idx and q.ready for q in backend.queues)
    assert backend.queues[0].desc_addr == dqs[0].desc and backend.queues[1].used_addr == dqs[1].used
    # read back the (write-only in the spec) address registers as QEMU allows
    d.write(C.VIRTIO_MMIO_QUEUE_SEL, 1)
    assert d.read(C.VIRTIO_MMIO_QUEUE_DRIVER_LOW) == dqs[1].avail
    assert irq.events == []


def test_feature_refusal_unoffered_bit(dev):
    t, backend, _ = dev
    d, dqs = linux_probe(t, driver_features=(1 << C.VIRTIO_F_VERSION_1) | (1 << 5))
    assert dqs == []
    assert not d.read(C.VIRTIO_MMIO_STATUS) & FEATURES_OK
    d.add_status(DRIVER_OK)
    assert backend.calls == []


def test_feature_refusal_without_version_1(dev):
    t, backend, _ = dev
    d, dqs = linux_probe(t, driver_features=1 << 3)
    assert dqs == [] and not d.read(C.VIRTIO_MMIO_STATUS) & FEATURES_OK


def test_feature_refusal_high_select(dev, mem):
    t, _, _ = dev
    d = MmioDriver(t)
    d.add_status(ACK | DRIVER)
    d.set_features(1 << C.VIRTIO_F_VERSION_1)
    d.write(C.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2)
    d.write(C.VIRTIO_MMIO_DRIVER_FEATURES, 1)
    d.add_status(FEATURES_OK)
    assert not d.read(C.VIRTIO_MMIO_STATUS) & FEATURES_OK


def test_subset_of_features_without_event_idx(dev):
    t, backend, _ = dev
    linux_probe(t, driver_features=1 << C.VIRTIO_F_VERSION_1)
    assert backend.acked_features == 1 << C.VIRTIO_F_VERSION_1
    assert not any(q.event_idx for q in backend.queues)


def test_driver_ok_without_features_ok_does_not_start(dev):
    t, backend, _ = dev
    d = MmioDriver(t)
    d.add_status(ACK | DRIVER | DRIVER_OK)
    assert backend.calls == [] and not t.activated


def test_features_frozen_after_features_ok(dev):
    t, backend, _ = dev
    d, _ = linux_probe(t, driver_features=1 << C.VIRTIO_F_VERSION_1)
    d.set_features(d.device_features())
    assert backend.acked_features == 1 << C.VIRTIO_F_VERSION_1


def test_queue_registers_frozen_while_ready(dev, mem):
    t, backend, _ = dev
    d = MmioDriver(t)
    d.add_status(ACK | DRIVER)
    dq = DriverQueue(mem, size=8)
    d.setup_queue(0, dq)
    d.write(C.VIRTIO_MMIO_QUEUE_NUM, 4)
    d.write(C.VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5000)
    assert t.queues[0].size == 8 and t.queues[0].desc_addr == dq.desc


# -- notifications and interrupts --------------------------------------------------------------
def test_notify_processes_and_interrupts(dev, mem):
    t, backend, irq = dev
    d, dqs = linux_probe(t, driver_features=(1 << C.VIRTIO_F_VERSION_1))
    head = dqs[1].add([(BUF, 4, False), (BUF + 0x100, 16, True)])
    d.notify(1)
    assert backend.calls[-1] == "process 1"
    assert dqs[1].get_used() == [(head, 16)]
    assert mem.read(BUF + 0x100, 17) == b"\xa5" * 16 + b"\0"
    assert irq.level and irq.events == ["high"]
    assert d.ack_interrupt() == C.VIRTIO_MMIO_INT_VRING
    assert not irq.level and irq.events == ["high", "low"]
    assert d.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) == 0


def test_no_interrupt_when_driver_suppresses(dev):
    t, backend, irq = dev
    d, dqs = linux_probe(t)  # event idx negotiated
    dqs[0].set_used_event(5)
    dqs[0].add([(BUF, 16, True)])
    d.notify(0)
    assert irq.events == ["high"]  # the first one after activation is always sent
    d.ack_interrupt()
    dqs[0].add([(BUF, 16, True)])
    d.notify(0)  # used idx 2, event 5: suppressed
    assert irq.events == ["high", "low"] and d.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) == 0
    assert len(dqs[0].get_used()) == 2


def test_partial_ack_keeps_line_high(dev):
    t, backend, irq = dev
    d, dqs = linux_probe(t)
    dqs[0].add([(BUF, 16, True)])
    d.notify(0)
    backend.config_changed()
    assert d.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) == C.VIRTIO_MMIO_INT_VRING | C.VIRTIO_MMIO_INT_CONFIG
    d.write(C.VIRTIO_MMIO_INTERRUPT_ACK, C.VIRTIO_MMIO_INT_VRING)
    assert irq.level
    d.write(C.VIRTIO_MMIO_INTERRUPT_ACK, C.VIRTIO_MMIO_INT_CONFIG)
    assert not irq.level


def test_custom_on_notify(mem):
    seen = []
    t = VirtioMmioTransport(ToyBackend(), mem, RecordingIrqLine(), on_notify=seen.append)
    MmioDriver(t).notify(1)
    assert seen == [1]


def test_notify_before_activation_or_bad_index_is_ignored(dev):
    t, backend, _ = dev
    t.notify(0)
    d, dqs = linux_probe(t, queues=1)
    t.notify(1)  # queue 1 not enabled by the driver
    t.notify(7)
    assert backend.calls == ["activate"]


def test_config_generation(dev):
    t, backend, irq = dev
    d = MmioDriver(t)
    g0 = d.read(C.VIRTIO_MMIO_CONFIG_GENERATION)
    backend.config_changed()  # before DRIVER_OK: generation moves, no interrupt
    assert d.read(C.VIRTIO_MMIO_CONFIG_GENERATION) == g0 + 1
    assert not irq.level
    linux_probe(t)
    backend.config_changed()
    assert d.read(C.VIRTIO_MMIO_CONFIG_GENERATION) == g0 + 2
    assert d.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) == C.VIRTIO_MMIO_INT_CONFIG and irq.level


def test_reset(dev, mem):
    t, backend, irq = dev
    d, dqs = linux_probe(t)
    dqs[0].add([(BUF, 16, True)])
    d.notify(0)
    assert irq.level
    d.write(C.VIRTIO_MMIO_STATUS, 0)
    assert backend.calls[-1] == "reset"
    assert d.read(C.VIRTIO_MMIO_STATUS) == 0 and d.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) == 0
    assert not irq.level and not t.activated
    assert all(not q.ready and q.next_used == 0 for q in t.queues)
    d.write(C.VIRTIO_MMIO_QUEUE_SEL, 0)
    assert d.read(C.VIRTIO_MMIO_QUEUE_READY) == 0
    # and the driver can come back
    mem.fill(0x10000, 0x10000)
    d2, dqs = linux_probe(t)
    dqs[0].add([(BUF, 16, True)])
    d2.notify(0)
    assert len(dqs[0].get_used()) == 1


def test_close(dev):
    t, backend, _ = dev
    linux_probe(t)
    t.close()
    assert backend.calls[-2:] == ["reset", "close"]


def test_worker_thread_notify_races_with_vcpu(dev):
    """The glue's worker thread notifies while the vCPU thread acks interrupts."""
    t, backend, irq = dev
    d, dqs = linux_probe(t, driver_features=1 << C.VIRTIO_F_VERSION_1, size=16)
    done = threading.Event()

    def vcpu():
        while not done.is_set():
            d.ack_interrupt()

    th = threading.Thread(target=vcpu)
    th.start()
    total = 0
    for _ in range(200):
        dqs[0].add([(BUF, 8, True)])
        t.notify(0)
        total += len(dqs[0].get_used())
    done.set()
    th.join()
    assert total == 200 and not t.needs_reset


# -- a hostile driver --------------------------------------------------------------------------
def assert_needs_reset(t: VirtioMmioTransport, irq: RecordingIrqLine, driver_ok: bool = True) -> None:
    d = MmioDriver(t)
    assert d.read(C.VIRTIO_MMIO_STATUS) & NEEDS_RESET
    if driver_ok:
        assert d.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) & C.VIRTIO_MMIO_INT_CONFIG and irq.level


def test_bad_queue_size_at_driver_ok(dev, mem):
    t, backend, irq = dev
    d = MmioDriver(t)
    d.add_status(ACK | DRIVER)
    d.set_features(d.device_features())
    d.add_status(FEATURES_OK)
    d.setup_queue(0, DriverQueue(mem, size=8))
    d.write(C.VIRTIO_MMIO_QUEUE_SEL, 1)
    d.write(C.VIRTIO_MMIO_QUEUE_NUM, 6)  # not a power of two
    d.write(C.VIRTIO_MMIO_QUEUE_READY, 1)
    d.add_status(DRIVER_OK)
    assert_needs_reset(t, irq)
    assert backend.calls == [] and not t.activated


def test_queue_outside_ram_at_driver_ok(dev, mem):
    t, backend, irq = dev
    d = MmioDriver(t)
    d.add_status(ACK | DRIVER)
    d.set_features(d.device_features())
    d.add_status(FEATURES_OK)
    dq = DriverQueue(mem, size=8)
    dq.used = 0xFEE00000  # the LAPIC, not RAM
    d.setup_queue(0, dq)
    d.add_status(DRIVER_OK)
    assert_needs_reset(t, irq)
    assert backend.calls == []


def test_descriptor_outside_ram_sets_needs_reset(dev, mem):
    t, backend, irq = dev
    d, dqs = linux_probe(t)
    dqs[0].add([(BUF, 16, False), (MEM_SIZE - 4, 8, True)])
    before = mem.read(0, MEM_SIZE)
    d.notify(0)
    assert_needs_reset(t, irq)
    # nothing but the used ring (avail_event) may change
    assert_only_changed(mem, before, [dqs[0].used_ring_range()])
    # further notifications are ignored until the driver resets
    dqs[0].add([(BUF, 16, True)])
    d.notify(0)
    assert backend.calls.count("process 0") == 1
    # the driver's status writes keep the device-owned bit
    d.add_status(C.VIRTIO_CONFIG_S_FAILED)
    assert d.read(C.VIRTIO_MMIO_STATUS) & NEEDS_RESET
    d.write(C.VIRTIO_MMIO_STATUS, 0)
    assert d.read(C.VIRTIO_MMIO_STATUS) == 0 and not irq.level


def test_loop_sets_needs_reset(dev, mem):
    t, backend, irq = dev
    d, dqs = linux_probe(t)
    dqs[0].write_desc(0, BUF, 8, C.VIRTQ_DESC_F_NEXT, 0)
    dqs[0].publish(0)
    before = mem.read(0, MEM_SIZE)
    d.notify(0)
    assert_needs_reset(t, irq)
    assert_only_changed(mem, before, [dqs[0].used_ring_range()])


@pytest.mark.parametrize("exc", [QueueError("bad ring"), RuntimeError("backend bug"), ValueError("oops")])
def test_backend_exceptions_never_escape(dev, exc):
    t, backend, irq = dev
    d, dqs = linux_probe(t)
    backend.fail_with = exc
    d.notify(0)  # must not raise into the vCPU thread
    assert_needs_reset(t, irq)


def test_activation_failure(dev):
    t, backend, irq = dev

    def boom(*a):
        raise OSError("no tap device")

    backend.activate = boom
    linux_probe(t)
    assert_needs_reset(t, irq)
    assert not t.activated


# -- legacy (Version 1) ------------------------------------------------------------------------
def test_legacy_handshake(mem):
    mem.fill(0, MEM_SIZE)
    backend = ToyBackend()
    irq = RecordingIrqLine()
    t = VirtioMmioTransport(backend, mem, irq, legacy=True)
    d = MmioDriver(t)
    assert d.read(C.VIRTIO_MMIO_VERSION) == 1
    d.write(C.VIRTIO_MMIO_GUEST_PAGE_SIZE, 4096)
    d.write(C.VIRTIO_MMIO_STATUS, 0)
    d.add_status(ACK | DRIVER)
    f = d.device_features()
    assert not f & (1 << C.VIRTIO_F_VERSION_1)
    d.set_features(f)
    # legacy vm_setup_vq: QueueSel, check PFN == 0, QueueNumMax, QueueNum, QueueAlign, QueuePFN
    d.write(C.VIRTIO_MMIO_QUEUE_SEL, 0)
    assert d.read(C.VIRTIO_MMIO_QUEUE_PFN) == 0
    assert d.read(C.VIRTIO_MMIO_QUEUE_NUM_MAX) == 16
    d.write(C.VIRTIO_MMIO_QUEUE_NUM, 8)
    d.write(C.VIRTIO_MMIO_QUEUE_ALIGN, 4096)
    dq = DriverQueue(mem, size=8, base=0x20000)  # vring_init layout with 4 KiB alignment
    d.write(C.VIRTIO_MMIO_QUEUE_PFN, 0x20000 >> 12)
    assert d.read(C.VIRTIO_MMIO_QUEUE_PFN) == 0x20
    d.add_status(DRIVER_OK)  # no FEATURES_OK step in legacy
    assert t.activated
    q = backend.queues[0]
    assert (q.desc_addr, q.avail_addr, q.used_addr) == (dq.desc, dq.avail, dq.used)
    assert q.event_idx
    head = dq.add([(BUF, 8, True)])
    d.notify(0)
    assert dq.get_used() == [(head, 8)]
    assert d.ack_interrupt() == 1


def test_legacy_bad_page_size(mem):
    mem.fill(0, MEM_SIZE)
    backend = ToyBackend()
    irq = RecordingIrqLine()
    t = VirtioMmioTransport(backend, mem, irq, legacy=True)
    d = MmioDriver(t)
    d.write(C.VIRTIO_MMIO_GUEST_PAGE_SIZE, 3000)
    d.add_status(ACK | DRIVER)
    d.write(C.VIRTIO_MMIO_QUEUE_NUM, 8)
    d.write(C.VIRTIO_MMIO_QUEUE_PFN, 0x20)
    d.add_status(DRIVER_OK)
    assert_needs_reset(t, irq)


# -- the example in docs/virtio-backend.md -------------------------------------------------------
def test_docs_example_backend(mem):
    """The virtio-rng example of docs/virtio-backend.md, and its test there, run as documented."""
    import re

    doc = (Path(__file__).parents[1] / "docs" / "virtio-backend.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    code = next(b for b in blocks if "class VirtioRng" in b)
    ns: dict = {}
    exec(compile(code, "docs/virtio-backend.md", "exec"), ns)
    doc_test = next(b for b in blocks if "microvm.virtio.testing" in b)
    exec(compile(doc_test, "docs/virtio-backend.md", "exec"), ns)
    ns["test_virtio_rng_fills_buffers"]()
    glue = next(b for b in blocks if "def register_device_types" in b)
    assert glue == (Path(__file__).parents[1] / "plugins/virtio_rng/microvm_virtio_rng/plugin.py").read_text()
    mem.fill(0, MEM_SIZE)
    irq = RecordingIrqLine()
    t = VirtioMmioTransport(ns["VirtioRng"](), mem, irq)
    d, dqs = linux_probe(t, queues=1)
    mem.fill(BUF, 64, 0)
    head = dqs[0].add([(BUF, 64, True)])
    d.notify(0)
    assert dqs[0].get_used() == [(head, 64)]
    assert mem.read(BUF, 64) != bytes(64)
    assert irq.level
