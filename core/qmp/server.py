"""The QMP server: one listening socket, many clients, one thread, bounded memory.

Why one thread with ``selectors`` (no thread per client, no asyncio): a monitor is idle
nearly always, asyncio would cost start-up time and a second concurrency model next to the
vCPU threads, and a thread per client lets a hostile client multiply threads. The thread
owns every socket; other threads only hand it events (:meth:`QmpServer.emit_event`) through
a locked list and a wake-up pipe, so a vCPU thread never blocks on a client.

Semantics are QEMU's ``-qmp unix:PATH,server=on,wait=off`` / ``tcp:HOST:PORT,...``: the VM
does not wait for a client (unless ``wait=on`` and the machine side calls
:meth:`QmpServer.wait_for_client`), each client gets its own greeting and negotiation state,
and events go to every client that has completed negotiation. A server started with
``serve=False`` accepts connections (so ``wait=on`` is satisfied) but neither greets nor
reads them until :meth:`QmpServer.serve`: QEMU serves its monitors from the main loop, which
runs only once the machine and its vCPU threads exist, so no client can see a machine
without vCPUs (``query-cpus-fast`` answering ``[]``). Unlike QEMU's socket chardev,
which serves one client at a time (the next waits in the backlog until it leaves, however
idle it is), up to ``max_clients`` are served at once; when all are taken and another
connects, the client silent the longest (none negotiated first) makes room for it once it
has been silent for ``evict_idle`` seconds, so idle clients cannot lock the monitor.

Hostile clients (limits are per client, see docs/qmp.md):

* malformed JSON gets QEMU's error reply and the connection keeps being served;
* one message larger than ``max_message`` bytes (default 1 MiB; QEMU allows 64 MiB) or
  nested deeper than 1024 gets QEMU's limit error and the connection is closed;
* a client's requests are handled at most ``QMP_REQ_QUEUE_LEN_MAX`` (8) per turn, the rest
  of its input waiting unparsed and unread-from until then, so one that floods requests
  gets its share of the thread, not all of it, and the thread rests between two turns of
  a backlog as long as the turn took (the GIL free for the vCPU threads);
* a client whose unsent output exceeds ``max_output`` (default 1 MiB: it stopped reading)
  is dropped, so neither the server nor the VM ever waits for it;
* ``accept`` failing for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
  stops listening for a while (50 ms, doubling up to 2 s; at once when a client leaves)
  instead of spinning on the readable listener, with one warning per episode.
"""
from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from typing import Any

from ..errors import ConfigError
from ..log import WARNING, EventLog, get_logger
from .control import MachineControl
from .events import check_event, event_message
from .protocol import QmpSession
from .qjson import DEFAULT_MAX_MESSAGE, to_line

log = get_logger("microvm.qmp")
#: what clients can repeat without bound (a message over the limits, not reading, taking a
#: slot idle, a failing accept): the first of each kind is logged, repeats are counted and
#: summarised (microvm.log.EventLog, as for guest errors), so a client reconnecting to send
#: garbage cannot fill the host's log one warning per connection
client_event = EventLog(log)

DEFAULT_MAX_CLIENTS = 16
#: seconds a client must have sent nothing before a new connection may take its place
#: when every slot is taken
DEFAULT_EVICT_IDLE = 5.0
#: accept() back-off after EMFILE and the like: first delay, longest delay
ACCEPT_BACKOFF = (0.05, 2.0)
DEFAULT_MAX_OUTPUT = 1 << 20
#: events queued from other threads before the server thread takes them. It takes them at
#: once, so this bound is only reached if that thread is wedged; then the oldest are dropped
#: (with a warning) rather than letting memory grow
MAX_PENDING_EVENTS = 1 << 16
_RECV_SIZE = 65536
#: requests of one client handled per turn of the server loop (QEMU's QMP_REQ_QUEUE_LEN_MAX:
#: it suspends a monitor whose queue holds 8). The rest of what the client sent stays
#: unparsed and nothing more is read from it until it is handled, a turn at a time, between
#: the other clients and the events: a flooding client gets its share, not the whole thread
QMP_REQ_QUEUE_LEN_MAX = 8
#: longest rest between two turns of a client's backlog (seconds; each rest is as long as
#: the turn before it took)
BACKLOG_REST = 0.01
_LISTEN, _WAKE = "listen", "wake"
#: how long close() keeps trying to deliver queued replies and events (quit's reply and
#: the SHUTDOWN event)
CLOSE_FLUSH_SECONDS = 1.0


