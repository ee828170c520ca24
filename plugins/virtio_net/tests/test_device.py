"""virtio-net (virtio 1.2 §5.1) through the virtio-mmio transport, on a socketpair instead of a
tap: no KVM, no root. The worker's loop is run by hand (``threaded=False``) except in the
threading tests at the end."""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time

import pytest

from microvm.api import ConfigError
import microvm.api as C
from microvm.api import Virtqueue
from microvm.virtio.testing import DriverQueue, assert_only_changed
from microvm_virtio_net import constants as N
from microvm_virtio_net.device import BATCH, VirtioNet, header_length
from virtio_net_testlib import (
    MEM_SIZE, RX_AREA, TRANSPORTS, NetEnv, SocketTap, blocked_in_poll, frame, vnet_hdr, wait_for, worker_would_sleep,
)

# the mem fixture (root conftest) sizes guest RAM by this
MEM_SIZE = MEM_SIZE


def bit(*bits: int) -> int:
    return sum(1 << b for b in bits)


@pytest.fixture(params=TRANSPORTS)
def transport_kind(request) -> str:
    return request.param


@pytest.fixture
def env(mem, transport_kind):
    e = NetEnv(mem, legacy=transport_kind == "legacy")
    yield e
    e.close()


@pytest.fixture
def up(env):
    """A device after Linux's handshake, every offered feature accepted."""
    return env.probe()


# -- features, configuration ---------------------------------------------------------------------
EXPECTED_FEATURES = [
    N.VIRTIO_NET_F_MAC, N.VIRTIO_NET_F_STATUS, N.VIRTIO_NET_F_MTU, N.VIRTIO_NET_F_CSUM,
    N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_HOST_TSO4, N.VIRTIO_NET_F_HOST_TSO6,
    N.VIRTIO_NET_F_HOST_UFO, N.VIRTIO_NET_F_GUEST_TSO4, N.VIRTIO_NET_F_GUEST_TSO6,
    N.VIRTIO_NET_F_GUEST_UFO, N.VIRTIO_NET_F_HOST_ECN, N.VIRTIO_NET_F_GUEST_ECN,
    N.VIRTIO_NET_F_MRG_RXBUF, C.VIRTIO_F_RING_EVENT_IDX, C.VIRTIO_F_VERSION_1, C.VIRTIO_F_INDIRECT_DESC,
]


def test_features_offered(env):
    offered = env.drv.device_features()
    for b in EXPECTED_FEATURES:
        if b == C.VIRTIO_F_VERSION_1 and env.transport.legacy:
            assert not offered & (1 << b)  # a legacy device has no VERSION_1 (§4.2.4)
            continue
        assert offered & (1 << b), b
    for b in (N.VIRTIO_NET_F_CTRL_VQ, N.VIRTIO_NET_F_MQ, N.VIRTIO_NET_F_GUEST_ANNOUNCE):
        assert not offered & (1 << b)
    env.probe()
    assert env.transport.activated and env.net.running


def test_no_offloads_without_vnet_header(mem):
    e = NetEnv(mem, vnet_hdr=False)
    offered = e.drv.device_features()
    assert not offered & (N.GUEST_OFFLOAD_FEATURES | N.HOST_OFFLOAD_FEATURES)
    assert offered & bit(N.VIRTIO_NET_F_MRG_RXBUF, N.VIRTIO_NET_F_MAC)
    e.close()


def test_no_ufo_when_the_tap_has_none(mem):
    e = NetEnv(mem, tap=SocketTap(has_ufo=False))
    offered = e.drv.device_features()
    assert not offered & N.UFO_FEATURES and offered & bit(N.VIRTIO_NET_F_HOST_TSO4, N.VIRTIO_NET_F_GUEST_TSO6)
    e.close()


def test_config_space(up):
    drv = up.drv
    assert drv.mac == bytes.fromhex("525400123456")  # QEMU's first default address
    assert drv.status == N.VIRTIO_NET_S_LINK_UP
    assert drv.read_config(8, 2) == 1  # max_virtqueue_pairs
    assert drv.mtu == 1500
    assert drv.read_config(12, 4) == 0  # speed: no VIRTIO_NET_F_SPEED_DUPLEX, reads as 0
    assert drv.read(0x100, 4) == int.from_bytes(bytes.fromhex("52540012"), "little")  # any width


def test_config_mac_mtu_and_link(mem):
    e = NetEnv(mem, mac="52:54:00:ab:cd:ef", mtu=9000).probe()
    assert e.drv.mac == bytes.fromhex("525400abcdef") and e.drv.mtu == 9000
    gen = e.drv.read(C.VIRTIO_MMIO_CONFIG_GENERATION)
    e.drv.ack_interrupt()
    e.net.set_link(False)
    assert e.drv.read_config(6, 2) == 0 and not e.net.link_up
    assert e.drv.read(C.VIRTIO_MMIO_CONFIG_GENERATION) != gen
    assert e.drv.ack_interrupt() & C.VIRTIO_MMIO_INT_CONFIG
    e.net.set_link(True)
    assert e.drv.read_config(6, 2) == N.VIRTIO_NET_S_LINK_UP
    e.close()


def test_no_mtu_offered(mem):
    e = NetEnv(mem, mtu=None)
    assert not e.drv.device_features() & bit(N.VIRTIO_NET_F_MTU)
    e.probe()
    assert e.drv.mtu == 0
    e.close()


@pytest.mark.parametrize("kw,match", [({"mac": "52:54:00:12:34"}, "mac="), ({"mac": "01:00:5e:00:00:01"}, "multicast"), ({"mtu": 67}, "mtu=67"), ({"mtu": 65536}, "mtu=65536"), ({"mac": b"\x52\x54"}, "6 bytes"),
                                      ({"mac": bytes(6)}, "all zeros or multicast"), ({"mac": b"\x01" * 6}, "all zeros or multicast")])
def test_bad_configuration(kw, match):
    tap = SocketTap()
    with pytest.raises(ConfigError, match=match):
        VirtioNet(tap, **kw)
    tap.close()


