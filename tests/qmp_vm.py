"""A microvm process with a QMP monitor, for the tests that drive real VMs through real
clients (qemu.qmp, socat, raw sockets). Waits are bounded polls (no timing assertions)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable

from kvm_helpers import microvm_cmd


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0,
               detail: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{detail()}" if detail else ""))
        time.sleep(0.02)


async def disconnect_after_quit(qmp: Any) -> None:
    """Close a ``qemu.qmp`` client whose ``quit`` was answered.

    The VMM closes the socket as it exits; when the client's reader sees that end-of-file
    before ``disconnect()`` runs, ``disconnect()`` re-raises it. QEMU's own test harness
    (``QEMUMachine._close_qmp_connection``) treats that EOF as expected once ``quit`` was
    issued, and so do we; any other error still fails the test.
    """
    try:
        await qmp.disconnect()
    except EOFError:
        pass


class Vm:
    """``microvm run ARGS --qmp unix:SOCK,server=on,wait=off``; stdout collected by a thread,
    stderr in a file (the log). Always killed at the end of the ``with`` block."""

    def __init__(self, tmp: str, *args: str, qmp: bool = True) -> None:
        self.sock = os.path.join(tmp, "qmp.sock")
        self.args = list(args) + ([f"--qmp=unix:{self.sock},server=on,wait=off"] if qmp else [])
        self.out = bytearray()
        self.err = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Vm":
        self.proc = subprocess.Popen(microvm_cmd("run", *self.args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.err)
        threading.Thread(target=self._read, daemon=True).start()
        if any(a.startswith("--qmp") for a in self.args):
            wait_until(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, "the QMP socket")
            assert self.proc.poll() is None, f"microvm exited: {self.stderr()}"
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return
            self.out += chunk

    def tail(self) -> str:
        """The end of the console output and of the log, for a failure message."""
        return f"console: ...{bytes(self.out[-3000:]).decode(errors='replace')}\nlog: ...{self.stderr()[-1500:]}"

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def rss(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.err.close()


class Line:
    """A raw QMP client over the socket (what a shell script with socat does)."""

    def __init__(self, path: str, negotiate: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        # the socket file appears at bind(), a moment before listen(): retry a refused connect
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(60)
        self.f = self.sock.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        self.greeting = json.loads(self.f.readline())
        if negotiate:
            assert self.cmd("qmp_capabilities") == {}

    def send(self, msg: dict[str, Any]) -> None:
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()

    def reply(self) -> dict[str, Any]:
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("the server closed the connection")
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def cmd(self, name: str, **args: Any) -> Any:
        """The command's return value; an error reply raises RuntimeError(class, desc)."""
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.send(msg)
        r = self.reply()
        if "error" in r:
            raise RuntimeError(r["error"]["class"], r["error"]["desc"])
        return r["return"]

    def event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The first event ``name`` not yet consumed (reading on if needed)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            line = self.f.readline()
            self.sock.settimeout(60)
            if not line:
                raise EOFError(f"connection closed before {name}")
            self.events.append(json.loads(line))

    def close(self) -> None:
        try:
            self.f.close()
        finally:
            self.sock.close()
