"""The virtio-mmio transport (virtio 1.2 §4.2): the register file in front of one backend.

One :class:`VirtioMmioTransport` is one 0x200-byte window on the MMIO bus (QEMU's microvm
places eight at ``VIRTIO_MMIO_BASE``; placement is the machine's job). It implements the
registers of §4.2.2 (``Version`` 2) or, with ``legacy=True``, those of §4.2.4 (``Version``
1: GuestPageSize, QueueAlign, QueuePFN), negotiates features, owns the
:class:`~microvm.virtio.queue.Virtqueue` objects and drives the interrupt line. The device
itself is a :class:`~microvm.virtio.backend.VirtioBackend`.

Notifications: a driver's write to QueueNotify (offset :data:`QUEUE_NOTIFY_OFFSET`, value =
queue index) calls the ``on_notify`` callback, by default :meth:`VirtioMmioTransport.notify`
inline. A VMM with ioeventfd registers one eventfd per queue at
``base + QUEUE_NOTIFY_OFFSET`` (4 bytes, datamatch = queue index) and calls ``notify(i)`` from
the device's worker thread when it fires; the write then never reaches this object.

Interrupts: level-triggered, as in QEMU's ``hw/virtio/virtio-mmio.c``: the line is high while
InterruptStatus is non-zero and drops when InterruptACK clears the last bit.

Locks: ``_lock`` guards the register state (short, never held across I/O); ``_dev_lock``
serialises activation, reset and queue processing (``backend.process_queue``). When both are
needed ``_dev_lock`` is taken first.
"""
from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING, Callable

from ..errors import GuestMemoryError
from .backend import VirtioBackend
from .constants import (
    VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_GUEST_PAGE_SIZE,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_ALIGN,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
    VIRTIO_MMIO_QUEUE_DEVICE_LOW,
    VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
    VIRTIO_MMIO_QUEUE_DRIVER_LOW,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_PFN,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_RESET,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH,
    VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_SEL,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_VENDOR_QEMU,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_VERSION_LEGACY,
    VIRTIO_MMIO_VERSION_MODERN,
    VIRTIO_MMIO_WINDOW,
)
from .queue import QueueError, Virtqueue
from ..log import EventLog, get_logger

if TYPE_CHECKING:
    from ..irq import IrqLine
    from ..metrics import CounterGroup
    from ..memory import GuestMemory

log = get_logger("microvm.virtio.mmio")
#: what a driver does wrong, logged once per kind and then counted (microvm.log.EventLog)
guest_error = EventLog(log)
_WARNING, _ERROR = 30, 40

#: Offset of QueueNotify in the window: where the glue puts the per-queue ioeventfds.
QUEUE_NOTIFY_OFFSET = VIRTIO_MMIO_QUEUE_NOTIFY
#: Feature bits every backend gets from this transport (a legacy transport omits VERSION_1).
TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX) | (1 << VIRTIO_F_INDIRECT_DESC)