# -- header size and tap offloads at activation ----------------------------------------------------
@pytest.mark.parametrize(
    "features,size",
    [
        (bit(C.VIRTIO_F_VERSION_1), 12),
        (bit(C.VIRTIO_F_VERSION_1, N.VIRTIO_NET_F_MRG_RXBUF), 12),
        (bit(N.VIRTIO_NET_F_MRG_RXBUF), 12),  # legacy driver with mergeable buffers
        (0, 10),  # legacy driver, no mergeable buffers: struct virtio_net_hdr
        (bit(N.VIRTIO_NET_F_CSUM, N.VIRTIO_NET_F_GUEST_CSUM), 10),
    ],
)
def test_header_length(features, size):
    assert header_length(features) == size


def test_activation_sets_header_size_and_offloads(env):
    env.probe()
    assert env.tap.hdr_sizes == [12]
    assert env.tap.offloads == [env.net.acked_features]
    assert env.net.acked_features & N.GUEST_OFFLOAD_FEATURES == N.GUEST_OFFLOAD_FEATURES


def test_activation_without_guest_offloads(env):
    env.probe(clear=N.GUEST_OFFLOAD_FEATURES | bit(N.VIRTIO_NET_F_MRG_RXBUF))
    # VERSION_1 alone means num_buffers is there; a legacy driver without MRG_RXBUF has
    # the 10-byte struct virtio_net_hdr
    assert env.tap.hdr_sizes == [10 if env.transport.legacy else 12]
    assert env.tap.offloads[-1] & N.GUEST_OFFLOAD_FEATURES == 0


def test_reset_turns_offloads_off_and_reactivation_sets_them(env):
    env.probe()
    env.drv.write(C.VIRTIO_MMIO_STATUS, 0)
    assert env.tap.offloads[-1] == 0 and not env.net.running
    env.probe(clear=bit(N.VIRTIO_NET_F_GUEST_TSO6))
    assert env.tap.offloads[-1] == env.net.acked_features and not env.net.acked_features & bit(N.VIRTIO_NET_F_GUEST_TSO6)


# -- transmit --------------------------------------------------------------------------------------
def test_tx_frame_over_several_descriptors(up):
    """Header split over two descriptors, the second shared with the frame's start (any
    layout), the frame over three more: the tap gets header + frame in one write."""
    data = vnet_hdr(flags=N.VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6) + frame(1514, seed=3)
    head = up.send(data, splits=[5, 40, 700, 1300], notify=False)
    before = up.mem.read(0, MEM_SIZE)
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert up.tap.recv() == data
    assert up.txq.get_used() == [(head, 0)]
    assert (up.net.tx_packets, up.net.tx_bytes, up.net.tx_dropped, up.net.bad_chains) == (1, 1514, 0, 0)
    assert up.irq.level
    assert_only_changed(up.mem, before, [up.txq.used_ring_range()])


def test_tx_indirect_and_batch(up):
    frames = [vnet_hdr() + frame(60 + i, seed=i) for i in range(5)]
    heads = []
    for i, f in enumerate(frames):
        bufs = up.tx_chain(f, splits=[12])
        heads.append(up.txq.make_indirect(bufs, table=0x90000 + 0x100 * i) if i % 2 else up.txq.make_chain(bufs))
    up.txq.publish(*heads)
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert [up.tap.recv() for _ in frames] == frames
    assert up.txq.get_used() == [(h, 0) for h in heads]
    assert up.net.tx_packets == 5


def test_tx_writable_buffers_are_ignored(up):
    """A transmit chain with a device-writable tail: the frame goes out, nothing is written."""
    data = vnet_hdr() + frame(100)
    bufs = up.tx_chain(data) + [(RX_AREA, 64, True)]
    up.mem.fill(RX_AREA, 64, 0xAB)
    head = up.txq.add(bufs)
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert up.tap.recv() == data
    assert up.txq.get_used() == [(head, 0)]
    assert up.mem.read(RX_AREA, 64) == b"\xab" * 64


def test_tx_stalls_on_a_full_tap_and_resumes(up):
    """The tap takes no more (EAGAIN): the frame waits on POLLOUT, nothing is lost or
    reordered, and the worker sleeps meanwhile instead of spinning."""
    up.tap.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    frames = [vnet_hdr() + frame(8000, seed=i) for i in range(12)]
    for f in frames:
        up.send(f, notify=False)
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert up.net._tx.stalled is not None
    sent = up.net.tx_packets
    assert 0 < sent < len(frames)
    assert up.net._tap_mask & select.POLLOUT
    # nothing to do until the host reads: the worker would sleep in poll(), and a round
    # run anyway moves nothing
    assert worker_would_sleep(up.net)
    assert up.net.run_once(0)
    assert up.net.tx_packets == sent and up.net._tx.stalled is not None
    got = []
    while len(got) < len(frames):
        got += up.tap.pending()
        up.pump()
    assert got == frames
    assert up.net.tx_dropped == 0 and up.net.tx_packets == len(frames)
    assert len(up.txq.get_used()) == len(frames)


def named(mem, transport_kind: str, tag: str) -> NetEnv:
    """A device after the handshake with a name of its own: the rate-limited log remembers
    the kinds it has logged by device name, and these tests count the lines."""
    return NetEnv(mem, legacy=transport_kind == "legacy", name=f"virtio-net:{tag}-{transport_kind}").probe()


def test_tx_to_a_tap_that_went_away_takes_the_link_down(mem, transport_kind, caplog):
    """A write finds the host side gone (the socket's peer closed: EPIPE; a deleted tap
    interface gives EBADFD): the frame is dropped, one error says so, the link goes down
    and the device stops using the tap; the guest's frames keep coming back."""
    caplog.set_level(logging.DEBUG)
    up = named(mem, transport_kind, "gone")
    up.tap.peer.close()
    head = up.send(vnet_hdr() + frame(100))
    up.pump()
    assert up.txq.get_used() == [(head, 0)]
    assert up.net.tx_dropped == 1 and up.net.tx_packets == 0
    assert not up.net.link_up and up.net._tap_mask == 0
    assert not up.transport.needs_reset and up.net.running
    heads = [up.send(vnet_hdr() + frame(60)) for _ in range(3)]
    up.pump()
    assert up.txq.get_used() == [(h, 0) for h in heads] and up.net.tx_dropped == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "the tap is gone" in errors[0] and "link down" in errors[0], errors
    assert "writing failed: Broken pipe" in errors[0] or "hang-up" in errors[0]  # whichever saw it first
    up.close()


