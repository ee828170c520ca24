"""The host side of a character device: one backend, its frontends, and the thread that
moves its bytes.

A *backend* (:class:`CharBackend`) is one ``-chardev`` (or ``-serial`` shorthand): stdio, a
file, a pipe, a pty, a socket. A *frontend* (:class:`CharFrontend`) is what a device holds
(QEMU's ``CharBackend``): the 16550 of COM1, a virtio console port. Without ``mux=on`` a
backend has one frontend; with it, several share the backend: output from all of them is
interleaved, input goes to the one that has the focus (``C-a c`` moves it), as in QEMU.

**Output never blocks the caller.** :meth:`CharBackend.write` runs on a vCPU thread (the
16550) or a virtio worker. It never waits for the sink: when the sink can take the bytes at
once (a non-blocking ``write``/``send`` with nothing queued before them) they go straight
out; otherwise they are appended to a bounded buffer (:data:`OUTPUT_BUFFER` bytes) that the
backend's I/O thread drains when the sink is writable again. What does not fit is dropped
and counted (``bytes_dropped``), as is everything written while the host side is closed (a
socket server without a client, a pty nobody opened). So a guest printing into a pipe
nobody reads slows nothing down, and stopping the machine never waits on a sink for longer
than :data:`CLOSE_FLUSH_SECONDS`.

**Input is flow-controlled.** The I/O thread reads input only while there is room in a
small pending buffer, and hands it to the focused frontend no faster than the frontend's
``can_receive()`` allows (QEMU's ``can_read``). A frontend that has room again calls
:meth:`CharFrontend.accept_input`. A guest that stops reading therefore stops the host
side's reads (the kernel's socket/pipe buffer pushes back) instead of growing a buffer.

**Escapes.** A backend with ``escapes`` (``mux=on``, as in QEMU: ``-serial mon:stdio``, the
default, has it) reads QEMU 7.2's ``C-a`` commands from its input, as its ``mux_proc_byte``
does: ``C-a h`` or ``C-a ?`` prints the list, ``C-a x`` quits, ``C-a s`` (QEMU: commit
``-snapshot`` disks; microvm has no ``-snapshot``) does nothing, ``C-a t`` toggles
timestamps on the output, ``C-a b`` sends a break, ``C-a c`` switches the focus between
frontends, ``C-a C-a`` sends one C-a. Any other key after ``C-a`` (capitals included) is
dropped with it.

Backends live for the whole process: a guest reset builds a new machine whose devices
attach new frontends to the same backends, so a socket client stays connected and a pty
keeps its name across reboots (as in QEMU, where chardevs outlive a system reset).
"""
from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from ..log import get_logger

if TYPE_CHECKING:
    from ..metrics import CounterGroup

log = get_logger("microvm.chardev")

Receiver = Callable[[bytes], None]

#: bytes a backend holds for a sink that cannot take them yet; beyond this output is dropped.
#: Large enough to ride out the I/O thread waiting for the GIL while a virtio worker pushes
#: a burst (a healthy sink then loses nothing); small enough to be no memory concern.
OUTPUT_BUFFER = 1 << 20
#: bytes of input read ahead of what the focused frontend takes
INPUT_PENDING = 4096
#: most bytes one read or write moves
CHUNK = 65536
#: how long closing a backend keeps handing buffered output to a slow sink
CLOSE_FLUSH_SECONDS = 0.5
#: the longest single wait of the I/O thread (a later deadline is waited for in pieces)
MAX_POLL_SECONDS = 60.0

ESCAPE = 0x01  # C-a
#: ``C-a h``: QEMU 7.2's mux help, in its layout and order (``C-a c`` switches between the
#: devices sharing the chardev: microvm has no monitor on a mux)
MUX_HELP = (b"\n\r"
            b"C-a h    print this help\n\r"
            b"C-a x    exit emulator\n\r"
            b"C-a s    save disk data back to file (if -snapshot)\n\r"
            b"C-a t    toggle console timestamps\n\r"
            b"C-a b    send break (magic sysrq)\n\r"
            b"C-a c    switch between frontends\n\r"
            b"C-a C-a  sends C-a\n\r")
