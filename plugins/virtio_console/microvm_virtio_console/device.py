"""The virtio console device (virtio 1.2 §5.3) with VIRTIO_CONSOLE_F_MULTIPORT: QEMU's
``virtio-serial-device`` and the ports on it. No pluggy here.

**Queues** (Linux ``init_vqs``): port 0's receiveq/transmitq are 0/1, the control
receiveq/transmitq 2/3, port N's 2N+2/2N+3; ``max_ports`` ports give 2 * (max_ports + 1)
queues, and the configuration space says how many ports there may be. As in QEMU,
MULTIPORT is offered only when ``max_ports`` > 1: with ``max_ports=1`` the guest drives
port 0 alone on queues 0/1 and never sets up the control queues (the transport still
has them, 4 queues, as QEMU's ``virtio_serial_device_realize`` adds them regardless).

**The control handshake**, as Linux's ``virtio_console`` driver runs it and QEMU answers:

1. the driver fills the control receiveq, then sends DEVICE_READY(1);
2. the device sends PORT_ADD for every port;
3. for each, the driver fills the port's receiveq and sends PORT_READY(1);
4. the device answers CONSOLE_PORT(1) for a console port (the driver makes it ``hvcN``),
   PORT_NAME with the name if the port has one (``/sys/class/virtio-ports/*/name``), and
   PORT_OPEN(1) if the host side is open (no RESIZE: like QEMU 7.2, the device does not
   offer VIRTIO_CONSOLE_F_SIZE, so the guest keeps its own idea of the console's size);
5. the driver sends PORT_OPEN(1/0) when the guest opens or closes the port (an ``hvc``
   console opens at once); the device sends PORT_OPEN(1/0) when the host side opens or
   closes (a socket client connects or goes away, a pty is opened); console ports count as
   always open on the host side, as in QEMU.

**Data.** Guest output on a console port goes to its chardev, which never blocks and drops
what its sink cannot take (QEMU drops console data too: Linux's ``hvc`` writes with a
spinlock held, so holding its buffer would stall the whole guest). Guest output on a serial
port whose host side is closed is dropped and counted; on an open one that is only slow the
port is throttled: the chain stays with the device (one per port) until the chardev has room
again, so the guest's writer blocks instead of the host buffering without bound, and other
ports and the VMM go on. Host input waits in a small per-port buffer (:data:`PORT_INPUT`)
until the guest has opened the port and posted receive buffers; while it is full the
chardev stops reading, so a guest that does not read pushes back on the host.

**Hostile drivers.** A control message that is not exactly 8 bytes, names a port that does
not exist or is beyond ``max_ports``, or carries an event the driver may not send is dropped
and counted (``control_bad``); a broken ring (a descriptor outside RAM, a loop) is a
:class:`~microvm.api.QueueError`, and the device needs a reset (DEVICE_NEEDS_RESET). Pending
control messages for the guest are bounded (a host side flapping open/closed replaces its
own unsent PORT_OPEN), and so is everything else the device holds. Nothing a driver does is
logged per event: the first of each kind is, repeats are counted (:data:`guest_event`).

**Threads.** Queue notifications arrive on the transport's worker; host input, host
open/close events and "room again" arrive on the chardevs' threads. One lock serialises
them all; the transport's ``_dev_lock`` is taken before it, never after.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from microvm.api import (
    VIRTIO_ID_CONSOLE,
    ConfigError,
    EventLog,
    GuestMemoryError,
    QueueError,
    VirtioBackend,
    get_logger,
)

from .constants import (
    CONFIG,
    CONTROL,
    CONTROL_RX,
    CONTROL_TX,
    DEFAULT_MAX_PORTS,
    EMERG_WR_OFFSET,
    EVENT_NAMES,
    MAX_PORTS,
    QUEUE_SIZE,
    VIRTIO_CONSOLE_CONSOLE_PORT,
    VIRTIO_CONSOLE_DEVICE_READY,
    VIRTIO_CONSOLE_F_EMERG_WRITE,
    VIRTIO_CONSOLE_F_MULTIPORT,
    VIRTIO_CONSOLE_PORT_ADD,
    VIRTIO_CONSOLE_PORT_NAME,
    VIRTIO_CONSOLE_PORT_OPEN,
    VIRTIO_CONSOLE_PORT_READY,
    queue_port,
    rx_queue,
)

if TYPE_CHECKING:
    from microvm.api import Chardev, DescriptorChain, GuestMemory, Virtqueue

log = get_logger("microvm.virtio_console")
#: what a driver makes the device report, as often as the driver likes: the first of each
#: kind is logged, repeats are counted and summarised (``-d guest_errors`` logs each), as the
#: core's virtio-mmio transport does, so a guest cannot flood the host's log through it
guest_event = EventLog(log)
_WARNING, _ERROR = 30, 40  # logging's levels, without importing logging

#: host input a port holds for a guest that has not taken it yet (the chardev stops reading)
PORT_INPUT = 4096
#: most bytes handed to a chardev in one write (a huge chain is not copied in one piece)
WRITE_PIECE = 65536


class Port:
    """One port of the device: ``virtconsole`` (``console=True``) or ``virtserialport``."""

    def __init__(self, nr: int, name: str | None, console: bool, chardev: "Chardev | None", owner: str) -> None:
        self.id = nr
        self.name = name or None
        self.console = console
        self.chardev = chardev
        self.owner = owner
        self.reset()

    def reset(self) -> None:
        #: the driver answered PORT_READY(1)
        self.ready = False
        #: the guest has the port open (its PORT_OPEN), as Linux's ``guest_connected``
        self.guest_connected = False
        #: host input not yet in a guest buffer
        self.inbuf = bytearray()
        #: a throttled transmit chain and how far it was written: [chain, offset]
        self.held: list[Any] | None = None

    @property
    def host_open(self) -> bool:
        """The host side as the guest is told: consoles always (QEMU), serial ports while
        their chardev is open (a socket client is connected...)."""
        if self.console:
            return True
        return self.chardev is not None and self.chardev.is_open

    def __repr__(self) -> str:
        kind = "console" if self.console else "serialport"
        return f"<Port {self.id} {kind} {self.name or ''} ready={self.ready} open={self.guest_connected}>"


class VirtioSerial(VirtioBackend):
    """``virtio-serial-device``: ``max_ports`` ports at most, with emergency write if
    ``emergency_write`` (QEMU's ``emergency-write``, on by default)."""

    device_id = VIRTIO_ID_CONSOLE
    queue_max_size = QUEUE_SIZE

    def __init__(self, max_ports: int = DEFAULT_MAX_PORTS, emergency_write: bool = True) -> None:
        if not 1 <= max_ports <= MAX_PORTS:
            raise ConfigError(f"virtio-serial-device: max_ports={max_ports}: maximum ports supported: {MAX_PORTS}"
                              if max_ports > MAX_PORTS else
                              "virtio-serial-device: Maximum number of serial ports not specified")
        self.max_ports = max_ports
        self.num_queues = 2 * (max_ports + 1)
        self.emergency_write = emergency_write
        self.ports: dict[int, Port] = {}
        self._lock = threading.Lock()
        self._counts: dict[str, Any] = {}
        #: bound on control messages waiting for a guest buffer
        self.control_limit = 4 * max_ports + 16
        self._deactivate()

    def _deactivate(self) -> None:
        self._queues: list["Virtqueue"] | None = None
        self._interrupt: Callable[[], None] = lambda: None
        self._multiport = False
        self._device_ready = False
        self._control: deque[tuple[int, int, int, bytes]] = deque()
        self._broken: str | None = None
        self._used = False

    # -- ports (the glue, while the machine is built) ------------------------------------------
    def add_port(self, nr: int | None, name: str | None, console: bool, chardev: "Chardev | None",
                 owner: str = "a port") -> Port:
        """Attach a port, numbered as QEMU does: the first console without ``nr`` is port 0;
        any other port without ``nr`` gets the lowest free number from 1 (port 0 stays
        reserved for a console). Errors are QEMU's."""
        with self._lock:
            if nr is not None and nr in self.ports:
                raise ConfigError(f"{owner}: virtio-serial-bus: A port already exists at id {nr}")
            if nr is None:
                if console and 0 not in self.ports:
                    nr = 0
                else:
                    nr = self._free_port_id()
                    if nr is None:
                        raise ConfigError(f"{owner}: virtio-serial-bus: Maximum port limit for this device reached")
            if not 0 <= nr < self.max_ports:
                raise ConfigError(f"{owner}: virtio-serial-bus: Out-of-range port id specified, "
                                  f"max. allowed: {self.max_ports - 1}")
            if nr == 0 and not console:
                raise ConfigError(f"{owner}: Port number 0 on virtio-serial devices reserved for virtconsole "
                                  "devices for backward compatibility")
            if name and any(p.name == name for p in self.ports.values()):
                raise ConfigError(f"{owner}: virtio-serial-bus: A port already exists by name {name}")
            port = self.ports[nr] = Port(nr, name, console, chardev, owner)
        if chardev is not None:
            chardev.set_handlers(
                receive=lambda data, p=port: self._host_input(p, data),
                can_receive=lambda p=port: self._input_room(p),
                on_event=lambda opened, p=port: self._host_event(p, opened),
                on_writable=lambda p=port: self._host_writable(p),
            )
            chardev.set_open(False)
        return port

    def _free_port_id(self) -> int | None:
        """The lowest unused id from 1, searched as QEMU's ``find_free_port_id`` does: in
        whole 32-bit words of its port map, so the id found may lie beyond ``max_ports``
        (the caller's range check then refuses it: ``max_ports=1`` and a
        ``virtserialport`` give "Out-of-range port id specified, max. allowed: 0", as
        QEMU 7.2 says); None only when every id of those words is taken."""
        for i in range(1, (self.max_ports + 31) // 32 * 32):
            if i not in self.ports:
                return i
        return None

    # -- what the device is ------------------------------------------------------------------------
    def device_features(self) -> int:
        """MULTIPORT when the device may have more than one port (QEMU's ``get_features``:
        with ``max_ports=1`` the driver uses port 0 on queues 0/1 and no control queues),
        and EMERG_WRITE unless turned off; not F_SIZE, as QEMU 7.2: older Linux kernels
        read RESIZE's fields rows first, recent ones cols first (the spec's order), so a
        size sent would reach some guests transposed."""
        f = 1 << VIRTIO_CONSOLE_F_MULTIPORT if self.max_ports > 1 else 0
        if self.emergency_write:
            f |= 1 << VIRTIO_CONSOLE_F_EMERG_WRITE
        return f

    def config_space(self) -> bytes:
        """cols and rows 0 (no F_SIZE), max_nr_ports, emerg_wr (write-only, reads 0)."""
        return CONFIG.pack(0, 0, self.max_ports, 0)

    def config_write(self, offset: int, data: bytes) -> None:
        """``emerg_wr``: one byte of output on port 0 without any queue (§5.3.4)."""
        if offset == EMERG_WR_OFFSET and data and self.emergency_write:
            port = self.ports.get(0)
            if port is not None and port.chardev is not None:
                port.chardev.write(bytes(data[:1]))
                self._count("emerg_wr_bytes", 1)
            return
        super().config_write(offset, data)

    # -- lifecycle ---------------------------------------------------------------------------------
    def activate(self, queues: list["Virtqueue"], interrupt: Callable[[], None], memory: "GuestMemory") -> None:
        with self._lock:
            self._deactivate()
            for p in self.ports.values():
                p.reset()
            self._queues = queues
            self._interrupt = interrupt
            self._multiport = bool(self.acked_features & (1 << VIRTIO_CONSOLE_F_MULTIPORT))
            if not self._multiport:  # an old driver: port 0 is its console, open at once
                p0 = self.ports.get(0)
                if p0 is not None:
                    p0.ready = p0.guest_connected = True
                    self._set_fe_open(p0, True)
        log.info("%s: activated (%s)", self.counters.name, "multiport" if self._multiport else "single port")

    def reset(self) -> None:
        with self._lock:
            for p in self.ports.values():
                self._drop_input(p)
                p.reset()
                self._set_fe_open(p, False)
            self._deactivate()

    def close(self) -> None:
        self.reset()

    # -- queue notifications (the transport's worker) ---------------------------------------------
    def process_queue(self, index: int) -> None:
        with self._lock:
            if self._broken is not None:  # the transport was told (set_needs_reset)
                return
            if self._queues is None:
                return
            self._used = False
            try:
                if index == CONTROL_TX:
                    self._control_tx()
                elif index == CONTROL_RX:
                    self._flush_control()
                else:
                    nr = queue_port(index)
                    port = self.ports.get(nr) if nr is not None else None
                    if index == rx_queue(nr or 0):
                        if port is not None:
                            self._fill_rx(port)
                    else:
                        self._port_tx(nr or 0, port)
            except (QueueError, GuestMemoryError) as e:
                self._broken = str(e)
                self._queues = None
                raise QueueError(str(e)) from None
            self._notify()

    def _notify(self) -> None:
        if self._used:
            self._used = False
            self._interrupt()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on a chardev's thread (lock held): a broken ring stops the device and
        asks the transport for DEVICE_NEEDS_RESET (``set_needs_reset``)."""
        if self._queues is None or self._broken is not None:
            return
        self._used = False
        try:
            fn(*args)
            self._notify()
        except (QueueError, GuestMemoryError) as e:
            self._broken = str(e)
            self._queues = None
            guest_event(f"{self.counters.name}: broken ring", _ERROR, "%s: %s; device stopped", self.counters.name, e)
            self.set_needs_reset(str(e))

    def _queue(self, index: int) -> "Virtqueue | None":
        qs = self._queues
        if qs is None or index >= len(qs) or not qs[index].ready:
            return None
        return qs[index]

    # -- the control queues ------------------------------------------------------------------------
    def _control_tx(self) -> None:
        q = self._queue(CONTROL_TX)
        if q is None:
            return
        while (chain := q.pop()) is not None:
            n = chain.readable_len
            msg = chain.read_all() if n == CONTROL.size else b""
            q.push(chain.head, 0)
            self._used = True
            if n != CONTROL.size:
                self._count("control_bad")
                self._count("control_truncated" if n < CONTROL.size else "control_oversized")
                log.debug("%s: control message of %d bytes dropped", self.counters.name, n)
                continue
            self._handle_control(*CONTROL.unpack(msg))

    def _handle_control(self, nr: int, event: int, value: int) -> None:
        self._count("control_rx")
        if event == VIRTIO_CONSOLE_DEVICE_READY:
            if not value:
                self._count("control_failures")
                guest_event(f"{self.counters.name}: DEVICE_READY(0)", _ERROR,
                            "%s: virtio-serial-bus: Guest failure in adding device", self.counters.name)
                return
            self._device_ready = True
            for p in sorted(self.ports):
                self._send(p, VIRTIO_CONSOLE_PORT_ADD, 1)
            return
        port = self.ports.get(nr) if nr < self.max_ports else None
        if port is None:
            self._count("control_bad")
            self._count("control_bad_port")
            log.debug("%s: control %s for port %d, which does not exist: dropped",
                      self.counters.name, EVENT_NAMES.get(event, event), nr)
            return
        if event == VIRTIO_CONSOLE_PORT_READY:
            if not value:
                self._count("control_failures")
                guest_event(f"{self.counters.name}: PORT_READY(0)", _ERROR,
                            "%s: virtio-serial-bus: Guest failure in adding port %d", self.counters.name, nr)
                return
            port.ready = True
            self._count(f"port{nr}.ready")
            if port.console:
                self._send(nr, VIRTIO_CONSOLE_CONSOLE_PORT, 1)
            if port.name:
                self._send(nr, VIRTIO_CONSOLE_PORT_NAME, 1, port.name.encode() + b"\0")
            if port.host_open:
                self._send(nr, VIRTIO_CONSOLE_PORT_OPEN, 1)
            log.info("%s: port %d%s ready", self.counters.name, nr, f" ({port.name})" if port.name else "")
        elif event == VIRTIO_CONSOLE_PORT_OPEN:
            opened = bool(value)
            port.guest_connected = opened
            self._set_fe_open(port, opened)
            self._count(f"port{nr}.guest_opens" if opened else f"port{nr}.guest_closes")
            if opened:
                self._fill_rx(port)
                if port.chardev is not None:
                    port.chardev.accept_input()
            else:
                self._drop_input(port)
                self._release_held(port)
        else:  # host-to-guest events, or no event at all: a driver does not send these
            self._count("control_bad")
            self._count("control_bad_event")
            log.debug("%s: control event %d from the driver dropped", self.counters.name, event)

    def _send(self, nr: int, event: int, value: int, extra: bytes = b"") -> None:
        """Queue a control message for the guest and hand over what the guest has room for."""
        if event == VIRTIO_CONSOLE_PORT_OPEN:  # only the latest open/close of a port matters
            for i, m in enumerate(self._control):
                if m[0] == nr and m[1] == event:
                    del self._control[i]
                    break
        if len(self._control) >= self.control_limit:
            self._count("control_dropped")
            guest_event(f"{self.counters.name}: control queue full", _WARNING,
                        "%s: control queue full (the driver does not read it); %s for port %d dropped",
                        self.counters.name, EVENT_NAMES[event], nr)
            return
        self._control.append((nr, event, value, extra))
        self._flush_control()

    def _flush_control(self) -> None:
        q = self._queue(CONTROL_RX)
        if q is None:
            return
        while self._control:
            chain = q.pop()
            if chain is None:
                return
            nr, event, value, extra = self._control.popleft()
            n = _copy_in(chain, CONTROL.pack(nr, event, value) + extra)
            q.push(chain.head, n)
            self._used = True
            self._count("control_tx")
            if n < CONTROL.size + len(extra):
                self._count("control_truncated_out")
            if event == VIRTIO_CONSOLE_PORT_NAME:
                self._count(f"port{nr}.name_sent")
                log.info("%s: port %d: name %r sent", self.counters.name, nr, extra[:-1].decode(errors="replace"))

    # -- port data ---------------------------------------------------------------------------------
    def _port_tx(self, nr: int, port: Port | None) -> None:
        q = self._queue(rx_queue(nr) + 1)
        if q is None:
            return
        if port is not None and port.held is not None and not self._continue_held(port):
            return  # still throttled: the rest waits in the ring
        while (chain := q.pop()) is not None:
            total = chain.readable_len
            fe = port.chardev if port is not None else None
            if port is None or fe is None or not port.host_open:
                q.push(chain.head, 0)
                self._used = True
                self._count(f"port{nr}.dropped" if port is not None else "dropped_no_port", total)
                continue
            if port.console or not self._multiport or fe.write_room() >= total:
                _write_out(fe, chain, 0)
                q.push(chain.head, 0)
                self._used = True
                self._count(f"port{nr}.bytes_out", total)
                continue
            port.held = [chain, 0]
            if not self._continue_held(port):
                self._count(f"port{nr}.throttled")
                return

    def _continue_held(self, port: Port) -> bool:
        """Write as much of the held chain as the chardev takes; True once it is done."""
        chain, offset = port.held  # type: ignore[misc]
        q = self._queue(rx_queue(port.id) + 1)
        if q is None:
            port.held = None
            return True
        fe = port.chardev
        total = chain.readable_len
        if fe is None or not port.host_open:
            self._count(f"port{port.id}.dropped", total - offset)
        else:
            room = fe.write_room()
            n = min(room, total - offset)
            if n > 0:
                _write_out(fe, chain, offset, n)
                self._count(f"port{port.id}.bytes_out", n)
                offset += n
            if offset < total:
                port.held[1] = offset  # type: ignore[index]
                return False
        port.held = None
        q.push(chain.head, 0)
        self._used = True
        return True

    def _release_held(self, port: Port) -> None:
        """The guest closed the port or the host side went away: a held chain goes back."""
        if port.held is None:
            return
        chain, offset = port.held
        port.held = None
        self._count(f"port{port.id}.dropped", chain.readable_len - offset)
        q = self._queue(rx_queue(port.id) + 1)
        if q is not None:
            q.push(chain.head, 0)
            self._used = True

    def _fill_rx(self, port: Port) -> None:
        """Move held host input into the guest's receive buffers."""
        if not port.inbuf or not self._input_allowed(port):
            return
        q = self._queue(rx_queue(port.id))
        if q is None:
            return
        before = len(port.inbuf)
        while port.inbuf:
            chain = q.pop()
            if chain is None:
                break
            n = _copy_in(chain, port.inbuf)
            del port.inbuf[:n]
            q.push(chain.head, n)
            self._used = True
            self._count(f"port{port.id}.bytes_in", n)
        if len(port.inbuf) < before and port.chardev is not None:
            port.chardev.accept_input()

    def _input_allowed(self, port: Port) -> bool:
        if self._queues is None or self._broken is not None:
            return False
        if not self._multiport:
            return port.id == 0
        return port.ready and port.guest_connected

    def _drop_input(self, port: Port) -> None:
        if port.inbuf:
            self._count(f"port{port.id}.input_dropped", len(port.inbuf))
            port.inbuf.clear()

    # -- the chardevs' side (their threads) --------------------------------------------------------
    def _input_room(self, port: Port) -> int:
        with self._lock:
            if not self._input_allowed(port):
                return 0
            return max(0, PORT_INPUT - len(port.inbuf))

    def _host_input(self, port: Port, data: bytes) -> None:
        with self._lock:
            room = PORT_INPUT - len(port.inbuf)
            if len(data) > room:  # more than can_receive allowed (a reset in between)
                self._count(f"port{port.id}.input_dropped", len(data) - max(room, 0))
                data = data[: max(room, 0)]
            port.inbuf += data
            self._guarded(self._fill_rx, port)

    def _host_event(self, port: Port, opened: bool) -> None:
        """A socket client came or went, a pty was opened or closed: tell the guest."""
        with self._lock:
            self._count(f"port{port.id}.host_opens" if opened else f"port{port.id}.host_closes")
            if port.console:
                return  # consoles are always open on the host side (QEMU)
            if not opened:
                self._guarded(self._release_held, port)
            if port.ready and self._multiport and self._device_ready:
                self._guarded(self._send, port.id, VIRTIO_CONSOLE_PORT_OPEN, int(opened))

    def _host_writable(self, port: Port) -> None:
        with self._lock:
            if port.held is not None:
                self._guarded(self._port_tx, port.id, port)

    def _set_fe_open(self, port: Port, is_open: bool) -> None:
        if port.chardev is not None:
            port.chardev.set_open(is_open)

    # -- counters ----------------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        c = self._counts.get(name)
        if c is None:
            c = self._counts[name] = self.counters.counter(name)
        c.add(n)

    def __repr__(self) -> str:
        return f"VirtioSerial(max_ports={self.max_ports}, ports={sorted(self.ports)})"


def _copy_in(chain: "DescriptorChain", data: bytes | bytearray) -> int:
    """Copy ``data`` into the chain's device-writable buffers; how many bytes fit."""
    n = 0
    total = len(data)
    for v in chain.writable_views():
        if n >= total:
            break
        k = min(len(v), total - n)
        v[:k] = data[n : n + k]
        n += k
    return n


def _write_out(fe: "Chardev", chain: "DescriptorChain", offset: int, count: int | None = None) -> None:
    """Hand ``count`` readable bytes of ``chain`` from ``offset`` on to the chardev, in
    pieces (never one copy of a huge chain)."""
    left = chain.readable_len - offset if count is None else count
    pos = 0
    for v in chain.readable_views():
        if left <= 0:
            break
        if pos + len(v) <= offset:
            pos += len(v)
            continue
        start = max(0, offset - pos)
        end = min(len(v), start + left)
        for i in range(start, end, WRITE_PIECE):
            fe.write(bytes(v[i : min(end, i + WRITE_PIECE)]))
        left -= end - start
        pos += len(v)
