"""The virtio-net device (virtio 1.2 §5.1) on a tap: features, configuration space, and the
worker thread that moves frames. No pluggy here.

Threading. Receiving is driven by the tap, not by the guest, so the device has a thread of
its own: one worker per device that ``poll()``\\ s together

* the tap (POLLIN while the driver has receive buffers posted, POLLOUT while a transmitted
  frame waits for room),
* one eventfd per queue (:attr:`VirtioNet.queue_notify_fds`), and
* a stop eventfd.

The worker is the only thread that touches the virtqueues. :meth:`VirtioNet.process_queue`
(which the transport runs on its notification thread, or inline on a vCPU) only kicks the
queue's eventfd. (Registering ``queue_notify_fds`` as KVM ioeventfds would skip that hop
but bypass the transport's checks and counting; the core does not do it.)
:meth:`activate` starts the worker, :meth:`reset` and :meth:`close` stop
it and wait for it, so no queue is touched after they return (docs/virtio-backend.md).
:meth:`pause` (the machine pauses: QMP ``stop``) stops it the same way but keeps the queues,
and :meth:`resume` starts a new one: no guest memory is written in between.

While the driver has posted no receive buffer (or too few for a frame already read, which
then waits in the device: at most that one frame) the tap is not polled for input: frames
wait in the tap's kernel queue (bounded by its ``txqueuelen``), and the worker sleeps until
the driver notifies the receive queue. With VIRTIO_F_RING_EVENT_IDX the queue publishes
``avail_event`` on every pop, so the driver notifies when it adds to a ring the device has
emptied; used-buffer interrupts go through the ``interrupt`` callable, which honours
``used_event``.

The tap's errors end neither the worker nor the VMM: a passing one (EIO while the interface
is down, ENOBUFS, ...) costs the frame it hit; a tap that is gone (EBADFD once its
interface is deleted, POLLERR, a closed descriptor) is logged once and the link goes down
(:meth:`set_link`): the tap is no longer polled and what the guest sends is dropped.

A broken ring (:class:`~microvm.api.QueueError`) stops the worker. The device reports it
to its transport with :meth:`~microvm.api.VirtioBackend.set_needs_reset` (DEVICE_NEEDS_RESET
and a configuration-change interrupt at once) or, on a bare device without a transport,
raises it from the next :meth:`process_queue`.

Counters live in the device's :class:`~microvm.api.CounterGroup` (``self.counters``, shared
with the transport; ``--metrics`` writes them): ``tx_packets tx_bytes tx_dropped rx_packets
rx_bytes rx_dropped bad_chains`` and the transport's ``guest_errors`` (bad chains count
there too), readable as attributes of the device too. Guest errors are logged through the
core's rate-limited :class:`~microvm.api.EventLog`.
"""
from __future__ import annotations

import os
import select
import threading
from typing import TYPE_CHECKING, Callable, Protocol

from microvm.api import (
    VIRTIO_F_VERSION_1,
    VIRTIO_ID_NET,
    ConfigError,
    GuestMemoryError,
    QueueError,
    VirtioBackend,
    get_logger,
)

from .constants import (
    CONFIG,
    GUEST_OFFLOAD_FEATURES,
    HDR_LEN,
    HDR_LEN_LEGACY,
    HOST_OFFLOAD_FEATURES,
    MAX_MTU,
    MIN_MTU,
    RX_QUEUE,
    TX_QUEUE,
    UFO_FEATURES,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
)
from .datapath import (
    COUNTER_NAMES,
    ERROR,
    MORE,
    NO_BUFFERS,
    TAP_GONE,
    TAP_GONE_ERRNOS,
    WARNING,
    NetCounters,
    RxPath,
    TxPath,
    events,
)
from .mac import DEFAULT_MAC, format_mac, parse_mac

if TYPE_CHECKING:
    from microvm.api import GuestMemory, Virtqueue

log = get_logger("microvm.virtio_net")
#: how long pause() waits for the worker to finish its round: the core's notification
#: workers' bound (microvm.virtio.slots.PAUSE_TIMEOUT), so a worker stuck in one round can
#: delay a QMP ``stop`` (run under the run-state lock) by this much and no more
PAUSE_TIMEOUT = 10.0

