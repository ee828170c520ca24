"""``socket``: a unix (``path=``) or TCP (``host=,port=``) stream socket, as a server
(``server=on``: listen, one client at a time) or a client (``server=off``: connect, and with
``reconnect=SECONDS`` connect again whenever the connection is lost).

As in QEMU: a server with ``wait=on`` (the default) holds the VM back until the first client
connects (:meth:`SocketBackend.wait_connected`); with ``wait=off`` the VM runs at once.
While no client is connected, output is dropped (counted) and the VM keeps running; a
client that connects later gets what the guest writes from then on; a client that goes away
ends nothing. While a client is connected the server does not accept another one (it waits
in the listen backlog). Frontends get an event when a client comes or goes (a virtio serial
port forwards it to the guest as PORT_OPEN).

Binding happens when the backend is made, so a path that cannot be bound or a TCP port in
use is a configuration error before the VM starts; the socket file a unix server created is
removed when the backend closes (a stale socket file from an earlier run is replaced).

A client without ``reconnect=`` connects when the backend is made, and a failure is a
configuration error (QEMU's synchronous connect). With ``reconnect=`` no connect is made
then: the first attempt starts with the I/O thread, in the background, and the VM runs
meanwhile; the first failure since the last connection is reported once on stderr as QEMU
reports it (``Unable to connect character device ID: ...``).
"""
from __future__ import annotations

import os
import socket
import stat
import sys
import threading
import time
from typing import Any, Callable

from ..errors import ConfigError
from ..log import say
from .base import CharBackend, log

_MSG = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_UNIX_PATH_MAX = 107  # sizeof(sun_path) - 1
#: the longest ``reconnect=`` (seconds; 2^31 - 1, about 68 years): QEMU keeps the value in a
#: 64-bit integer but times the retry in 32-bit milliseconds; a bound keeps every deadline
#: computable
MAX_RECONNECT = (1 << 31) - 1