_U32 = 0xFFFFFFFF


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class VirtioMmioTransport:
    """One virtio-mmio device window (a bus device: ``read(offset, data)`` / ``write(offset, data)``).

    :param backend: the device model.
    :param memory: guest RAM, for the virtqueues.
    :param irq_line: the interrupt line (level semantics, see module docstring).
    :param legacy: present the legacy (Version 1) register file of §4.2.4.
    :param on_notify: called with the queue index on a QueueNotify write that reaches the
        transport (no ioeventfd); defaults to :meth:`notify`, i.e. processing inline.
    :param name: a label for log messages (e.g. ``"virtio-blk:disk0"``).
    :param counters: where to count notifications, interrupts and entries into
        DEVICE_NEEDS_RESET (the device's group in the machine's metrics); the backend
        shares it (``backend.counters``) for its own counts.
    """

    #: Size of the MMIO window to map.
    window_size = VIRTIO_MMIO_WINDOW
    #: Offset of QueueNotify (see :data:`QUEUE_NOTIFY_OFFSET`).
    notify_offset = QUEUE_NOTIFY_OFFSET

    def __init__(
        self,
        backend: VirtioBackend,
        memory: "GuestMemory",
        irq_line: "IrqLine",
        legacy: bool = False,
        on_notify: Callable[[int], None] | None = None,
        name: str | None = None,
        counters: "CounterGroup | None" = None,
    ) -> None:
        self.backend = backend
        self.memory = memory
        self.irq_line = irq_line
        self.legacy = legacy
        self.version = VIRTIO_MMIO_VERSION_LEGACY if legacy else VIRTIO_MMIO_VERSION_MODERN
        self.name = name or f"virtio-{backend.device_id}"
        self.on_notify: Callable[[int], None] = on_notify if on_notify is not None else self.notify
        self._lock = threading.Lock()
        self._dev_lock = threading.RLock()
        self.queues = [Virtqueue(memory, backend.queue_max_size) for _ in range(backend.num_queues)]
        self.config_generation = 0
        self.guest_page_size = 4096  # legacy
        backend._config_notifier = self._config_changed
        backend._queue_notifier = self._backend_notify
        backend._reset_notifier = self.set_needs_reset
        if counters is None:
            from ..metrics import CounterGroup

            counters = CounterGroup(self.name)
        self.counters = counters
        backend.counters = counters
        self._count_notify = counters.counter("notifications").inc
        self._count_interrupt = counters.counter("interrupts").inc
        self._count_needs_reset = counters.counter("needs_reset").inc
        self._count_guest_error = counters.counter("guest_errors").inc
        self._reset_registers()

    # -- public API for the machine glue ---------------------------------------------------
    @property
    def num_queues(self) -> int:
        return len(self.queues)

    @property
    def device_id(self) -> int:
        return self.backend.device_id

    @property
    def activated(self) -> bool:
        return self._activated

    @property
    def needs_reset(self) -> bool:
        return bool(self.status & VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET)

    @property
    def device_features(self) -> int:
        """Everything offered: the backend's bits plus :data:`TRANSPORT_FEATURES`."""
        features = self.backend.device_features() | TRANSPORT_FEATURES
        if self.legacy:
            features &= ~(1 << VIRTIO_F_VERSION_1)
        return features

    def notify(self, queue_index: int) -> None:
        """The driver notified queue ``queue_index``: let the backend process it. Safe to call
        from any thread (the glue's ioeventfd worker); a notification for a queue that is not
        live, or while the device needs a reset, is ignored."""
        self._count_notify()
        with self._dev_lock:
            if not self._activated or self.needs_reset:
                log.debug("%s: notify of queue %d while not active ignored", self.name, queue_index)
                return
            if not 0 <= queue_index < len(self.queues) or not self.queues[queue_index].ready:
                self._log_once("notify", queue_index, "%s: notify of unknown or disabled queue %d ignored", self.name, queue_index)
                return
            try:
                self.backend.process_queue(queue_index)
            except (QueueError, GuestMemoryError) as e:
                self.set_needs_reset(f"queue {queue_index}: {e}")
            except Exception:  # a backend bug must not kill the vCPU or worker thread
                log.exception("%s: backend failed processing queue %d", self.name, queue_index)
                self.set_needs_reset(f"backend error on queue {queue_index}")

    def _backend_notify(self, queue_index: int) -> None:
        """The backend asked for its queue to be processed (VirtioBackend.notify_queue): the
        same path as the driver's QueueNotify, onto the device's worker."""
        self.on_notify(queue_index)

    def set_needs_reset(self, reason: str) -> None:
        """Put the device in DEVICE_NEEDS_RESET (§2.1.2) and, if the driver is up, send a
        configuration-change interrupt. Queue processing stops until the driver resets."""
        self._guest_error("needs reset", "%s: %s; device needs reset", self.name, reason, level=_ERROR)
        with self._lock:
            if not self.status & VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET:
                self._count_needs_reset()
            self.status |= VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET
            driver_ok = bool(self.status & VIRTIO_CONFIG_S_DRIVER_OK)
        if driver_ok:
            self._raise_interrupt(VIRTIO_MMIO_INT_CONFIG)

    def pause(self) -> None:
        """The machine pauses: the backend's own threads stop (:meth:`VirtioBackend.pause`).
        The caller has already stopped whatever calls :meth:`notify`."""
        with self._dev_lock:
            self.backend.pause()

    def resume(self) -> None:
        with self._dev_lock:
            self.backend.resume()

    def close(self) -> None:
        """Reset the device and release the backend's host resources."""
        with self._dev_lock:
            self._reset_device()
        self.backend.close()

    # -- interrupts ------------------------------------------------------------------------
    def _raise_interrupt(self, bits: int) -> None:
        self._count_interrupt()
        with self._lock:
            self.interrupt_status |= bits
            self.irq_line.set_level(True)

    def _used_interrupt(self) -> None:
        """The ``interrupt`` callable given to the backend: check every queue's suppression
        state and raise the used-buffer interrupt if any driver wants one."""
        want = False
        for i, q in enumerate(self.queues):
            try:
                if q.needs_notification():
                    want = True
            except QueueError as e:
                self.set_needs_reset(f"queue {i}: {e}")
                return
        if want:
            self._raise_interrupt(VIRTIO_MMIO_INT_VRING)

    def _config_changed(self) -> None:
        with self._lock:
            self.config_generation = (self.config_generation + 1) & _U32
            driver_ok = bool(self.status & VIRTIO_CONFIG_S_DRIVER_OK)
        if driver_ok:
            self._raise_interrupt(VIRTIO_MMIO_INT_CONFIG)

    # -- bus interface ---------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        if offset >= VIRTIO_MMIO_CONFIG:
            self.backend.config_read(offset - VIRTIO_MMIO_CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            self._log_once("read", offset, "%s: %d-byte read at %#x ignored (registers are 32-bit)", self.name, len(data), offset)
            data[:] = bytes(len(data))
            return
        with self._lock:
            value = self._read_register(offset)
        struct.pack_into("<I", data, 0, value & _U32)

    def write(self, offset: int, data: bytes) -> None:
        if offset >= VIRTIO_MMIO_CONFIG:
            self.backend.config_write(offset - VIRTIO_MMIO_CONFIG, bytes(data))
            return
        if len(data) != 4 or offset % 4:
            self._log_once("write", offset, "%s: %d-byte write at %#x ignored (registers are 32-bit)", self.name, len(data), offset)
            return
        value = int.from_bytes(data, "little")
        if offset == VIRTIO_MMIO_QUEUE_NOTIFY:
            self.on_notify(value)
        elif offset == VIRTIO_MMIO_STATUS:
            self._write_status(value)
        else:
            with self._lock:
                self._write_register(offset, value)

    # -- registers -------------------------------------------------------------------------
    def _reset_registers(self) -> None:
        self.status = 0
        self.interrupt_status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        #: DriverFeatures of selectors 0 and 1 (the 64 bits a device can offer)
        self._driver_features: dict[int, int] = {}
        #: a non-zero value was written with a higher selector: features nobody offered.
        #: Only the fact is kept, so a guest cycling through 2^32 selectors costs nothing
        self._driver_features_beyond = False
        self.queue_sel = 0
        self.shm_sel = 0
        self._queue_align = [4096] * len(self.queues)
        self._queue_pfn = [0] * len(self.queues)
        self._activated = False

    def _selected_queue(self) -> Virtqueue | None:
        if 0 <= self.queue_sel < len(self.queues):
            return self.queues[self.queue_sel]
        return None

    def _read_register(self, offset: int) -> int:
        q = self._selected_queue()
        if offset == VIRTIO_MMIO_MAGIC_VALUE:
            return VIRTIO_MMIO_MAGIC
        if offset == VIRTIO_MMIO_VERSION:
            return self.version
        if offset == VIRTIO_MMIO_DEVICE_ID:
            return self.backend.device_id
        if offset == VIRTIO_MMIO_VENDOR_ID:
            return VIRTIO_MMIO_VENDOR_QEMU
        if offset == VIRTIO_MMIO_DEVICE_FEATURES:
            if self.device_features_sel > 1:
                return 0
            return (self.device_features >> (32 * self.device_features_sel)) & _U32
        if offset == VIRTIO_MMIO_QUEUE_NUM_MAX:
            return q.max_size if q else 0
        if offset == VIRTIO_MMIO_INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == VIRTIO_MMIO_STATUS:
            return self.status
        if self.legacy:
            if offset == VIRTIO_MMIO_QUEUE_PFN:
                return self._queue_pfn[self.queue_sel] if q else 0
        else:
            if offset == VIRTIO_MMIO_QUEUE_READY:
                return int(q.ready) if q else 0
            if offset == VIRTIO_MMIO_CONFIG_GENERATION:
                return self.config_generation
            if offset in (VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_LEN_HIGH, VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_BASE_HIGH):
                return _U32  # no shared memory regions: length reads as -1 (§4.2.2)
            if offset == VIRTIO_MMIO_QUEUE_RESET:
                return 0
            # Write-only per the spec, but QEMU reads them back; so do we (for debugging).
            if q and offset in (VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DRIVER_LOW, VIRTIO_MMIO_QUEUE_DEVICE_LOW):
                return self._queue_addr(q, offset) & _U32
            if q and offset in (VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, VIRTIO_MMIO_QUEUE_DEVICE_HIGH):
                return self._queue_addr(q, offset - 4) >> 32
        self._log_once("read", offset, "%s: read of write-only or unknown register %#x", self.name, offset)
        return 0

    @staticmethod
    def _queue_addr(q: Virtqueue, low_offset: int) -> int:
        return {
            VIRTIO_MMIO_QUEUE_DESC_LOW: q.desc_addr,
            VIRTIO_MMIO_QUEUE_DRIVER_LOW: q.avail_addr,
            VIRTIO_MMIO_QUEUE_DEVICE_LOW: q.used_addr,
        }[low_offset]

    def _write_register(self, offset: int, value: int) -> None:
        """Every register write but Status and QueueNotify; called with ``_lock`` held."""
        q = self._selected_queue()
        if offset == VIRTIO_MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == VIRTIO_MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == VIRTIO_MMIO_DRIVER_FEATURES:
            if self.status & VIRTIO_CONFIG_S_FEATURES_OK or self._activated:
                self._guest_error("late DriverFeatures", "%s: DriverFeatures written after negotiation; ignored", self.name)
            else:
                if self.driver_features_sel <= 1:
                    self._driver_features[self.driver_features_sel] = value
                elif value:
                    self._driver_features_beyond = True
        elif offset == VIRTIO_MMIO_QUEUE_SEL:
            self.queue_sel = value
        elif offset == VIRTIO_MMIO_INTERRUPT_ACK:
            self.interrupt_status &= ~value
            if self.interrupt_status == 0:
                self.irq_line.set_level(False)
        elif offset == VIRTIO_MMIO_SHM_SEL and not self.legacy:
            self.shm_sel = value
        elif offset == VIRTIO_MMIO_QUEUE_RESET and not self.legacy:
            self._guest_error("QueueReset", "%s: QueueReset written but VIRTIO_F_RING_RESET is not offered; ignored", self.name)
        elif offset == VIRTIO_MMIO_GUEST_PAGE_SIZE and self.legacy:
            self.guest_page_size = value
        elif offset in (
            VIRTIO_MMIO_QUEUE_NUM,
            VIRTIO_MMIO_QUEUE_READY,
            VIRTIO_MMIO_QUEUE_ALIGN,
            VIRTIO_MMIO_QUEUE_PFN,
            VIRTIO_MMIO_QUEUE_DESC_LOW,
            VIRTIO_MMIO_QUEUE_DESC_HIGH,
            VIRTIO_MMIO_QUEUE_DRIVER_LOW,
            VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
            VIRTIO_MMIO_QUEUE_DEVICE_LOW,
            VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
        ):
            self._write_queue_register(q, offset, value)
        else:
            self._log_once("write", offset, "%s: write of %#x to read-only or unknown register %#x ignored", self.name, value, offset)

    def _write_queue_register(self, q: Virtqueue | None, offset: int, value: int) -> None:
        if q is None:
            self._log_once("queue_sel", self.queue_sel, "%s: queue register %#x written with QueueSel %d out of range", self.name, offset, self.queue_sel)
            return
        if self._activated:
            # Without VIRTIO_F_RING_RESET a live queue can't be reconfigured (§4.2.3.2); the
            # worker thread owns it now.
            self._guest_error(f"queue register {offset:#x} after DRIVER_OK",
                              "%s: queue %d register %#x written after DRIVER_OK; ignored", self.name, self.queue_sel, offset)
            return
        if self.legacy:
            if offset == VIRTIO_MMIO_QUEUE_NUM:
                q.size = value
            elif offset == VIRTIO_MMIO_QUEUE_ALIGN:
                self._queue_align[self.queue_sel] = value
            elif offset == VIRTIO_MMIO_QUEUE_PFN:
                self._queue_pfn[self.queue_sel] = value
                self._legacy_place(q, value, self._queue_align[self.queue_sel])
            else:
                self._log_once("write", offset, "%s: write to modern register %#x on a legacy transport ignored", self.name, offset)
            return
        if offset == VIRTIO_MMIO_QUEUE_READY:
            q.ready = bool(value & 1)
            return
        if q.ready:
            self._guest_error(f"queue register {offset:#x} while ready",
                              "%s: queue %d register %#x written while QueueReady=1; ignored", self.name, self.queue_sel, offset)
            return
        if offset == VIRTIO_MMIO_QUEUE_NUM:
            q.size = value
        elif offset == VIRTIO_MMIO_QUEUE_ALIGN or offset == VIRTIO_MMIO_QUEUE_PFN:
            self._log_once("write", offset, "%s: write to legacy register %#x on a modern transport ignored", self.name, offset)
        else:
            attr = {
                VIRTIO_MMIO_QUEUE_DESC_LOW: "desc_addr",
                VIRTIO_MMIO_QUEUE_DESC_HIGH: "desc_addr",
                VIRTIO_MMIO_QUEUE_DRIVER_LOW: "avail_addr",
                VIRTIO_MMIO_QUEUE_DRIVER_HIGH: "avail_addr",
                VIRTIO_MMIO_QUEUE_DEVICE_LOW: "used_addr",
                VIRTIO_MMIO_QUEUE_DEVICE_HIGH: "used_addr",
            }[offset]
            old = getattr(q, attr)
            if offset & 4:  # the *_HIGH registers sit 4 bytes above *_LOW
                setattr(q, attr, (old & _U32) | (value << 32))
            else:
                setattr(q, attr, (old & ~_U32) | value)

    def _legacy_place(self, q: Virtqueue, pfn: int, align: int) -> None:
        """Legacy layout (§2.7 "Legacy Interfaces", ``vring_init``): descriptors at
        ``pfn * GuestPageSize``, the avail ring right after them, the used ring at the next
        ``QueueAlign`` boundary. PFN 0 stops the queue."""
        if pfn == 0:
            q.ready = False
            return
        if not _is_power_of_two(self.guest_page_size) or not _is_power_of_two(align):
            self._guest_error("bad GuestPageSize/QueueAlign", "%s: GuestPageSize %#x / QueueAlign %#x not a power of two",
                              self.name, self.guest_page_size, align)
            q.ready = True
            q.desc_addr = q.avail_addr = q.used_addr = -1  # refused by Virtqueue.validate
            return
        size = q.size
        q.desc_addr = pfn * self.guest_page_size
        q.avail_addr = q.desc_addr + 16 * size
        q.used_addr = (q.avail_addr + 6 + 2 * size + align - 1) & ~(align - 1)
        q.ready = True

    # -- status and lifecycle --------------------------------------------------------------
    def _write_status(self, value: int) -> None:
        with self._dev_lock:
            if value == 0:
                self._reset_device()
                return
            with self._lock:
                old = self.status
                new = (value & ~VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET) | (old & VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET)
                added = new & ~old
                if added & VIRTIO_CONFIG_S_FEATURES_OK and not self.legacy:
                    why = self._refuse_features()
                    if why:
                        self._guest_error("FEATURES_OK refused", "%s: FEATURES_OK refused: %s", self.name, why)
                        new &= ~VIRTIO_CONFIG_S_FEATURES_OK
                self.status = new
            if (
                added & VIRTIO_CONFIG_S_DRIVER_OK
                and not self._activated
                and not new & VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET
            ):
                if self.legacy or new & VIRTIO_CONFIG_S_FEATURES_OK:
                    self._activate()
                else:
                    self._guest_error("DRIVER_OK without FEATURES_OK", "%s: DRIVER_OK without FEATURES_OK; device not started", self.name)

    def _driver_feature_bits(self) -> int:
        return self._driver_features.get(0, 0) | (self._driver_features.get(1, 0) << 32)

    def _refuse_features(self) -> str | None:
        """Why the driver's features can't be accepted (§3.1.1 step 5), or None."""
        if self._driver_features_beyond:
            return "feature bits beyond DriverFeaturesSel 1 were never offered"
        accepted = self._driver_feature_bits()
        unoffered = accepted & ~self.device_features
        if unoffered:
            return f"driver accepted features {unoffered:#x} that were not offered"
        if not accepted & (1 << VIRTIO_F_VERSION_1):
            return "VIRTIO_F_VERSION_1 not accepted (legacy drivers need a legacy transport)"
        return None

    def _activate(self) -> None:
        """DRIVER_OK: validate the enabled queues and start the backend. ``_dev_lock`` held."""
        features = self._driver_feature_bits() & self.device_features
        event_idx = bool(features & (1 << VIRTIO_F_RING_EVENT_IDX))
        # validate and mark active under the register lock: another vCPU writing the queue
        # registers between the check and the commit would otherwise go live unchecked
        with self._lock:
            try:
                for i, q in enumerate(self.queues):
                    q.event_idx = event_idx
                    if q.ready:
                        try:
                            q.validate()
                        except QueueError as e:
                            raise QueueError(f"queue {i}: {e}") from None
            except QueueError as e:
                reason: str | None = str(e)
            else:
                reason = None
                self._activated = True  # from here on queue registers are refused
        if reason is not None:
            self.set_needs_reset(reason)
            return
        self.backend.ack_features(features)
        try:
            self.backend.activate(list(self.queues), self._used_interrupt, self.memory)
        except Exception:
            log.exception("%s: backend failed to activate", self.name)
            with self._lock:
                self._activated = False
            self.set_needs_reset("backend activation failed")
            return
        log.info("%s: activated with features %#x", self.name, features)

    def _reset_device(self) -> None:
        """Status = 0 (§2.4): back to the power-on state. ``_dev_lock`` held."""
        if self._activated:
            try:
                self.backend.reset()
            except Exception:
                log.exception("%s: backend reset failed", self.name)
        for q in self.queues:
            q.reset()
        with self._lock:
            self._reset_registers()
            self.irq_line.set_level(False)

    def _guest_error(self, what: str, msg: str, *args: object, level: int = _WARNING) -> None:
        """A driver did something the device ignores or refuses: counted in the device's
        ``guest_errors``; the first of each kind is logged, then summaries (EventLog)."""
        self._count_guest_error()
        guest_error(f"{self.name}: {what}", level, msg, *args)

    def _log_once(self, kind: str, key: int, msg: str, *args: object) -> None:
        self._guest_error(f"{kind} {key:#x}", msg, *args)