class FailingIo:
    """os.readv / os.writev of the data path failing with ``err`` for the device's fd
    ``times`` times (None: always), then working again. A failing read consumes the frame,
    as the tun driver does (it frees the packet it could not copy)."""

    def __init__(self, monkeypatch, fd: int, name: str, err: int, times: int | None = 1) -> None:
        from microvm_virtio_net import datapath

        self.real = getattr(datapath.os, name)
        self.real_readv = os.readv
        self.fd, self.err, self.left, self.calls = fd, err, times, 0
        monkeypatch.setattr(datapath.os, name, self)

    def __call__(self, fd, views):
        if fd == self.fd and (self.left is None or self.left > 0):
            self.calls += 1
            if self.left is not None:
                self.left -= 1
            if self.real is self.real_readv:
                try:
                    os.read(fd, 1 << 17)
                except BlockingIOError:
                    pass
            raise OSError(self.err, os.strerror(self.err))
        return self.real(fd, views)


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOBUFS, errno.ENOMEM, errno.EINVAL])
def test_tx_transient_tap_error_costs_the_frame_not_the_tap(up, monkeypatch, err):
    """EIO (the interface is down), ENOBUFS, ... on a write: that frame is dropped and
    counted, the link stays up and the next frame goes out."""
    FailingIo(monkeypatch, up.tap.fileno(), "writev", err)
    first = up.send(vnet_hdr() + frame(100, seed=1))
    second = up.send(vnet_hdr() + frame(100, seed=2))
    up.pump()
    assert up.txq.get_used() == [(first, 0), (second, 0)]
    assert up.tap.recv() == vnet_hdr() + frame(100, seed=2)
    assert (up.net.tx_dropped, up.net.tx_packets) == (1, 1)
    assert up.net.link_up and up.net.running and not up.transport.needs_reset


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOBUFS, errno.EFAULT, errno.EINVAL])
def test_rx_transient_tap_error_costs_the_frame_not_the_tap(up, monkeypatch, err):
    """A read that fails for a reason other than the tap's end has consumed one frame:
    counted in rx_dropped, and the next frame arrives."""
    FailingIo(monkeypatch, up.tap.fileno(), "readv", err)
    head, bufs = up.post([2048])
    up.post([2048])  # left over: the tap is still read
    up.tap.send(vnet_hdr() + frame(100, seed=1))
    up.tap.send(vnet_hdr() + frame(100, seed=2))
    up.pump()
    assert up.rxq.get_used() == [(head, 112)]
    assert up.read_bufs(bufs, 112)[12:] == frame(100, seed=2)
    assert (up.net.rx_dropped, up.net.rx_packets) == (1, 1)
    assert up.net.link_up and up.net.rx_polling


def test_rx_reads_that_keep_failing_end_with_the_tap_given_up(mem, transport_kind, monkeypatch, caplog):
    """A tap whose every read fails would keep the worker busy for ever: after
    MAX_READ_ERRORS in a row the device gives it up, with one error."""
    from microvm_virtio_net.datapath import MAX_READ_ERRORS

    caplog.set_level(logging.DEBUG)
    up = named(mem, transport_kind, "failing")
    failing = FailingIo(monkeypatch, up.tap.fileno(), "readv", errno.EIO, times=None)
    up.post([2048])
    up.tap.send(vnet_hdr() + frame(60))
    up.pump()
    assert failing.calls == MAX_READ_ERRORS
    assert not up.net.link_up and not up.net.rx_polling and worker_would_sleep(up.net)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{MAX_READ_ERRORS} reads in a row failed" in errors[0], errors
    up.close()


@pytest.mark.parametrize("err", [errno.EBADF, errno.EBADFD])
def test_rx_read_finding_the_tap_gone(up, monkeypatch, err):
    FailingIo(monkeypatch, up.tap.fileno(), "readv", err, times=None)
    up.post([2048])
    up.tap.send(vnet_hdr() + frame(60))
    up.pump()
    assert not up.net.link_up and up.net._tap_mask == 0 and worker_would_sleep(up.net)
    assert up.net.running and not up.transport.needs_reset


class GoneTap(SocketTap):
    """A tap whose interface was deleted before the driver came up (TUNSETVNETHDRSZ and
    TUNSETOFFLOAD fail with EBADFD, as the kernel answers for a detached queue)."""

    def set_vnet_hdr_size(self, size: int) -> None:
        raise OSError(errno.EBADFD, os.strerror(errno.EBADFD))

    set_offload = set_vnet_hdr_size


def test_activation_on_a_tap_that_is_gone(mem):
    """The driver comes up (again) on a gone tap: no exception into the transport, no
    NEEDS_RESET; the link is down and the guest's frames are dropped and returned."""
    up = NetEnv(mem, tap=GoneTap()).probe()
    assert up.net.running and not up.transport.needs_reset
    assert not up.net.link_up and up.drv.read_config(6, 2) == 0
    head = up.send(vnet_hdr() + frame(60))
    up.post([2048])
    up.pump()
    assert up.txq.get_used() == [(head, 0)] and up.net.tx_dropped == 1
    assert up.rxq.get_used() == [] and worker_would_sleep(up.net)
    up.close()


# -- receive ---------------------------------------------------------------------------------------
def rx_header(up: NetEnv, bufs) -> tuple:
    return vnet_hdr_fields(up.read_bufs(bufs, 12))


def vnet_hdr_fields(raw: bytes) -> tuple:
    return struct.unpack("<BBHHHHH", raw)