#: Frames moved per direction per round of the worker: a transmit flood can't starve
#: receive (nor the reverse), and interrupts are batched.
BATCH = 64

_POLL_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class TapLike(Protocol):
    """What the device needs of its tap (:class:`~microvm_virtio_net.tap.Tap`, or a test's
    socketpair end). Optional attributes: ``vnet_hdr`` (default True: frames carry a
    virtio-net header), ``has_ufo`` (default True), ``close()``."""

    def fileno(self) -> int: ...

    def set_vnet_hdr_size(self, size: int) -> None: ...

    def set_offload(self, features: int) -> None: ...


def header_length(features: int) -> int:
    """§5.1.6: the header has ``num_buffers`` (12 bytes) with VERSION_1 or MRG_RXBUF; a
    legacy driver without mergeable buffers uses the 10-byte ``struct virtio_net_hdr``."""
    if features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)):
        return HDR_LEN
    return HDR_LEN_LEGACY


def _counter_value(name: str) -> property:
    return property(lambda self: self.counters[name], doc=f"the ``{name}`` counter's value")


class VirtioNet(VirtioBackend):
    """A virtio-net device on ``tap``.

    :param tap: the host side (see :class:`TapLike`).
    :param mac: the guest's MAC address (bytes or ``"52:54:00:12:34:56"``); default
        :data:`~microvm_virtio_net.mac.DEFAULT_MAC`. The glue assigns defaults to several
        NICs with :class:`~microvm_virtio_net.mac.MacAllocator`.
    :param mtu: offered as VIRTIO_NET_F_MTU (the guest's MTU and maximum MTU), 68 to
        65535; 1500 by default here. None offers no MTU (what the glue passes without
        ``host_mtu=``, as QEMU: the guest may raise its MTU as it likes).
    :param queue_size: QueueNumMax of both queues.
    :param name: for log messages (``virtio-net:net0``).
    :param threaded: start the worker thread on activation. Tests pass False and call
        :meth:`run_once` themselves.
    :param owns_tap: close the tap in :meth:`close` (the default). The glue passes False:
        the netdev is the machine's and outlives the device across guest resets.

    Counters: in ``self.counters`` (the transport's group for this device); their values
    as attributes ``tx_packets, tx_bytes, tx_dropped, rx_packets, rx_bytes, rx_dropped,
    bad_chains, guest_errors`` and as a dict from :meth:`counter_values`.
    """

    device_id = VIRTIO_ID_NET
    num_queues = 2  # receiveq1, transmitq1 (§5.1.2); no control queue

    tx_packets = _counter_value("tx_packets")
    tx_bytes = _counter_value("tx_bytes")
    tx_dropped = _counter_value("tx_dropped")
    rx_packets = _counter_value("rx_packets")
    rx_bytes = _counter_value("rx_bytes")
    rx_dropped = _counter_value("rx_dropped")
    bad_chains = _counter_value("bad_chains")
    guest_errors = _counter_value("guest_errors")

    def __init__(
        self,
        tap: TapLike,
        mac: bytes | str | None = None,
        mtu: int | None = 1500,
        queue_size: int = 256,
        name: str = "virtio-net",
        threaded: bool = True,
        owns_tap: bool = True,
    ) -> None:
        self.tap = tap
        #: close the tap with the device; False for a netdev the machine owns, which lives
        #: across guest resets (the next boot's device takes it over)
        self.owns_tap = owns_tap
        self.name = self.label = name
        if mac is None:
            mac = DEFAULT_MAC
        elif isinstance(mac, str):
            mac = parse_mac(mac)
        if len(mac) != 6:
            raise ConfigError(f"{name}: a MAC address has 6 bytes, not {len(mac)}")
        if mac == bytes(6) or mac[0] & 1:
            raise ConfigError(f"{name}: {format_mac(mac)} can't be a NIC's address (all zeros or multicast)")
        self.mac = bytes(mac)
        if mtu is not None and not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigError(f"{name}: mtu={mtu} is outside {MIN_MTU}..{MAX_MTU}")
        self.mtu = mtu
        self.queue_max_size = queue_size
        self.threaded = threaded
        self.vnet_hdr = bool(getattr(tap, "vnet_hdr", True))
        self.has_ufo = bool(getattr(tap, "has_ufo", True))
        #: the ``status`` field of the configuration space
        self.status = VIRTIO_NET_S_LINK_UP
        #: one eventfd per queue: written by :meth:`process_queue`, or by KVM directly when
        #: registered as the queue's ioeventfd
        self.queue_notify_fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(self.num_queues)]
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._paused = False  # the machine is paused: no worker (pause/resume)
        self._closed = False
        #: the host side went away for good (EOF, an error, POLLHUP): the link stays down
        self._tap_gone = False
        self._deactivate()

    # -- what the device is --------------------------------------------------------------------
    def device_features(self) -> int:
        f = (
            (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_F_ANY_LAYOUT)
        )
        if self.mtu is not None:
            f |= 1 << VIRTIO_NET_F_MTU
        if self.vnet_hdr:  # offloads travel in the vnet header; without one there are none
            f |= GUEST_OFFLOAD_FEATURES | HOST_OFFLOAD_FEATURES
            if not self.has_ufo:
                f &= ~UFO_FEATURES
        return f

    def config_space(self) -> bytes:
        return CONFIG.pack(self.mac, self.status, 1, self.mtu or 0)

    def set_link(self, up: bool) -> None:
        """Carrier on or off (QEMU's ``set_link``): the driver sees ``status`` change."""
        status = (self.status | VIRTIO_NET_S_LINK_UP) if up else (self.status & ~VIRTIO_NET_S_LINK_UP)
        if status != self.status:
            self.status = status
            self.config_changed()

    def counter_values(self) -> dict[str, int]:
        """The device's counters by name (what ``--metrics`` shows for it)."""
        return {n: self.counters[n] for n in COUNTER_NAMES}

    @property
    def link_up(self) -> bool:
        return bool(self.status & VIRTIO_NET_S_LINK_UP)

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self, queues: list["Virtqueue"], interrupt: Callable[[], None], memory: "GuestMemory") -> None:
        self._stop_worker()
        features = self.acked_features
        hdr_len = header_length(features)
        lost = None
        if not self._tap_gone:
            try:
                self.tap.set_vnet_hdr_size(hdr_len)
            except OSError as e:  # frames would not match the header the driver uses
                lost = f"TUNSETVNETHDRSZ {hdr_len} failed: {e.strerror}"
        if not self._tap_gone and lost is None:
            try:
                self.tap.set_offload(features)
            except OSError as e:
                if e.errno in TAP_GONE_ERRNOS:
                    lost = f"TUNSETOFFLOAD failed: {e.strerror}"
                else:  # the tap keeps its offloads off: no GSO frame reaches the guest
                    events(f"{self.name}: TUNSETOFFLOAD", WARNING, "%s: TUNSETOFFLOAD for features %#x failed: %s",
                           self.name, features, e.strerror)
        fd = self._tap_fd = self.tap.fileno()
        rxq, txq = queues[RX_QUEUE], queues[TX_QUEUE]
        counters = NetCounters(self.counters, self.name)  # looked up once; the data path bumps them
        self._rx = (
            RxPath(
                rxq, fd, hdr_len, counters,
                mergeable=bool(features & (1 << VIRTIO_NET_F_MRG_RXBUF)),
                write_header=not self.vnet_hdr,
                guest_csum=bool(features & (1 << VIRTIO_NET_F_GUEST_CSUM)),
            )
            if rxq.ready
            else None
        )
        self._tx = TxPath(txq, fd, hdr_len, counters, strip_header=not self.vnet_hdr) if txq.ready else None
        if self._tx is not None:
            self._tx.tap_gone = self._tap_gone
        self._interrupt = interrupt
        self._rx_wanted = self._rx_more = self._rx is not None and not self._tap_gone  # until no buffers
        self._tx_more = self._tx is not None  # whatever was queued before DRIVER_OK
        self._broken = None
        self._poller = select.poll()
        for fd_ in (*self.queue_notify_fds, self._stop_fd):
            self._poller.register(fd_, select.POLLIN)
        self._tap_mask = 0
        self._active = True
        if lost is not None:
            self._lose_tap(lost)
        log.info("%s: up, mac %s, %d-byte header, tap offloads for features %#x", self.name, format_mac(self.mac), hdr_len, features)
        if self.threaded and not self._paused:  # (activated while paused: resume starts it)
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-worker", daemon=True)
            self._thread.start()

    def process_queue(self, index: int) -> None:
        """The driver notified queue ``index``: wake the worker. Never touches a queue."""
        if self._broken is not None:  # found by the worker of a device without a transport
            reason, self._broken = self._broken, None
            raise QueueError(reason)
        if 0 <= index < len(self.queue_notify_fds):
            os.eventfd_write(self.queue_notify_fds[index], 1)

    def reset(self) -> None:
        """Stop the worker and forget the queues; the tap stays open (its offloads off, so
        no GSO packet queues up for a driver that may not take them)."""
        self._stop_worker()
        self._deactivate()
        try:
            self.tap.set_offload(0)
        except OSError as e:
            log.debug("%s: TUNSETOFFLOAD 0 at reset failed: %s", self.name, e)

    def pause(self) -> None:
        """The machine pauses (docs/virtio-backend.md): stop the worker between two rounds,
        keeping the queues and every flag; frames that arrive meanwhile wait in the tap.

        The wait is bounded (:data:`PAUSE_TIMEOUT`, as the core's notification workers): a
        worker still in its round then is logged and left to end that round (its stop is
        requested, it leaves at the next check); the VM pauses anyway, so this device may
        still complete that round's frames while paused. ``resume`` starts no second
        worker next to it (two would share the rings)."""
        self._paused = True
        if not self._stop_worker(PAUSE_TIMEOUT):
            log.warning("%s: worker still in its round after %.0f s; pausing anyway", self.name, PAUSE_TIMEOUT)

    def resume(self) -> None:
        """Start the worker again where it stopped (with the work it left, if any)."""
        self._paused = False
        late = self._thread
        if late is not None:  # pause() timed out: the worker has been asked to stop
            late.join(PAUSE_TIMEOUT)
            if late.is_alive():
                log.warning("%s: worker still busy since the pause; not restarted (a second one would share the rings)",
                            self.name)
                return
            self._thread = None
            _drain(self._stop_fd)
        if self._active and self.threaded and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-worker", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_worker()
        self._deactivate()
        for fd in (*self.queue_notify_fds, self._stop_fd):
            os.close(fd)
        close = getattr(self.tap, "close", None) if self.owns_tap else None
        if close is not None:
            close()

    def _deactivate(self) -> None:
        self._active = False
        self._rx: RxPath | None = None
        self._tx: TxPath | None = None
        self._interrupt: Callable[[], None] = lambda: None
        self._poller: select.poll | None = None
        self._tap_fd = -1
        self._broken: str | None = None
        self._rx_wanted = self._rx_more = self._tx_more = False
        for fd in self.queue_notify_fds:
            _drain(fd)

    def _stop_worker(self, timeout: float | None = None) -> bool:
        """Stop the worker and wait for it (``timeout``: at most that long). False if it is
        still running then: it stays ``_thread`` and its stop request stays posted."""
        t = self._thread
        if t is not None:
            os.eventfd_write(self._stop_fd, 1)
            if t is not threading.current_thread():
                t.join(timeout)
                if t.is_alive():
                    return False
            self._thread = None
        _drain(self._stop_fd)
        return True

    # -- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self.run_once(None):
                pass
        except Exception:  # a bug: stop cleanly and say so, rather than die silently
            events(f"{self.name}: worker failed", ERROR, "%s: network worker failed", self.name, exc_info=True)
            self._fail("internal error in the network device")

    def run_once(self, timeout: float | None = 0) -> bool:
        """One round of the worker: wait for the tap or a notification (up to ``timeout``
        seconds, None = no limit; no wait at all while a batch left work), then move at most
        :data:`BATCH` frames each way and interrupt once. Returns False when the device is
        not running (stopped, reset, or the driver broke a ring).

        :class:`QueueError` (a broken ring) is handled here: see the module docstring."""
        poller = self._poller
        if not self._active or poller is None:
            return False
        self._update_tap_mask()
        if self._tx_more or self._rx_more:
            wait = 0
        else:
            wait = None if timeout is None else int(timeout * 1000)
        rx_kick = tx_kick = tap_in = tap_out = False
        for fd, ev in poller.poll(wait):
            if fd == self._stop_fd:
                return False
            if fd == self.queue_notify_fds[RX_QUEUE]:
                rx_kick = _drain(fd)
            elif fd == self.queue_notify_fds[TX_QUEUE]:
                tx_kick = _drain(fd)
            else:  # the tap
                if ev & select.POLLNVAL:
                    self._lose_tap("its descriptor was closed")
                elif ev & _POLL_ERR:
                    self._lose_tap("it reported an error or hang-up (was the interface deleted?)")
                tap_in = bool(ev & select.POLLIN)
                tap_out = bool(ev & select.POLLOUT)
        try:
            self._work(rx_kick, tx_kick, tap_in, tap_out)
        except (QueueError, GuestMemoryError) as e:
            self._fail(str(e))
            return False
        return True

    def _work(self, rx_kick: bool, tx_kick: bool, tap_in: bool, tap_out: bool) -> None:
        used = 0
        tx, rx = self._tx, self._rx
        if tx is not None and (tx_kick or self._tx_more or (tx.stalled is not None and tap_out)):
            n, state = tx.process(BATCH)
            used += n
            self._tx_more = state == MORE
            if tx.lost is not None and not self._tap_gone:
                self._lose_tap(tx.lost)
        if rx is not None:
            if rx_kick:  # new buffers: poll the tap for input again
                self._rx_wanted = self._rx_more = not self._tap_gone
            if self._rx_wanted and (tap_in or self._rx_more):
                n, state = rx.process(BATCH)
                used += n
                self._rx_more = state == MORE
                if state == NO_BUFFERS:
                    self._rx_wanted = False
                elif state == TAP_GONE:
                    self._lose_tap(rx.lost or "the tap failed")
        if used:
            self._interrupt()

    def _update_tap_mask(self) -> None:
        mask = 0
        if not self._tap_gone:
            if self._rx is not None and self._rx_wanted:
                mask |= select.POLLIN
            if self._tx is not None and self._tx.stalled is not None:
                mask |= select.POLLOUT
        if mask != self._tap_mask and self._poller is not None:
            if mask:
                self._poller.register(self._tap_fd, mask)
            else:
                self._poller.unregister(self._tap_fd)
            self._tap_mask = mask

    def _lose_tap(self, why: str) -> None:
        """The host side went away: stop polling it, drop what the guest sends, and tell
        the guest its link is down."""
        if self._tap_gone:
            return
        ifname = getattr(self.tap, "ifname", None)
        tap = f"tap {ifname}" if ifname else "the tap"
        # rate-limited too: a guest that reboots in a loop meets the gone tap on every boot
        events(f"{self.name}: tap gone", ERROR, "%s: %s is gone: %s; link down, the device no longer uses it",
               self.name, tap, why)
        self._tap_gone = True
        self._rx_wanted = self._rx_more = False
        if self._tx is not None:
            self._tx.tap_gone = True
            self._tx_more = True  # a frame stalled on the tap is dropped and its chain returned
        self._update_tap_mask()
        self.set_link(False)

    def _fail(self, reason: str) -> None:
        """The driver broke a ring: stop touching the queues and have the device reset."""
        self._active = False
        # a guest can break its rings again after every reset: the rate-limited log
        events(f"{self.name}: broken ring", ERROR, "%s: %s; device stopped until the driver resets it", self.name, reason)
        # the transport (if any) sets NEEDS_RESET now and ignores notifications until the
        # driver resets; a bare device raises the error from the next process_queue
        self._broken = reason
        self.set_needs_reset(reason)

    # -- for the glue and tests ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Activated, and the driver has not broken a ring."""
        return self._active

    @property
    def rx_polling(self) -> bool:
        """The worker waits for frames from the tap (the driver has receive buffers)."""
        return self._active and self._rx_wanted and not self._tap_gone

    def __repr__(self) -> str:
        return f"VirtioNet({self.name}, mac={format_mac(self.mac)}, tap={self.tap!r})"


def _drain(fd: int) -> bool:
    """Read an eventfd to zero; True if it was signalled."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return False
    return True
