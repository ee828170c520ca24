"""Backends on plain file descriptors: ``stdio``, ``file`` and ``pipe``.

The output side is made non-blocking without touching anyone else's file: a pipe, FIFO or
terminal is opened again through ``/proc/self/fd/N``, which gives this process a file
description of its own (setting ``O_NONBLOCK`` on the inherited one would also change it
for the shell and every other process sharing it). A socket is written with
``MSG_DONTWAIT``. A regular file cannot be written without blocking at all; its writes
happen on the backend's thread, so a slow disk delays that thread, never a vCPU.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Any

from ..errors import ConfigError
from .base import CharBackend, log

#: how an output fd is written: "nonblock" (our own O_NONBLOCK description), "socket"
#: (send with MSG_DONTWAIT) or "blocking" (on the I/O thread only: a regular file)
NONBLOCK, SOCKET, BLOCKING = "nonblock", "socket", "blocking"


def _reopen(fd: int, flags: int) -> int | None:
    """A new file description for what ``fd`` refers to (a pipe, FIFO or tty), or None."""
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None


def prepare_fd(fd: int, writing: bool) -> tuple[int, str, bool, Any]:
    """How to use an inherited ``fd`` without blocking: ``(fd, mode, owned, sock)`` with
    ``owned`` telling whether the returned fd is ours to close."""
    try:
        st = os.fstat(fd)
    except OSError:
        return fd, BLOCKING, False, None
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        new = _reopen(fd, os.O_WRONLY if writing else os.O_RDONLY)
        if new is not None:
            return new, NONBLOCK, True, None
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            return fd, NONBLOCK, False, None
        return fd, BLOCKING, False, None
    if stat.S_ISSOCK(st.st_mode):
        import socket

        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return fd, BLOCKING, False, None
        return sock.fileno(), SOCKET, True, sock
    return fd, BLOCKING, False, None


class FdBackend(CharBackend):
    """Output to one fd, input from another (either may be None).

    ``out_mode`` says how the output fd may be written (see :func:`prepare_fd`); ``owned``
    lists the fds (and socket objects) this backend closes."""

    kind = "fd"

    def __init__(
        self,
        label: str,
        out_fd: int | None,
        in_fd: int | None,
        *,
        out_mode: str = NONBLOCK,
        in_sock: Any = None,
        out_sock: Any = None,
        owned: tuple[Any, ...] = (),
        tty_fd: int | None = None,
        signals: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(label, **kw)
        #: a terminal to put in raw mode while the backend runs (stdin for stdio)
        self.tty_fd = tty_fd
        #: keep the terminal's ISIG: Ctrl-C, Ctrl-Z, Ctrl-\\ signal the VMM (QEMU's signal=on)
        self.signals = signals
        self._saved_tty: list[Any] | None = None
        self.out_fd = out_fd
        self.in_fd = in_fd
        self.out_mode = out_mode
        self._out_sock = out_sock
        self._in_sock = in_sock
        self._owned = list(owned)
        self.direct_write = out_fd is not None and out_mode != BLOCKING
        if out_fd is None:
            self._sink_gone = True  # nowhere to write: output is dropped
        if in_fd is None:
            self._input_eof = True

    def _sink_write(self, data: bytes) -> int:
        if self.out_mode == SOCKET:
            import socket

            return self._out_sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        assert self.out_fd is not None
        return os.write(self.out_fd, data)

    def _out_fd(self) -> int | None:
        return None if self.out_mode == BLOCKING else self.out_fd

    def _in_fd(self) -> int | None:
        return self.in_fd

    def _read_input(self, n: int) -> bytes | None:
        assert self.in_fd is not None
        try:
            if self._in_sock is not None:
                import socket

                return self._in_sock.recv(n, socket.MSG_DONTWAIT)
            return os.read(self.in_fd, n)
        except BlockingIOError:
            return None

    def _on_start(self) -> None:
        fd = self.tty_fd
        if fd is None or not os.isatty(fd):
            return
        import termios
        import tty

        try:
            self._saved_tty = termios.tcgetattr(fd)
            tty.setraw(fd, termios.TCSANOW)
            attrs = termios.tcgetattr(fd)
            attrs[1] |= termios.OPOST | termios.ONLCR  # "\n" still returns the carriage
            if self.signals:
                attrs[3] |= termios.ISIG
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except termios.error as e:
            log.debug("chardev %s: cannot put the terminal in raw mode: %s", self.label, e)

    def _close_resources(self) -> None:
        if self._saved_tty is not None and self.tty_fd is not None:
            import termios

            try:
                termios.tcsetattr(self.tty_fd, termios.TCSADRAIN, self._saved_tty)
            except termios.error:
                pass
            self._saved_tty = None
        for res in self._owned:
            try:
                if isinstance(res, int):
                    os.close(res)
                else:
                    res.close()
            except OSError:
                pass
        self._owned = []


class StdioBackend(FdBackend):
    """``stdio``: the VMM's standard output and input. A terminal on stdin is put in raw mode
    while the backend runs (``signal=on``, QEMU's default, keeps Ctrl-C a signal to the VMM;
    ``signal=off`` passes it to the guest) and restored at close. The ``C-a`` commands come
    with ``mux=on`` (``-serial mon:stdio``, the default), as in QEMU."""

    kind = "stdio"

    def __init__(self, label: str, *, signal: bool = True, **kw: Any) -> None:
        import sys

        try:
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):  # stdout closed or a broken pipe
            pass
        out_fd, mode, out_owned, out_sock = prepare_fd(1, writing=True)
        in_fd, in_mode, in_owned, in_sock = prepare_fd(0, writing=False)
        owned = tuple(x for x, own in ((out_sock or out_fd, out_owned), (in_sock or in_fd, in_owned)) if own)
        super().__init__(label, out_fd, in_fd, out_mode=mode, out_sock=out_sock, in_sock=in_sock, owned=owned,
                         tty_fd=0, signals=signal, **kw)

    def filename(self) -> str:
        return "stdio"

    def window_size(self) -> tuple[int, int] | None:
        for fd in (1, 0):
            if os.isatty(fd):
                try:
                    size = os.get_terminal_size(fd)
                except OSError:
                    continue
                return (size.columns, size.lines) if size.columns and size.lines else None
        return None


class FileBackend(FdBackend):
    """``file,path=P[,append=on][,input-path=I]``: output to a file (created, truncated
    unless ``append``), input from ``input-path`` if given (read to its end, once).

    Opening never blocks the starting thread, whatever ``path`` is: a FIFO is opened
    read-write and non-blocking, as the ``pipe`` backend opens it, so there is no wait for a
    reader (QEMU 7.2 opens it write-only and blocks in ``open`` until one comes); what the
    guest writes before a reader comes waits in the FIFO and the output buffer, the rest is
    dropped and counted, and a reader that comes later gets what is held and all that
    follows. A terminal or another character device is opened non-blocking too. A regular
    file is written on the backend's thread (a write to it cannot be made non-blocking)."""

    kind = "file"

    def __init__(self, label: str, path: str, append: bool = False, input_path: str | None = None, **kw: Any) -> None:
        if not path:
            raise ConfigError(f"chardev {label}: file needs path=...")
        out_fd, out_mode = _open_output(label, path, append)
        in_fd = None
        if input_path:
            try:
                in_fd = os.open(input_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            except OSError as e:
                os.close(out_fd)
                raise ConfigError(f"chardev {label}: Could not open '{input_path}': {e.strerror}") from None
        owned = (out_fd,) if in_fd is None else (out_fd, in_fd)
        super().__init__(label, out_fd, in_fd, out_mode=out_mode, owned=owned, **kw)
        self.path = path

    def filename(self) -> str:
        return "file"  # QEMU 7.2's query-chardev: the backend type for a file


def _open_output(label: str, path: str, append: bool) -> tuple[int, str]:
    """The ``file`` backend's output fd and how to write it, without ever blocking in
    ``open``: a FIFO with no reader would block ``O_WRONLY`` (and signals with it, the
    open being restarted after each), so a FIFO is opened ``O_RDWR | O_NONBLOCK``, also
    when it appears between the ``stat`` and the ``open`` (``ENXIO``)."""
    base = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        is_fifo = False  # missing (created below) or unreadable (open says why)
    try:
        if is_fifo:
            fd = os.open(path, os.O_RDWR | base)
        else:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | base, 0o666)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: a FIFO without a reader after all
                    raise
                fd = os.open(path, os.O_RDWR | base)
    except OSError as e:
        raise ConfigError(f"chardev {label}: Could not open '{path}': {e.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return fd, NONBLOCK
    os.set_blocking(fd, True)  # a regular file (or a block device): written by the I/O thread only
    return fd, BLOCKING


class PipeBackend(FdBackend):
    """``pipe,path=P``: ``P.out`` for output and ``P.in`` for input when both exist, else
    ``P`` both ways (QEMU's rule). Opened read-write, as QEMU does, so opening a FIFO never
    waits for the other end and output to a FIFO nobody reads fills it, then is dropped."""

    kind = "pipe"

    def __init__(self, label: str, path: str, **kw: Any) -> None:
        if not path:
            raise ConfigError(f"chardev {label}: pipe needs path=...")
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        fds: list[int] = []
        try:
            fds.append(os.open(f"{path}.out", flags))
            fds.append(os.open(f"{path}.in", flags))
            out_fd, in_fd = fds
        except OSError:
            for fd in fds:
                os.close(fd)
            try:
                out_fd = in_fd = os.open(path, flags)
            except OSError as e:
                raise ConfigError(f"chardev {label}: Could not open '{path}': {e.strerror}") from None
            fds = [out_fd]
        super().__init__(label, out_fd, in_fd, out_mode=NONBLOCK, owned=tuple(fds), **kw)
        self.path = path

    def filename(self) -> str:
        return "pipe"  # as QEMU 7.2 names it (the backend type)