def test_rx_mergeable_9000_bytes_over_4k_buffers(up):
    """A 9000-byte frame over 4 KiB mergeable buffers: three chains, num_buffers = 3."""
    posted = [up.post([4096], notify=False) for _ in range(6)]
    up.drv.notify(N.RX_QUEUE)
    data = frame(9000, seed=9)
    hdr = vnet_hdr(flags=N.VIRTIO_NET_HDR_F_DATA_VALID)
    before = up.mem.read(0, MEM_SIZE)
    up.tap.send(hdr + data)
    up.pump()
    used = up.rxq.get_used()
    total = 12 + len(data)
    assert used == [(posted[0][0], 4096), (posted[1][0], 4096), (posted[2][0], total - 8192)]
    got = b"".join(up.mem.read(posted[i][1][0][0], n) for i, (_, n) in enumerate(used))
    assert got[12:] == data
    flags, gso_type, _, _, _, _, num_buffers = vnet_hdr_fields(got[:12])
    assert (flags, gso_type, num_buffers) == (N.VIRTIO_NET_HDR_F_DATA_VALID, 0, 3)
    assert (up.net.rx_packets, up.net.rx_bytes, up.net.rx_dropped) == (1, 9000, 0)
    assert up.irq.level
    allowed = [(a, a + n) for _, bufs in posted[:3] for a, n, _ in bufs] + [up.rxq.used_ring_range()]
    assert_only_changed(up.mem, before, allowed)
    # the three chains the frame did not need serve the next frames, in order
    for i in range(3):
        up.tap.send(hdr + frame(60, seed=i))
    up.pump()
    assert up.rxq.get_used() == [(posted[3 + i][0], 72) for i in range(3)]
    assert rx_header(up, posted[3][1])[6] == 1


def test_rx_frames_wait_while_no_buffers_are_posted(up):
    """No receive buffers: the tap is not read (its queue holds the frames), the worker
    does not poll it; posting buffers and notifying resumes in order."""
    frames = [vnet_hdr() + frame(100 + i, seed=i) for i in range(3)]
    for f in frames:
        up.tap.send(f)
    up.pump()
    assert not up.net.rx_polling
    assert up.tap.unread_by_device()
    assert up.rxq.get_used() == [] and up.net.rx_packets == 0
    assert up.rxq.avail_event == 0  # with EVENT_IDX: "notify me at the first buffer"
    # frames are waiting, but the worker would sleep: the tap is not in its poll set
    assert worker_would_sleep(up.net) and not up.net._tap_mask
    up.net.run_once(0)
    assert up.tap.unread_by_device() and up.net.rx_packets == 0
    posted = [up.post([2048], notify=False) for _ in range(3)]
    up.drv.notify(N.RX_QUEUE)
    up.pump()
    used = up.rxq.get_used()
    assert [h for h, _ in used] == [h for h, _ in posted]
    for (h, n), (_, bufs), f in zip(used, posted, frames):
        assert n == len(f)
        got = up.read_bufs(bufs, n)
        assert got[12:] == f[12:] and got[10:12] == b"\x01\x00"
    assert not up.tap.unread_by_device()


def test_rx_runs_dry_then_resumes(up):
    head, bufs = up.post([2048])
    up.tap.send(vnet_hdr() + frame(64))
    up.tap.send(vnet_hdr() + frame(65))
    up.pump()
    assert up.rxq.get_used() == [(head, 76)]
    assert not up.net.rx_polling and up.tap.unread_by_device()
    head2, bufs2 = up.post([2048])
    up.pump()
    assert up.rxq.get_used() == [(head2, 77)]
    assert up.read_bufs(bufs2, 77)[12:] == frame(65)


def test_rx_without_mergeable_buffers(mem, transport_kind):
    """Without MRG_RXBUF each chain holds a whole frame (Linux posts 'big' chains: the
    header in one buffer, pages after it); num_buffers is 1. A frame larger than the chain
    is dropped, not truncated, and the chain serves the next frame."""
    up = NetEnv(mem, legacy=transport_kind == "legacy").probe(clear=bit(N.VIRTIO_NET_F_MRG_RXBUF))
    h = up.hdr_len  # legacy: 10, no num_buffers
    head, bufs = up.post([h, 4096, 4096, 4096])
    up.tap.send(vnet_hdr(size=h) + frame(12289))  # one byte too many
    up.tap.send(vnet_hdr(size=h) + frame(9000, seed=1))
    up.pump()
    assert up.rxq.get_used() == [(head, 9000 + h)]
    got = up.read_bufs(bufs, 9000 + h)
    assert got[h:] == frame(9000, seed=1)
    if h == 12:
        assert vnet_hdr_fields(got[:12])[6] == 1
    assert up.net.rx_dropped == 1 and up.net.rx_packets == 1
    up.close()


def mergeable_frame(up: NetEnv, used, posted: dict) -> bytes:
    """The bytes of a frame delivered over the used chains ``used`` (head -> buffers)."""
    return b"".join(up.read_bufs(posted[h], n) for h, n in used)


def test_rx_frame_larger_than_the_posted_mergeable_buffers_waits_for_more(up):
    """The driver has posted less than the frame needs: the frame is not lost. The chains it
    started filling stay with the device (nothing is used, the used ring does not move),
    the tap is not read meanwhile (the next frame waits behind it in the tap), and once the
    driver posts more buffers the frame is delivered whole over all of them, in order."""
    posted = dict(up.post([1526], notify=False) for _ in range(2))
    up.drv.notify(N.RX_QUEUE)
    data = frame(4000, seed=11)
    before = up.mem.read(0, MEM_SIZE)
    up.tap.send(vnet_hdr(flags=N.VIRTIO_NET_HDR_F_DATA_VALID) + data)
    up.tap.send(vnet_hdr() + frame(100, seed=12))
    up.pump()
    assert up.rxq.get_used() == [] and (up.net.rx_packets, up.net.rx_dropped) == (0, 0)
    assert not up.net.rx_polling and up.tap.unread_by_device()
    # (the used ring's avail_event moves with the pops; no used entry was written)
    assert_only_changed(up.mem, before, [(a, a + n) for bufs in posted.values() for a, n, _ in bufs] + [up.rxq.used_ring_range()])
    more = dict(up.post([1526], notify=False) for _ in range(3))
    posted.update(more)
    heads = list(posted)
    up.drv.notify(N.RX_QUEUE)
    up.pump()
    used = up.rxq.get_used()
    total = 12 + len(data)
    assert used == [(heads[0], 1526), (heads[1], 1526), (heads[2], total - 2 * 1526), (heads[3], 112)]
    got = mergeable_frame(up, used[:3], posted)
    assert got[12:] == data
    assert vnet_hdr_fields(got[:12])[0] == N.VIRTIO_NET_HDR_F_DATA_VALID and vnet_hdr_fields(got[:12])[6] == 3
    assert up.read_bufs(posted[heads[3]], 112)[12:] == frame(100, seed=12)
    assert (up.net.rx_packets, up.net.rx_bytes, up.net.rx_dropped) == (2, 4100, 0)


