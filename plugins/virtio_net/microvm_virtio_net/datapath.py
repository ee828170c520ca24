"""Moving frames between the virtqueues and the tap, without copying them in Python.

* Transmit (§5.1.6.2): a chain's device-readable buffers are the virtio-net header and the
  frame; ``os.writev`` on the chain's readable views hands them to the kernel as they are,
  the header becoming the tap's vnet header (``IFF_VNET_HDR``; on a tap without one the
  header's bytes are left out of the vector).
* Receive (§5.1.6.3-4): ``os.readv(tap, views)`` reads one frame, vnet header first,
  straight into the device-writable buffers the driver posted. With
  VIRTIO_NET_F_MRG_RXBUF a frame may span several chains: the views of as many chains as a
  maximal frame needs are read into at once, each chain is then returned with the part of
  the frame it holds and ``num_buffers`` in the first header says how many there are.

A virtqueue has no "unpop", so receive chains popped but not filled by the current frame
wait in :attr:`RxPath.held` for the next one (never more than the queue holds: they are
chains the driver made available). When fewer buffers are posted than a maximal frame
needs, a scratch buffer ends the read vector, so the kernel never truncates a frame: one
that reaches into it waits there, with mergeable buffers, until the driver posts enough
buffers, and is then delivered whole (its tail copied out of the scratch buffer); without
mergeable buffers a frame longer than its chain is dropped and counted.

Nothing here blocks: the tap is nonblocking, ``BlockingIOError`` means "wait for poll".
Each call moves a bounded batch so that one direction can't starve the other.

What a hostile driver can do and what happens:

* a broken ring or a buffer outside guest RAM: the queue raises
  :class:`~microvm.api.QueueError`; the device stops and the transport sets
  DEVICE_NEEDS_RESET;
* a transmit chain shorter than the header, with a frame shorter than an Ethernet header
  or longer than :data:`~.constants.MAX_FRAME_LEN`, or of more buffers than one writev
  takes (IOV_MAX): returned unused, counted in ``bad_chains``, ``guest_errors`` and
  ``tx_dropped``, logged through the rate-limited :data:`events`;
* a receive chain with device-readable buffers, too short for the header or, without
  VIRTIO_NET_F_MRG_RXBUF, for the header and an Ethernet header (it can hold no frame):
  returned with length 0 before anything is written into it, counted in ``bad_chains``;
* without VIRTIO_NET_F_MRG_RXBUF, a receive chain shorter than the frame at hand: the frame
  is dropped (``rx_dropped``), the chain serves the next frame;
* a frame the kernel refuses (bad GSO header, too short): counted in ``tx_dropped``.

In no case does the device write anything but the used rings (``avail_event`` included)
and the device-writable buffers of the receive chains it has taken from the ring.
"""
from __future__ import annotations

import errno
import os
import struct
from typing import TYPE_CHECKING, NamedTuple

from microvm.api import EventLog, get_logger

from .constants import ETH_HLEN, HDR_FLAGS_OFFSET, HDR_LEN, HDR_NUM_BUFFERS_OFFSET, MAX_FRAME_LEN

if TYPE_CHECKING:
    from microvm.api import CounterGroup, DescriptorChain, Virtqueue

log = get_logger("microvm.virtio_net")
#: What a guest can repeat without bound (a malformed chain for every request) and host
#: trouble that can come with every frame (the tap refusing frames): the first event of each
#: kind is logged, the rest counted and summarised at most every 10 s (``-d guest_errors``
#: logs each), so a flooding guest cannot flood the host's log.
events = EventLog(log)
WARNING, ERROR = 30, 40

try:
    IOV_MAX = os.sysconf("SC_IOV_MAX")
except (ValueError, OSError):
    IOV_MAX = 1024

# what process() found (second element of its result)
IDLE = "idle"  # the driver has made nothing more available (tx) / the tap has no frame (rx)
MORE = "more"  # the batch ended with work left: call again without waiting
BLOCKED = "blocked"  # tx: the tap takes no more for now (wait for POLLOUT)
NO_BUFFERS = "no-buffers"  # rx: the driver has posted no receive buffers
TAP_GONE = "tap-gone"  # rx: the tap reported end of file or an error
DROPPED = "dropped"  # rx: the frame read was dropped (internal to RxPath)
PENDING = "pending"  # rx: the frame read waits for more buffers (internal to RxPath)