#: what ``C-a x`` says before the VMM ends (QEMU's mux: "QEMU: Terminated")
TERMINATED = b"microvm: Terminated\n\r"

_BREAK = object()  # a break in the pending input stream
_FOCUS = object()  # C-a c in the pending input stream


class ChardevInfo(NamedTuple):
    """One character device as QMP's ``query-chardev`` reports it: the label (the id),
    the filename in QEMU's form (``stdio``, ``unix:/path,server=on``, ``pty:/dev/pts/3``)
    and whether a frontend has it open."""

    label: str
    filename: str
    frontend_open: bool = False


class Chardev(Protocol):
    """What a device gets from ``ctx.chardev(id)`` / ``ctx.serial_chardev(n)``: its frontend
    on a host character device (:class:`CharFrontend`).

    ``write`` may be called from any thread and never blocks; input arrives on the
    backend's thread through the handlers, never more at once than ``can_receive()``
    allowed; ``on_event(True/False)`` says the host side opened or closed (a socket client
    came or went)."""

    def write(self, data: bytes) -> None: ...

    def write_room(self) -> int: ...

    def set_receiver(self, receiver: Receiver | None, on_break: Callable[[], None] | None = None) -> None: ...

    def set_handlers(
        self,
        receive: Receiver | None = None,
        can_receive: Callable[[], int] | None = None,
        on_break: Callable[[], None] | None = None,
        on_event: Callable[[bool], None] | None = None,
        on_writable: Callable[[], None] | None = None,
    ) -> None: ...

    def accept_input(self) -> None: ...

    @property
    def is_open(self) -> bool: ...

    def set_open(self, is_open: bool) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def info(self) -> ChardevInfo: ...

    def window_size(self) -> tuple[int, int] | None: ...


class CharFrontend:
    """A device's handle on a backend (QEMU's ``CharBackend``). Made by the machine for the
    device that asks (``ctx.chardev(id)``); detached (``close``) when that machine goes away,
    so the devices of a rebooted machine never see the old one's input."""

    def __init__(self, backend: "CharBackend", owner: str) -> None:
        self.backend = backend
        self.owner = owner
        self.attached = True
        #: whether the device has its side open (QMP's ``frontend-open``): the 16550 always,
        #: a virtio serial port while the guest has it open
        self.fe_open = True
        self.receive: Receiver | None = None
        self.can_receive: Callable[[], int] | None = None
        self.on_break: Callable[[], None] | None = None
        self.on_event: Callable[[bool], None] | None = None
        self.on_writable: Callable[[], None] | None = None

    @property
    def label(self) -> str:
        return self.backend.label

    def write(self, data: bytes) -> None:
        """Send ``data`` to the host; never blocks (see :class:`CharBackend`)."""
        if self.attached:
            self.backend.write(data)

    def write_room(self) -> int:
        """Bytes :meth:`write` takes right now without dropping any (0 when detached)."""
        return self.backend.write_room() if self.attached else 0

    def set_receiver(self, receiver: Receiver | None, on_break: Callable[[], None] | None = None) -> None:
        """Input handler without flow control (it must take whatever it is given)."""
        self.set_handlers(receive=receiver, on_break=on_break)

    def set_handlers(
        self,
        receive: Receiver | None = None,
        can_receive: Callable[[], int] | None = None,
        on_break: Callable[[], None] | None = None,
        on_event: Callable[[bool], None] | None = None,
        on_writable: Callable[[], None] | None = None,
    ) -> None:
        """Install the device's handlers (QEMU's ``qemu_chr_fe_set_handlers``). All run on
        the backend's thread and must not block: ``receive(data)`` gets at most what
        ``can_receive()`` returned just before; ``on_break()`` is a break (``C-a b``);
        ``on_event(opened)`` the host side opening or closing; ``on_writable()`` room in the
        output buffer again after :meth:`write_room` was short."""
        self.receive = receive
        self.can_receive = can_receive
        self.on_break = on_break
        self.on_event = on_event
        self.on_writable = on_writable
        self.backend.wake()

    def accept_input(self) -> None:
        """The device has room for input again (QEMU's ``qemu_chr_fe_accept_input``)."""
        self.backend.wake()

    @property
    def is_open(self) -> bool:
        """Whether the host side is open: always for stdio, files and pipes; for a socket
        while a peer is connected; for a pty while something has it open."""
        return self.backend.connected

    def set_open(self, is_open: bool) -> None:
        """The device opened or closed its side (QEMU's ``qemu_chr_fe_set_open``)."""
        self.fe_open = is_open

    def start(self) -> None:
        """Start the backend's I/O (idempotent; the machine starts every backend anyway)."""
        self.backend.start()

    def close(self) -> None:
        """Detach from the backend: no more input or events; later writes are ignored."""
        if self.attached:
            self.attached = False
            self.receive = self.can_receive = self.on_break = self.on_event = self.on_writable = None
            self.backend.detach(self)

    def info(self) -> ChardevInfo:
        return self.backend.info()

    def window_size(self) -> tuple[int, int] | None:
        """(columns, rows) of the terminal behind the chardev, None when it is no terminal
        (for a device that reports a size; the virtio console does not, as in QEMU 7.2)."""
        return self.backend.window_size()

    def __repr__(self) -> str:
        return f"<CharFrontend {self.owner} on {self.backend!r}>"