def test_rx_pending_frame_waits_over_several_postings(up):
    """The buffers come one at a time (each notified): the frame goes out only when whole."""
    posted = dict([up.post([1000])])
    data = frame(5000, seed=4)
    up.tap.send(vnet_hdr() + data)
    up.pump()
    for _ in range(5):  # 5012 bytes: six buffers
        assert up.rxq.get_used() == []
        posted.update([up.post([1000])])
        up.pump()
    used = up.rxq.get_used()
    assert [n for _, n in used] == [1000] * 5 + [12]
    assert [h for h, _ in used] == list(posted)
    got = mergeable_frame(up, used, posted)
    assert got[12:] == data and vnet_hdr_fields(got[:12])[6] == 6


def test_rx_pending_frame_is_forgotten_at_reset(up):
    """A reset drops the pending frame with the queues; the device then works as new."""
    up.post([1526])
    up.tap.send(vnet_hdr() + frame(3000))
    up.pump()
    assert up.net._rx.pending is not None
    up.drv.write(C.VIRTIO_MMIO_STATUS, 0)
    up.probe()
    head, bufs = up.post([2048])
    up.tap.send(vnet_hdr() + frame(64, seed=1))
    up.pump()
    assert up.rxq.get_used() == [(head, 76)] and up.read_bufs(bufs, 76)[12:] == frame(64, seed=1)


@pytest.mark.parametrize("mergeable", [True, False])
def test_rx_frame_over_more_buffers_than_one_readv_takes(mem, monkeypatch, mergeable):
    """A chain of more buffers than IOV_MAX: readv fills the first ones and the scratch
    buffer, the rest of the frame is copied into the remaining buffers of the same chain;
    with or without mergeable buffers the frame arrives whole, nothing else is written."""
    from microvm_virtio_net import datapath

    monkeypatch.setattr(datapath, "IOV_MAX", 4)
    up = NetEnv(mem).probe(clear=0 if mergeable else bit(N.VIRTIO_NET_F_MRG_RXBUF))
    head, bufs = up.post([12] + [500] * 8)
    data = frame(3900, seed=2)
    before = up.mem.read(0, MEM_SIZE)
    up.tap.send(vnet_hdr() + data)
    up.pump()
    assert up.rxq.get_used() == [(head, 3912)]
    got = up.read_bufs(bufs, 3912)
    assert got[12:] == data and vnet_hdr_fields(got[:12])[6] == 1
    assert up.net.rx_dropped == 0
    assert_only_changed(up.mem, before, [(a, a + n) for a, n, _ in bufs] + [up.rxq.used_ring_range()])
    up.close()


def test_rx_tiny_chain_without_mergeable_buffers_is_returned_unwritten(mem, transport_kind):
    """Without MRG_RXBUF a frame must fit one chain. A chain that can't hold the header and
    an Ethernet header fits no frame: it goes back unused (length 0), unwritten, counted as
    a bad chain and a guest error; the frame goes to the next chain. A chain that holds
    smaller frames but not this one: the frame is dropped and counted, and the only bytes
    written are inside that chain; the chain then takes the next frame."""
    up = NetEnv(mem, legacy=transport_kind == "legacy").probe(clear=bit(N.VIRTIO_NET_F_MRG_RXBUF))
    h = up.hdr_len
    tiny, tiny_bufs = up.post([h, 13], notify=False)  # one byte short of an Ethernet header
    short, short_bufs = up.post([h + 100], notify=False)
    before = up.mem.read(0, MEM_SIZE)
    up.drv.notify(N.RX_QUEUE)
    up.tap.send(vnet_hdr(size=h) + frame(500, seed=1))  # longer than the short chain
    up.tap.send(vnet_hdr(size=h) + frame(60, seed=2))
    up.pump()
    assert up.rxq.get_used() == [(tiny, 0), (short, h + 60)]
    assert up.read_bufs(short_bufs, h + 60)[h:] == frame(60, seed=2)
    assert (up.net.bad_chains, up.net.guest_errors, up.net.rx_dropped, up.net.rx_packets) == (1, 1, 1, 1)
    assert_only_changed(up.mem, before, [(a, a + n) for a, n, _ in short_bufs] + [up.rxq.used_ring_range()])
    assert not up.transport.needs_reset
    up.close()


def test_rx_legacy_header_without_num_buffers(mem):
    """A legacy driver without MRG_RXBUF (no VERSION_1): the 10-byte header, on a bare
    device activated directly (the transport tests above cover it through the registers)."""
    mem.fill(0, MEM_SIZE)
    tap = SocketTap()
    net = VirtioNet(tap, threaded=False)
    rx_dq, tx_dq = DriverQueue(mem, 16, 0x10000), DriverQueue(mem, 16, 0x14000)
    rxq, txq = rx_dq.attach(Virtqueue(mem, 16)), tx_dq.attach(Virtqueue(mem, 16))
    net.ack_features(bit(N.VIRTIO_NET_F_CSUM, N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_MAC))
    irqs = []
    net.activate([rxq, txq], lambda: irqs.append(1), mem)
    assert tap.hdr_sizes == [10]
    mem.fill(RX_AREA, 2000, 0xEE)
    head = rx_dq.add([(RX_AREA, 10, True), (RX_AREA + 10, 1990, True)])
    tap.send(vnet_hdr(size=10) + frame(500))
    tx_head = tx_dq.add([(0x100000, 10, False), (0x100010, 60, False)])
    mem.write(0x100010, frame(60))
    net.process_queue(0)
    net.process_queue(1)
    for _ in range(3):
        net.run_once(0)
    assert rx_dq.get_used() == [(head, 510)]
    assert mem.read(RX_AREA + 10, 500) == frame(500) and mem.read(RX_AREA + 510, 1) == b"\xee"
    assert tx_dq.get_used() == [(tx_head, 0)]
    assert tap.recv() == bytes(10) + frame(60)
    assert irqs
    net.reset()
    net.close()


def test_rx_flags_cleared_without_guest_csum(mem):
    up = NetEnv(mem).probe(clear=N.GUEST_OFFLOAD_FEATURES)
    head, bufs = up.post([2048])
    up.tap.send(vnet_hdr(flags=N.VIRTIO_NET_HDR_F_DATA_VALID) + frame(100))
    up.pump()
    assert up.rxq.get_used() == [(head, 112)]
    assert vnet_hdr_fields(up.read_bufs(bufs, 12))[0] == 0
    up.close()


