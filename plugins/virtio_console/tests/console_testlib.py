"""The guest side of the virtio console, replayed the way Linux 6.1's ``virtio_console``
driver does it (``drivers/char/virtio_console.c``), and a host chardev whose every move the
test controls. Shared by the console tests; no pytest here."""
from __future__ import annotations

import struct
import time
from typing import Any, Callable

from microvm.api import GuestMemory, RecordingIrqLine
from microvm.virtio.testing import DriverQueue, MmioDriver, VirtioMmioTransport

from microvm_virtio_console.constants import (
    CONTROL,
    CONTROL_RX,
    CONTROL_TX,
    RESIZE,
    VIRTIO_CONSOLE_BAD_ID,
    VIRTIO_CONSOLE_CONSOLE_PORT,
    VIRTIO_CONSOLE_DEVICE_READY,
    VIRTIO_CONSOLE_F_MULTIPORT,
    VIRTIO_CONSOLE_F_SIZE,
    VIRTIO_CONSOLE_PORT_ADD,
    VIRTIO_CONSOLE_PORT_NAME,
    VIRTIO_CONSOLE_PORT_OPEN,
    VIRTIO_CONSOLE_PORT_READY,
    VIRTIO_CONSOLE_RESIZE,
    rx_queue,
)
from microvm_virtio_console.device import VirtioSerial

PAGE = 4096
MEM_SIZE = 16 << 20
BUF_AREA = 0x800000  # where the driver's buffers come from (the rings live below)
#: the transport bits Linux's virtio core accepts, and what virtio_console's table lists
LINUX_TRANSPORT = (1 << 32) | (1 << 29) | (1 << 28)  # VERSION_1, EVENT_IDX, INDIRECT_DESC
VIRTQ_DESC_F_WRITE = 2  # virtio 1.2 §2.7.5: the buffer is device-writable
LINUX_FEATURES = (1 << VIRTIO_CONSOLE_F_SIZE) | (1 << VIRTIO_CONSOLE_F_MULTIPORT)


class FakeChardev:
    """A frontend (the microvm.api.Chardev protocol) under the test's control."""

    def __init__(self, is_open: bool = True, room: int = 1 << 20, size: tuple[int, int] | None = None) -> None:
        self.out = bytearray()
        self.room = room
        self._open = is_open
        self.fe_open: bool | None = None
        self.accepts = 0
        self.size = size
        self.receive: Callable[[bytes], None] | None = None
        self.can_receive: Callable[[], int] | None = None
        self.on_event: Callable[[bool], None] | None = None
        self.on_writable: Callable[[], None] | None = None

    # the protocol
    def write(self, data: bytes) -> None:
        assert len(data) <= self.room or not self._open or self.room > 1 << 19, "wrote more than write_room()"
        self.out += data
        self.room = max(0, self.room - len(data))

    def write_room(self) -> int:
        return self.room

    def set_handlers(self, receive=None, can_receive=None, on_break=None, on_event=None, on_writable=None) -> None:
        self.receive, self.can_receive, self.on_event, self.on_writable = receive, can_receive, on_event, on_writable

    def accept_input(self) -> None:
        self.accepts += 1

    @property
    def is_open(self) -> bool:
        return self._open

    def set_open(self, is_open: bool) -> None:
        self.fe_open = is_open

    def window_size(self) -> tuple[int, int] | None:
        return self.size

    # the host's moves
    def host_types(self, data: bytes) -> int:
        """Input as the chardev's thread gives it: no more than can_receive() allows."""
        assert self.can_receive is not None and self.receive is not None
        room = self.can_receive()
        take = data[:room]
        if take:
            self.receive(take)
        return len(take)

    def host_opens(self, opened: bool) -> None:
        self._open = opened
        assert self.on_event is not None
        self.on_event(opened)

    def drain(self, n: int) -> None:
        """The sink took ``n`` bytes: room again."""
        self.room += n
        if self.on_writable is not None:
            self.on_writable()