class CharBackend:
    """One host character device: a bounded output buffer, pending input, its frontends,
    and an I/O thread started by :meth:`start`.

    Subclasses say how to reach the sink and the source:

    * ``direct_write`` -- whether :meth:`_sink_write` never blocks, so :meth:`write` may
      call it on the caller's thread when nothing is queued;
    * :meth:`_sink_write` -- write some bytes: the count written, ``BlockingIOError`` when
      none fit, another ``OSError`` when the sink is gone;
    * :meth:`_out_fd` -- the fd to wait on for room (None: writes complete without waiting,
      as for a regular file, and the thread writes as soon as there is output);
    * :meth:`_in_fd` / :meth:`_read_input` -- the input fd and a non-blocking read;
    * :meth:`_poll_extra` / :meth:`_on_extra` / :meth:`_timeout` / :meth:`_on_timeout` --
      anything else the thread watches (a listening socket, a reconnect timer);
    * :meth:`_on_input_eof`, :meth:`_on_sink_error`, :meth:`_close_resources`, :meth:`filename`.

    Counters (the group ``chardev.ID``): ``bytes_written``, ``bytes_dropped`` (output that
    never reached the sink), ``bytes_read`` and ``input_dropped`` (input no frontend took).
    The output counters count the frontends' bytes only: ``C-a t``'s stamps and the mux's
    own messages reach the sink too but are neither (so ``bytes_written + bytes_dropped``
    is what the devices wrote).
    """

    #: the backend type as the user writes it (``stdio``, ``socket``...)
    kind = "chardev"
    #: :meth:`_sink_write` never blocks and may run on the writer's thread
    direct_write = False

    def __init__(
        self,
        label: str,
        *,
        mux: bool = False,
        escapes: bool = False,
        counters: "CounterGroup | None" = None,
        buffer_size: int = OUTPUT_BUFFER,
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self.mux = mux
        self.escapes = escapes
        self.on_quit = on_quit
        self._lock = threading.Lock()
        self._out = bytearray()
        #: the position of ``_out[0]`` in all that ever went through ``_out`` (what
        #: :meth:`_take_front` took before it), the origin of ``_own``
        self._out_start = 0
        #: the backend's own bytes in ``_out`` (``C-a t`` stamps, the mux's help and
        #: "Terminated"), as (start, end) stream positions in order: they reach the sink like
        #: the rest but are not the devices' output, so the counters leave them out
        self._own: deque[tuple[int, int]] = deque()
        self._limit = max(1, buffer_size)
        self._pending: deque[Any] = deque()  # bytes, _BREAK, _FOCUS
        self._pending_len = 0
        self._escape = False
        #: ``C-a t``: each output line starts with the time since the first stamp (QEMU's
        #: ``[HH:MM:SS.mmm] ``); the state is guarded by ``_lock``
        self._timestamps = False
        self._ts_start: float | None = None
        self._linestart = False
        self.frontends: list[CharFrontend] = []
        self._focus = 0
        #: a peer is there to write to (False for a server without a client, a closed pty)
        self.connected = True
        self._input_eof = False
        self._sink_gone = False
        #: the sink said "would block" and has not taken anything since
        self._stalled = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if counters is None:
            from ..metrics import CounterGroup

            counters = CounterGroup(f"chardev.{label}")
        self.counters = counters
        self._count_written = counters.counter("bytes_written").add
        self._count_dropped = counters.counter("bytes_dropped").add
        self._count_read = counters.counter("bytes_read").add
        self._count_input_dropped = counters.counter("input_dropped").add

    # ---- frontends ---------------------------------------------------------------------------
    def attach(self, owner: str) -> CharFrontend:
        """A new frontend for ``owner``. Without ``mux`` a second live frontend is refused
        (:class:`~microvm.errors.ConfigError`), as QEMU refuses a chardev "in use"."""
        from ..errors import ConfigError

        with self._lock:
            if self.frontends and not self.mux:
                other = self.frontends[0].owner
                raise ConfigError(f"{owner}: chardev {self.label!r} is already in use by {other} "
                                  f"(give the chardev mux=on to share it)")
            fe = CharFrontend(self, owner)
            self.frontends.append(fe)
        return fe

    def detach(self, fe: CharFrontend) -> None:
        with self._lock:
            if fe in self.frontends:
                i = self.frontends.index(fe)
                self.frontends.remove(fe)
                if self._focus > i or self._focus >= len(self.frontends):
                    self._focus = max(0, self._focus - 1)

    def _focused(self) -> CharFrontend | None:
        fes = self.frontends
        return fes[self._focus] if 0 <= self._focus < len(fes) else None

    # ---- output (any thread) -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the sink; never blocks. Dropped (and counted) when the host side
        is closed or the buffer is full."""
        self._write(data, own=False)

    def _write(self, data: bytes, own: bool) -> None:
        """:meth:`write`, or with ``own`` the backend's own message (the mux's help,
        "Terminated"), which goes the same way but is not counted as a frontend's output."""
        n = len(data)
        if not n:
            return
        guest = 0 if own else n
        with self._lock:
            if not self.connected or self._sink_gone or self.closed or self._error is not None:
                self._count_dropped(guest)
                return
            marks: list[tuple[int, int]] = [(0, n)] if own else []
            if self._timestamps and not own:
                # the stamps take only room the device's bytes leave free: a frontend that
                # checked write_room() (a throttled virtio port) loses none of its bytes
                data, marks = self._stamp(data, self._limit - len(self._out) - n)
                n = len(data)
            if self.direct_write and not self._out:
                try:
                    k = self._sink_write(data)
                except BlockingIOError:
                    k = 0
                except OSError as e:  # the sink failed: the I/O thread decides what that means
                    self._error = e
                    self._count_dropped(guest)
                    k = -1
                if k < 0:
                    wake = True
                elif k >= n:
                    self._count_written(guest)
                    return
                else:  # the sink is full for now: the rest waits for the I/O thread
                    self._stalled = True
                    if k:
                        self._count_written(k - _overlap(marks, 0, k))
                        data = data[k:]
                        marks = _shift(marks, k)
                    wake = self._queue(data, marks)
            else:
                wake = self._queue(data, marks)
        if wake:
            self.wake()
        elif len(self._out) > self._limit // 2 and not self._stalled:
            # the sink keeps up but the I/O thread waits for the GIL (a virtio worker pushing a
            # burst): let it run. Yield, never wait: a stalled sink gets no yields at all.
            time.sleep(0)

    def _stamp(self, data: bytes, spare: int) -> tuple[bytes, list[tuple[int, int]]]:
        """``C-a t``'s output (lock held): ``[HH:MM:SS.mmm] `` before each line's first
        byte, the time counted from the first stamp after the toggle, as QEMU's
        ``mux_chr_write`` does; and where the stamps lie in the result. A stamp is put in
        only while it fits in ``spare`` bytes (the buffer's room beyond ``data``): where it
        does not, that line goes without one rather than push the device's bytes out."""
        out = bytearray()
        marks: list[tuple[int, int]] = []
        lines = data.split(b"\n")
        last = len(lines) - 1
        for i, line in enumerate(lines):
            if self._linestart and (line or i < last):
                now = time.monotonic()
                if self._ts_start is None:
                    self._ts_start = now
                ms = int((now - self._ts_start) * 1000)
                secs = ms // 1000
                stamp = b"[%02d:%02d:%02d.%03d] " % (secs // 3600, secs // 60 % 60, secs % 60, ms % 1000)
                if len(stamp) <= spare:
                    marks.append((len(out), len(out) + len(stamp)))
                    out += stamp
                    spare -= len(stamp)
                self._linestart = False
            out += line
            if i < last:
                out += b"\n"
                self._linestart = True
        return bytes(out), marks

    def _toggle_timestamps(self) -> None:
        with self._lock:
            self._timestamps = not self._timestamps
            self._ts_start = None
            self._linestart = False  # as QEMU: the first stamp comes after the next newline

    def _queue(self, data: bytes, marks: list[tuple[int, int]]) -> bool:
        """Append to the buffer (lock held), dropping what does not fit; ``marks`` are the
        backend's own bytes in ``data`` (not counted). True when the buffer was empty
        before (the I/O thread must be woken)."""
        n = len(data)
        room = self._limit - len(self._out)
        if room < n:
            keep = max(room, 0)
            self._count_dropped(n - keep - _overlap(marks, keep, n))
            if keep <= 0:
                return False
            data = data[:keep]
            marks = [(a, min(b, keep)) for a, b in marks if a < keep]
        was_empty = not self._out
        end = self._out_start + len(self._out)
        self._own.extend((end + a, end + b) for a, b in marks)
        self._out += data
        return was_empty

    def _take_front(self, k: int) -> int:
        """The first ``k`` bytes of ``_out`` leave it (lock held; the caller deletes them):
        how many of them are frontends' bytes."""
        start = self._out_start
        end = start + k
        own = 0
        while self._own:
            a, b = self._own[0]
            if a >= end:
                break
            own += min(b, end) - max(a, start)
            if b <= end:
                self._own.popleft()
            else:
                self._own[0] = (end, b)
                break
        self._out_start = end
        return k - own

    def _drop_out(self) -> int:
        """Drop everything buffered (lock held), counting the frontends' part; how many
        bytes the buffer held."""
        left = len(self._out)
        if left:
            self._count_dropped(self._take_front(left))
            self._out.clear()
        return left

    def write_room(self) -> int:
        """Bytes :meth:`write` would take now without dropping (the whole buffer while the
        host side is closed: such output is dropped whatever the size)."""
        with self._lock:
            if not self.connected:
                return self._limit
            return max(0, self._limit - len(self._out))

    def wake(self) -> None:
        """Make the I/O thread look again (new output, room for input, new handlers)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken, or closed

    # ---- the I/O thread ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the I/O thread (idempotent)."""
        with self._lock:
            if self._thread is not None or self.closed:
                return
            self._thread = threading.Thread(target=self._run, name=f"chardev-{self.label}", daemon=True)
        self._on_start()
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._closing:
                self._iterate(None)
        except Exception:  # a bug must not take the VM down silently
            log.exception("chardev %s: I/O thread failed", self.label)
            with self._lock:
                self._sink_gone = True
                self._drop_out()
            return
        self._final_flush()

    def _iterate(self, max_wait: float | None) -> None:
        """One round: deliver pending input, write what can be written, wait for the fds."""
        self._check_error()
        if self._pending:
            self._deliver()
        fds: dict[int, int] = {self._wake_r: select.POLLIN}
        with self._lock:
            pending_out = bool(self._out) and self.connected and not self._sink_gone
        if pending_out:
            ofd = self._out_fd()
            if ofd is None:  # a sink that never makes us wait: write now
                self._flush()
                return
            fds[ofd] = fds.get(ofd, 0) | select.POLLOUT
        else:
            ofd = None
        ifd = self._in_fd() if (not self._input_eof and self._pending_len < INPUT_PENDING) else None
        if ifd is not None:
            fds[ifd] = fds.get(ifd, 0) | select.POLLIN
        for fd, ev in self._poll_extra().items():
            fds[fd] = fds.get(fd, 0) | ev
        due = self._timeout()  # seconds until _on_timeout is due (None: never)
        wait = due
        if max_wait is not None:
            wait = max_wait if wait is None else min(wait, max_wait)
        if wait is not None:
            # poll takes a C int of milliseconds: a far deadline (reconnect=3000000) is
            # waited for in pieces, the loop asking _timeout again after each
            wait = min(max(0.0, wait), MAX_POLL_SECONDS)
        poller = select.poll()
        for fd, ev in fds.items():
            poller.register(fd, ev)
        try:
            events = poller.poll(None if wait is None else int(wait * 1000 + 0.999))
        except InterruptedError:
            return
        if not events and due is not None and due <= wait:  # type: ignore[operator]
            self._on_timeout()
            return
        for fd, ev in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            handled = False
            if fd == ofd and ev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                handled = True
                self._flush()
            if fd == ifd and ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                handled = True
                self._read_ready()
            if not handled:
                self._on_extra(fd, ev)

    def _check_error(self) -> None:
        with self._lock:
            e, self._error = self._error, None
        if e is not None:
            self._on_sink_error(e)

    def _flush(self) -> None:
        """Hand buffered output to the sink until it is empty or would block."""
        freed = False
        while True:
            with self._lock:
                if not self._out or not self.connected or self._sink_gone:
                    break
                chunk = bytes(self._out[:CHUNK])
            try:
                k = self._sink_write(chunk)
            except BlockingIOError:
                self._stalled = True
                break
            except OSError as e:
                self._on_sink_error(e)
                break
            if k <= 0:
                break
            with self._lock:
                if self.closed:  # close() gave up on this write and counted it as dropped
                    break
                written = self._take_front(k)
                del self._out[:k]
            self._count_written(written)
            self._stalled = False
            freed = True
        if freed:
            for fe in list(self.frontends):
                cb = fe.on_writable
                if cb is not None:
                    try:
                        cb()
                    except Exception:
                        log.exception("chardev %s: on_writable of %s failed", self.label, fe.owner)

    def _final_flush(self) -> None:
        """Closing: give the sink up to :data:`CLOSE_FLUSH_SECONDS` for what is buffered."""
        deadline = time.monotonic() + CLOSE_FLUSH_SECONDS
        while True:
            with self._lock:
                left = len(self._out) if self.connected and not self._sink_gone else 0
            if not left:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ofd = self._out_fd()
            if ofd is not None:
                p = select.poll()
                p.register(ofd, select.POLLOUT)
                try:
                    if not p.poll(int(remaining * 1000) + 1):
                        continue
                except InterruptedError:
                    continue
            before = left
            self._flush()
            with self._lock:
                if len(self._out) == before and ofd is None:
                    break  # no progress on a sink we cannot wait for
        with self._lock:
            self._drop_out()

    # ---- input -------------------------------------------------------------------------------
    def _read_ready(self) -> None:
        want = min(CHUNK, INPUT_PENDING - self._pending_len)
        if want <= 0:
            return
        try:
            data = self._read_input(want)
        except OSError as e:
            log.debug("chardev %s: input failed: %s", self.label, e)
            data = b""
        if data is None:
            return
        if not data:
            self._on_input_eof()
            return
        self._count_read(len(data))
        self._feed(data)
        self._deliver()

    def _push(self, item: Any) -> None:
        """Append to the pending input. A marker (a break, a focus change) counts as one
        byte: behind input the frontend cannot take yet, ``C-a b`` repeated without end
        must fill :data:`INPUT_PENDING` and stop the reads like any other input."""
        if isinstance(item, (bytes, bytearray)):
            if not item:
                return
            self._pending_len += len(item)
        else:
            self._pending_len += 1
        self._pending.append(item)

    def _feed(self, data: bytes) -> None:
        """Raw input into the pending stream, with the C-a commands taken out."""
        if not self.escapes:
            self._push(bytes(data))
            return
        out = bytearray()
        for b in data:
            if self._escape:  # QEMU's mux_proc_byte: these keys, lower case only
                self._escape = False
                if b == ESCAPE:
                    out.append(b)
                elif b == 0x78:  # x
                    self._push(bytes(out))
                    out.clear()
                    self._write(TERMINATED, own=True)
                    if self.on_quit is not None:
                        self.on_quit()
                elif b == 0x62:  # b
                    self._push(bytes(out))
                    out.clear()
                    self._push(_BREAK)
                elif b == 0x63:  # c
                    if self.mux:
                        self._push(bytes(out))
                        out.clear()
                        self._push(_FOCUS)
                elif b in (0x68, 0x3F):  # h, ?
                    self._write(MUX_HELP, own=True)
                elif b == 0x74:  # t
                    self._toggle_timestamps()
                # s (QEMU: commit -snapshot disks; none here) and every other key: nothing,
                # and neither byte reaches the guest
            elif b == ESCAPE:
                self._escape = True
            else:
                out.append(b)
        self._push(bytes(out))

    def _deliver(self) -> None:
        """Hand pending input to the focused frontend as far as it can take it."""
        while self._pending:
            item = self._pending[0]
            fe = self._focused()
            if item is _BREAK:
                self._pending.popleft()
                self._pending_len -= 1
                cb = fe.on_break if fe is not None else None
                if cb is not None:
                    self._call(fe, cb)
                continue
            if item is _FOCUS:
                self._pending.popleft()
                self._pending_len -= 1
                with self._lock:
                    if self.frontends:
                        self._focus = (self._focus + 1) % len(self.frontends)
                continue
            receive = fe.receive if fe is not None else None
            if receive is None:  # nobody takes input: it is dropped, not hoarded
                self._pending.popleft()
                self._pending_len -= len(item)
                self._count_input_dropped(len(item))
                continue
            can = fe.can_receive
            room = len(item) if can is None else self._room(fe, can)
            if room <= 0:
                return
            take = item[:room]
            if len(take) == len(item):
                self._pending.popleft()
            else:
                self._pending[0] = item[room:]
            self._pending_len -= len(take)
            self._call(fe, receive, take)

    def _room(self, fe: CharFrontend, can: Callable[[], int]) -> int:
        try:
            return int(can())
        except Exception:
            log.exception("chardev %s: can_receive of %s failed", self.label, fe.owner)
            return 0

    def _call(self, fe: CharFrontend, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a device bug must not end input for good
            log.exception("chardev %s: input handler of %s failed", self.label, fe.owner)

    # ---- host side opening and closing -------------------------------------------------------
    def _set_connected(self, connected: bool) -> None:
        """The peer came or went: tell every frontend; output buffered for a peer that went
        away is dropped (a new peer gets what is written from now on)."""
        with self._lock:
            if connected == self.connected:
                return
            self.connected = connected
            if not connected:
                self._drop_out()
            fes = list(self.frontends)
        log.info("chardev %s: %s", self.label, "connected" if connected else "disconnected")
        for fe in fes:
            cb = fe.on_event
            if cb is not None:
                self._call(fe, cb, connected)

    # ---- what subclasses provide -------------------------------------------------------------
    def _sink_write(self, data: bytes) -> int:
        raise BlockingIOError  # no sink: output waits, then is dropped at the buffer's end

    def _out_fd(self) -> int | None:
        return None

    def _in_fd(self) -> int | None:
        return None

    def _read_input(self, n: int) -> bytes | None:
        return b""

    def _poll_extra(self) -> dict[int, int]:
        return {}

    def _on_extra(self, fd: int, events: int) -> None:
        pass

    def _timeout(self) -> float | None:
        return None

    def _on_timeout(self) -> None:
        pass

    def _on_start(self) -> None:
        """Called once, on the starting thread, before the I/O thread runs."""

    def _on_input_eof(self) -> None:
        """The input ended (stdin closed): stop reading; the guest keeps running."""
        self._input_eof = True

    def _on_sink_error(self, e: OSError) -> None:
        """The sink failed for good (EPIPE, EIO): drop what is queued and what comes."""
        log.info("chardev %s: output failed (%s); further output is dropped", self.label, e.strerror or e)
        with self._lock:
            self._sink_gone = True
            self._drop_out()

    def _close_resources(self) -> None:
        """Release fds and sockets (after the thread stopped, or gave up on it)."""

    def filename(self) -> str:
        """QEMU's ``filename`` of the chardev (``query-chardev``)."""
        return self.kind

    def info(self) -> ChardevInfo:
        return ChardevInfo(self.label, self.filename(), any(fe.fe_open for fe in self.frontends))

    def window_size(self) -> tuple[int, int] | None:
        """(columns, rows) of the terminal behind this chardev, if it is one."""
        return None

    # ---- closing -----------------------------------------------------------------------------
    def begin_close(self) -> None:
        """Tell the I/O thread to hand over what it holds and stop (it gives the sink at most
        :data:`CLOSE_FLUSH_SECONDS`). :meth:`close` waits for it; closing several chardevs,
        begin them all first so that their flushes overlap (``HostBackends.close`` does)."""
        self._closing = True
        self.wake()

    def close(self, deadline: float | None = None) -> None:
        """Stop the I/O thread and release everything, by ``deadline`` (``time.monotonic()``;
        default: :data:`CLOSE_FLUSH_SECONDS` and a little from now). Idempotent."""
        if self.closed:
            return
        if deadline is None:
            deadline = time.monotonic() + CLOSE_FLUSH_SECONDS + 0.3
        self.begin_close()
        t = self._thread
        stuck = False
        if t is not None and t is not threading.current_thread():
            t.join(timeout=max(0.0, deadline - time.monotonic()))
            stuck = t.is_alive()
        elif t is None:  # never started: hand over what was written, as the thread would
            self._final_flush()
        with self._lock:
            self.closed = True
            # what the thread still held, the write it is stuck in included
            left = self._drop_out() if stuck else 0
        if stuck:  # a sink that blocks in the kernel (a hung file system): leave it be
            log.warning("chardev %s: output still blocked at exit; %d bytes dropped", self.label, left)
            return
        self._close_resources()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} {self.filename()}>"


class NullBackend(CharBackend):
    """``null``: takes all output (counted as written), never produces input, no thread."""

    kind = "null"

    def write(self, data: bytes) -> None:
        self._count_written(len(data))

    def write_room(self) -> int:
        return self._limit

    def start(self) -> None:
        pass


def _overlap(marks: list[tuple[int, int]], start: int, end: int) -> int:
    """How many bytes of the ranges ``marks`` lie in [start, end)."""
    return sum(max(0, min(b, end) - max(a, start)) for a, b in marks)


def _shift(marks: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """``marks`` after the first ``k`` bytes are gone."""
    return [(max(a - k, 0), b - k) for a, b in marks if b > k]
