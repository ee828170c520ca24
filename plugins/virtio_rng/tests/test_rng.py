"""virtio-rng-device, tested as a third party would test it: the backend on the real
virtio-mmio transport, driven by the replayed Linux driver of ``microvm.virtio.testing``, on
both the legacy (QEMU 7.2's default) and the modern transport. No KVM."""
from __future__ import annotations

import collections
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microvm.api as C
from microvm.api import GuestMemory, RecordingIrqLine
from microvm.virtio.testing import DriverQueue, MmioDriver, VirtioMmioTransport, assert_only_changed
from microvm_virtio_rng.device import QUEUE_SIZE, VirtioRng, fill_random
from microvm_virtio_rng.plugin import PROPERTIES, create, register_device_types

MEM_SIZE = 4 << 20
BUF = 0x100000  # where the driver's entropy buffers live


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def make(mem: GuestMemory, legacy: bool, **kw):
    """The device on a transport, probed and started by the driver; returns its parts."""
    mem.fill(0, MEM_SIZE)
    clock = FakeClock()
    wakes: list[int] = []
    rng = VirtioRng(clock=clock, on_timer_change=lambda: wakes.append(1), **kw)
    line = RecordingIrqLine(gsi=12)
    t = VirtioMmioTransport(rng, mem, line, legacy=legacy, name="virtio-rng:test")
    drv = MmioDriver(t)
    [q] = drv.probe(size=QUEUE_SIZE)
    return rng, t, drv, q, line, clock, wakes


@pytest.fixture(params=[True, False], ids=["legacy", "modern"])
def legacy(request) -> bool:
    return request.param


def request(drv: MmioDriver, q: DriverQueue, *sizes: int, at: int = BUF) -> int:
    """Post one chain of device-writable buffers (as virtio_rng's request_entropy) and notify."""
    bufs, addr = [], at
    for n in sizes:
        bufs.append((addr, n, True))
        addr += n
    head = q.add(bufs)
    drv.notify(0)
    return head


def test_identity_and_transport(mem, legacy) -> None:
    rng, t, drv, q, line, *_ = make(mem, legacy)
    assert drv.read(C.VIRTIO_MMIO_DEVICE_ID) == C.VIRTIO_ID_RNG == 4
    assert drv.read(C.VIRTIO_MMIO_VERSION) == (1 if legacy else 2)
    assert drv.read(C.VIRTIO_MMIO_QUEUE_NUM_MAX) == QUEUE_SIZE
    assert rng.device_features() == 0
    offered = drv.device_features()
    assert bool(offered & (1 << C.VIRTIO_F_VERSION_1)) is (not legacy)
    assert t.activated and not drv.needs_reset()


def test_a_request_is_filled_with_random_bytes(mem, legacy) -> None:
    rng, t, drv, q, line, *_ = make(mem, legacy)
    head = q.add([(BUF, 64, True)])
    before = mem.read(0, MEM_SIZE)
    drv.notify(0)
    assert q.get_used() == [(head, 64)]
    data = mem.read(BUF, 64)
    assert data != bytes(64) and len(set(data)) > 16           # not zeros, not a constant
    assert line.level and drv.ack_interrupt() & 1 and not line.level
    assert_only_changed(mem, before, [q.used_ring_range(), (BUF, BUF + 64)])
    assert (rng.counters["requests"], rng.counters["bytes_read"]) == (1, 64)
    # two processings: the device's own at DRIVER_OK (as QEMU's set_status), the driver's
    assert (t.counters["notifications"], t.counters["interrupts"]) == (2, 1)


def test_two_requests_get_different_bytes(mem, legacy) -> None:
    _, _, drv, q, *_ = make(mem, legacy)
    request(drv, q, 32, at=BUF)
    request(drv, q, 32, at=BUF + 0x1000)
    assert mem.read(BUF, 32) != mem.read(BUF + 0x1000, 32)


def test_a_chain_of_several_buffers_is_filled_whole(mem, legacy) -> None:
    rng, _, drv, q, *_ = make(mem, legacy)
    head = request(drv, q, 1, 4095, 8192)
    assert q.get_used() == [(head, 1 + 4095 + 8192)]
    assert rng.counters["bytes_read"] == 8192 + 4096


