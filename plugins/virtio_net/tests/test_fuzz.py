"""A hypothesis test: random descriptor chains (good, short, oversized, misordered, outside
RAM, indirect) on both queues and random frames from the host, through the transport. The
device must never raise, never write outside the receive chains' buffers and the used rings,
never report more bytes than a chain holds, and stop with DEVICE_NEEDS_RESET (never
otherwise) when the ring rules are broken."""
from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import microvm.api as C
from microvm.virtio.testing import assert_only_changed
from microvm_virtio_net import constants as N
from virtio_net_testlib import NetEnv, vnet_hdr

MEM_SIZE = 4 << 20
DATA = 0x100000
SLOT = 0x18000  # a slot holds the largest buffer drawn, 70000 bytes
SLOTS = (MEM_SIZE - DATA) // SLOT
TABLES = 0x80000  # indirect tables, 0x400 apart
QSIZE = 16

lengths = st.one_of(st.integers(0, 16), st.integers(0, 2100), st.sampled_from([4096, 9000, 65561, 65562, 65563, 70000]))
place = st.sampled_from(["ram"] * 14 + ["edge", "out"])
#: the last field: 0 makes a buffer of the unexpected direction (writable in a transmit
#: chain, readable in a receive chain), 1-9 the expected one
buffer = st.tuples(place, st.integers(0, SLOTS - 1), lengths, st.integers(0, 9))
in_order = st.integers(0, 5).map(bool)  # mostly readable-before-writable, as the rules say
chain = st.tuples(st.lists(buffer, min_size=1, max_size=4), st.booleans(), in_order)  # bufs, indirect, in order
op = st.one_of(
    st.tuples(st.just("tx"), chain),
    st.tuples(st.just("rx"), chain),
    st.tuples(st.just("frame"), st.one_of(st.integers(1, 100), st.integers(1, 70000))),
    st.tuples(st.just("frame"), st.integers(12, 1600)),
    st.tuples(st.just("run"), st.none()),
    st.tuples(st.just("reset"), st.none()),
)


def address(where: str, slot: int, length: int) -> int:
    if where == "ram":
        return DATA + slot * SLOT
    if where == "edge":  # ends at, or runs past, the end of RAM
        return MEM_SIZE - length + (slot % 3) * 8
    return [MEM_SIZE, MEM_SIZE + slot * 0x1000, 0xFEC00000, 1 << 40][slot % 4]


class Fuzz:
    def __init__(self, mem, features_clear: int, vnet: bool) -> None:
        self.env = NetEnv(mem, vnet_hdr=vnet)
        self.clear = features_clear
        self.resets = 0
        self.start()
        self.tables = 0

    def start(self) -> None:
        self.env.probe(size=QSIZE, clear=self.clear)
        self.allowed: list[tuple[int, int]] = []
        self.rx_capacity: dict[int, int] = {}
        self.outstanding = {N.RX_QUEUE: 0, N.TX_QUEUE: 0}

    def add(self, queue: int, spec) -> None:
        bufs_spec, indirect, in_order = spec
        bufs = []
        for where, slot, length, odd in bufs_spec:
            write = (odd != 0) if queue == N.RX_QUEUE else (odd == 0)
            bufs.append((address(where, slot, length), length, write))
        if in_order:
            bufs.sort(key=lambda b: b[2])  # readable first, as the ring rules say
        env = self.env
        dq = env.rxq if queue == N.RX_QUEUE else env.txq
        if self.outstanding[queue] + (1 if indirect else len(bufs)) > QSIZE:
            return  # a driver never has more out than the ring holds
        for addr, length, write in bufs:
            if not write and env.mem.contains(addr, min(length, 12)):
                env.mem.write(addr, vnet_hdr()[: min(length, 12)])
        if indirect:
            head = dq.make_indirect(bufs, table=TABLES + 0x400 * (self.tables % 32))
            self.tables += 1
            self.outstanding[queue] += 1
        else:
            head = dq.make_chain(bufs)
            self.outstanding[queue] += len(bufs)
        dq.publish(head)
        if queue == N.RX_QUEUE:
            self.rx_capacity[head] = sum(n for _, n, w in bufs if w)
            self.allowed += [(a, a + n) for a, n, w in bufs if w and env.mem.contains(a, n)]
        env.drv.notify(queue)

    def run(self) -> None:
        env = self.env
        before = env.mem.read(0, env.mem.size)
        env.pump()
        assert_only_changed(env.mem, before, [*self.allowed, env.rxq.used_ring_range(), env.txq.used_ring_range()])
        for head, n in env.rxq.get_used():
            assert n <= self.rx_capacity[head]
            self.outstanding[N.RX_QUEUE] = 0
        if env.txq.get_used():
            self.outstanding[N.TX_QUEUE] = 0
        env.tap.pending()
        if not env.net.running:
            assert env.drv.needs_reset()
            self.resets += 1
            self.reset()
        else:
            assert not env.drv.needs_reset()

    def reset(self) -> None:
        self.env.drv.write(C.VIRTIO_MMIO_STATUS, 0)
        self.start()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    ops=st.lists(op, min_size=6, max_size=30),
    mergeable=st.booleans(),
    event_idx=st.booleans(),
    vnet=st.booleans(),
)
def test_random_chains_and_frames(mem, ops, mergeable, event_idx, vnet):
    clear = (0 if mergeable else 1 << N.VIRTIO_NET_F_MRG_RXBUF) | (0 if event_idx else 1 << C.VIRTIO_F_RING_EVENT_IDX)
    f = Fuzz(mem, clear, vnet)
    try:
        for kind, arg in ops:
            if kind == "tx":
                f.add(N.TX_QUEUE, arg)
            elif kind == "rx":
                f.add(N.RX_QUEUE, arg)
            elif kind == "frame":
                f.env.tap.send(bytes([0x5A]) * arg)
            elif kind == "run":
                f.run()
            else:
                f.reset()
        f.run()
        c = f.env.net
        for name in ("rx_packets", "tx_packets", "bad_chains", "rx_dropped", "tx_dropped"):
            if getattr(c, name):
                event(name)  # what the examples exercised (--hypothesis-show-statistics)
        if f.resets:
            event("device needed a reset")
        assert min(c.tx_packets, c.tx_bytes, c.tx_dropped, c.rx_packets, c.rx_bytes, c.rx_dropped, c.bad_chains) >= 0
    finally:
        f.env.close()
