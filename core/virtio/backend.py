"""The interface a virtio device backend implements (blk, net, console, a third party's rng).

The transport (:class:`microvm.virtio.mmio.VirtioMmioTransport`) owns the register file,
feature negotiation, the virtqueues and the interrupt; a backend only says what it is
(``device_id``, ``num_queues``, ``queue_max_size``, ``device_features()``), serves its
configuration space and processes its queues. ``docs/virtio-backend.md`` has a worked
example.

Threading: ``config_read``/``config_write`` run on a vCPU thread; ``activate``,
``process_queue`` and ``reset`` are serialised by the transport (never two at once) and
``process_queue`` runs on the device's worker thread (or inline on the vCPU thread when the
VMM has no ioeventfd). ``pause``/``resume`` bracket a paused machine (QMP ``stop``/``cont``):
a backend with a thread of its own stops touching guest memory in ``pause``.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Callable, ClassVar
from ..log import get_logger

if TYPE_CHECKING:
    from ..memory import GuestMemory
    from ..metrics import CounterGroup
    from .queue import Virtqueue

log = get_logger("microvm.virtio")


class VirtioBackend(abc.ABC):
    """Base class of a virtio device model. Subclass it and fill in the abstract methods.

    Class attributes to set:

    * ``device_id`` -- the virtio device ID (§5, e.g. ``VIRTIO_ID_BLOCK`` = 2);
    * ``num_queues`` -- how many virtqueues the device has;
    * ``queue_max_size`` -- QueueNumMax for every queue (a power of two, at most 32768).

    After negotiation ``acked_features`` holds the features the driver accepted (device and
    transport bits together), set by :meth:`ack_features` before :meth:`activate`.
    """

    device_id: ClassVar[int]
    num_queues: int = 1
    queue_max_size: int = 256
    acked_features: int = 0
    #: a name for log lines and counters when the user gave the device no ``id=``
    label: str = ""
    _config_notifier: Callable[[], None] | None = None
    _queue_notifier: Callable[[int], None] | None = None
    _reset_notifier: Callable[[str], None] | None = None
    _counters: "CounterGroup | None" = None

    @property
    def counters(self) -> "CounterGroup":
        """This device's counters (shared with its transport, which counts notifications,
        interrupts and NEEDS_RESET): count what the device does, e.g.
        ``self.counters.counter("bytes_read").add(n)`` (look the counter up once, in
        ``activate`` or ``__init__``: counters made before the device is placed move into the
        machine's group with it)."""
        if self._counters is None:
            from ..metrics import CounterGroup

            self._counters = CounterGroup(self.label or type(self).__name__)
        return self._counters

    @counters.setter
    def counters(self, group: "CounterGroup") -> None:
        if self._counters is not None and self._counters is not group:
            group.adopt(self._counters)
        self._counters = group

    # -- what the device is ---------------------------------------------------------------
    @abc.abstractmethod
    def device_features(self) -> int:
        """The device-specific feature bits offered (bits 0-23 and any above 41). The
        transport adds VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX and VIRTIO_F_INDIRECT_DESC."""

    def ack_features(self, features: int) -> None:
        """The driver accepted ``features`` (a subset of what was offered, FEATURES_OK set)."""
        self.acked_features = features

    # -- configuration space (§4.2.2 "Config", offset 0x100 of the window) -----------------
    def config_space(self) -> bytes:
        """The current configuration structure, little endian. The default ``config_read``
        serves it; bytes past its end read as zero."""
        return b""

    def config_read(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` with ``len(data)`` bytes of configuration space at ``offset``."""
        blob = self.config_space()[offset : offset + len(data)]
        data[: len(blob)] = blob
        data[len(blob) :] = bytes(len(data) - len(blob))

    def config_write(self, offset: int, data: bytes) -> None:
        """The driver wrote ``data`` at ``offset`` of configuration space (most devices' config
        is read-only: the default ignores the write)."""
        log.debug("%s: write of %s to read-only config offset %#x ignored", type(self).__name__, data.hex(), offset)

    def config_changed(self) -> None:
        """Call after changing configuration space on your own (a disk resize, a link going
        down): the transport bumps ConfigGeneration and sends a configuration-change
        interrupt once the driver is up."""
        if self._config_notifier is not None:
            self._config_notifier()

    # -- work that does not start with the driver's notification --------------------------
    def notify_queue(self, index: int) -> None:
        """Have queue ``index`` processed as if the driver had notified it: the transport
        runs :meth:`process_queue` on the device's worker, serialised with activation and
        reset and with its error handling (a ``QueueError`` sets DEVICE_NEEDS_RESET). For
        work that starts elsewhere: a timer (virtio-rng's rate limit), host input. Safe from
        any thread; ignored while the device is not active."""
        if self._queue_notifier is not None:
            self._queue_notifier(index)

    def set_needs_reset(self, reason: str) -> None:
        """Report a broken ring found on a thread of the device's own (outside
        :meth:`process_queue`): the transport sets DEVICE_NEEDS_RESET (§2.1.2) and tells the
        driver. Stop touching the queues until :meth:`reset`."""
        if self._reset_notifier is not None:
            self._reset_notifier(reason)

    # -- lifecycle ------------------------------------------------------------------------
    @abc.abstractmethod
    def activate(self, queues: list["Virtqueue"], interrupt: Callable[[], None], memory: "GuestMemory") -> None:
        """The driver set DRIVER_OK. ``queues[i]`` is virtqueue ``i`` (``q.ready`` is False for
        a queue the driver did not enable); ``interrupt()`` asks the transport for a
        used-buffer notification, which it sends only if the driver wants one (event idx,
        NO_INTERRUPT). Start host-side I/O here (e.g. register a tap fd with a poller)."""

    @abc.abstractmethod
    def process_queue(self, index: int) -> None:
        """The driver notified queue ``index``: pop chains, do the I/O, push used entries,
        then call ``interrupt()`` once. Raise :class:`~microvm.virtio.queue.QueueError` (or
        let one from the queue propagate) when the driver broke the ring rules: the transport
        sets DEVICE_NEEDS_RESET. Return an I/O error to the guest in the device's own status
        format rather than raising."""

    def reset(self) -> None:
        """The driver reset the device (Status = 0) or it is being torn down: drop the queues
        and any in-flight state. Host resources (the disk file) stay open for the next
        activation."""

    def pause(self) -> None:
        """The machine is pausing (QMP ``stop``, a guest shutdown with ``-no-shutdown``): from
        when this returns until :meth:`resume`, write no guest memory and raise no interrupt.
        The vCPUs are already parked and the transport's notification worker is quiesced
        (``process_queue`` is not running and will not be called); only a backend with a
        thread of its own (a network device's receive loop, a console's input) has anything
        to do: hold that thread, leaving host input queued (in the tap, the socket). Called
        under the transport's device lock, so never together with ``activate``,
        ``process_queue`` or ``reset``; also called for a device the driver has not
        activated. Default: nothing."""

    def resume(self) -> None:
        """The machine runs again: undo :meth:`pause` (catch up on the input that waited).
        Default: nothing."""

    def close(self) -> None:
        """The machine is going away: release host resources (files, sockets)."""
