"""The split virtqueue (virtio 1.2 §2.7), device side.

A :class:`Virtqueue` reads what the driver made available and writes what the device used,
in guest memory, through :class:`~microvm.memory.GuestMemory`. Everything it reads is
guest-controlled, so every read is bounds-checked and every inconsistency (a descriptor
outside guest RAM, a loop, a chain longer than the queue, an index that jumps too far) is a
:class:`QueueError`. The transport turns that into DEVICE_NEEDS_RESET (§2.1.2); the queue
itself never writes anything but the used ring and ``avail_event``, so a hostile guest can't
make it change any other byte.

Buffers are handed to the device as zero-copy ``memoryview`` slices of guest RAM
(:meth:`DescriptorChain.readable_views` / :meth:`DescriptorChain.writable_views`), ready for
``os.preadv``/``os.pwritev``.

Memory ordering: the driver runs on other CPUs. Loads are not reordered with loads and stores
not with stores on x86 (TSO), and CPython performs the accesses in program order, so the
rmb/wmb of §2.7.13 need nothing. The two store-then-load orderings that need a full barrier
(publishing ``used->idx`` before reading ``used_event``; publishing ``avail_event`` before
re-reading ``avail->idx``) go through :func:`full_barrier`.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, NamedTuple

from ..errors import GuestMemoryError, MicrovmError
from .constants import (
    VIRTQ_AVAIL_ALIGN,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_ALIGN,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_SIZE,
    VIRTQ_MAX_SIZE,
    VIRTQ_USED_ALIGN,
    VIRTQ_USED_ELEM_SIZE,
)
from ..log import get_logger

if TYPE_CHECKING:
    from ..memory import GuestMemory

log = get_logger("microvm.virtio.queue")

#: Most descriptors an indirect table may hold. The spec bounds a chain by the queue size
#: (§2.7.5.3.1), but Linux allocates indirect tables longer than a small ring; like QEMU
#: (``VIRTQUEUE_MAX_SIZE``) we accept indirect tables up to this length.
MAX_INDIRECT_DESCRIPTORS = 1024

_DESC = struct.Struct("<QIHH")
_barrier_lock = threading.Lock()


def full_barrier() -> None:
    """A full memory barrier (x86 ``mfence`` equivalent): taking a lock is a locked
    read-modify-write, which orders every earlier store before every later load."""
    with _barrier_lock:
        pass


class QueueError(MicrovmError):
    """The driver broke the virtqueue rules (§2.7); the device must be reset.

    Raised by :meth:`Virtqueue.pop`, :meth:`Virtqueue.push` and :meth:`Virtqueue.validate`.
    The transport catches it, sets DEVICE_NEEDS_RESET and sends a configuration-change
    interrupt; nothing else happens to the VMM.
    """


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """§2.7.10 / Linux ``vring_need_event``: has ``event_idx`` been crossed going from
    ``old_idx`` to ``new_idx``? All arithmetic is modulo 2**16."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


class Descriptor(NamedTuple):
    """One buffer of a chain: guest-physical address, length and whether the device may write it."""

    addr: int
    length: int
    write: bool


