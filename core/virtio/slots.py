"""Placement of virtio-mmio transports in the machine, and their notification workers.

QEMU's microvm creates eight transports, 512 bytes apart from ``VIRTIO_MMIO_BASE``, on GSIs
``VIRTIO_IRQ_BASE + n`` (5-12 without ACPI), and a ``-device`` lands on the highest free
one: the first device is ``virtio-mmio-bus.7`` at 0xfeb00e00 on IRQ 12 (``info qtree`` on
QEMU 7.2). microvm places devices the same way, so a guest sees the same addresses.

Queue notifications arrive through ``KVM_IOEVENTFD`` (one eventfd per queue, datamatch on
the queue index) and are processed on one worker thread per device, so a vCPU thread never
does device I/O. Where the host refuses ioeventfd, the transport's QueueNotify write kicks
the same eventfd from the vCPU thread.

Pausing (QMP ``stop``): :meth:`VirtioSlots.pause` parks every worker between two
notifications (a notification that arrives meanwhile stays counted in its eventfd and is
processed on resume), then calls each backend's ``pause`` through its transport, so a device
with a thread of its own holds it too. From then on no virtio device writes guest memory.
"""
from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import layout
from ..errors import ConfigError
from .mmio import VirtioMmioTransport
from ..log import get_logger

log = get_logger("microvm.virtio")


def slot_address(slot: int) -> tuple[int, int]:
    """(MMIO base, GSI) of transport ``slot``."""
    return layout.VIRTIO_MMIO_BASE + slot * layout.VIRTIO_MMIO_SIZE, layout.VIRTIO_IRQ_BASE + slot


@dataclass
class VirtioSlot:
    """One placed transport."""

    slot: int
    base: int
    irq: int
    name: str
    transport: VirtioMmioTransport
    eventfds: list[int] = field(default_factory=list)
    worker: "NotifyWorker | None" = None

    def cmdline_word(self) -> str:
        """Linux's ``virtio_mmio.device=<size>@<base>:<irq>`` (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)."""
        return f"virtio_mmio.device=512@{self.base:#x}:{self.irq}"

    def kick(self, queue: int) -> None:
        if 0 <= queue < len(self.eventfds):
            os.eventfd_write(self.eventfds[queue], 1)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.transport.close()
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []


#: how long pause() waits for a worker to finish the notification it is processing
PAUSE_TIMEOUT = 10.0


class NotifyWorker(threading.Thread):
    """Waits on a device's queue eventfds and runs ``transport.notify(queue)``; can be parked
    between two notifications (:meth:`pause`)."""

    def __init__(self, slot: VirtioSlot, paused: bool = False) -> None:
        super().__init__(name=f"virtio-{slot.slot}", daemon=True)
        self.slot = slot
        #: wakes the poll for a pause or stop request
        self._ctl_r, self._ctl_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._cond = threading.Condition()
        self._paused = paused  # requested
        self._parked = False  # acknowledged: between notifications, waiting for resume
        self._stopping = False

    def _poke(self) -> None:
        with self._cond:  # not after stop() closed the pipe (its number may be reused)
            if self._ctl_w < 0:
                return
            try:
                os.write(self._ctl_w, b"x")
            except (BlockingIOError, OSError):
                pass  # already poked (pipe full)

    def pause(self) -> None:
        """Park the worker; returns once no notification is being processed (it waits for
        the one in progress, at most :data:`PAUSE_TIMEOUT`)."""
        with self._cond:
            self._paused = True
        self._poke()
        if not self.is_alive() or self is threading.current_thread():
            return
        with self._cond:
            if not self._cond.wait_for(lambda: self._parked or self._stopping or not self.is_alive(), PAUSE_TIMEOUT):
                log.warning("%s: still processing a notification after %.0f s; pausing anyway", self.slot.name, PAUSE_TIMEOUT)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._poke()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)
        with self._cond:
            if self._ctl_w >= 0:
                os.close(self._ctl_r)
                os.close(self._ctl_w)
                self._ctl_r = self._ctl_w = -1

    def _hold(self) -> bool:
        """Between notifications: park while paused. False when the worker must end."""
        with self._cond:
            if self._paused and not self._stopping:
                self._parked = True
                self._cond.notify_all()
                while self._paused and not self._stopping:
                    self._cond.wait()
                self._parked = False
            return not self._stopping

    def run(self) -> None:
        fds = {fd: i for i, fd in enumerate(self.slot.eventfds)}
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.register(self._ctl_r, select.POLLIN)
        transport = self.slot.transport
        while self._hold():
            for fd, _ in poller.poll():
                if fd == self._ctl_r:
                    try:
                        os.read(self._ctl_r, 4096)
                    except BlockingIOError:
                        pass
                    break  # look at the pause/stop request first
                if self._paused or self._stopping:
                    break  # leave the notification counted in its eventfd
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                try:
                    transport.notify(fds[fd])
                except Exception:  # notify promises not to raise; a bug must not kill the worker
                    log.exception("%s: queue %d processing failed", self.slot.name, fds[fd])


class VirtioSlots:
    """The machine's eight transport slots."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.slots: list[VirtioSlot] = []
        #: set by pause(): workers started later start parked
        self.paused = False

    def add(self, backend: Any, name: str, legacy: bool) -> VirtioSlot:
        """Place ``backend`` in the highest free slot with its transport; its counters go to
        the machine's ``devices``/``name`` group."""
        m = self.machine
        used = {s.slot for s in self.slots}
        free = [n for n in range(layout.VIRTIO_MMIO_SLOTS - 1, -1, -1) if n not in used]
        if not free:
            raise ConfigError(f"{name}: microvm has only {layout.VIRTIO_MMIO_SLOTS} virtio-mmio slots, all in use")
        n = free[0]
        base, gsi = slot_address(n)
        eventfds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(backend.num_queues)]
        slot_ref: list[VirtioSlot] = []
        transport = VirtioMmioTransport(
            backend, m.memory, m.irq(gsi), legacy=legacy, on_notify=lambda q: slot_ref[0].kick(q), name=name,
            counters=m.metrics.group("devices", name),
        )
        slot = VirtioSlot(n, base, gsi, name, transport, eventfds)
        slot_ref.append(slot)
        m.add_mmio_device(transport, base, transport.window_size, name)
        if m.vm is not None:
            for q, fd in enumerate(eventfds):
                try:
                    m.vm.ioeventfd(fd, base + transport.notify_offset, 4, datamatch=q)
                except OSError as e:  # the transport's on_notify kicks the eventfd instead
                    log.info("%s: KVM_IOEVENTFD refused (%s); notifications exit to userspace", name, e)
                    break
        self.slots.append(slot)
        return slot

    def start(self) -> None:
        for s in self.slots:
            s.worker = NotifyWorker(s, paused=self.paused)
            s.worker.start()

    def pause(self) -> None:
        """Quiesce every device: workers parked, then each backend's ``pause``."""
        self.paused = True
        for s in self.slots:
            if s.worker is not None:
                s.worker.pause()
        for s in self.slots:
            try:
                s.transport.pause()
            except Exception:  # a backend bug: say so, the others still pause
                log.exception("%s: pausing the device failed", s.name)

    def resume(self) -> None:
        self.paused = False
        for s in self.slots:
            try:
                s.transport.resume()
            except Exception:
                log.exception("%s: resuming the device failed", s.name)
        for s in self.slots:
            if s.worker is not None:
                s.worker.resume()

    def close(self) -> None:
        for s in self.slots:
            s.close()
        self.slots = []