def test_without_vnet_header(mem):
    """vnet_hdr=off: the device strips the guest's header on transmit and writes an empty
    one on receive; still no copy of the frame."""
    up = NetEnv(mem, vnet_hdr=False).probe()
    assert up.tap.hdr_sizes == [12] and up.tap.offloads  # the SocketTap records; a Tap ignores
    up.send(vnet_hdr(flags=0) + frame(80), splits=[6, 20])
    head, bufs = up.post([6, 2000])
    up.tap.send(frame(300, seed=4))
    up.pump()
    assert up.tap.recv() == frame(80)
    assert up.rxq.get_used() == [(head, 312)]
    got = up.read_bufs(bufs, 312)
    assert got[:12] == vnet_hdr(num_buffers=1) and got[12:] == frame(300, seed=4)
    up.close()


# -- interrupts and notifications (EVENT_IDX) ------------------------------------------------------
def test_event_idx_suppresses_interrupts(up):
    """used_event = 2: no interrupt for the second used buffer, one for the third (the
    first always interrupts: the device has not seen used_event before)."""
    up.send(vnet_hdr() + frame(60))
    up.pump()
    assert up.drv.ack_interrupt() == C.VIRTIO_MMIO_INT_VRING
    up.txq.set_used_event(2)
    up.send(vnet_hdr() + frame(61))
    up.pump()
    assert len(up.txq.get_used()) == 2 and not up.irq.level
    up.send(vnet_hdr() + frame(62))
    up.pump()
    assert up.irq.level
    assert up.drv.ack_interrupt() == C.VIRTIO_MMIO_INT_VRING


def test_event_idx_avail_event_published(up):
    for i in range(3):
        up.send(vnet_hdr() + frame(60, seed=i), notify=False)
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert up.txq.avail_event == 3  # notify me when you add the 4th
    posted = [up.post([2048], notify=False) for _ in range(4)]
    up.drv.notify(N.RX_QUEUE)
    up.pump()
    assert up.rxq.avail_event >= 1  # popped for the frame it expects, then published
    for i in range(4):
        up.tap.send(vnet_hdr() + frame(70))
    up.pump()
    assert len(up.rxq.get_used()) == 4
    assert up.rxq.avail_event == 4 and not up.net.rx_polling


def test_no_interrupt_flag_without_event_idx(mem):
    up = NetEnv(mem).probe(clear=bit(C.VIRTIO_F_RING_EVENT_IDX))
    up.txq.set_avail_flags(C.VIRTQ_AVAIL_F_NO_INTERRUPT)
    up.send(vnet_hdr() + frame(60))
    up.pump()
    assert up.txq.get_used() and not up.irq.level
    up.txq.set_avail_flags(0)
    head, _ = up.post([2048])
    up.tap.send(vnet_hdr() + frame(60))
    up.pump()
    assert up.rxq.get_used() == [(head, 72)] and up.irq.level
    up.close()


def test_one_interrupt_per_round(up):
    for i in range(10):
        up.send(vnet_hdr() + frame(60), notify=False)
    calls = []
    real = up.net._interrupt
    up.net._interrupt = lambda: (calls.append(1), real())
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert len(calls) == 1


# -- a hostile driver ------------------------------------------------------------------------------
def test_tx_chain_shorter_than_the_header(up):
    head = up.send(b"\0" * 11, notify=False)
    before = up.mem.read(0, MEM_SIZE)
    up.drv.notify(N.TX_QUEUE)
    up.pump()
    assert up.txq.get_used() == [(head, 0)]
    assert up.tap.pending() == []
    assert (up.net.bad_chains, up.net.tx_dropped, up.net.tx_packets) == (1, 1, 0)
    assert not up.transport.needs_reset
    assert_only_changed(up.mem, before, [up.txq.used_ring_range()])
    up.send(vnet_hdr() + frame(60))  # and the device goes on
    up.pump()
    assert up.tap.recv() == vnet_hdr() + frame(60)


def test_tx_runt_frame(up):
    runt = up.send(vnet_hdr() + frame(13))
    header_only = up.send(vnet_hdr())
    up.pump()
    assert up.txq.get_used() == [(runt, 0), (header_only, 0)]
    assert up.tap.pending() == []
    assert (up.net.bad_chains, up.net.tx_dropped) == (2, 2)


def test_tx_frame_longer_than_64k(up):
    head = up.send(vnet_hdr() + frame(N.MAX_FRAME_LEN + 1), splits=[12])
    ok = up.send(vnet_hdr() + frame(N.MAX_FRAME_LEN), splits=[12, 40000])
    up.pump()
    assert up.txq.get_used() == [(head, 0), (ok, 0)]
    assert up.tap.recv() == vnet_hdr() + frame(N.MAX_FRAME_LEN)
    assert (up.net.bad_chains, up.net.tx_dropped, up.net.tx_packets) == (1, 1, 1)


def test_rx_chain_with_readable_buffers_or_too_short(up):
    bad1 = up.rxq.add([(RX_AREA, 64, False), (RX_AREA + 64, 2000, True)])
    bad2 = up.rxq.add([(RX_AREA + 0x1000, 11, True)])
    up.rx_next = RX_AREA + 0x2000
    good, bufs = up.post([2048], notify=False)
    up.tap.send(vnet_hdr() + frame(100))
    before = up.mem.read(0, MEM_SIZE)
    up.drv.notify(N.RX_QUEUE)
    up.pump()
    assert up.rxq.get_used() == [(bad1, 0), (bad2, 0), (good, 112)]
    assert up.net.bad_chains == 2 and up.net.rx_packets == 1
    assert not up.transport.needs_reset
    assert_only_changed(up.mem, before, [(a, a + n) for a, n, _ in bufs] + [up.rxq.used_ring_range()])