def test_device_readable_buffers_are_not_written(mem, legacy) -> None:
    """A hostile driver's readable buffer in the chain: ignored, nothing written there."""
    rng, _, drv, q, *_ = make(mem, legacy)
    mem.write(BUF, b"\xAA" * 16)
    head = q.add([(BUF, 16, False), (BUF + 16, 16, True)])
    drv.notify(0)
    assert q.get_used() == [(head, 16)]
    assert mem.read(BUF, 16) == b"\xAA" * 16


def test_a_chain_without_writable_buffers_is_returned_empty(mem, legacy) -> None:
    rng, _, drv, q, *_ = make(mem, legacy)
    head = q.add([(BUF, 16, False)])
    drv.notify(0)
    assert q.get_used() == [(head, 0)] and not drv.needs_reset()


def test_a_buffer_outside_ram_sets_needs_reset(mem, legacy) -> None:
    rng, t, drv, q, *_ = make(mem, legacy)
    q.add([(MEM_SIZE - 8, 64, True)])
    before = mem.read(0, MEM_SIZE)
    drv.notify(0)
    assert drv.needs_reset() and t.counters["needs_reset"] == 1
    assert_only_changed(mem, before, [q.used_ring_range()])
    drv.write(C.VIRTIO_MMIO_STATUS, 0)        # the driver resets: the device recovers
    assert not drv.needs_reset()
    [q2] = drv.probe(size=QUEUE_SIZE, base=0x20000)
    head = request(drv, q2, 16)
    assert q2.get_used() == [(head, 16)]


def test_rate_limit_holds_requests_until_the_next_period(mem, legacy) -> None:
    """max-bytes=64 per period=1000 ms: the third 32-byte request waits for the timer. As in
    QEMU, the period started at DRIVER_OK; the timer's processing starts none, the next
    processing does."""
    rng, _, drv, q, line, clock, wakes = make(mem, legacy, max_bytes=64, period_ms=1000)
    start = clock.now
    assert rng.next_deadline() == start + 1_000_000_000 and wakes == [1]
    clock.now += 10_000_000
    h1 = request(drv, q, 32, at=BUF)
    h2 = request(drv, q, 32, at=BUF + 0x100)
    h3 = request(drv, q, 32, at=BUF + 0x200)
    assert [h for h, _ in q.get_used()] == [h1, h2]
    assert rng.counters["throttled"] == 1
    clock.now = start + 999_000_000
    rng.tick(clock.now)                                   # too early: still waiting
    assert q.get_used() == []
    clock.now = start + 1_000_000_000
    rng.tick(clock.now)                                   # the period is over: quota refilled
    assert q.get_used() == [(h3, 32)] and rng.next_deadline() is None
    assert rng.counters["bytes_read"] == 96
    clock.now += 5_000_000
    h4 = request(drv, q, 8, at=BUF + 0x300)               # this processing starts a period
    assert q.get_used() == [(h4, 8)] and rng.next_deadline() == clock.now + 1_000_000_000


def test_a_broken_ring_found_after_the_timer_sets_needs_reset(mem, legacy) -> None:
    """The timer never touches the queue: the processing it asks for runs with the
    transport's error handling, so a bad buffer found then puts the device in NEEDS_RESET."""
    rng, t, drv, q, _, clock, _ = make(mem, legacy, max_bytes=16, period_ms=10)
    request(drv, q, 16)
    q.add([(MEM_SIZE - 8, 64, True)])                     # waits for the quota: not popped yet
    drv.notify(0)
    assert not drv.needs_reset()
    clock.now += 10_000_000
    rng.tick(clock.now)                                   # must not raise on this thread
    assert drv.needs_reset() and t.counters["needs_reset"] == 1


def test_rate_limit_splits_a_request_larger_than_the_quota(mem, legacy) -> None:
    """QEMU hands out min(quota, request): a 100-byte request under a 40-byte quota gets 40."""
    rng, _, drv, q, *_ = make(mem, legacy, max_bytes=40, period_ms=10)
    head = request(drv, q, 100)
    assert q.get_used() == [(head, 40)]
    assert mem.read(BUF + 40, 60) == bytes(60)


def test_reset_stops_the_timer_from_touching_the_queue(mem, legacy) -> None:
    rng, _, drv, q, _, clock, _ = make(mem, legacy, max_bytes=8, period_ms=1)
    request(drv, q, 8)
    request(drv, q, 8, at=BUF + 0x100)
    drv.write(C.VIRTIO_MMIO_STATUS, 0)
    clock.now += 10_000_000
    before = mem.read(0, MEM_SIZE)
    rng.tick(clock.now)
    assert mem.read(0, MEM_SIZE) == before