class Address:
    """A parsed ``unix:PATH[,opts]`` or ``tcp:[HOST]:PORT[,opts]`` monitor address."""

    def __init__(self, text: str) -> None:
        self.text = text
        head, *opts = text.split(",")
        self.wait = False
        wait_given = False
        for opt in opts:
            key, _, value = opt.partition("=")
            value = value or "on"
            if key == "nowait":
                key, value = "wait", "off"
            if key not in ("server", "wait") or value not in ("on", "off"):
                raise ConfigError(f"-qmp {text}: unsupported option {opt!r} (server=on, wait=on|off)")
            if key == "server" and value == "off":
                raise ConfigError(f"-qmp {text}: only server=on is supported (microvm listens, it does not connect)")
            if key == "wait":
                self.wait = value == "on"
                wait_given = True
            elif key == "server" and not wait_given:
                self.wait = True  # QEMU: a listening socket waits for a client unless wait=off
        kind, sep, rest = head.partition(":")
        if not sep or kind not in ("unix", "tcp") or not rest:
            raise ConfigError(f"-qmp {text}: expected unix:PATH or tcp:HOST:PORT")
        self.kind = kind
        self.path = ""
        self.host = ""
        self.port = 0
        if kind == "unix":
            self.path = rest
            if len(os.fsencode(rest)) > 107:
                raise ConfigError(f"-qmp {text}: socket path longer than 107 bytes")
        else:
            host, sep, port = rest.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ConfigError(f"-qmp {text}: expected tcp:HOST:PORT")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            self.host = host
            self.port = int(port)


class _Client:
    __slots__ = ("sock", "session", "out", "out_bytes", "mask", "name", "last_input", "backlog")

    def __init__(self, sock: socket.socket, session: QmpSession, name: str, now: float) -> None:
        self.sock = sock
        self.session = session
        self.out: deque[bytes] = deque()
        self.out_bytes = 0
        self.mask = 0
        self.name = name
        #: time.monotonic() of the connection or of the last bytes received
        self.last_input = now
        #: input received but not handled yet (QMP_REQ_QUEUE_LEN_MAX per turn): the client
        #: is not read from (QEMU's suspended monitor) until it is handled
        self.backlog = False