_U16 = struct.Struct("<H")

#: errors that mean the tap is gone for good: its interface was deleted (EBADFD, what tun
#: returns for a detached queue), the descriptor was closed (EBADF), or, for a socket standing
#: in for a tap, the peer went away. Anything else (EIO while the interface is down, ENOBUFS,
#: ENOMEM, EINVAL for a frame the kernel refuses) costs the frame, not the tap.
TAP_GONE_ERRNOS = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EPIPE, errno.ECONNRESET,
                             errno.ENOTCONN})
#: this many failed reads in a row (each consumes a frame) and the tap is taken as gone:
#: a tap that fails every read would otherwise keep the worker busy for ever
MAX_READ_ERRORS = 256


#: A NIC's counters (in the device's CounterGroup: ``--metrics`` shows them). ``guest_errors``
#: is the transport's counter of the same group: virtio-net's own guest errors add to it.
COUNTER_NAMES = ("tx_packets", "tx_bytes", "tx_dropped", "rx_packets", "rx_bytes", "rx_dropped", "bad_chains",
                 "guest_errors")


class NetCounters:
    """The :class:`~microvm.api.Counter` objects the data path bumps, looked up once in the
    device's :class:`~microvm.api.CounterGroup` (``tx_packets.inc()``, ``tx_bytes.add(n)``).

    ``bad_chains`` counts chains that broke virtio-net's rules (not the ring's: those are
    QueueErrors and end in DEVICE_NEEDS_RESET); each is a guest error too."""

    __slots__ = (*COUNTER_NAMES, "name")

    def __init__(self, group: "CounterGroup", name: str = "virtio-net") -> None:
        for counter in COUNTER_NAMES:
            setattr(self, counter, group.counter(counter))
        #: the device's name, for log lines
        self.name = name

    def guest_error(self, kind: str, msg: str, *args: object) -> None:
        """A chain that broke virtio-net's rules: counted in ``bad_chains`` and
        ``guest_errors``, logged through the rate-limited :data:`events` log."""
        self.bad_chains.inc()
        self.guest_errors.inc()
        events(f"{self.name}: {kind}", WARNING, "%s: " + msg, self.name, *args)

    def host_error(self, kind: str, msg: str, *args: object) -> None:
        """Trouble on the tap's side that can repeat with every frame: rate-limited log only
        (the caller counts the dropped frame)."""
        events(f"{self.name}: {kind}", WARNING, "%s: " + msg, self.name, *args)


