"""The virtio entropy device (virtio 1.2 §5.4): no feature bits, no configuration space, one
request queue. The driver posts device-writable buffers; the device fills them with random
bytes and returns them. No pluggy here, only :mod:`microvm.api`.

The bytes come from ``getrandom(2)`` written straight into the guest's buffers (no copy in
Python): the kernel's CSPRNG is what QEMU's default ``rng-random``/``rng-builtin`` backends
read too.

QEMU's rate limit (``-device virtio-rng-device,max-bytes=N,period=MS``): at most
``max_bytes`` bytes are handed out per ``period_ms`` milliseconds. As in QEMU 7.2's
``virtio_rng_process``/``check_rate_limit``: a period starts with a processing of the
queue (DRIVER_OK, a notification) while none is running; when it ends, the timer refills
the quota and the queue is processed once more (that processing starts no period; the next
one does). Requests beyond the quota wait in the ring, not popped, until then.

The timer runs on the machine's timer thread, which never touches the queue: it refills
the quota and asks the transport for a processing (``notify_queue``), so the queue is only
ever used on the device's worker, with the transport's error handling.
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from typing import TYPE_CHECKING, Callable

from microvm.api import VIRTIO_ID_RNG, VirtioBackend, get_logger

if TYPE_CHECKING:
    from microvm.api import GuestMemory, Virtqueue

log = get_logger("microvm.virtio_rng")

#: QEMU's defaults (``hw/virtio/virtio-rng.c``): no limit to speak of, a 65.536 s period
DEFAULT_MAX_BYTES = (1 << 63) - 1
DEFAULT_PERIOD_MS = 1 << 16
#: QEMU's queue size for virtio-rng (``virtio_add_queue(vdev, 8, handle_input)``)
QUEUE_SIZE = 8

_libc = ctypes.CDLL(None, use_errno=True)
_getrandom = _libc.getrandom
_getrandom.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint)
_getrandom.restype = ctypes.c_ssize_t


def fill_random(view: memoryview) -> None:
    """Fill a writable buffer (a view of guest RAM) with ``getrandom(2)`` bytes, in place.

    getrandom may return fewer bytes than asked for large requests or when a signal
    interrupts it; it is called until the buffer is full."""
    n = len(view)
    if n == 0:
        return
    buf = (ctypes.c_char * n).from_buffer(view)
    base = ctypes.addressof(buf)
    done = 0
    while done < n:
        got = _getrandom(base + done, n - done, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            raise OSError(err, f"getrandom: {os.strerror(err)}")
        done += got


class VirtioRng(VirtioBackend):
    """virtio-rng-device: one queue of device-writable buffers, filled with random bytes.

    :param max_bytes: at most this many bytes per ``period_ms`` (QEMU's ``max-bytes``).
    :param period_ms: the rate limit's period in milliseconds (QEMU's ``period``).
    :param clock: monotonic nanoseconds (tests pass a fake one).
    :param on_timer_change: called when the device needs its timer looked at again (the
        machine's ``TimerService.wake``), i.e. when it starts waiting for the next period.
    """

    device_id = VIRTIO_ID_RNG
    num_queues = 1
    queue_max_size = QUEUE_SIZE

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        period_ms: int = DEFAULT_PERIOD_MS,
        clock: Callable[[], int] = time.monotonic_ns,
        on_timer_change: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if period_ms <= 0:
            raise ValueError("period_ms must be positive")
        self.max_bytes = max_bytes
        self.period_ns = period_ms * 1_000_000
        self.clock = clock
        self.on_timer_change = on_timer_change or (lambda: None)
        self.label = "virtio-rng"
        #: guards the rate-limit state, shared by the worker (process_queue) and the timer
        #: thread (tick); the queue itself is only used by the worker
        self._lock = threading.Lock()
        self._queue: Virtqueue | None = None
        self._interrupt: Callable[[], None] = lambda: None
        self._quota = max_bytes
        #: when the running period ends (None: none running)
        self._period_end: int | None = None
        #: QEMU's ``activate_timer``: the next processing starts a period
        self._activate_timer = True
        #: the timer refilled the quota; the processing it asked for starts no period
        self._timer_refill = False
        self._throttled = False

    # -- what the device is -----------------------------------------------------------------
    def device_features(self) -> int:
        return 0  # §5.4.3: none

    # -- lifecycle --------------------------------------------------------------------------
    def activate(self, queues: list["Virtqueue"], interrupt: Callable[[], None], memory: "GuestMemory") -> None:
        c = self.counters
        self._count_request = c.counter("requests").inc
        self._count_bytes = c.counter("bytes_read").add
        self._count_throttled = c.counter("throttled").inc
        self._queue = queues[0] if queues and queues[0].ready else None
        self._interrupt = interrupt
        # QEMU processes the queue at DRIVER_OK too (virtio_rng_set_status): that starts a
        # period, and serves what the driver posted before; on the worker, as always
        self.notify_queue(0)

    def reset(self) -> None:
        self._queue = None
        self._interrupt = lambda: None

    def process_queue(self, index: int) -> None:
        self._process(self.clock())

    # -- the timer (the machine's TimerService calls these) ---------------------------------
    def next_deadline(self) -> int | None:
        """When the running period ends, or None."""
        return self._period_end

    def tick(self, now_ns: int) -> None:
        """The period ended: refill the quota and have the queue processed on the device's
        worker (never here: this is the timer thread)."""
        with self._lock:
            if self._period_end is None or now_ns < self._period_end:
                return
            self._quota, self._period_end, self._timer_refill = self.max_bytes, None, True
        self.notify_queue(0)

    # -- internals --------------------------------------------------------------------------
    def _process(self, now: int) -> None:
        """QEMU's virtio_rng_process: start a period if due, then serve what the quota allows."""
        with self._lock:
            by_timer, self._timer_refill = self._timer_refill, False
            if not by_timer and self._activate_timer:
                self._period_end, self._activate_timer = now + self.period_ns, False
                started = True
            else:
                started = False
            if by_timer:
                self._activate_timer = True  # check_rate_limit: the next processing starts one
            quota = self._quota
        if started:
            self.on_timer_change()
        q = self._queue
        if q is None:
            return
        used = 0
        served = False
        while quota - used > 0:
            chain = q.pop()  # QueueError propagates: the transport sets NEEDS_RESET
            if chain is None:
                break
            written = 0
            for view in chain.writable_views():
                n = min(len(view), quota - used - written)
                if n <= 0:
                    break
                fill_random(view[:n])
                written += n
            q.push(chain.head, written)
            self._count_request()
            self._count_bytes(written)
            used += written
            served = True
        with self._lock:
            self._quota -= used
            throttled = self._quota <= 0
        if throttled and q.has_pending():
            if not self._throttled:
                self._count_throttled()
            self._throttled = True
        else:
            self._throttled = False
        if served:
            self._interrupt()
