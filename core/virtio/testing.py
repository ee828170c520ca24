"""The guest driver's side of virtio, in Python, for testing backends without KVM.

A virtio backend only ever sees what a guest driver leaves in guest RAM (descriptor tables,
the available ring) and the registers it writes (status, features, queue addresses, the
doorbell). The classes here replay exactly that, the way Linux's ``virtio_mmio`` and
``virtio_ring`` drivers do it, against a real :class:`~microvm.memory.GuestMemory` and a
:class:`~microvm.virtio.VirtioMmioTransport`. So a backend, the transport or a bare
:class:`~microvm.virtio.Virtqueue` can be tested in an ordinary unit test: no VM, no
``/dev/kvm``, no guest kernel.

* :class:`DriverQueue`: the driver's half of one split virtqueue (write descriptors and
  chains, publish them, read the used ring back), including the malformed rings a hostile
  guest could write;
* :class:`MmioDriver`: the virtio-mmio registers, Linux's probe handshake and queue setup,
  on the modern (Version 2) and the legacy (Version 1, QEMU 7.2's default) transport;
* :func:`assert_only_changed`: check that a device wrote nothing but what it was allowed to.

The VMM itself never imports this module; it ships in the core package so that device plugins
can test themselves with the driver the core's own tests use (``docs/virtio-backend.md``).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Iterable, Sequence

from . import constants as C

if TYPE_CHECKING:
    from ..memory import GuestMemory
    from .queue import Virtqueue

from .mmio import VirtioMmioTransport  # a backend under test sits on the real transport

__all__ = ["Buffer", "DriverQueue", "MmioDriver", "VirtioMmioTransport", "assert_only_changed", "changed_offsets"]

Buffer = tuple[int, int, bool]
"""One buffer of a chain: (guest physical address, length, device-writable)."""

_DESC = struct.Struct("<QIHH")  # struct virtq_desc: addr, len, flags, next


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


class DriverQueue:
    """The driver's half of a split virtqueue (virtio 1.2 §2.7), written into guest memory.

    The rings are laid out from ``base`` as Linux's ``vring_init`` does with a 4 KiB alignment
    (descriptor table, available ring, then the used ring on the next page), which is also the
    legacy virtio-mmio layout. Like a driver, it writes descriptors first and publishes
    ``avail->idx`` last. The state is in plain attributes (``desc``, ``avail``, ``used``,
    ``avail_idx``, ``last_used``) so a test can lie about any of it.
    """

    def __init__(self, mem: GuestMemory, size: int = 8, base: int = 0x10000) -> None:
        self.mem, self.size = mem, size
        self.desc = base
        self.avail = base + 16 * size
        self.used = _align(self.avail + 6 + 2 * size, 4096)
        self.avail_idx = 0  # the driver's next avail->idx
        self.last_used = 0  # how far get_used() has read the used ring
        self.next_free = 0  # where make_chain() takes its next descriptor
        mem.fill(base, self.used + 6 + 8 * size - base)

    def attach(self, vq: Virtqueue, event_idx: bool = False) -> Virtqueue:
        """Point a device-side queue at these rings, as the transport does at DRIVER_OK
        (for testing a Virtqueue, or a backend's ``process_queue``, without a transport)."""
        vq.size = self.size
        vq.desc_addr, vq.avail_addr, vq.used_addr = self.desc, self.avail, self.used
        vq.event_idx = event_idx
        vq.ready = True
        vq.validate()
        return vq

    def start_at(self, idx: int, vq: Virtqueue) -> None:
        """Pretend ``idx`` requests already went round (to test the 16-bit wrap-around)."""
        self.avail_idx = self.last_used = idx
        vq.next_avail = vq.next_used = vq._signalled_used = idx
        self.mem.write_u16(self.avail + 2, idx)
        self.mem.write_u16(self.used + 2, idx)

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None) -> None:
        """Write descriptor ``i`` of the queue's table, or of the indirect table at ``table``."""
        base = self.desc if table is None else table
        self.mem.write(base + 16 * i, _DESC.pack(addr, length, flags, nxt))

    def make_chain(self, bufs: Sequence[Buffer]) -> int:
        """Write ``bufs`` as a chain of the next free descriptors; return its head (unpublished)."""
        idxs = [(self.next_free + k) % self.size for k in range(len(bufs))]
        self.next_free = (self.next_free + len(bufs)) % self.size
        for k, (addr, length, write) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (C.VIRTQ_DESC_F_WRITE if write else 0) | (0 if last else C.VIRTQ_DESC_F_NEXT)
            self.write_desc(idxs[k], addr, length, flags, 0 if last else idxs[k + 1])
        return idxs[0]

    def make_indirect(self, bufs: Sequence[Buffer], table: int) -> int:
        """Write ``bufs`` as an indirect table at ``table`` and one descriptor pointing at it;
        return that descriptor (unpublished)."""
        for k, (addr, length, write) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (C.VIRTQ_DESC_F_WRITE if write else 0) | (0 if last else C.VIRTQ_DESC_F_NEXT)
            self.write_desc(k, addr, length, flags, 0 if last else k + 1, table=table)
        head = self.next_free
        self.next_free = (self.next_free + 1) % self.size
        self.write_desc(head, table, 16 * len(bufs), C.VIRTQ_DESC_F_INDIRECT)
        return head

    def publish(self, *heads: int) -> None:
        """Put ``heads`` in the available ring, then move ``avail->idx`` past them."""
        for h in heads:
            self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), h)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def add(self, bufs: Sequence[Buffer]) -> int:
        """make_chain + publish, as ``virtqueue_add_sgs``; return the head."""
        head = self.make_chain(bufs)
        self.publish(head)
        return head

    def get_used(self) -> list[tuple[int, int]]:
        """The (head, written length) entries the device used since the last call."""
        idx = self.mem.read_u16(self.used + 2)
        out = []
        while self.last_used != idx:
            e = self.used + 4 + 8 * (self.last_used % self.size)
            out.append((self.mem.read_u32(e), self.mem.read_u32(e + 4)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def set_used_event(self, value: int) -> None:
        """``used_event`` (VIRTIO_F_EVENT_IDX): interrupt me once used->idx passes ``value``."""
        self.mem.write_u16(self.avail + 4 + 2 * self.size, value)

    def set_avail_flags(self, value: int) -> None:
        """``avail->flags``, e.g. VIRTQ_AVAIL_F_NO_INTERRUPT."""
        self.mem.write_u16(self.avail, value)

    @property
    def avail_event(self) -> int:
        """``avail_event`` as the device last wrote it (VIRTIO_F_EVENT_IDX)."""
        return self.mem.read_u16(self.used + 4 + 8 * self.size)

    def used_ring_range(self) -> tuple[int, int]:
        """[start, end) of the used ring: all a device may write besides the buffers it pops."""
        return self.used, self.used + 6 + 8 * self.size


class MmioDriver:
    """A guest's virtio-mmio driver, register by register, as Linux's ``virtio_mmio.c`` does
    it with 32-bit ``readl``/``writel`` (virtio 1.2 §4.2.3 for the modern, Version 2
    transport; §4.2.4 for the legacy, Version 1 one, which the driver finds in the
    ``Version`` register and handles as Linux does: GuestPageSize, QueuePFN, no FEATURES_OK).

    :meth:`probe` is the whole handshake; the single steps are there for tests that stop
    half-way or misbehave on purpose. Override :meth:`driver_probe` for what a device driver
    reads before DRIVER_OK (its configuration space).
    """

    #: the guest's page size (Linux's PAGE_SIZE), for the legacy transport's QueuePFN
    PAGE_SIZE = 4096

    def __init__(self, transport: VirtioMmioTransport) -> None:
        self.transport = transport
        self.memory: GuestMemory = transport.memory
        self.features = 0  # what probe() accepted
        self.queues: list[DriverQueue] = []  # what probe() set up

    @property
    def legacy(self) -> bool:
        """Whether the device presents the legacy (Version 1) register layout."""
        return self.read(C.VIRTIO_MMIO_VERSION) == 1

    def read(self, offset: int, size: int = 4) -> int:
        """Read a register (or, from 0x100, the configuration space) of ``size`` bytes."""
        buf = bytearray(size)
        self.transport.read(offset, memoryview(buf))
        return int.from_bytes(buf, "little")

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.transport.write(offset, value.to_bytes(size, "little"))

    def add_status(self, bits: int) -> None:
        """Set ``bits`` in Status, keeping the others, as ``vm_set_status`` is used."""
        self.write(C.VIRTIO_MMIO_STATUS, self.read(C.VIRTIO_MMIO_STATUS) | bits)

    def device_features(self) -> int:
        """All 64 offered feature bits (DeviceFeatures, high word selected first)."""
        self.write(C.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1)
        hi = self.read(C.VIRTIO_MMIO_DEVICE_FEATURES)
        self.write(C.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0)
        return hi << 32 | self.read(C.VIRTIO_MMIO_DEVICE_FEATURES)

    def set_features(self, features: int) -> None:
        """Write DriverFeatures, high word first, as ``vm_finalize_features``."""
        self.write(C.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
        self.write(C.VIRTIO_MMIO_DRIVER_FEATURES, features >> 32)
        self.write(C.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0)
        self.write(C.VIRTIO_MMIO_DRIVER_FEATURES, features & 0xFFFFFFFF)

    def read_config(self, offset: int, size: int) -> int:
        """A configuration-space field, between two reads of ConfigGeneration as
        ``virtio_cread`` does (a legacy device has no ConfigGeneration: ``vm_generation``
        returns 0 there); raises AssertionError if the generation moved meanwhile."""
        if self.legacy:  # vm_get on Version 1: byte by byte, little endian
            data = bytes(self.read(C.VIRTIO_MMIO_CONFIG + offset + i, 1) for i in range(size))
            return int.from_bytes(data, "little")
        gen = self.read(C.VIRTIO_MMIO_CONFIG_GENERATION)
        value = self.read(C.VIRTIO_MMIO_CONFIG + offset, size)
        if self.read(C.VIRTIO_MMIO_CONFIG_GENERATION) != gen:
            raise AssertionError(f"ConfigGeneration changed while reading config offset {offset:#x}")
        return value

    def setup_queue(self, index: int, dq: DriverQueue) -> None:
        """``vm_setup_vq``: select, check, size, then (Version 2) the three addresses and
        QueueReady, or (Version 1) QueueAlign and the rings' page number in QueuePFN."""
        self.write(C.VIRTIO_MMIO_QUEUE_SEL, index)
        ready = C.VIRTIO_MMIO_QUEUE_PFN if self.legacy else C.VIRTIO_MMIO_QUEUE_READY
        _check(self.read(ready) == 0, f"queue {index} is already ready")
        num_max = self.read(C.VIRTIO_MMIO_QUEUE_NUM_MAX)
        _check(num_max >= dq.size, f"queue {index}: QueueNumMax {num_max} < {dq.size}")
        self.write(C.VIRTIO_MMIO_QUEUE_NUM, dq.size)
        if self.legacy:
            _check(dq.desc % self.PAGE_SIZE == 0 and dq.used == _align(dq.avail + 6 + 2 * dq.size, self.PAGE_SIZE),
                   f"queue {index}: rings not laid out as vring_init does with a {self.PAGE_SIZE}-byte alignment")
            self.write(C.VIRTIO_MMIO_QUEUE_ALIGN, self.PAGE_SIZE)
            self.write(C.VIRTIO_MMIO_QUEUE_PFN, dq.desc // self.PAGE_SIZE)
            return
        for low, addr in ((C.VIRTIO_MMIO_QUEUE_DESC_LOW, dq.desc), (C.VIRTIO_MMIO_QUEUE_DRIVER_LOW, dq.avail), (C.VIRTIO_MMIO_QUEUE_DEVICE_LOW, dq.used)):
            self.write(low, addr & 0xFFFFFFFF)
            self.write(low + 4, addr >> 32)
        self.write(C.VIRTIO_MMIO_QUEUE_READY, 1)
        _check(self.read(C.VIRTIO_MMIO_QUEUE_READY) == 1, f"queue {index} did not become ready")

    def driver_probe(self) -> None:
        """The device driver's own probe (``virtblk_probe``, ...), run by :meth:`probe` after
        the queues are set up and before DRIVER_OK. Nothing here; override to read config."""

    def probe(self, features: int | None = None, queues: int = 1, size: int = 8, base: int = 0x10000) -> list[DriverQueue]:
        """``vm_probe`` + ``virtio_dev_probe`` + ``find_vqs`` + ``virtio_device_ready``, as
        Linux 6.1 does them: check the identification registers (a legacy device gets
        GuestPageSize), reset, ACKNOWLEDGE, DRIVER, accept ``features`` (default: all
        offered), FEATURES_OK (modern only: ``virtio_features_ok`` skips it without
        VIRTIO_F_VERSION_1), set up ``queues`` queues of ``size`` entries with their rings
        from ``base`` on, then DRIVER_OK.

        Returns the queues, or ``[]`` (and stops) if the device refused FEATURES_OK.
        """
        _check(self.read(C.VIRTIO_MMIO_MAGIC_VALUE) == C.VIRTIO_MMIO_MAGIC, "bad MagicValue")
        version = self.read(C.VIRTIO_MMIO_VERSION)
        _check(version in (1, 2), f"unsupported virtio-mmio Version {version}")
        _check(self.read(C.VIRTIO_MMIO_DEVICE_ID) != 0, "DeviceID 0: no device")
        if version == 1:
            self.write(C.VIRTIO_MMIO_GUEST_PAGE_SIZE, self.PAGE_SIZE)
        self.write(C.VIRTIO_MMIO_STATUS, 0)  # virtio_reset_device
        self.add_status(C.VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.add_status(C.VIRTIO_CONFIG_S_DRIVER)
        self.features = self.device_features() if features is None else features
        self.queues = []
        if version == 2 and not self.features & (1 << C.VIRTIO_F_VERSION_1):
            # vm_finalize_features: "New virtio-mmio devices (version 2) must provide
            # VIRTIO_F_VERSION_1 feature!", -EINVAL: the probe fails (virtio_dev_probe: FAILED)
            self.add_status(C.VIRTIO_CONFIG_S_FAILED)
            return []
        self.set_features(self.features)
        if version == 2 or self.features & (1 << C.VIRTIO_F_VERSION_1):
            self.add_status(C.VIRTIO_CONFIG_S_FEATURES_OK)
            if not self.read(C.VIRTIO_MMIO_STATUS) & C.VIRTIO_CONFIG_S_FEATURES_OK:
                return []
        for i in range(queues):
            dq = DriverQueue(self.memory, size=size, base=base)
            self.setup_queue(i, dq)
            self.queues.append(dq)
            base = _align(dq.used_ring_range()[1], 0x4000)
        self.driver_probe()
        self.add_status(C.VIRTIO_CONFIG_S_DRIVER_OK)
        return self.queues

    def notify(self, index: int) -> None:
        """Ring the doorbell (QueueNotify) of queue ``index``."""
        self.write(C.VIRTIO_MMIO_QUEUE_NOTIFY, index)

    def ack_interrupt(self) -> int:
        """``vm_interrupt``: read InterruptStatus, acknowledge all of it, return it."""
        status = self.read(C.VIRTIO_MMIO_INTERRUPT_STATUS)
        self.write(C.VIRTIO_MMIO_INTERRUPT_ACK, status)
        return status

    def needs_reset(self) -> bool:
        """Whether the device set DEVICE_NEEDS_RESET (a broken ring, a failing backend)."""
        return bool(self.read(C.VIRTIO_MMIO_STATUS) & C.VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET)


def _check(ok: bool, message: str) -> None:
    # Not ``assert``: these checks must hold under ``python -O`` too.
    if not ok:
        raise AssertionError(message)


def changed_offsets(before: bytes, after: bytes, chunk: int = 4096) -> list[int]:
    """The offsets at which two equally long memory snapshots differ (compared ``chunk`` bytes
    at a time, so that comparing 16 MiB that mostly did not change is cheap)."""
    out = []
    for off in range(0, len(before), chunk):
        a, b = before[off : off + chunk], after[off : off + chunk]
        if a != b:
            out.extend(off + i for i in range(len(a)) if a[i] != b[i])
    return out


def assert_only_changed(mem: GuestMemory, before: bytes, allowed: Iterable[tuple[int, int]]) -> None:
    """Raise AssertionError if a byte of ``mem`` differs from the snapshot ``before``
    (``mem.read(0, mem.size)``) outside the ``[start, end)`` ranges in ``allowed``: that a
    device, however hostile the ring, wrote nothing but the used ring and its writable buffers."""
    ranges = list(allowed)
    after = mem.read(0, mem.size)
    bad = [o for o in changed_offsets(before, after) if not any(lo <= o < hi for lo, hi in ranges)]
    _check(not bad, f"bytes changed outside the allowed ranges: {[hex(o) for o in bad[:8]]}")
