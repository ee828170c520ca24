"""``pty``: a pseudo-terminal whose slave side (``/dev/pts/N``) a user opens with ``screen``,
``minicom`` or ``socat``. As QEMU 7.2 (``qemu_printf``), it prints ``char device redirected
to /dev/pts/N (label ID)`` on standard output, keeps the terminal raw, and counts as open only while something has the
slave open: before that (and after the last close) output is dropped, and the frontends
get the open/close events (a virtio serial port tells the guest)."""
from __future__ import annotations

import os
import select
import sys
from typing import Any

from ..errors import ConfigError
from ..log import say
from .base import CharBackend

#: how often a pty nobody has open is checked for a new user (QEMU's pty timer: 1 s)
PTY_CHECK_SECONDS = 1.0


class PtyBackend(CharBackend):
    kind = "pty"
    direct_write = True

    def __init__(self, label: str, announce: bool = True, **kw: Any) -> None:
        super().__init__(label, **kw)
        import tty

        try:
            master, slave = os.openpty()
        except OSError as e:
            raise ConfigError(f"chardev {label}: cannot open a pseudo-terminal: {e.strerror}") from None
        try:
            tty.setraw(slave)
            self.path = os.ttyname(slave)
        finally:
            os.close(slave)  # a user opens it by name; until then the pty counts as closed
        os.set_blocking(master, False)
        os.set_inheritable(master, False)
        self.master = master
        self.connected = False
        self._check_hangup()
        if announce:  # on stdout, as QEMU's qemu_printf (without a monitor)
            say(f"char device redirected to {self.path} (label {label})\n", sys.stdout)

    def _check_hangup(self) -> None:
        """POLLHUP on the master means nobody has the slave open."""
        p = select.poll()
        p.register(self.master, select.POLLIN)
        events = p.poll(0)
        hup = any(ev & select.POLLHUP for _, ev in events)
        self._set_connected(not hup)

    def _sink_write(self, data: bytes) -> int:
        return os.write(self.master, data)

    def _out_fd(self) -> int | None:
        return self.master if self.connected else None

    def _in_fd(self) -> int | None:
        # POLLHUP is level-triggered: while nobody has the slave open, look once a second
        return self.master if self.connected else None

    def _read_input(self, n: int) -> bytes | None:
        try:
            return os.read(self.master, n)
        except BlockingIOError:
            return None
        except OSError:  # EIO: the last user closed the slave
            return b""

    def _on_input_eof(self) -> None:
        self._check_hangup()

    def _on_sink_error(self, e: OSError) -> None:
        self._check_hangup()
        if self.connected:  # a real failure, not a hang-up
            super()._on_sink_error(e)

    def _timeout(self) -> float | None:
        return None if self.connected else PTY_CHECK_SECONDS

    def _on_timeout(self) -> None:
        self._check_hangup()

    def _close_resources(self) -> None:
        try:
            os.close(self.master)
        except OSError:
            pass

    def filename(self) -> str:
        return f"pty:{self.path}"