def test_a_flood_of_bad_chains_is_counted_not_logged_chain_by_chain(mem, caplog, transport_kind):
    """Bad chains are guest errors: each is counted (bad_chains and the transport's
    guest_errors, what --metrics shows), but only the first of each kind is logged (the
    core's rate-limited EventLog; -d guest_errors logs each)."""
    caplog.set_level(logging.DEBUG)
    name = f"virtio-net:flood-{transport_kind}"  # the log's memory of kinds is per name
    up = NetEnv(mem, legacy=transport_kind == "legacy", name=name).probe(size=256)
    for _ in range(100):
        up.send(b"\0" * 5, notify=False)  # shorter than the header
        up.txq.add([(0x100000, 200, False)])  # a frame of zeros: fine, sent
        up.rxq.add([(RX_AREA, 4, True)])  # can't hold the header
    up.drv.notify(N.TX_QUEUE)
    up.drv.notify(N.RX_QUEUE)
    up.pump()
    assert (up.net.bad_chains, up.net.guest_errors, up.net.tx_packets, up.net.tx_dropped) == (200, 200, 100, 100)
    assert up.transport.counters["guest_errors"] == 200  # one group: the transport's counter
    assert not up.transport.needs_reset
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and name in r.getMessage()]
    assert len(lines) == 2, lines
    assert all("repeats are counted, not logged" in line for line in lines)
    assert any("transmit chain" in line for line in lines) and any("receive chain" in line for line in lines)
    up.close()


@pytest.mark.parametrize("queue", [N.RX_QUEUE, N.TX_QUEUE])
def test_buffer_outside_ram_needs_reset(up, queue):
    dq = up.rxq if queue == N.RX_QUEUE else up.txq
    dq.add([(MEM_SIZE - 16, 64, queue == N.RX_QUEUE)])
    up.tap.send(vnet_hdr() + frame(60))
    before = up.mem.read(0, MEM_SIZE)
    up.drv.notify(queue)
    up.pump()
    assert up.drv.needs_reset()
    assert up.drv.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) & C.VIRTIO_MMIO_INT_CONFIG
    assert not up.net.running
    assert_only_changed(up.mem, before, [up.rxq.used_ring_range(), up.txq.used_ring_range()])
    # the driver resets; the device works again
    up.drv.write(C.VIRTIO_MMIO_STATUS, 0)
    up.probe()
    head, bufs = up.post([2048])
    up.pump()
    assert up.rxq.get_used() == [(head, 72)]


def test_queue_error_of_a_bare_device_surfaces_on_next_process_queue(mem):
    """A device without a transport (no set_needs_reset to call) raises the QueueError its
    worker found from the next process_queue, which a transport turns into NEEDS_RESET."""
    mem.fill(0, MEM_SIZE)
    tap = SocketTap()
    net = VirtioNet(tap, threaded=False)
    rx_dq, tx_dq = DriverQueue(mem, 16, 0x10000), DriverQueue(mem, 16, 0x14000)
    rxq, txq = rx_dq.attach(Virtqueue(mem, 16)), tx_dq.attach(Virtqueue(mem, 16))
    net.ack_features(bit(C.VIRTIO_F_VERSION_1))
    net.activate([rxq, txq], lambda: None, mem)
    tx_dq.add([(MEM_SIZE + 0x1000, 64, False)])
    net.process_queue(N.TX_QUEUE)
    net.run_once(0)
    assert not net.running
    with pytest.raises(C.QueueError):
        net.process_queue(N.TX_QUEUE)
    net.process_queue(N.TX_QUEUE)  # reported once
    net.close()


def test_tx_flood_does_not_starve_rx(mem):
    up = NetEnv(mem).probe(size=256)
    for i in range(200):
        up.send(vnet_hdr() + frame(60), notify=False)
    head, _ = up.post([2048], notify=False)
    up.tap.send(vnet_hdr() + frame(99))
    up.drv.notify(N.TX_QUEUE)
    up.drv.notify(N.RX_QUEUE)
    up.net.run_once(0)  # one round
    assert up.rxq.get_used() == [(head, 111)]
    assert up.net.tx_packets == BATCH
    up.pump()
    assert up.net.tx_packets == 200
    up.close()


def test_rx_flood_is_batched(mem):
    up = NetEnv(mem).probe(size=256)
    for _ in range(200):
        up.post([1526], notify=False)
    up.drv.notify(N.RX_QUEUE)
    for i in range(100):
        up.tap.send(vnet_hdr() + frame(60))
    up.net.run_once(0)
    assert up.net.rx_packets == BATCH
    up.pump()
    assert up.net.rx_packets == 100
    up.close()


def test_tap_hangup_takes_the_link_down(up):
    up.post([2048])
    up.pump()
    up.drv.ack_interrupt()
    up.tap.peer.close()
    up.pump()
    assert not up.net.link_up and up.drv.read_config(6, 2) == 0
    assert up.drv.ack_interrupt() & C.VIRTIO_MMIO_INT_CONFIG
    assert up.net._tap_mask == 0  # not polled any more: no busy loop on POLLHUP
    assert worker_would_sleep(up.net)
    head = up.send(vnet_hdr() + frame(60))  # transmit keeps returning buffers
    up.pump()
    assert up.txq.get_used() == [(head, 0)] and up.net.tx_dropped == 1
    assert not up.transport.needs_reset


# -- the worker thread -----------------------------------------------------------------------------
def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "virtio-net:test-worker"]


def test_worker_thread_moves_frames_and_stops_on_reset(mem):
    up = NetEnv(mem, threaded=True).probe()
    assert len(workers()) == 1
    head, bufs = up.post([2048])
    up.tap.send(vnet_hdr() + frame(300, seed=5))
    used = wait_for(up.rxq.get_used)
    assert used == [(head, 312)] and up.read_bufs(bufs, 312)[12:] == frame(300, seed=5)
    up.send(vnet_hdr() + frame(90))
    assert up.tap.recv() == vnet_hdr() + frame(90)
    wait_for(lambda: up.irq.level)
    # reset: the worker is gone when it returns and touches nothing afterwards
    up.post([2048])
    up.drv.write(C.VIRTIO_MMIO_STATUS, 0)
    assert workers() == []
    snapshot = up.mem.read(0, MEM_SIZE)
    up.tap.send(vnet_hdr() + frame(64))
    time.sleep(0.05)
    assert up.mem.read(0, MEM_SIZE) == snapshot
    # and a new activation starts a new one
    up.probe()
    assert len(workers()) == 1
    head, _ = up.post([2048])
    assert wait_for(up.rxq.get_used) == [(head, 76)]
    up.close()
    assert workers() == [] and up.tap.closed