class QmpServer:
    """A QMP monitor listening on ``address`` for ``control``'s machine.

    ``start()`` binds (raising :class:`~microvm.errors.ConfigError` with one line if it
    cannot) and starts the thread; ``close()`` stops it, delivers what is queued for up to
    a second, closes every socket and removes the Unix socket file. ``emit_event`` may be
    called from any thread at any time (before start and after close it does nothing).
    """

    def __init__(
        self,
        address: str,
        control: MachineControl,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_output: int = DEFAULT_MAX_OUTPUT,
        evict_idle: float = DEFAULT_EVICT_IDLE,
    ) -> None:
        self.address = Address(address)
        self.control = control
        self.max_clients = max_clients
        self.max_message = max_message
        self.max_output = max_output
        self.evict_idle = evict_idle
        self._listener: socket.socket | None = None
        self._listening = False
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._warned_pending = False
        self._thread: threading.Thread | None = None
        self._thread_ident = 0
        self._stopping = False
        self._closed = False
        self._unix_id: tuple[int, int] | None = None
        self._connected = threading.Event()
        #: serve() was called (set under _lock) / the server thread has acted on it
        self._serve_requested = False
        self._serving = False
        #: the listener is off until then (time.monotonic()): accept back-off, or a full
        #: server waiting for a client to become evictable; None: no such wait
        self._listen_at: float | None = None
        self._backoff = ACCEPT_BACKOFF[0]
        self._accept_failing = False
        #: counters, for tests and diagnostics
        self.stats = {"accepted": 0, "dropped_slow": 0, "dropped_limit": 0, "events": 0, "evicted": 0,
                      "accept_errors": 0}

    # ------------------------------------------------------------------ public API
    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``tcp:127.0.0.1:0``)."""
        if self._listener is None or self.address.kind != "tcp":
            return 0
        return self._listener.getsockname()[1]

    @property
    def path(self) -> str:
        return self.address.path

    @property
    def wait(self) -> bool:
        """True when the address asked for ``wait=on``: call :meth:`wait_for_client` before
        starting the vCPUs."""
        return self.address.wait

    def start(self, serve: bool = True) -> None:
        """Bind and start the thread. With ``serve=False`` connections are accepted but
        not greeted nor read until :meth:`serve` (the machine does not exist yet)."""
        if self._thread is not None:
            raise RuntimeError("QMP server already started")
        self._listener = self._bind()
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._listen(True)
        self._serve_requested = serve
        self._thread = threading.Thread(target=self._run, name="qmp", daemon=True)
        self._thread.start()
        log.info("QMP monitor listening on %s", self.address.text)

    def serve(self) -> None:
        """Start greeting and answering clients (those connected already first, in the
        order they connected). Any thread; idempotent."""
        with self._lock:
            if self._serve_requested or self._closed:
                return
            self._serve_requested = True
            if self._thread is not None:
                self._wake()

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Block until a first client has connected (``wait=on`` semantics)."""
        return self._connected.wait(timeout)

    def close(self) -> None:
        """Stop serving. Safe from any thread, including the server thread itself, and twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            if self._thread is not None:
                self._wake()
        if self._thread is None:
            self._close_listener()
            return
        if threading.get_ident() != self._thread_ident:
            self._thread.join(CLOSE_FLUSH_SECONDS + 5)
            if self._thread.is_alive():
                log.warning("QMP server thread did not stop")

    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send event ``name`` to every negotiated client. Any thread; never blocks on a
        client. Raises ValueError for an event or member QEMU 7.2 does not have."""
        check_event(name, data)
        line = to_line(event_message(name, data))
        if threading.get_ident() == self._thread_ident:
            self._take_pending()  # what other threads emitted earlier goes first
            self._broadcast(line)  # inside a command: before its reply, as in QEMU
            return
        with self._lock:
            if self._thread is None or self._closed:
                return
            if len(self._pending) >= MAX_PENDING_EVENTS:
                del self._pending[0]
                if not self._warned_pending:
                    self._warned_pending = True
                    log.warning("QMP server thread is not taking events: dropping the oldest")
            self._pending.append(line)
            self._wake()  # under the lock: the thread closes the pipe under it too

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------------ binding
    def _bind(self) -> socket.socket:
        a = self.address
        if a.kind == "unix":
            return self._bind_unix(a.path)
        try:
            infos = socket.getaddrinfo(a.host or None, a.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise ConfigError(f"-qmp {a.text}: cannot resolve {a.host!r}: {e.strerror}") from None
        last: OSError | None = None
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
                sock.listen(64)
                return sock
            except OSError as e:
                sock.close()
                last = e
        raise ConfigError(f"-qmp {a.text}: cannot listen: {last.strerror if last else 'no address'}")

    def _bind_unix(self, path: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ConfigError(f"-qmp {self.address.text}: {e.strerror}") from None
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"-qmp {self.address.text}: {path} exists and is not a socket")
            try:  # a stale socket from an earlier run, as QEMU unlinks it
                os.unlink(path)
            except OSError as e:
                raise ConfigError(f"-qmp {self.address.text}: cannot remove old socket: {e.strerror}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            sock.listen(64)
            st = os.stat(path)
        except OSError as e:
            sock.close()
            raise ConfigError(f"-qmp {self.address.text}: cannot listen: {e.strerror}") from None
        self._unix_id = (st.st_dev, st.st_ino)
        return sock

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._unix_id is not None:
            try:  # only our own socket: another process may have taken the path since
                st = os.lstat(self.address.path)
                if (st.st_dev, st.st_ino) == self._unix_id:
                    os.unlink(self.address.path)
            except OSError:
                pass
            self._unix_id = None

    # ------------------------------------------------------------------ the thread
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending (pipe full) or closing: the thread will look anyway

    def _listen(self, on: bool) -> None:
        assert self._sel is not None and self._listener is not None
        if on and not self._listening:
            self._sel.register(self._listener, selectors.EVENT_READ, _LISTEN)
        elif not on and self._listening:
            self._sel.unregister(self._listener)
        self._listening = on

    def _is_stopping(self) -> bool:
        with self._lock:
            return self._stopping

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        sel = self._sel
        assert sel is not None
        rest = 0.0
        try:
            while not self._is_stopping():
                if not self._serving:
                    with self._lock:
                        start_serving = self._serve_requested
                    if start_serving:
                        self._begin_serving()
                timeout = None
                if self._listen_at is not None:
                    timeout = self._listen_at - time.monotonic()
                    if timeout <= 0:  # the back-off or the wait for an evictable client is over
                        self._listen_at = None
                        self._listen(True)
                        timeout = None
                behind = [c for c in self._clients.values() if c.backlog]
                if behind:
                    # a backlog is handled a turn at a time with the GIL free in between for
                    # as long as the last turn held it (at most BACKLOG_REST): a client
                    # flooding requests gets half the thread at most, the vCPUs the rest
                    timeout = rest if timeout is None else min(timeout, rest)
                for key, mask in sel.select(timeout):
                    if key.data is _LISTEN:
                        self._accept()
                    elif key.data is _WAKE:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    else:
                        client: _Client = key.data
                        if mask & selectors.EVENT_READ and client.sock.fileno() in self._clients:
                            self._read(client)
                        if mask & selectors.EVENT_WRITE and client.sock.fileno() in self._clients:
                            self._flush(client)
                began = time.monotonic()
                for client in behind:
                    if client.sock.fileno() in self._clients and client.backlog:
                        self._handle_input(client, b"")
                rest = min(time.monotonic() - began, BACKLOG_REST)
                self._take_pending()
        except Exception:
            log.exception("QMP server thread failed")
        finally:
            self._take_pending()
            self._shutdown()

    def _accept(self) -> None:
        """The listener is readable: a connection waits. Accept what waits; with every slot
        taken, make room by dropping the client silent the longest, once it has been silent
        for ``evict_idle`` (until then the listener is off, so the wait costs nothing)."""
        assert self._listener is not None and self._sel is not None
        first = True
        while True:
            now = time.monotonic()
            if len(self._clients) >= self.max_clients:
                if not first:
                    return  # the listener stays on: select says whether another waits
                if not self._evict(now):
                    return
            first = False
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.stats["accept_errors"] += 1
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    client_event("QMP: accept failed", WARNING, "QMP: accept failed: %s", e.strerror)
                    return
                # the connection stays queued and the listener readable: polling it now would
                # spin, so the listener is off for a while (and on again when a client leaves)
                if not self._accept_failing:
                    self._accept_failing = True
                    log.warning("QMP: cannot accept a client (%s); retrying", e.strerror)
                self._listen(False)
                self._listen_at = now + self._backoff
                self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF[1])
                return
            if self._accept_failing:
                self._accept_failing = False
                log.info("QMP: accepting clients again")
            self._backoff = ACCEPT_BACKOFF[0]
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, QmpSession(self.control, self.max_message), str(peer) or "unix client", now)
            self._clients[sock.fileno()] = client
            self.stats["accepted"] += 1
            self._connected.set()
            if self._serving:
                self._greet(client)

    def _greet(self, client: _Client) -> None:
        """Serve ``client`` from now on: its greeting, then its requests."""
        assert self._sel is not None
        self._sel.register(client.sock, selectors.EVENT_READ, client)
        client.mask = selectors.EVENT_READ
        self._queue(client, client.session.greeting_line())

    def _begin_serving(self) -> None:
        """serve() was called: greet the clients that connected before, oldest first (a
        held client is in no selector set: until now nothing was read nor sent)."""
        self._serving = True
        for client in list(self._clients.values()):
            if client.sock.fileno() in self._clients:
                client.last_input = time.monotonic()  # its wait does not count as silence
                self._greet(client)

    def _evict(self, now: float) -> bool:
        """Every slot is taken and a connection waits: drop the client that never negotiated
        and has been silent the longest, once silent for ``evict_idle`` (a leaked or stuck
        connection); True then. A negotiated client is never dropped for a newcomer: one
        that only listens for events (a management layer's watcher) is silent by design, and
        QEMU keeps a newcomer waiting too. Else the listener is off until a client could go."""
        mute = [c for c in self._clients.values() if not c.session.negotiated]
        if not mute:
            self._listen(False)  # back on when a client leaves (_drop)
            self._listen_at = None
            return False
        victim = min(mute, key=lambda c: c.last_input)
        if now - victim.last_input < self.evict_idle:
            self._listen(False)
            self._listen_at = victim.last_input + self.evict_idle
            return False
        client_event("QMP: idle clients evicted", WARNING,
                     "QMP: all %d client slots taken; dropping %s (silent for %.0f s) for a new client",
                     self.max_clients, victim.name, now - victim.last_input)
        self.stats["evicted"] += 1
        self._drop(victim)
        return True

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.last_input = time.monotonic()
        self._handle_input(client, data)

    def _handle_input(self, client: _Client, data: bytes) -> None:
        """Handle ``data`` (and what is left from before) up to QMP_REQ_QUEUE_LEN_MAX
        requests; the rest waits for the next turn, the client unread meanwhile."""
        # events other threads emitted before a reply was made go out before it: those from
        # before this input arrived, and those a command caused on another thread (the
        # RESET of a system_reset comes from the main thread, which rebuilds the machine)
        self._take_pending()
        if client.sock.fileno() not in self._clients:
            return
        for line in client.session.receive(data, QMP_REQ_QUEUE_LEN_MAX):
            self._take_pending()
            if client.sock.fileno() not in self._clients:
                return  # dropped while delivering them (it stopped reading)
            if not self._queue(client, line):
                return
        self._take_pending()
        if client.sock.fileno() not in self._clients:
            return
        if client.session.pending_input != client.backlog:
            client.backlog = not client.backlog
            self._update_mask(client)
        if client.session.fatal:
            client_event("QMP: clients over the message limits", WARNING,
                         "QMP client %s: message over the limits, closing", client.name)
            self.stats["dropped_limit"] += 1
            self._flush(client)
            self._drop(client)

    def _queue(self, client: _Client, line: bytes) -> bool:
        """Queue ``line`` for ``client`` and try to send; False if the client was dropped."""
        client.out.append(line)
        client.out_bytes += len(line)
        if client.out_bytes > self.max_output:
            client_event("QMP: clients not reading", WARNING, "QMP client %s is not reading (%d bytes queued): dropping it",
                         client.name, client.out_bytes)
            self.stats["dropped_slow"] += 1
            self._drop(client)
            return False
        return self._flush(client)

    def _flush(self, client: _Client) -> bool:
        out = client.out
        while out:
            chunk = out[0]
            try:
                sent = client.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return False
            client.out_bytes -= sent
            if sent == len(chunk):
                out.popleft()
            else:
                out[0] = chunk[sent:]
                break
        self._update_mask(client)
        return True

    def _update_mask(self, client: _Client) -> None:
        """Select on what ``client`` needs: reading unless it has a backlog (or the server
        is closing), writing while output is queued; neither: out of the selector."""
        want = (0 if client.backlog else selectors.EVENT_READ) | (selectors.EVENT_WRITE if client.out else 0)
        if self._is_stopping():
            want = selectors.EVENT_WRITE  # closing: only delivering what is queued
        if want == client.mask or self._sel is None:
            return
        if not want:
            self._sel.unregister(client.sock)
        elif not client.mask:
            self._sel.register(client.sock, want, client)
        else:
            self._sel.modify(client.sock, want, client)
        client.mask = want

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is None:
            return
        if self._sel is not None:
            try:
                self._sel.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        client.sock.close()
        client.out.clear()
        if not self._is_stopping() and not self._listening and self._listener is not None:
            self._listen_at = None  # a slot and a descriptor are free: look at once
            self._listen(True)

    def _broadcast(self, line: bytes) -> None:
        self.stats["events"] += 1
        for client in list(self._clients.values()):
            if client.session.negotiated:
                self._queue(client, line)

    def _take_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for line in pending:
            self._broadcast(line)

    def _shutdown(self) -> None:
        """Deliver what is queued (bounded in time), then close everything."""
        sel = self._sel
        if self._listener is not None and self._listening and sel is not None:
            self._listen(False)
        for client in list(self._clients.values()):
            if client.out and sel is not None:
                sel.modify(client.sock, selectors.EVENT_WRITE, client)
                client.mask = selectors.EVENT_WRITE
            else:
                self._drop(client)
        deadline = time.monotonic() + CLOSE_FLUSH_SECONDS
        while sel is not None and any(c.out for c in self._clients.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, mask in sel.select(left):
                if isinstance(key.data, _Client) and mask & selectors.EVENT_WRITE:
                    if key.data.sock.fileno() in self._clients and self._flush(key.data):
                        if not key.data.out:
                            self._drop(key.data)
                elif key.data is _WAKE:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
        for client in list(self._clients.values()):
            self._drop(client)
        if sel is not None:
            sel.close()
            self._sel = None
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        self._close_listener()
