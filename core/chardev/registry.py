"""The process's character devices (:class:`ChardevSet`): made once, kept across guest resets.

QEMU creates its chardevs once and a system reset leaves them alone, so a socket client stays
connected, a pty keeps its ``/dev/pts/N`` and a log file is not truncated again. microvm
rebuilds the whole :class:`~microvm.machine.Machine` on a reset, so the backends live here
instead, one level up (``run_spec`` keeps one set for all boots), and each boot's devices
attach fresh frontends to them. The set also routes ``C-a x`` to whichever machine is
running now and answers ``query-chardev``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import ChardevInfo


class ChardevSet:
    """Backends by id, in creation order."""

    def __init__(self) -> None:
        self.backends: dict[str, Any] = {}
        #: the machine running now (set by each Machine), for C-a x and request_stop
        self.machine: Any = None
        self._stdio: str | None = None
        self._waited = False
        self.closed = False

    def get(self, ident: str) -> Any:
        return self.backends.get(ident)

    def add(self, ident: str, backend: Any) -> None:
        self.backends[ident] = backend

    def claim_stdio(self, ident: str) -> None:
        """One stdio backend per process (QEMU: "cannot use stdio by multiple character
        devices"); ``mux=on`` on that one is how several devices share the terminal."""
        if self._stdio is not None and self._stdio != ident:
            raise ConfigError(f"cannot use stdio by multiple character devices ({_what(self._stdio)} and {_what(ident)})")
        self._stdio = ident

    def request_stop(self, status: int, reason: str) -> None:
        m = self.machine
        if m is not None:
            m.request_stop(status, reason)

    def start(self, stopping: Callable[[], bool] | None = None) -> None:
        """Start every backend's I/O thread; the first time, wait for the clients of socket
        servers with ``wait=on`` (QEMU does before the guest runs). ``stopping()`` true (a
        SIGTERM came) cuts the wait short."""
        for b in list(self.backends.values()):
            start = getattr(b, "start", None)
            if start is not None:
                start()
        if self._waited:
            return
        self._waited = True
        for b in list(self.backends.values()):
            wait = getattr(b, "wait_connected", None)
            if wait is not None:
                wait(stopping)
                if stopping is not None and stopping():
                    return

    def infos(self) -> list["ChardevInfo"]:
        """``query-chardev``: every backend's label, QEMU filename and frontend state."""
        from .base import ChardevInfo

        out = []
        for ident, b in self.backends.items():
            info = getattr(b, "info", None)
            out.append(info() if info is not None else ChardevInfo(ident, getattr(b, "kind", "unknown"), True))
        return out

    def close(self) -> None:
        """Close every backend, newest first; together they take at most
        CLOSE_FLUSH_SECONDS (and a little), however many sinks are stalled."""
        if self.closed:
            return
        self.closed = True
        import time

        from .base import CLOSE_FLUSH_SECONDS, CharBackend, log

        backends = list(reversed(list(self.backends.values())))
        for b in backends:  # all flush at once: the whole set is closed within one bound
            if isinstance(b, CharBackend):
                b.begin_close()
        deadline = time.monotonic() + CLOSE_FLUSH_SECONDS + 0.3
        for b in backends:
            try:
                if isinstance(b, CharBackend):
                    b.close(deadline)
                elif getattr(b, "close", None) is not None:
                    b.close()
            except Exception:
                log.exception("closing chardev %r failed", b)


def _what(ident: str) -> str:
    if ident.startswith("serial") and ident[6:].isdigit():
        return f"serial port {ident[6:]}"
    return f"chardev {ident}"