def test_pause_holds_the_worker_and_resume_serves_what_waited(mem):
    """The machine's pause hook: after pause() no frame reaches guest RAM and no transmit
    is served, whatever arrives; resume() serves both, in order."""
    up = NetEnv(mem, threaded=True).probe()
    head, bufs = up.post([2048])
    up.tap.send(vnet_hdr() + frame(100, seed=1))
    assert wait_for(up.rxq.get_used) == [(head, 112)]
    heads = [up.post([2048], notify=False)[0] for _ in range(2)]
    up.net.pause()
    assert workers() == []
    up.drv.notify(N.RX_QUEUE)  # notifications while paused (as if the vCPU had sent them)
    up.send(vnet_hdr() + frame(90))
    snapshot = up.mem.read(0, MEM_SIZE)
    up.tap.send(vnet_hdr() + frame(200, seed=2))
    up.tap.send(vnet_hdr() + frame(201, seed=3))
    time.sleep(0.1)
    assert up.mem.read(0, MEM_SIZE) == snapshot and up.tap.pending() == []  # the device did nothing
    up.net.resume()
    assert len(workers()) == 1
    assert up.tap.recv() == vnet_hdr() + frame(90)
    used = wait_for(up.rxq.get_used)
    while len(used) < 2:
        used += wait_for(up.rxq.get_used)
    assert [h for h, _ in used] == heads and [n for _, n in used] == [212, 213]
    up.close()
    assert workers() == []


def test_pause_waits_for_a_stuck_worker_only_so_long_and_resume_starts_no_second_one(mem, monkeypatch, caplog):
    """pause() joins the worker with the core's bound (PAUSE_TIMEOUT, shortened here), not
    forever: a worker stuck in a round (here: blocked inside it) is logged and left to end
    that round; resume() while it is still stuck starts no second worker (two would share
    the rings), and once it has ended the next resume() starts one again."""
    import microvm_virtio_net.device as D

    monkeypatch.setattr(D, "PAUSE_TIMEOUT", 0.2, raising=False)
    up = NetEnv(mem, threaded=True).probe()
    release, inside = threading.Event(), threading.Event()
    real = up.net._work

    def stuck(*a):
        inside.set()
        release.wait(60)
        return real(*a)

    up.net._work = stuck
    up.drv.notify(N.RX_QUEUE)  # the worker starts a round and stays in it
    assert inside.wait(20)
    done = threading.Event()
    threading.Thread(target=lambda: (up.net.pause(), done.set()), daemon=True).start()
    try:
        assert done.wait(20), "pause() waited for the stuck worker without a bound"
        assert "still in its round" in caplog.text
        assert len(workers()) == 1  # still there, asked to stop
        up.net.resume()
        assert len(workers()) == 1 and "not restarted" in caplog.text  # no second worker
    finally:
        release.set()
    wait_for(lambda: workers() == [], "the stuck worker to leave")
    up.net._work = real
    up.net.resume()
    assert len(workers()) == 1
    head, _ = up.post([2048])
    up.tap.send(vnet_hdr() + frame(100, seed=1))
    assert wait_for(up.rxq.get_used) == [(head, 112)]  # and it serves the rings
    up.close()
    assert workers() == []


def test_worker_thread_reports_a_broken_ring(mem):
    up = NetEnv(mem, threaded=True).probe()
    up.rxq.add([(MEM_SIZE, 4096, True)])
    up.drv.notify(N.RX_QUEUE)
    wait_for(up.drv.needs_reset)
    wait_for(lambda: workers() == [])
    up.close()


def test_worker_sleeps_when_idle(mem):
    """No busy loop: an idle device's worker blocks in poll() and runs no rounds until
    something happens; a frame then wakes it."""
    up = NetEnv(mem, threaded=True)
    rounds = []
    real = up.net.run_once
    up.net.run_once = lambda timeout=0: (rounds.append(1), real(timeout))[1]
    up.probe()
    head, _ = up.post([2048])
    (worker,) = workers()
    wait_for(lambda: blocked_in_poll(worker), "the worker blocking in poll()")
    n = len(rounds)
    time.sleep(0.2)  # any busy loop would run rounds meanwhile
    assert len(rounds) == n and blocked_in_poll(worker)
    up.tap.send(vnet_hdr() + frame(64))
    assert wait_for(up.rxq.get_used, "the frame's delivery") == [(head, 76)]
    assert len(rounds) > n
    up.close()


def test_with_the_cores_notification_worker():
    """As the machine runs it today: QueueNotify kicks the slot's eventfd, the core's
    NotifyWorker thread calls process_queue, the device's own worker moves the frames."""
    from microvm.api import VirtioTransportConfig
    from microvm.testing import TestMachine
    from virtio_net_testlib import NetDriver

    tap = SocketTap()
    net = VirtioNet(tap, name="virtio-net:test")
    m = TestMachine(mem_size=MEM_SIZE, serial=["none"]).create_devices()
    mem = m.memory
    m.ctx.add_virtio_device(net, "virtio-net:test", VirtioTransportConfig(legacy=False))
    slot = m.virtio_transports[-1]
    m.start()
    try:
        drv = NetDriver(slot.transport)
        rxq, txq = drv.probe()
        mem.fill(RX_AREA, 4096, 0xEE)
        head = rxq.add([(RX_AREA, 4096, True)])
        drv.notify(N.RX_QUEUE)
        tap.send(vnet_hdr() + frame(1000, seed=7))
        assert wait_for(rxq.get_used) == [(head, 1012)]
        assert mem.read(RX_AREA + 12, 1000) == frame(1000, seed=7)
        mem.write(0x100000, vnet_hdr() + frame(200))
        tx_head = txq.add([(0x100000, 212, False)])
        drv.notify(N.TX_QUEUE)
        assert tap.recv() == vnet_hdr() + frame(200)
        assert wait_for(txq.get_used) == [(tx_head, 0)]
        assert wait_for(lambda: m.line(slot.irq).level)
        rxq.add([(MEM_SIZE, 64, True)])  # a broken ring, found by the device's worker
        drv.notify(N.RX_QUEUE)
        wait_for(drv.needs_reset)
    finally:
        m.close()
    assert workers() == [] and tap.closed