class SocketBackend(CharBackend):
    kind = "socket"
    direct_write = True

    def __init__(
        self,
        label: str,
        *,
        path: str | None = None,
        host: str | None = None,
        port: str | None = None,
        server: bool = False,
        wait: bool = True,
        reconnect: int = 0,
        nodelay: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(label, **kw)
        if path and (host is not None or port is not None):
            raise ConfigError(f"chardev {label}: give either path= (unix) or host=,port= (tcp), not both")
        if not path and port is None:
            raise ConfigError(f"chardev {label}: socket needs path=PATH (unix) or port=PORT (tcp)")
        if server and reconnect:
            raise ConfigError(f"chardev {label}: 'reconnect' option is incompatible with socket in server listen mode")
        if not 0 <= reconnect <= MAX_RECONNECT:
            raise ConfigError(f"chardev {label}: reconnect={reconnect}: expected a number of seconds "
                              f"from 0 to {MAX_RECONNECT}")
        self.path = path or None
        self.host = host
        self.port = port
        self.server = server
        self.wait = server and wait
        self.reconnect = reconnect
        self.nodelay = nodelay
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self._peer = ""
        self._created_path: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we made
        #: when the next attempt is due; 0: as soon as the I/O thread starts (the first one)
        self._next_connect = 0.0
        #: a connect under way on its own thread (:meth:`_start_attempt`)
        self._attempt: _Attempt | None = None
        #: a failed attempt was reported since the last connection (QEMU reports one)
        self._connect_err_reported = False
        self.connected = False
        if server:
            self._listen()
        elif not reconnect:
            # without reconnect= the connect is made here, before the VM runs, and its
            # failure is a start-up error (QEMU's synchronous connect); with reconnect= even
            # the first one is made in the background once the I/O thread starts, as QEMU's
            # qmp_chardev_open_socket_client does (tcp_chr_connect_client_async)
            try:
                self._connect()
            except _ConnectFailed as e:
                raise ConfigError(f"chardev {label}: {e}") from None

    # ---- addresses -----------------------------------------------------------------------------
    def _where(self) -> str:
        if self.path:
            return self.path
        host = self.host or ("0.0.0.0" if self.server else "localhost")
        return f"{host}:{self.port}"

    def _addrinfo(self) -> list[Any]:
        try:
            return self._resolve()
        except _ConnectFailed as e:
            raise ConfigError(f"chardev {self.label}: {e}") from None

    def _resolve(self) -> list[Any]:
        """getaddrinfo for ``host``/``port``; a failure is :class:`_ConnectFailed` with
        QEMU's wording. The host goes to the C library as the bytes the user gave, as QEMU
        passes it: a str would be IDNA-encoded by Python first, which refuses a label over
        63 characters with a UnicodeError where QEMU (and the resolver) say "Name or
        service not known"."""
        host = self.host or (None if self.server else "localhost")
        try:
            hostb = None if host is None else host.encode("utf-8", "surrogateescape")
            return socket.getaddrinfo(hostb, self.port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE if self.server else 0)
        except socket.gaierror as e:
            raise _ConnectFailed(f"address resolution failed for {self._where()}: {e.strerror}") from None
        except (UnicodeError, ValueError) as e:  # a lone surrogate, a NUL: no name to look up
            raise _ConnectFailed(f"address resolution failed for {self._where()}: invalid name ({e})") from None

    # ---- server --------------------------------------------------------------------------------
    def _listen(self) -> None:
        if self.path:
            path = self.path
            if len(os.fsencode(path)) > _UNIX_PATH_MAX:
                raise ConfigError(f"chardev {self.label}: UNIX socket path '{path}' is too long (at most {_UNIX_PATH_MAX} bytes)")
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            except OSError as e:
                raise ConfigError(f"chardev {self.label}: Failed to bind socket to {path}: {e.strerror}") from None
            if st is not None:
                if not stat.S_ISSOCK(st.st_mode):
                    raise ConfigError(f"chardev {self.label}: Failed to bind socket to {path}: it exists and is not a socket")
                if _unix_in_use(path, st):
                    raise ConfigError(f"chardev {self.label}: Failed to bind socket to {path}: Address already in use")
                os.unlink(path)  # a stale socket left by a process that died (QEMU unlinks too)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(path)
                st = os.lstat(path)
                self._created_path = (st.st_dev, st.st_ino)
                s.listen(1)
            except OSError as e:
                s.close()
                self._remove_socket_file()
                raise ConfigError(f"chardev {self.label}: Failed to bind socket to {path}: {e.strerror}") from None
        else:
            s = None
            err: OSError | None = None
            for family, type_, proto, _, addr in self._addrinfo():
                s = socket.socket(family, type_, proto)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(addr)
                    s.listen(1)
                    break
                except OSError as e:
                    err = e
                    s.close()
                    s = None
            if s is None:
                why = err.strerror if err is not None else "no usable address"
                raise ConfigError(f"chardev {self.label}: Failed to bind socket to {self._where()}: {why}")
        s.setblocking(False)
        s.set_inheritable(False)
        self.listener = s

    def _remove_socket_file(self) -> None:
        if self.path and self._created_path is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._created_path:
                    os.unlink(self.path)
            except OSError:
                pass
            self._created_path = None

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("chardev %s: accept failed: %s", self.label, e)
            return
        self._peer = "" if self.path else f"{addr[0]}:{addr[1]}"
        self._attach_conn(conn)

    def wait_connected(self, stopping: Callable[[], bool] | None = None) -> None:
        """``wait=on``: hold the VM back until a client connects (QEMU prints the same
        line); ``stopping()`` true ends the wait early. The I/O thread accepts."""
        if not self.wait or self.connected:
            return
        sys.stderr.write(f"microvm: waiting for connection on: {self.filename()}\n")
        sys.stderr.flush()
        self.start()
        while not self.connected and not self.closed:
            if stopping is not None and stopping():
                return
            time.sleep(0.05)

    # ---- client --------------------------------------------------------------------------------
    def _connect(self) -> None:
        """The connect at start-up without ``reconnect=``, on the caller's thread."""
        self._peer = ""
        self._attach_conn(self._open_client())

    def _open_client(self) -> socket.socket:
        """Resolve and connect once: the connected socket, or :class:`_ConnectFailed` with
        QEMU's wording. A unix connect is non-blocking: a server whose listen backlog is
        full (one that does not accept) would hold a blocking connect without limit; it
        fails with EAGAIN instead. A TCP connect waits up to 5 s for each address the name
        resolves to, after a name resolution that has no bound of ours. Without
        ``reconnect=`` that is the one connect at start-up and holds the start (QEMU's is
        synchronous too); with ``reconnect=`` every attempt, the first included, runs on a
        short-lived thread of its own (:meth:`_start_attempt`), never on the I/O thread
        and never holding the start."""
        if self.path:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(self.path)
            except OSError as e:
                s.close()
                raise _ConnectFailed(f"Failed to connect to '{self.path}': {e.strerror or e}") from None
            return s
        err: OSError | None = None
        for family, type_, proto, _, addr in self._resolve():
            s = socket.socket(family, type_, proto)
            s.settimeout(5)
            try:
                s.connect(addr)
                return s
            except OSError as e:
                err = e
                s.close()
        why = (err.strerror or str(err)) if err is not None else "no usable address"
        raise _ConnectFailed(f"Failed to connect to '{self._where()}': {why}")

    def _start_attempt(self) -> None:
        """A connect with ``reconnect=``: resolve and connect on a short-lived thread that
        hands the socket (or the failure) back through a pipe the I/O thread polls with the
        rest, so that while a server does not answer, the I/O thread goes on (closing
        included) and output is dropped and counted as while disconnected. When the pipe
        or the thread cannot be had (no fd left: EMFILE; no thread), the attempt fails like
        a connect would and the next is due ``reconnect`` seconds later."""
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self._attempt_failed(f"Failed to connect to '{self._where()}': {e.strerror or e}")
            return
        attempt = _Attempt(r, w)
        try:
            threading.Thread(target=self._run_attempt, args=(attempt,), name=f"chardev-{self.label}-connect",
                             daemon=True).start()
        except Exception as e:  # RuntimeError: can't start new thread
            os.close(r)
            os.close(w)
            self._attempt_failed(f"Failed to connect to '{self._where()}': {e}")
            return
        self._attempt = attempt

    def _run_attempt(self, attempt: "_Attempt") -> None:
        """The attempt's thread. Whatever goes wrong ends as a failed attempt handed back
        through the pipe (a bug included): a thread that ended without writing would leave
        the I/O thread waiting for it, with no retry ever."""
        try:
            result: socket.socket | str = self._open_client()
        except _ConnectFailed as e:
            result = str(e)
        except Exception as e:
            log.debug("chardev %s: connect attempt failed", self.label, exc_info=True)
            result = f"Failed to connect to '{self._where()}': {type(e).__name__}: {e}"
        with attempt.lock:
            if attempt.abandoned:  # the backend closed meanwhile: nobody takes the socket
                if isinstance(result, socket.socket):
                    result.close()
                os.close(attempt.w)
                return
            attempt.result = result
            try:
                os.write(attempt.w, b"\0")
            except OSError:
                pass

    def _finish_attempt(self) -> None:
        """The attempt's thread is done (I/O thread): take its socket, or plan the next."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        with attempt.lock:
            result = attempt.result
            attempt.abandoned = True
            for fd in (attempt.r, attempt.w):
                os.close(fd)
        if isinstance(result, socket.socket):
            if self._closing or self.conn is not None:
                result.close()
                return
            self._connect_err_reported = False
            self._peer = ""
            self._attach_conn(result)
            return
        self._attempt_failed(str(result))

    def _attempt_failed(self, reason: str) -> None:
        """A connect with ``reconnect=`` failed: the first failure since the last connection
        is one line on stderr, QEMU's ``Unable to connect character device ID: REASON``
        (check_report_connect_error); the rest are logged at debug level. The next attempt
        is due ``reconnect`` seconds later."""
        if self._connect_err_reported:
            log.debug("chardev %s: %s", self.label, reason)
        else:
            self._connect_err_reported = True
            say(_oneline(f"microvm: Unable to connect character device {self.label}: {reason}") + "\n")
        self._next_connect = time.monotonic() + self.reconnect

    def _abandon_attempt(self) -> None:
        """Closing with an attempt under way: its thread closes what it gets."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        with attempt.lock:
            attempt.abandoned = True
            os.close(attempt.r)
            if attempt.result is not None:  # finished, not yet taken
                if isinstance(attempt.result, socket.socket):
                    attempt.result.close()
                os.close(attempt.w)

    # ---- the connection ------------------------------------------------------------------------
    def _attach_conn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        conn.set_inheritable(False)
        if self.nodelay and conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn
        self._input_eof = False
        with self._lock:
            self._sink_gone = False
        self._set_connected(True)
        self.wake()

    def _drop_conn(self, why: str) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        log.info("chardev %s: connection closed (%s)", self.label, why)
        self._set_connected(False)
        try:
            conn.close()
        except OSError:
            pass
        if not self.server and self.reconnect:
            self._next_connect = time.monotonic() + self.reconnect

    def _sink_write(self, data: bytes) -> int:
        conn = self.conn
        if conn is None:
            raise BlockingIOError
        return conn.send(data, _MSG)

    def _out_fd(self) -> int | None:
        return self.conn.fileno() if self.conn is not None else None

    def _in_fd(self) -> int | None:
        return self.conn.fileno() if self.conn is not None else None

    def _read_input(self, n: int) -> bytes | None:
        conn = self.conn
        if conn is None:
            return None
        try:
            return conn.recv(n, _MSG)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _on_input_eof(self) -> None:
        self._drop_conn("end of stream")

    def _on_sink_error(self, e: OSError) -> None:
        self._drop_conn(e.strerror or str(e))

    def _poll_extra(self) -> dict[int, int]:
        import select

        if self.listener is not None and self.conn is None:
            return {self.listener.fileno(): select.POLLIN}
        if self._attempt is not None:
            return {self._attempt.r: select.POLLIN}
        return {}

    def _on_extra(self, fd: int, events: int) -> None:
        if self.listener is not None and fd == self.listener.fileno():
            self._accept()
        elif self._attempt is not None and fd == self._attempt.r:
            self._finish_attempt()

    def _timeout(self) -> float | None:
        if self.server or not self.reconnect or self.conn is not None or self._attempt is not None:
            return None
        return max(0.0, self._next_connect - time.monotonic())

    def _on_timeout(self) -> None:
        if self.server or self.conn is not None or not self.reconnect or self._attempt is not None:
            return
        self._start_attempt()

    def _close_resources(self) -> None:
        self._abandon_attempt()
        for s in (self.conn, self.listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.conn = self.listener = None
        self._remove_socket_file()

    # ---- QEMU's names --------------------------------------------------------------------------
    def filename(self) -> str:
        opts = ",server=on" if self.server else ""
        if self.path:
            addr = f"unix:{self.path}{opts}"
        else:
            host = self.host or ("0.0.0.0" if self.server else "localhost")
            addr = f"tcp:{host}:{self.port}{opts}"
            if self.conn is not None and self._peer:
                addr += f" <-> {self._peer}"
        return addr if self.conn is not None else f"disconnected:{addr}"


class _ConnectFailed(Exception):
    """A client's connect (or its name resolution) failed; the message is QEMU's wording."""


class _Attempt:
    """One connect handed between its thread and the I/O thread: ``r``/``w`` a pipe the
    I/O thread polls, ``result`` the connected socket or why it failed, ``abandoned`` set
    once the I/O thread no longer waits for it (taken, or the backend closed)."""

    def __init__(self, r: int, w: int) -> None:
        self.r = r
        self.w = w
        self.lock = threading.Lock()
        self.result: socket.socket | str | None = None
        self.abandoned = False


def _oneline(msg: str) -> str:
    """``msg`` with unprintable characters escaped (a host name from the command line may
    hold a newline): the report stays one line."""
    if msg.isprintable():
        return msg
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def _unix_in_use(path: str, st: os.stat_result) -> bool:
    """Whether a live socket is bound to the unix socket file ``path`` (``st``: its
    ``lstat``), as opposed to a stale file left by a process that died; found without
    connecting to it, since a connection would reach the other process's server as a client
    (its ``wait=on`` would end and its guest start without its real client).

    Asks the kernel which sockets are bound to that file (``sock_diag``, matching the
    file's inode and device); where that is unavailable, looks for a listener on the path
    in ``/proc/net/unix``; only where neither can be read does it try a connection. Both
    show the sockets of this network namespace: a server in another namespace on the same
    file is not seen (its file is then replaced, as QEMU always does)."""
    found = _bound_by_sock_diag(st)
    if found is None:
        found = _listed_in_proc_net_unix(path)
    if found is None:
        found = _accepts_connection(path)
    return found


def _bound_by_sock_diag(st: os.stat_result) -> bool | None:
    """``NETLINK_SOCK_DIAG`` for ``AF_UNIX`` with ``UDIAG_SHOW_VFS``: whether a socket is
    bound to the file of ``st``; None when the kernel does not answer (no ``unix_diag``)."""
    import struct

    netlink_sock_diag, sock_diag_by_family = 4, 20
    nlm_f_request, nlm_f_dump, nlmsg_error, nlmsg_done = 0x1, 0x300, 2, 3
    udiag_show_vfs, unix_diag_vfs = 0x2, 1
    # struct unix_diag_req: family, protocol, pad, states (all), ino (any), show, cookie
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, udiag_show_vfs, 0xFFFFFFFF, 0xFFFFFFFF)
    msg = struct.pack("=IHHII", 16 + len(req), sock_diag_by_family, nlm_f_request | nlm_f_dump, 1, 0) + req
    want = (st.st_ino, st.st_dev)
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, netlink_sock_diag)
    except OSError:
        return None
    found = False
    try:
        nl.settimeout(2)
        nl.send(msg)
        while True:
            data = nl.recv(1 << 16)
            if not data:
                return None
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == nlmsg_done:
                    return found
                if kind == nlmsg_error or length < 16:
                    return None
                # struct unix_diag_msg (16 bytes), then attributes
                a, end = off + 32, off + length
                while a + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == unix_diag_vfs and alen >= 12:
                        ino, kdev = struct.unpack_from("=II", data, a + 4)
                        # the kernel's dev_t is major << 20 | minor; stat's is encoded
                        if (ino, os.makedev(kdev >> 20, kdev & 0xFFFFF)) == want:
                            found = True
                    a += (alen + 3) & ~3
                off += (length + 3) & ~3
    except OSError:
        return None
    finally:
        nl.close()


def _listed_in_proc_net_unix(path: str) -> bool | None:
    """Whether ``/proc/net/unix`` lists a listening socket (``__SO_ACCEPTCON``) on
    ``path`` (as given or absolute); None when it cannot be read."""
    try:
        with open("/proc/net/unix", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    names = {os.fsencode(path), os.fsencode(os.path.abspath(path))}
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] in names:
            try:
                if int(fields[3], 16) & 0x10000:
                    return True
            except ValueError:
                continue
    return False


def _accepts_connection(path: str) -> bool:
    """The last resort: something accepts a connection on ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except BlockingIOError:
        return True  # a listener with a full backlog
    except OSError:
        return False
    finally:
        s.close()
    return True
