"""Split virtqueue (virtio 1.2 §2.7), device side, against real GuestMemory and no KVM.

``microvm.virtio.testing.DriverQueue`` plays the guest driver: it lays the rings out as Linux's
``vring_init`` does, writes descriptors and publishes ``avail->idx`` last, and reads back the
used ring.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microvm.memory import GuestMemory
from microvm.virtio import Descriptor, QueueError, Virtqueue, vring_need_event
from microvm.virtio.constants import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
)
from microvm.virtio.testing import DriverQueue, assert_only_changed

MEM_SIZE = 16 << 20
RING = 0x10000
BUF = 0x100000  # buffers from 1 MiB up


@pytest.fixture
def q(mem):
    mem.fill(0, MEM_SIZE)
    drv = DriverQueue(mem)
    vq = drv.attach(Virtqueue(mem, 8))
    return drv, vq


# -- the basics -------------------------------------------------------------------------------
def test_empty_queue_pops_nothing(q):
    drv, vq = q
    assert vq.pop() is None
    assert not vq.has_pending()


def test_pop_chain_and_push(q, mem):
    drv, vq = q
    mem.write(BUF, b"request!")
    head = drv.add([(BUF, 8, False), (BUF + 0x1000, 512, True), (BUF + 0x2000, 1, True)])
    chain = vq.pop()
    assert chain.head == head
    assert chain.descriptors == [Descriptor(BUF, 8, False), Descriptor(BUF + 0x1000, 512, True), Descriptor(BUF + 0x2000, 1, True)]
    assert chain.read_all() == b"request!"
    assert chain.readable_len == 8 and chain.writable_len == 513
    views = chain.writable_views()
    views[0][:3] = b"abc"
    assert mem.read(BUF + 0x1000, 3) == b"abc"  # zero-copy
    assert vq.pop() is None
    vq.push(chain.head, 513)
    assert drv.get_used() == [(head, 513)]


def test_several_chains_in_order(q):
    drv, vq = q
    heads = [drv.add([(BUF + i * 0x100, 16, i % 2 == 1)]) for i in range(5)]
    popped = []
    while (c := vq.pop()) is not None:
        popped.append(c.head)
        vq.push(c.head, 0)
    assert popped == heads
    assert [h for h, _ in drv.get_used()] == heads


def test_indirect_chain(q, mem):
    drv, vq = q
    head = drv.make_indirect([(BUF, 16, False), (BUF + 0x200, 0x200, True), (BUF + 0x400, 1, True)], table=BUF + 0x8000)
    drv.publish(head)
    chain = vq.pop()
    assert chain.head == head
    assert [d.length for d in chain] == [16, 0x200, 1]
    assert [d.write for d in chain] == [False, True, True]


def test_wrap_around_of_16_bit_indexes(q, mem):
    drv, vq = q
    drv.start_at(0xFFFD, vq)
    heads = []
    for i in range(6):
        heads.append(drv.add([(BUF + i * 0x100, 8, True)]))
        c = vq.pop()
        assert c.head == heads[-1]
        vq.push(c.head, 8)
    assert vq.next_avail == vq.next_used == (0xFFFD + 6) & 0xFFFF == 3
    assert mem.read_u16(drv.used + 2) == 3
    assert [h for h, _ in drv.get_used()] == heads


def test_full_ring_is_accepted(q):
    drv, vq = q
    for i in range(8):
        drv.add([(BUF + i * 0x100, 8, False)])
    assert sum(1 for _ in iter(vq.pop, None)) == 8


# -- notification suppression (§2.7.7, §2.7.10) ----------------------------------------------
@pytest.mark.parametrize(
    "event,new,old,expected",
    [
        (0, 1, 0, True),
        (1, 1, 0, False),
        (5, 6, 4, True),
        (7, 6, 4, False),
        (0xFFFF, 0, 0xFFFE, True),  # crossed at the wrap
        (0xFFFF, 1, 0xFFFE, True),
        (0, 0xFFFF, 0xFFFE, False),
        (2, 3, 0xFFFF, True),
        (3, 3, 0xFFFF, False),
        (10, 10, 10, False),  # nothing new
    ],
)
def test_vring_need_event(event, new, old, expected):
    assert vring_need_event(event, new, old) is expected


def test_no_interrupt_flag_without_event_idx(q):
    drv, vq = q
    assert not vq.needs_notification()  # nothing pushed
    drv.add([(BUF, 8, True)])
    vq.push(vq.pop().head, 0)
    assert vq.needs_notification()
    assert not vq.needs_notification()  # consumed
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    drv.add([(BUF, 8, True)])
    vq.push(vq.pop().head, 0)
    assert not vq.needs_notification()


def test_event_idx_suppression_and_avail_event(mem):
    mem.fill(0, MEM_SIZE)
    drv = DriverQueue(mem)
    vq = drv.attach(Virtqueue(mem, 8), event_idx=True)
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)  # ignored with event idx
    drv.set_used_event(0)  # interrupt after the first used entry
    for i in range(3):
        drv.add([(BUF + i * 0x100, 8, True)])
    c = vq.pop()
    assert drv.avail_event == 1  # device asks to be notified when avail idx passes 1
    vq.push(c.head, 8)
    assert vq.needs_notification()  # first one is always signalled
    drv.set_used_event(2)  # driver: wake me when used idx passes 2
    vq.push(vq.pop().head, 8)  # used idx -> 2: event 2 not crossed yet
    assert not vq.needs_notification()
    vq.push(vq.pop().head, 8)  # used idx -> 3: crossed
    assert vq.needs_notification()
    assert drv.avail_event == 3
    assert vq.pop() is None
    assert drv.avail_event == 3


def test_event_idx_across_wrap(mem):
    mem.fill(0, MEM_SIZE)
    drv = DriverQueue(mem)
    vq = drv.attach(Virtqueue(mem, 8), event_idx=True)
    drv.start_at(0xFFFE, vq)
    vq._signalled_valid = True
    drv.set_used_event(0xFFFF)
    for i in range(3):
        drv.add([(BUF + i * 0x100, 8, True)])
    vq.push(vq.pop().head, 8)  # used 0xFFFF: event 0xFFFF not crossed
    assert not vq.needs_notification()
    vq.push(vq.pop().head, 8)  # used 0x0000: crossed
    assert vq.needs_notification()
    assert drv.avail_event == 0
    vq.push(vq.pop().head, 8)  # used 1: the driver's stale event 0xFFFF was passed already
    assert not vq.needs_notification()
    drv.set_used_event(1)
    drv.add([(BUF, 8, True)])
    vq.push(vq.pop().head, 8)  # used 2 crosses event 1
    assert vq.needs_notification()


# -- configuration checks -------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 3, 6, 12, 16])
def test_bad_queue_size(mem, size):
    vq = Virtqueue(mem, size, max_size=8)
    vq.desc_addr, vq.avail_addr, vq.used_addr = RING, RING + 0x1000, RING + 0x2000
    with pytest.raises(QueueError, match="power of two"):
        vq.validate()


def test_max_size_must_be_power_of_two(mem):
    with pytest.raises(ValueError):
        Virtqueue(mem, 6)


@pytest.mark.parametrize(
    "desc,avail,used,match",
    [
        (RING + 8, RING + 0x1000, RING + 0x2000, "descriptor table .* aligned"),
        (RING, RING + 0x1001, RING + 0x2000, "available ring .* aligned"),
        (RING, RING + 0x1000, RING + 0x2002, "used ring .* aligned"),
        (MEM_SIZE - 64, RING + 0x1000, RING + 0x2000, "descriptor table .* outside"),
        (RING, MEM_SIZE - 4, RING + 0x2000, "available ring .* outside"),
        (RING, RING + 0x1000, 0xFEB00000, "used ring .* outside"),
    ],
)
def test_bad_ring_placement(mem, desc, avail, used, match):
    vq = Virtqueue(mem, 8)
    vq.desc_addr, vq.avail_addr, vq.used_addr = desc, avail, used
    with pytest.raises(QueueError, match=match):
        vq.validate()


def test_not_ready_queue_is_not_touched(mem):
    vq = Virtqueue(mem, 8)
    with pytest.raises(QueueError, match="not ready"):
        vq.pop()
    with pytest.raises(QueueError, match="not ready"):
        vq.push(0, 0)
    assert not vq.needs_notification()


def test_reset(q):
    drv, vq = q
    drv.add([(BUF, 8, True)])
    vq.push(vq.pop().head, 1)
    vq.reset()
    assert (vq.ready, vq.next_avail, vq.next_used, vq.desc_addr, vq.size) == (False, 0, 0, 0, 8)


# -- a hostile driver -------------------------------------------------------------------------
def hostile(drv: DriverQueue, vq: Virtqueue, mem: GuestMemory, match: str) -> None:
    """Pop must raise QueueError and change no byte of guest memory at all."""
    before = mem.read(0, MEM_SIZE)
    with pytest.raises(QueueError, match=match):
        vq.pop()
    assert_only_changed(mem, before, [])


def test_buffer_outside_ram(q, mem):
    drv, vq = q
    drv.add([(BUF, 16, False), (MEM_SIZE - 8, 16, True)])
    hostile(drv, vq, mem, "outside guest RAM")


def test_buffer_in_mmio_hole(q, mem):
    drv, vq = q
    drv.add([(0xFEE00000, 4, True)])
    hostile(drv, vq, mem, "outside guest RAM")


def test_huge_length(q, mem):
    drv, vq = q
    drv.add([(BUF, 0xFFFFFFFF, True)])
    hostile(drv, vq, mem, "outside guest RAM")


def test_loop(q, mem):
    drv, vq = q
    drv.write_desc(0, BUF, 8, VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, BUF, 8, VIRTQ_DESC_F_NEXT, 0)
    drv.publish(0)
    hostile(drv, vq, mem, "loops or is longer")


def test_self_loop(q, mem):
    drv, vq = q
    drv.write_desc(3, BUF, 8, VIRTQ_DESC_F_NEXT, 3)
    drv.publish(3)
    hostile(drv, vq, mem, "loops or is longer")


def test_chain_longer_than_queue(mem):
    """A chain of more descriptors than the queue size (here: a size-4 queue whose table, set
    up by a driver that thinks the ring is bigger, chains 8 entries) is refused."""
    mem.fill(0, MEM_SIZE)
    drv = DriverQueue(mem, size=8)
    vq = drv.attach(Virtqueue(mem, 8))
    vq.size = 4  # the device's idea: only descriptors 0..3 exist
    for i in range(3):
        drv.write_desc(i, BUF, 8, VIRTQ_DESC_F_NEXT, i + 1)
    drv.write_desc(3, BUF, 8, VIRTQ_DESC_F_NEXT, 0)
    drv.publish(0)
    hostile(drv, vq, mem, "loops or is longer than 4")


def test_next_beyond_table(q, mem):
    drv, vq = q
    drv.write_desc(0, BUF, 8, VIRTQ_DESC_F_NEXT, 8)
    drv.publish(0)
    hostile(drv, vq, mem, "next descriptor 8")


def test_head_beyond_table(q, mem):
    drv, vq = q
    drv.publish(9)
    hostile(drv, vq, mem, "descriptor 9")


def test_avail_idx_jumps_too_far(q, mem):
    drv, vq = q
    mem.write_u16(drv.avail + 2, 9)
    hostile(drv, vq, mem, "more than the queue size")


def test_avail_idx_goes_backwards(q, mem):
    drv, vq = q
    mem.write_u16(drv.avail + 2, 0xFFFF)  # 'behind' the device = 65535 ahead
    hostile(drv, vq, mem, "more than the queue size")


def test_readable_after_writable(q, mem):
    drv, vq = q
    drv.add([(BUF, 8, True), (BUF + 0x100, 8, False)])
    hostile(drv, vq, mem, "readable buffer after a device-writable")


def test_indirect_inside_indirect(q, mem):
    drv, vq = q
    table = BUF + 0x8000
    drv.write_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT, 1, table=table)
    drv.write_desc(1, BUF + 0x9000, 32, VIRTQ_DESC_F_INDIRECT, 0, table=table)
    drv.write_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    hostile(drv, vq, mem, "indirect descriptor inside an indirect table")


def test_indirect_with_next(q, mem):
    drv, vq = q
    drv.write_desc(0, BUF + 0x8000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, BUF, 16, 0)
    drv.write_desc(0, BUF, 16, 0, table=BUF + 0x8000)
    drv.publish(0)
    hostile(drv, vq, mem, "VIRTQ_DESC_F_NEXT")


@pytest.mark.parametrize("length", [0, 8, 24, 17])
def test_indirect_bad_length(q, mem, length):
    drv, vq = q
    drv.write_desc(0, BUF + 0x8000, length, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    hostile(drv, vq, mem, "not a multiple of 16")


def test_indirect_table_outside_ram(q, mem):
    drv, vq = q
    drv.write_desc(0, MEM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    hostile(drv, vq, mem, "indirect table .* outside")


def test_indirect_loop(q, mem):
    drv, vq = q
    table = BUF + 0x8000
    drv.write_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT, 1, table=table)
    drv.write_desc(1, BUF, 16, VIRTQ_DESC_F_NEXT, 0, table=table)
    drv.write_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    hostile(drv, vq, mem, "indirect table .* loops")


def test_indirect_next_beyond_table(q, mem):
    drv, vq = q
    table = BUF + 0x8000
    drv.write_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT, 2, table=table)
    drv.write_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    hostile(drv, vq, mem, "next descriptor 2 beyond the table of 2")


def test_push_bad_head(q):
    drv, vq = q
    with pytest.raises(QueueError):
        vq.push(8, 0)


def test_error_keeps_queue_usable_for_inspection(q, mem):
    """After a QueueError the queue object is still consistent (the transport then resets)."""
    drv, vq = q
    drv.add([(MEM_SIZE, 1, True)])
    with pytest.raises(QueueError):
        vq.pop()
    assert vq.next_avail == 0 and vq.next_used == 0


# -- random descriptor tables -----------------------------------------------------------------
FUZZ_MEM = 1 << 20
FUZZ_RING = 0x1000
FUZZ_TABLE = 0x6000  # a second table indirect descriptors may point into
_fuzz_mem = None


def fuzz_memory() -> GuestMemory:
    global _fuzz_mem
    if _fuzz_mem is None:
        _fuzz_mem = GuestMemory(FUZZ_MEM)
    return _fuzz_mem


# Mostly plausible descriptors (so that many chains are valid), the rest noise.
addrs = st.one_of(
    st.sampled_from([0x8000 + 0x1000 * k for k in range(8)]),
    st.integers(0x8000, FUZZ_MEM),  # inside RAM (or just at its end)
    st.sampled_from([0, FUZZ_RING, FUZZ_TABLE, FUZZ_MEM - 1, FUZZ_MEM - 16, 0xFEB00000, 1 << 63]),
    st.integers(0, (1 << 64) - 1),
)
lengths = st.one_of(st.sampled_from([0, 1, 16, 32, 48, 512]), st.integers(0, 0x1000), st.sampled_from([0xFFFFFFFF]), st.integers(0, (1 << 32) - 1))
flags = st.one_of(st.sampled_from([0, 1, 2, 3, 1, 3, 1, 3, 4]), st.integers(0, 0xFFFF))
descs = st.tuples(addrs, lengths, flags, st.one_of(st.just(-1), st.integers(0, 15)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=st.lists(descs, min_size=8, max_size=8),
    indirect_table=st.lists(descs, min_size=0, max_size=8),
    heads=st.lists(st.one_of(st.integers(0, 7), st.integers(0, 10)), min_size=1, max_size=10),
    extra_idx=st.one_of(st.just(0), st.integers(0, 12)),
    start=st.sampled_from([0, 5, 0xFFFA, 0xFFFF]),
    event_idx=st.booleans(),
    written=st.integers(0, (1 << 32) - 1),
)
def test_random_descriptor_tables(table, indirect_table, heads, extra_idx, start, event_idx, written):
    mem = fuzz_memory()
    mem.fill(0, FUZZ_MEM)
    drv = DriverQueue(mem, size=8, base=FUZZ_RING)
    vq = drv.attach(Virtqueue(mem, 8), event_idx=event_idx)
    drv.start_at(start, vq)
    for i, (a, n, f, nx) in enumerate(table):  # next -1: the following entry, as drivers do
        drv.write_desc(i, a, n, f, i + 1 if nx < 0 else nx)
    for i, (a, n, f, nx) in enumerate(indirect_table):
        drv.write_desc(i, a, n, f, i + 1 if nx < 0 else nx, table=FUZZ_TABLE)
    drv.publish(*heads[:8])
    if extra_idx:  # a driver lying about how much it made available
        mem.write_u16(drv.avail + 2, (drv.avail_idx + extra_idx) & 0xFFFF)
    before = mem.read(0, FUZZ_MEM)
    try:
        for _ in range(20):
            chain = vq.pop()
            if chain is None:
                break
            assert 0 <= chain.head < 8
            assert len(chain) <= 8
            seen_write = False
            for d in chain:
                assert mem.contains(d.addr, d.length)
                assert not (seen_write and not d.write)
                seen_write |= d.write
            vq.push(chain.head, written)
            vq.needs_notification()
    except QueueError:
        pass
    assert_only_changed(mem, before, [drv.used_ring_range()])