class BusWindow:
    """A placed virtio-mmio device's registers through the machine's MMIO bus, as a guest
    reaches them (what MmioDriver needs of a transport: read, write, memory)."""

    def __init__(self, machine: Any, index: int = 0) -> None:
        info = machine.ctx.virtio_devices[index]
        self.base = info.base
        self.bus = machine.mmio_bus
        self.memory = machine.memory
        self.irq = machine.line(info.irq)

    def read(self, offset: int, data: memoryview) -> None:
        self.bus.read(self.base + offset, data)

    def write(self, offset: int, data: bytes) -> None:
        self.bus.write(self.base + offset, data)


class Alloc:
    """A bump allocator of guest buffers."""

    def __init__(self, base: int = BUF_AREA) -> None:
        self.next = base

    def __call__(self, size: int) -> int:
        addr = self.next
        self.next += (size + 63) & ~63
        return addr


class LinuxConsoleDriver:
    """``virtcons_probe`` and the control work, step by step as Linux runs them.

    ``probe()`` negotiates (SIZE, MULTIPORT and the transport bits Linux takes), reads
    ``max_nr_ports``, sets up 2 * (max_nr_ports + 1) queues, sets DRIVER_OK, fills the
    control receiveq with page-sized buffers and sends DEVICE_READY. ``run_control()``
    handles what the device sent, as ``handle_control_message`` does: PORT_ADD fills the
    port's receiveq and answers PORT_READY(1); CONSOLE_PORT makes it an hvc console and
    answers PORT_OPEN(1); PORT_NAME and PORT_OPEN are recorded; each buffer goes back.
    """

    def __init__(self, dev: VirtioSerial, legacy: bool = True, queue_size: int = 8,
                 transport: Any = None) -> None:
        """``transport``: the device's registers where a machine placed it (a
        :class:`BusWindow`; notifications are processed on the machine's worker thread, so
        the driver waits for used buffers as Linux spins)."""
        self.dev = dev
        self.own = transport is None
        if transport is None:
            self.mem = GuestMemory(MEM_SIZE)
            self.irq = RecordingIrqLine()
            transport = VirtioMmioTransport(dev, self.mem, self.irq, legacy=legacy, name="virtio-serial")
        else:
            self.mem = transport.memory
            self.irq = transport.irq
        self.transport = transport
        self.mmio = MmioDriver(self.transport)
        self.queue_size = queue_size
        self.alloc = Alloc()
        self.ports: dict[int, dict[str, Any]] = {}
        self.received: list[tuple[int, int, int, bytes]] = []  # control messages, in order
        #: queue -> {head: buffer address}: the receive buffers the driver has posted and not
        #: got back (Linux's ``desc_state[head].data``)
        self.inbufs: dict[int, dict[int, int]] = {}
        #: queue -> the descriptors the driver may write (Linux's free list: ``free_head``,
        #: taken from the front, a detached buffer's descriptor put back at the front)
        self.free: dict[int, list[int]] = {}
        #: receive queues on which the device returned a head the driver had not posted:
        #: Linux's ``BAD_RING(vq, "id %u is not a head!")``, after which ``virtqueue_get_buf``
        #: returns nothing (``vq->broken``) and the driver leaves the queue alone
        self.broken: set[int] = set()
        self.max_nr_ports = 0
        self.multiport = False

    def close(self) -> None:
        if self.own:
            self.transport.close()
            self.mem.close()

    def wait_used(self, q: int, head: int, timeout: float = 10.0) -> None:
        """Spin until the device used ``head`` (inline processing: at once)."""
        dq = self.queues[q]
        end = time.monotonic() + timeout
        while True:
            used = dq.get_used()
            if any(h == head for h, _ in used) or self.mmio.needs_reset():
                return
            if time.monotonic() > end:
                raise AssertionError(f"queue {q}: buffer {head} never used")
            time.sleep(0.002)

    # -- probe ------------------------------------------------------------------------------------
    def probe(self, features: int | None = None) -> None:
        want = (LINUX_FEATURES | LINUX_TRANSPORT) if features is None else features
        driver = self.mmio
        accepted = driver.device_features() & want
        self.multiport = bool(accepted & (1 << VIRTIO_CONSOLE_F_MULTIPORT))
        self.max_nr_ports = self.dev.max_ports if self.multiport else 1
        nq = (self.max_nr_ports + 1) * 2 if self.multiport else 2  # init_vqs
        # vm_probe .. virtio_device_ready: MmioDriver's handshake with this many queues
        self.inbufs, self.free, self.broken = {}, {}, set()  # new rings: nothing posted yet
        self.queues = driver.probe(features=accepted, queues=nq, size=self.queue_size)
        assert self.queues, "FEATURES_OK refused"
        if self.multiport:
            assert driver.read_config(4, 4) == self.dev.max_ports
            self.fill(CONTROL_RX)  # fill_queue(portdev->c_ivq)
            self.send_control(VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1)
        else:
            self.add_port(0)  # add_port(portdev, 0) on an old host: a console at once

    # -- queues -----------------------------------------------------------------------------------
    def fill(self, q: int, count: int | None = None) -> None:
        """``fill_queue``: page-sized device-writable buffers until the ring is full."""
        bufs = self.inbufs.setdefault(q, {})
        for _ in range(self.queue_size - len(bufs) if count is None else count):
            self.add_inbuf(q, self.alloc(PAGE))
            self.mmio.notify(q)

    def add_inbuf(self, q: int, addr: int) -> int | None:
        """``add_inbuf``: one page-sized device-writable buffer in a descriptor the driver
        owns (never one still with the device: ``virtqueue_add_split`` takes ``free_head``),
        published in the available ring; its head, or None if no descriptor is free
        (``-ENOSPC``)."""
        dq = self.queues[q]
        free = self.free.setdefault(q, list(range(dq.size)))
        if not free:
            return None
        head = free.pop(0)
        dq.write_desc(head, addr, PAGE, VIRTQ_DESC_F_WRITE)
        dq.publish(head)
        self.inbufs.setdefault(q, {})[head] = addr
        return head

    def send_control(self, nr: int, event: int, value: int, raw: bytes | None = None) -> None:
        """``__send_control_msg``: one 8-byte buffer on the control transmitq; the driver
        spins until the device used it (here: the notify runs the device inline)."""
        data = CONTROL.pack(nr, event, value) if raw is None else raw
        addr = self.alloc(max(len(data), 1))
        self.mem.write(addr, data)
        dq = self.queues[CONTROL_TX]
        head = dq.add([(addr, len(data), False)])
        self.mmio.notify(CONTROL_TX)
        self.wait_used(CONTROL_TX, head)

    def take_bufs(self, q: int) -> list[tuple[int, int]]:
        """``virtqueue_get_buf`` on a receiveq, for each used buffer: its address and
        ``buf->len = min(len, buf->size)`` (a device may report any length, shorter than what
        the driver expects too); the buffer goes back in the ring at once (``add_inbuf``),
        as ``control_work_handler`` and ``get_inbuf``/``reclaim`` do it. A head the driver
        had not posted breaks the queue, as Linux's ``BAD_RING``."""
        if q in self.broken:
            return []
        dq = self.queues[q]
        out = []
        for head, n in dq.get_used():
            addr = self.inbufs.get(q, {}).pop(head, None)
            if addr is None:  # "id %u is not a head!" (or out of range)
                self.broken.add(q)
                break
            self.free[q].insert(0, head)  # detach_buf_split: back at the front of the free list
            out.append((addr, min(n, PAGE)))
            self.add_inbuf(q, addr)
        if out:
            self.mmio.notify(q)
        return out

    def take(self, q: int) -> list[bytes]:
        """The data of each used buffer (its first ``buf->len`` bytes), buffers back in the
        ring: what ``port_fops_read`` gets."""
        return [self.mem.read(addr, n) for addr, n in self.take_bufs(q)]

    # -- control ----------------------------------------------------------------------------------
    def run_control(self, rounds: int = 10) -> None:
        """``control_work_handler``: each used control buffer through
        ``handle_control_message``, which reads the 8-byte header from the buffer whatever
        ``buf->len`` says (a short used length leaves the rest of the header as it was in
        the buffer); the bytes after the header up to ``buf->len`` are the message's data."""
        for _ in range(rounds):
            bufs = self.take_bufs(CONTROL_RX)
            if not bufs:
                return
            for addr, n in bufs:
                nr, event, value = CONTROL.unpack(self.mem.read(addr, CONTROL.size))
                extra = self.mem.read(addr + CONTROL.size, n - CONTROL.size) if n > CONTROL.size else b""
                self.received.append((nr, event, value, extra))
                self.handle(nr, event, value, extra, addr)

    def handle(self, nr: int, event: int, value: int, extra: bytes, addr: int | None = None) -> None:
        port = self.ports.get(nr)
        if event == VIRTIO_CONSOLE_PORT_ADD:
            if port is not None:
                self.send_control(nr, VIRTIO_CONSOLE_PORT_READY, 1)
            elif nr < self.max_nr_ports:
                self.add_port(nr)
            return
        if port is None:
            return
        if event == VIRTIO_CONSOLE_CONSOLE_PORT and value and not port["console"]:
            port["console"] = True
            port["guest_connected"] = True
            self.send_control(nr, VIRTIO_CONSOLE_PORT_OPEN, 1)  # init_port_console
        elif event == VIRTIO_CONSOLE_PORT_OPEN:
            port["host_connected"] = bool(value)
        elif event == VIRTIO_CONSOLE_PORT_NAME:
            if port["name"] is None:  # "if (port->name) break;": a port is named once
                port["name"] = extra.split(b"\0")[0].decode(errors="replace")
        elif event == VIRTIO_CONSOLE_RESIZE:
            # the size is read from the buffer after the header, whatever buf->len says
            raw = extra if addr is None else self.mem.read(addr + CONTROL.size, RESIZE.size)
            port["size"] = RESIZE.unpack(raw[: RESIZE.size].ljust(RESIZE.size, b"\0"))

    def add_port(self, nr: int) -> None:
        self.ports[nr] = {"console": not self.multiport, "guest_connected": not self.multiport,
                          "host_connected": False, "name": None}
        self.fill(rx_queue(nr))
        if self.multiport:
            self.send_control(nr, VIRTIO_CONSOLE_PORT_READY, 1)

    def handshake(self) -> None:
        self.probe()
        self.run_control()

    # -- port data --------------------------------------------------------------------------------
    def open_port(self, nr: int) -> None:
        """``port_fops_open``: guest_connected, then PORT_OPEN(1)."""
        self.ports[nr]["guest_connected"] = True
        self.send_control(nr, VIRTIO_CONSOLE_PORT_OPEN, 1)

    def close_port(self, nr: int) -> None:
        self.ports[nr]["guest_connected"] = False
        self.send_control(nr, VIRTIO_CONSOLE_PORT_OPEN, 0)

    def write_port(self, nr: int, data: bytes, notify: bool = True) -> int:
        """``__send_to_port``: one device-readable buffer on the port's transmitq."""
        addr = self.alloc(max(len(data), 1))
        self.mem.write(addr, data)
        q = rx_queue(nr) + 1
        head = self.queues[q].add([(addr, len(data), False)])
        if notify:
            self.mmio.notify(q)
        return head

    def used_tx(self, nr: int) -> list[tuple[int, int]]:
        return self.queues[rx_queue(nr) + 1].get_used()

    def read_port(self, nr: int) -> bytes:
        """What arrived in the port's receive buffers (``get_chars`` / ``port_fops_read``)."""
        return b"".join(self.take(rx_queue(nr)))


def control_events(received: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, int]]:
    return [(nr, ev, val) for nr, ev, val, _ in received]


def u32(b: bytes) -> int:
    return struct.unpack("<I", b)[0]