def split_views(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``n`` bytes of a scatter list and the rest, as views (no copies)."""
    head: list[memoryview] = []
    rest: list[memoryview] = []
    for v in views:
        if n >= len(v):
            head.append(v)
            n -= len(v)
        elif n > 0:
            head.append(v[:n])
            rest.append(v[n:])
            n = 0
        else:
            rest.append(v)
    return head, rest


def write_into(views: list[memoryview], offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the byte stream the views make up (a header field
    that may straddle two descriptors)."""
    for v in views:
        if offset >= len(v):
            offset -= len(v)
            continue
        n = min(len(v) - offset, len(data))
        v[offset : offset + n] = data[:n]
        data = data[n:]
        offset = 0
        if not data:
            return


class TxPath:
    """The transmit queue -> the tap.

    :param strip_header: the tap has no vnet header (``vnet_hdr=off``): skip the first
        ``hdr_len`` bytes of each chain instead of handing them over.
    """

    def __init__(self, queue: "Virtqueue", fd: int, hdr_len: int, counters: NetCounters, strip_header: bool = False) -> None:
        self.queue = queue
        self.fd = fd
        self.hdr_len = hdr_len
        self.counters = counters
        self.strip_header = strip_header
        #: a chain whose frame the tap refused with EAGAIN, retried on POLLOUT
        self.stalled: tuple["DescriptorChain", list[memoryview], int] | None = None
        #: the tap is gone: frames are dropped without a system call
        self.tap_gone = False
        #: why a write found the tap gone (the device then takes the link down), else None
        self.lost: str | None = None

    def process(self, budget: int) -> tuple[int, str]:
        """Send up to ``budget`` frames; returns (chains returned to the driver, IDLE |
        MORE | BLOCKED)."""
        q = self.queue
        used = 0
        if self.stalled is not None:
            chain, views, frame_len = self.stalled
            if not self._send(views, frame_len):
                return used, BLOCKED
            self.stalled = None
            q.push(chain.head, 0)
            used += 1
        for _ in range(budget):
            chain = q.pop()
            if chain is None:
                return used, IDLE
            frame = self._frame(chain)
            if frame is not None:
                views, frame_len = frame
                if not self._send(views, frame_len):
                    self.stalled = (chain, views, frame_len)
                    return used, BLOCKED
            q.push(chain.head, 0)  # transmit buffers are read-only: nothing written
            used += 1
        return used, MORE

    def _frame(self, chain: "DescriptorChain") -> tuple[list[memoryview], int] | None:
        """The views to hand to writev and the frame's length, or None for a bad chain."""
        c = self.counters
        total = chain.readable_len
        frame_len = total - self.hdr_len
        if frame_len < 0:
            why = f"{total} bytes, shorter than the {self.hdr_len}-byte header"
        elif frame_len < ETH_HLEN:
            why = f"a {frame_len}-byte frame, shorter than an Ethernet header"
        elif frame_len > MAX_FRAME_LEN:
            why = f"a {frame_len}-byte frame, longer than {MAX_FRAME_LEN}"
        else:
            views = [v for v in chain.readable_views() if len(v)]
            if self.strip_header:
                views = split_views(views, self.hdr_len)[1]
            if len(views) <= IOV_MAX:
                return views, frame_len
            why = f"{len(views)} buffers, more than the host's IOV_MAX {IOV_MAX}"
        c.tx_dropped.inc()
        c.guest_error("bad transmit chain", "transmit chain %d dropped: %s", chain.head, why)
        return None

    def _send(self, views: list[memoryview], frame_len: int) -> bool:
        """writev one frame; False if the tap would block (try again on POLLOUT)."""
        c = self.counters
        if self.tap_gone:
            c.tx_dropped.inc()
            return True
        try:
            os.writev(self.fd, views)
        except BlockingIOError:
            return False
        except OSError as e:
            c.tx_dropped.inc()
            if e.errno in TAP_GONE_ERRNOS:
                self.tap_gone = True
                self.lost = f"writing failed: {e.strerror}"
                return True
            # EIO: the interface is down; EINVAL: the kernel refused the vnet header or the
            # frame; ENOBUFS/ENOMEM: the host is short of memory. The frame is lost, as on a wire.
            c.host_error(f"tap write error {e.errno}", "the tap refused a %d-byte frame: %s", frame_len, e.strerror)
            return True
        c.tx_packets.inc()
        c.tx_bytes.add(frame_len)
        return True


class _RxBuf(NamedTuple):
    chain: "DescriptorChain"
    views: list[memoryview]  # its device-writable buffers, empty ones left out
    capacity: int


class _Pending:
    """A frame read from the tap whose tail did not fit the window: it waits in the scratch
    buffer until the driver posts more receive buffers (MRG_RXBUF), then goes there."""

    __slots__ = ("total", "placed", "copied", "next_view")

    def __init__(self, total: int, placed: int, next_view: int) -> None:
        #: the frame's length with its header, as the guest gets it
        self.total = total
        #: bytes of it already in the window's first views (where readv put them)
        self.placed = placed
        #: bytes of the tail (in the scratch buffer) copied into the window since
        self.copied = 0
        #: the window view the tail continues in
        self.next_view = next_view


class RxPath:
    """The tap -> the receive queue.

    Popped receive chains wait in a window (:attr:`held`, with their views flattened in
    :attr:`views`) until the window holds enough for a maximal frame or the ring is empty;
    each frame is read into the whole window and takes the chains it filled from its front.
    So a frame costs work in proportion to the chains it uses, not to the window.

    A window smaller than a maximal frame (few buffers posted, or more buffers than one
    readv takes) ends its read vector with a scratch buffer. A frame that reaches into it is
    not lost: with mergeable buffers it stays :attr:`pending` (the tap is not read
    meanwhile) until the driver has posted enough buffers, its tail is copied there (the
    only copy in Python, and only in this case) and it is delivered whole. Without mergeable
    buffers a frame longer than the chain it was read into is dropped and counted (as QEMU
    does), and the chain serves the next frame.

    :param mergeable: VIRTIO_NET_F_MRG_RXBUF was negotiated: a frame may span chains.
    :param write_header: the tap has no vnet header (``vnet_hdr=off``): read the frame
        after the header's place and write a header saying "nothing to do" there.
    :param guest_csum: VIRTIO_NET_F_GUEST_CSUM was negotiated; if not, ``flags`` must be 0
        (§5.1.6.4.1), even where the tap reports DATA_VALID.
    """

    def __init__(
        self,
        queue: "Virtqueue",
        fd: int,
        hdr_len: int,
        counters: NetCounters,
        mergeable: bool,
        write_header: bool = False,
        guest_csum: bool = True,
    ) -> None:
        self.queue = queue
        self.fd = fd
        self.hdr_len = hdr_len
        self.counters = counters
        self.mergeable = mergeable
        self.write_header = write_header
        self.guest_csum = guest_csum
        #: popped chains not yet used, in ring order (never more than the queue size)
        self.held: list[_RxBuf] = []
        #: their views, concatenated, and their total size
        self.views: list[memoryview] = []
        self.capacity = 0
        #: bytes of posted buffers a frame may need: a maximal frame and its header
        self.need = hdr_len + MAX_FRAME_LEN
        self._scratch = memoryview(bytearray(self.need))
        #: a frame read but not yet wholly in guest buffers (see the class docstring)
        self.pending: _Pending | None = None
        #: why the tap was found gone (with the TAP_GONE state), else None
        self.lost: str | None = None
        self._read_errors = 0  # failed reads in a row

    def process(self, budget: int) -> tuple[int, str]:
        """Receive up to ``budget`` frames; returns (chains returned to the driver, IDLE |
        MORE | NO_BUFFERS | TAP_GONE). NO_BUFFERS also while a pending frame waits for
        buffers: the tap is not to be read until the driver posts some."""
        used = 0
        for _ in range(budget):
            used += self._fill()
            if self.pending is not None:
                if not self._place_pending():
                    return used, NO_BUFFERS
                used += self._deliver(self.pending.total)
                self.pending = None
                continue
            if not self.held:
                return used, NO_BUFFERS
            n, state = self._read()
            if state == DROPPED or state == PENDING:
                continue
            if state is not None:
                return used, state
            used += self._deliver(n)
        return used, MORE

    def _fill(self) -> int:
        """Pop chains until the window holds a maximal frame (one chain without mergeable
        buffers) or the ring is empty. Returns how many bad chains went back on the way."""
        bad = 0
        while self.capacity < self.need and (self.mergeable or not self.held):
            chain = self.queue.pop()
            if chain is None:
                break
            buf = self._check(chain)
            if buf is None:
                bad += 1
                continue
            self.held.append(buf)
            self.views += buf.views
            self.capacity += buf.capacity
        return bad

    def _check(self, chain: "DescriptorChain") -> _RxBuf | None:
        """A receive chain as a buffer, or None (returned unused) if it breaks the rules."""
        if any(not d.write for d in chain.descriptors):
            why = "it has device-readable buffers"
        elif chain.writable_len < self.hdr_len:
            why = f"its {chain.writable_len} bytes can't hold the {self.hdr_len}-byte header"
        elif not self.mergeable and chain.writable_len < self.hdr_len + ETH_HLEN:
            # without mergeable buffers a frame must fit one chain: this one fits none
            why = f"its {chain.writable_len} bytes can't hold the header and an Ethernet header (no mergeable buffers)"
        else:
            views = [v for v in chain.writable_views() if len(v)]
            return _RxBuf(chain, views, chain.writable_len)
        self.counters.guest_error("bad receive chain", "receive chain %d returned unused: %s", chain.head, why)
        self.queue.push(chain.head, 0)
        return None

    def _read(self) -> tuple[int, str | None]:
        """readv one frame into the window; returns (bytes, None) for a frame that is in
        the window, or (0, IDLE | DROPPED | PENDING | TAP_GONE)."""
        views = self.views
        capacity = self.capacity
        if len(views) >= IOV_MAX:  # more buffers than one readv takes: the first ones
            views = views[: IOV_MAX - 1]
            capacity = sum(len(v) for v in views)
        into = split_views(views, self.hdr_len)[1] if self.write_header else views
        spill = capacity < self.need
        if spill:
            into = [*into, self._scratch]  # catches the part of a frame that does not fit
        try:
            n = os.readv(self.fd, into)
        except BlockingIOError:
            return 0, IDLE
        except OSError as e:
            if e.errno in TAP_GONE_ERRNOS:
                self.lost = f"reading failed: {e.strerror}"
                return 0, TAP_GONE
            # the kernel consumed the frame it could not copy: count it, go on
            self.counters.rx_dropped.inc()
            self.counters.host_error(f"tap read error {e.errno}", "reading the tap failed: %s", e.strerror)
            self._read_errors += 1
            if self._read_errors >= MAX_READ_ERRORS:
                self.lost = f"{self._read_errors} reads in a row failed, the last with {e.strerror}"
                return 0, TAP_GONE
            return 0, DROPPED
        self._read_errors = 0
        if n == 0:
            self.lost = "end of file"
            return 0, TAP_GONE
        total = n + self.hdr_len if self.write_header else n
        if total < self.hdr_len:  # the tap always gives a header; anything else is junk
            self.counters.rx_dropped.inc()
            return 0, DROPPED
        if total <= capacity:
            return total, None
        # (the tap returns the whole frame's length even when it copied less)
        if not spill or total > capacity + len(self._scratch):
            why = f"longer than the {MAX_FRAME_LEN}-byte maximum"
        elif not self.mergeable and total > self.held[0].capacity:
            why = f"longer than the {self.held[0].capacity}-byte receive chain (no mergeable buffers)"
        else:  # the rest fits buffers posted or still to come: keep it
            self.pending = _Pending(total, capacity, len(views))
            return 0, PENDING
        self.counters.rx_dropped.inc()
        self.counters.host_error("receive frame too big", "a %d-byte frame dropped: %s", total, why)
        return 0, DROPPED

    def _place_pending(self) -> bool:
        """Copy what fits of the pending frame's tail from the scratch buffer into the
        window's views after the ones readv filled; True once all of it is there."""
        p = self.pending
        assert p is not None
        tail = p.total - p.placed
        views = self.views
        while p.copied < tail and p.next_view < len(views):
            v = views[p.next_view]
            n = min(len(v), tail - p.copied)
            v[:n] = self._scratch[p.copied : p.copied + n]
            p.copied += n
            p.next_view += 1
        return p.copied == tail

    def _deliver(self, total: int) -> int:
        """Return the chains at the window's front that hold a ``total``-byte frame (header
        included). Returns how many went back."""
        first = self.held[0].views
        if self.write_header:
            write_into(first, 0, bytes(self.hdr_len))
        elif not self.guest_csum:
            write_into(first, HDR_FLAGS_OFFSET, b"\0")
        count = nviews = 0
        remaining = total
        while remaining > 0:
            buf = self.held[count]
            count += 1
            nviews += len(buf.views)
            remaining -= buf.capacity
        if self.hdr_len == HDR_LEN:
            # the tap leaves num_buffers alone (it writes a 10-byte header and skips two)
            write_into(first, HDR_NUM_BUFFERS_OFFSET, _U16.pack(count))
        remaining = total
        for buf in self.held[:count]:
            n = min(remaining, buf.capacity)
            self.queue.push(buf.chain.head, n)
            remaining -= n
            self.capacity -= buf.capacity
        del self.held[:count]
        del self.views[:nviews]
        self.counters.rx_packets.inc()
        self.counters.rx_bytes.add(total - self.hdr_len)
        return count
