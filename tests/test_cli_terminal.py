"""The terminal as under QEMU (issue 10): the VMM on a real pseudo-terminal (its controlling
terminal, as in an interactive shell), a guest that echoes each byte it receives on COM1 as
``[c]``. Each expectation was first observed with qemu-system-x86_64 7.2 on the same lines:

* ``-nographic`` alone (serial0 on ``mon:stdio``): ``C-a h`` prints the mux help, Ctrl-C
  reaches the guest, ``C-a x`` quits with status 0;
* the seed's first example's ``-nodefaults -nographic -serial stdio``: plain stdio, so C-a
  and ``h`` reach the guest and Ctrl-C ends the VMM (SIGINT from the terminal), status 0.
"""
from __future__ import annotations

import os
import pty
import select
import time

import pytest

from kvm_helpers import MICROVM, build_guest, requires_kvm

pytestmark = [pytest.mark.kvm, requires_kvm]


class Terminal:
    """``argv`` started on a new pseudo-terminal; read what it prints, type into it."""

    def __init__(self, argv: list[str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once (nothing of pytest runs here)
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid, self.fd, self.out = pid, fd, b""

    def expect(self, marker: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.out and time.monotonic() < deadline:
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                self.out += chunk
        assert marker in self.out, f"never saw {marker!r}; got {self.out[-500:]!r}"

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining, or a full terminal buffer would block the child
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.out += os.read(self.fd, 4096)
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"still running; output {self.out[-500:]!r}")

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> str:
    return str(build_guest("serial-echo", tmp_path_factory.mktemp("guests")))


def test_nographic_mux_help_ctrl_c_to_the_guest_and_c_a_x(echo) -> None:
    t = Terminal([*MICROVM, "-M", "microvm", "-enable-kvm", "-kernel", echo, "-nographic"])
    try:
        t.expect(b"READY")
        t.type(b"a")
        t.expect(b"[a]")
        t.type(b"\x03")                       # Ctrl-C: to the guest, not a signal
        t.expect(b"[\x03]")
        t.type(b"\x01h")
        t.expect(b"C-a h    print this help\r\n\rC-a x    exit emulator\r\n\r")   # the terminal's ONLCR, as QEMU's
        t.type(b"\x01x")
        t.expect(b"Terminated")
        assert t.wait() == 0
        assert b"[h]" not in t.out and b"[\x01]" not in t.out
    finally:
        t.close()


def test_seed_spelling_plain_stdio_passes_c_a_and_ctrl_c_ends_the_vmm(echo) -> None:
    t = Terminal([*MICROVM, "-M", "microvm", "-enable-kvm", "-kernel", echo,
                  "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
    try:
        t.expect(b"READY")
        t.type(b"\x01h")                     # no mux: both bytes reach the guest
        t.expect(b"[\x01][h]")
        t.type(b"\x03")                       # the terminal's SIGINT ends the VMM, status 0
        assert t.wait() == 0
        assert b"print this help" not in t.out
    finally:
        t.close()
