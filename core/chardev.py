"""Character-device backends: where a serial port's or a console's bytes go on the host.

Kept in the core because several devices share them (16550, virtconsole); they are host I/O,
not guest-visible devices. Backends register by name through ``register_backends``
(``"chardev"`` kind); the core registers ``stdio``, ``null`` and ``file``.
"""
from __future__ import annotations

import os
import select
import sys
import threading
from typing import Callable, Protocol
from .log import get_logger

log = get_logger("microvm.chardev")

Receiver = Callable[[bytes], None]


class Chardev(Protocol):
    """Host side of a character device. ``write`` may be called from any vCPU thread."""

    def write(self, data: bytes) -> None: ...

    def set_receiver(self, receiver: Receiver | None, on_break: Callable[[], None] | None = None) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class NullChardev:
    """Discards output and never produces input (``-serial null``)."""

    def write(self, data: bytes) -> None:
        pass

    def set_receiver(self, receiver: Receiver | None, on_break: Callable[[], None] | None = None) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


#: ``C-a h`` (QEMU's mux help, in its layout, for the commands microvm has)
MUX_HELP = (b"\n\r"
            b"C-a h    print this help\n\r"
            b"C-a x    exit emulator\n\r"
            b"C-a b    send break (magic sysrq)\n\r"
            b"C-a C-a  sends C-a\n\r")


class FdChardev:
    """Output to one fd, input from another, read by a daemon thread.

    ``stdio`` is this on fds 1 and 0. When the input is a terminal it is put in raw mode (and
    restored on close). With ``escapes`` (stdio with ``mux=on``: ``-serial mon:stdio``, the
    ``-nographic`` default), whether the input is a terminal or a pipe, Ctrl-A is an escape:
    ``C-a h`` prints the commands, ``C-a x`` ends the VMM, ``C-a b`` sends a BREAK (Magic
    SysRq on a 16550), ``C-a C-a`` sends one C-a.
    """

    ESCAPE = 0x01

    def __init__(
        self, out_fd: int, in_fd: int | None, on_quit: Callable[[], None] | None = None, escapes: bool = False,
        signals: bool = False,
    ) -> None:
        self.escapes = escapes
        #: a terminal's Ctrl-C (and Ctrl-Z, Ctrl-\\) signal the VMM instead of reaching the guest
        #: (QEMU's stdio ``signal=on``, its default except under ``-nographic``'s mux)
        self.signals = signals
        self.out_fd = out_fd
        self.in_fd = in_fd
        self.on_quit = on_quit
        self._receiver: Receiver | None = None
        self._on_break: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._saved_tty: list | None = None
        self._lock = threading.Lock()
        self._escape = False

    def write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.out_fd, view)
                except BlockingIOError:
                    select.select([], [self.out_fd], [])
                    continue
                except OSError as e:  # output closed (e.g. a pipe reader went away): drop
                    log.debug("chardev output dropped: %s", e)
                    return
                view = view[n:]

    def set_receiver(self, receiver: Receiver | None, on_break: Callable[[], None] | None = None) -> None:
        self._receiver = receiver
        self._on_break = on_break

    def start(self) -> None:
        if self.in_fd is None or self._thread is not None:
            return
        if os.isatty(self.in_fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd, termios.TCSANOW)
            # keep output post-processing so "\n" still returns the carriage
            attrs = termios.tcgetattr(self.in_fd)
            attrs[1] |= termios.OPOST | termios.ONLCR
            if self.signals:
                attrs[3] |= termios.ISIG
            termios.tcsetattr(self.in_fd, termios.TCSANOW, attrs)
        self._thread = threading.Thread(target=self._reader, name="chardev-in", daemon=True)
        self._thread.start()

    def _feed(self, data: bytes) -> None:
        if not self.escapes:  # a plain byte stream: pass bytes through
            if self._receiver:
                self._receiver(data)
            return
        out = bytearray()
        for b in data:
            if self._escape:
                self._escape = False
                if b in (ord("x"), ord("X"), ord("b"), ord("B"), ord("h"), ord("H")):
                    if out and self._receiver:  # what came before the escape goes first
                        self._receiver(bytes(out))
                    out.clear()
                    if b in (ord("h"), ord("H")):
                        self.write(MUX_HELP)
                        continue
                    if b in (ord("x"), ord("X")):
                        self.write(b"microvm: Terminated\n\r")
                    action = self.on_quit if b in (ord("x"), ord("X")) else self._on_break
                    if action:
                        action()
                    continue
                if b != self.ESCAPE:
                    out.append(self.ESCAPE)
                out.append(b)
            elif b == self.ESCAPE:
                self._escape = True
            else:
                out.append(b)
        if out and self._receiver:
            self._receiver(bytes(out))

    def _reader(self) -> None:
        assert self.in_fd is not None
        while True:
            try:
                r, _, _ = select.select([self.in_fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in r:
                return
            try:
                data = os.read(self.in_fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:  # EOF: no more input, the guest keeps running
                return
            try:
                self._feed(data)
            except Exception:  # a device bug must not kill input forever silently
                log.exception("chardev input handler failed")

    def close(self) -> None:
        if self._stop_w < 0:
            return
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._thread = None
        os.close(self._stop_r)
        os.close(self._stop_w)
        self._stop_r = self._stop_w = -1
        if self._saved_tty is not None and self.in_fd is not None:
            import termios

            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None


#: files a file chardev opened in this process: truncated the first time only, so the log of
#: a guest that reboots goes on in the same file, as with QEMU
_opened_files: set[str] = set()


class FileChardev(FdChardev):
    """Output to a file (``--chardev file,path=P`` / ``--serial file:P``); no input."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, None)

    def close(self) -> None:
        super().close()
        if self.out_fd >= 0:
            os.close(self.out_fd)
            self.out_fd = -1


def file_chardev(path: str, append: bool = False) -> FileChardev:
    """Open ``path`` for a file chardev: truncated once per process unless ``append``."""
    from .errors import ConfigError

    if not path:
        raise ConfigError("file chardev needs path=...")
    key = os.path.abspath(path)
    mode = os.O_APPEND if append or key in _opened_files else os.O_TRUNC
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot open {path}: {e.strerror}") from None
    _opened_files.add(key)
    return FileChardev(fd)


def stdio_chardev(on_quit: Callable[[], None] | None = None, mux: bool = True, signals: bool = False) -> FdChardev:
    """The VMM's stdio: QEMU's ``-chardev stdio`` (``mux``: the C-a commands; ``signals``:
    Ctrl-C ends the VMM)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):  # stdout closed or a broken pipe
        pass
    return FdChardev(1, 0, on_quit, escapes=mux, signals=signals)