@dataclass
class DescriptorChain:
    """What :meth:`Virtqueue.pop` returns: the head index (to give back in :meth:`Virtqueue.push`)
    and the buffers in chain order, device-readable ones first (§2.7.4.2, checked)."""

    head: int
    descriptors: list[Descriptor]
    memory: "GuestMemory" = field(repr=False)

    def __iter__(self) -> Iterator[Descriptor]:
        return iter(self.descriptors)

    def __len__(self) -> int:
        return len(self.descriptors)

    def readable(self) -> list[Descriptor]:
        return [d for d in self.descriptors if not d.write]

    def writable(self) -> list[Descriptor]:
        return [d for d in self.descriptors if d.write]

    @property
    def readable_len(self) -> int:
        return sum(d.length for d in self.descriptors if not d.write)

    @property
    def writable_len(self) -> int:
        return sum(d.length for d in self.descriptors if d.write)

    def readable_views(self) -> list[memoryview]:
        """Zero-copy views of the device-readable buffers (for ``os.pwritev``)."""
        return [self.memory.view(d.addr, d.length) for d in self.descriptors if not d.write]

    def writable_views(self) -> list[memoryview]:
        """Zero-copy views of the device-writable buffers (for ``os.preadv``)."""
        return [self.memory.view(d.addr, d.length) for d in self.descriptors if d.write]

    def read_all(self) -> bytes:
        """A copy of everything device-readable, concatenated (for small requests)."""
        return b"".join(bytes(v) for v in self.readable_views())


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class Virtqueue:
    """One split virtqueue as the device sees it.

    ``size`` is the queue size the driver chose (QueueNum), ``max_size`` what the device
    offers (QueueNumMax). The transport fills ``desc_addr``/``avail_addr``/``used_addr``
    ("Descriptor Area", "Driver Area", "Device Area"), ``ready`` and ``event_idx`` (whether
    VIRTIO_F_RING_EVENT_IDX was negotiated) before the device is activated.

    After activation a queue belongs to the device's worker thread: ``pop``, ``push`` and
    ``needs_notification`` are not meant to be called from two threads at once.
    """

    def __init__(self, memory: "GuestMemory", size: int, max_size: int | None = None) -> None:
        self.memory = memory
        self.max_size = size if max_size is None else max_size
        if not _is_power_of_two(self.max_size) or self.max_size > VIRTQ_MAX_SIZE:
            raise ValueError(f"virtqueue maximum size {self.max_size} is not a power of two <= {VIRTQ_MAX_SIZE}")
        self.reset()
        self.size = size

    def reset(self) -> None:
        """Back to the state after a device reset (§2.4): not ready, indexes zero."""
        self.size = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.event_idx = False
        #: Next avail ring entry to consume ("last_avail_idx"), free-running modulo 2**16.
        self.next_avail = 0
        #: Value of used->idx the device last published, modulo 2**16.
        self.next_used = 0
        self._signalled_used = 0
        self._signalled_valid = False
        self._unsignalled = 0

    # -- layout -----------------------------------------------------------------------------
    def _avail_ring(self, i: int) -> int:
        return self.avail_addr + 4 + 2 * i

    def _used_event_addr(self) -> int:
        return self.avail_addr + 4 + 2 * self.size

    def _avail_event_addr(self) -> int:
        return self.used_addr + 4 + VIRTQ_USED_ELEM_SIZE * self.size

    def validate(self) -> None:
        """Check the driver's configuration: size a power of two within QueueNumMax, each
        area aligned (§2.7 alignment table) and wholly inside guest RAM."""
        size = self.size
        if not _is_power_of_two(size) or size > self.max_size:
            raise QueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        areas = (
            ("descriptor table", self.desc_addr, VIRTQ_DESC_SIZE * size, VIRTQ_DESC_ALIGN),
            ("available ring", self.avail_addr, 6 + 2 * size, VIRTQ_AVAIL_ALIGN),
            ("used ring", self.used_addr, 6 + VIRTQ_USED_ELEM_SIZE * size, VIRTQ_USED_ALIGN),
        )
        for name, addr, length, align in areas:
            if addr < 0:
                raise QueueError(f"{name} address was not set up correctly")
            if addr % align:
                raise QueueError(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not self.memory.contains(addr, length):
                raise QueueError(f"{name} [{addr:#x}, +{length:#x}) is outside guest RAM")

    # -- driver -> device -------------------------------------------------------------------
    def avail_idx(self) -> int:
        """The driver's ``avail->idx``."""
        try:
            return self.memory.read_u16(self.avail_addr + 2)
        except GuestMemoryError as e:
            raise QueueError(f"available ring unreadable: {e}") from None

    def _pending(self) -> int:
        pending = (self.avail_idx() - self.next_avail) & 0xFFFF
        if pending > self.size:
            raise QueueError(
                f"avail idx moved {pending} entries ahead of the device, more than the queue size {self.size}"
            )
        return pending

    def has_pending(self) -> bool:
        """Whether :meth:`pop` would return a chain."""
        self._check_ready()
        return self._pending() > 0

    def _check_ready(self) -> None:
        if not self.ready:
            raise QueueError("queue used while not ready")

    def pop(self) -> DescriptorChain | None:
        """Take the next available descriptor chain, or None when the driver has made none.

        With VIRTIO_F_RING_EVENT_IDX, publishes ``avail_event`` (§2.7.10) and, when the ring
        looks empty, re-reads ``avail->idx`` after a barrier so a notification suppressed by
        the old ``avail_event`` is never lost.
        """
        self._check_ready()
        pending = self._pending()
        if pending == 0:
            if not self.event_idx:
                return None
            self._set_avail_event()
            full_barrier()
            if self._pending() == 0:
                return None
        try:
            head = self.memory.read_u16(self._avail_ring(self.next_avail % self.size))
        except GuestMemoryError as e:
            raise QueueError(f"available ring unreadable: {e}") from None
        chain = self._walk(head)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if self.event_idx:
            self._set_avail_event()
        return chain

    def _set_avail_event(self) -> None:
        try:
            self.memory.write_u16(self._avail_event_addr(), self.next_avail)
        except GuestMemoryError as e:
            raise QueueError(f"used ring unwritable: {e}") from None

    def _read_desc(self, table: int, index: int) -> tuple[int, int, int, int]:
        return _DESC.unpack(self.memory.view(table + VIRTQ_DESC_SIZE * index, VIRTQ_DESC_SIZE))

    def _walk(self, head: int) -> DescriptorChain:
        """Follow a chain from ``head`` (§2.7.5), descending into at most one indirect table."""
        size = self.size
        if head >= size:
            raise QueueError(f"avail ring names descriptor {head}, beyond the queue size {size}")
        out: list[Descriptor] = []
        table, table_len, limit = self.desc_addr, size, size
        index, visited, indirect = head, 0, False
        seen_write = False
        try:
            while True:
                visited += 1
                if visited > limit:
                    what = "indirect table" if indirect else "chain"
                    raise QueueError(f"descriptor {what} from head {head} loops or is longer than {limit}")
                addr, length, flags, nxt = self._read_desc(table, index)
                if flags & VIRTQ_DESC_F_INDIRECT:
                    if indirect:
                        raise QueueError(f"chain {head}: indirect descriptor inside an indirect table")
                    if flags & VIRTQ_DESC_F_NEXT:
                        raise QueueError(f"chain {head}: indirect descriptor with VIRTQ_DESC_F_NEXT")
                    if length == 0 or length % VIRTQ_DESC_SIZE:
                        raise QueueError(f"chain {head}: indirect table length {length} not a multiple of 16")
                    n = length // VIRTQ_DESC_SIZE
                    if n > MAX_INDIRECT_DESCRIPTORS:
                        raise QueueError(f"chain {head}: indirect table of {n} descriptors is too long")
                    if not self.memory.contains(addr, length):
                        raise QueueError(f"chain {head}: indirect table [{addr:#x}, +{length:#x}) outside guest RAM")
                    table, table_len, limit = addr, n, n
                    index, visited, indirect = 0, 0, True
                    continue
                write = bool(flags & VIRTQ_DESC_F_WRITE)
                if write:
                    seen_write = True
                elif seen_write:
                    raise QueueError(f"chain {head}: device-readable buffer after a device-writable one")
                if not self.memory.contains(addr, length):
                    raise QueueError(f"chain {head}: buffer [{addr:#x}, +{length:#x}) outside guest RAM")
                out.append(Descriptor(addr, length, write))
                if not flags & VIRTQ_DESC_F_NEXT:
                    break
                if nxt >= table_len:
                    raise QueueError(f"chain {head}: next descriptor {nxt} beyond the table of {table_len}")
                index = nxt
        except GuestMemoryError as e:
            raise QueueError(f"chain {head}: descriptor unreadable: {e}") from None
        return DescriptorChain(head, out, self.memory)

    # -- device -> driver -------------------------------------------------------------------
    def push(self, head: int, written_len: int) -> None:
        """Return chain ``head`` to the driver with ``written_len`` bytes written into its
        device-writable buffers (§2.7.8): fill the used element, then publish ``used->idx``."""
        self._check_ready()
        if not 0 <= head < self.size:
            raise QueueError(f"push of descriptor {head}, beyond the queue size {self.size}")
        elem = self.used_addr + 4 + VIRTQ_USED_ELEM_SIZE * (self.next_used % self.size)
        try:
            self.memory.write_u32(elem, head)
            self.memory.write_u32(elem + 4, written_len)
            self.next_used = (self.next_used + 1) & 0xFFFF
            self.memory.write_u16(self.used_addr + 2, self.next_used)
        except GuestMemoryError as e:
            raise QueueError(f"used ring unwritable: {e}") from None
        self._unsignalled += 1

    def needs_notification(self) -> bool:
        """Whether the driver wants a used-buffer notification for what was pushed since the
        last call (§2.7.7): ``VIRTQ_AVAIL_F_NO_INTERRUPT`` without event idx, else
        ``vring_need_event(used_event, new, old)`` (§2.7.10). Returns False when nothing was
        pushed. Each call consumes the pushes it judged."""
        if self._unsignalled == 0 or not self.ready:
            return False
        full_barrier()  # used->idx must be visible before we read the driver's suppression
        pushed, self._unsignalled = self._unsignalled, 0
        old, new = self._signalled_used, self.next_used
        self._signalled_used = new
        try:
            if not self.event_idx:
                return not self.memory.read_u16(self.avail_addr) & VIRTQ_AVAIL_F_NO_INTERRUPT
            used_event = self.memory.read_u16(self._used_event_addr())
        except GuestMemoryError as e:
            raise QueueError(f"available ring unreadable: {e}") from None
        valid, self._signalled_valid = self._signalled_valid, True
        if not valid or pushed >= 0x10000:
            return True
        return vring_need_event(used_event, new, old)

    def __repr__(self) -> str:
        return (
            f"Virtqueue(size={self.size}, ready={self.ready}, desc={self.desc_addr:#x}, "
            f"avail={self.avail_addr:#x}, used={self.used_addr:#x}, next_avail={self.next_avail}, "
            f"next_used={self.next_used})"
        )