def test_counters_made_before_placement_move_with_the_device(mem) -> None:
    """A backend may bind its counters in __init__: placing it on a transport (which gives it
    the machine's group) keeps them counting there."""
    rng = VirtioRng()
    early = rng.counters.counter("early")
    early.inc()
    t = VirtioMmioTransport(rng, mem, RecordingIrqLine(gsi=12), legacy=False, name="x")
    early.inc()
    assert t.counters["early"] == 2 and rng.counters is t.counters


def test_fill_random_fills_large_buffers_in_place() -> None:
    buf = bytearray(1 << 20)
    fill_random(memoryview(buf))
    counts = collections.Counter(buf)
    assert len(counts) == 256 and max(counts.values()) < 2 * (len(buf) / 256)
    fill_random(memoryview(bytearray(0)))  # nothing to do


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    descs=st.lists(st.tuples(st.one_of(st.integers(0, MEM_SIZE + 4096), st.integers(0, (1 << 64) - 1)),
                             st.integers(0, 70000), st.sampled_from([0, 1, 2, 3, 4, 6])), min_size=1, max_size=QUEUE_SIZE),
    heads=st.lists(st.integers(0, QUEUE_SIZE + 2), min_size=1, max_size=QUEUE_SIZE),
    legacy=st.booleans(),
)
def test_random_rings_never_escape_or_write_outside_the_buffers(mem, descs, heads, legacy) -> None:
    """Random descriptor tables: the device fills buffers or the transport sets NEEDS_RESET;
    no exception escapes and no byte outside the popped writable buffers and the used ring
    changes."""
    rng, t, drv, q, *_ = make(mem, legacy)
    for i, (addr, length, flags) in enumerate(descs):
        q.write_desc(i, addr, length, flags, (i + 1) % QUEUE_SIZE)
    writable = [(a, a + n) for a, n, f in descs if f & 2 and a + n <= MEM_SIZE]
    q.publish(*heads)
    before = mem.read(0, MEM_SIZE)
    drv.notify(0)                                    # must not raise
    assert_only_changed(mem, before, [q.used_ring_range(), *writable])


# ---- the glue, as the core calls it -------------------------------------------------------------
def test_registration_declares_a_virtio_device_with_qemus_properties() -> None:
    seen = []
    register_device_types(lambda *a, **kw: seen.append((a, kw)))
    [(args, kw)] = seen
    assert args[:2] == ("virtio-rng-device", create) and kw == {"properties": PROPERTIES, "virtio": True}
    assert {p.name: p.default for p in PROPERTIES} == {"max-bytes": (1 << 63) - 1, "period": 65536}


class FakeTimers:
    def __init__(self) -> None:
        self.devices: list = []
        self.wakes = 0

    def add(self, dev) -> None:
        self.devices.append(dev)

    def wake(self) -> None:
        self.wakes += 1


class FakeCtx:
    def __init__(self) -> None:
        self.timers = FakeTimers()


def test_factory_puts_the_device_on_the_machines_timer() -> None:
    ctx = FakeCtx()
    rng = create(ctx, {"max-bytes": 100, "period": 20})
    assert isinstance(rng, VirtioRng) and ctx.timers.devices == [rng]
    assert (rng.max_bytes, rng.period_ns) == (100, 20_000_000)


@pytest.mark.parametrize("props, msg", [
    ({"max-bytes": -1, "period": 1}, "'max-bytes' parameter must be non-negative, and less than 2\\^63"),
    ({"max-bytes": 1 << 63, "period": 1}, "'max-bytes' parameter must be non-negative, and less than 2\\^63"),
    ({"max-bytes": 1, "period": 0}, "'period' parameter expects a positive integer"),
])
def test_factory_refuses_what_qemu_refuses(props, msg) -> None:
    with pytest.raises(C.ConfigError, match=msg):
        create(FakeCtx(), props)


def test_timer_deadline_math_is_in_nanoseconds() -> None:
    rng = VirtioRng(max_bytes=1, period_ms=3)
    assert rng.period_ns == 3_000_000 and math.isclose(rng.period_ns / 1e6, 3)
