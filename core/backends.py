"""The host side of a run: the ``--chardev``/``--netdev``/``--serial`` backends.

A guest reset rebuilds the :class:`~microvm.machine.Machine` (every device back to its
power-on state), but not its host connections: as in QEMU, a tap keeps its addresses, routes
and bridge, a descriptor handed in with ``fd=`` (libvirt's way) stays valid, a socket
client stays connected, the terminal stays in raw mode. So backends are made once per run
(:func:`microvm.machine.run_spec` keeps one :class:`HostBackends`), handed to each boot's
machine, and closed when the run ends.

A backend's factory gets a context that always speaks for the machine running now
(:class:`RunContext`): ``C-a x`` on stdio stops the current boot, not the first one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import MachineContext
from .log import get_logger

if TYPE_CHECKING:
    from .machine import Machine

log = get_logger("microvm.backends")


class RunContext(MachineContext):
    """A :class:`MachineContext` that follows the run: it forwards to whichever machine of
    the run is current (the first boot's, then each rebuilt one's)."""

    __slots__ = ("_backends",)

    def __init__(self, backends: "HostBackends") -> None:  # no super().__init__: _m is computed
        self._backends = backends

    @property
    def _m(self) -> "Machine":  # type: ignore[override]
        m = self._backends.current
        if m is None:
            raise RuntimeError("no machine is running")
        return m


class HostBackends:
    """The backends made in a run, by (kind, id), and who uses stdio."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], Any] = {}
        self._order: list[Any] = []
        #: the machine now running (set by each Machine of the run)
        self.current: Machine | None = None
        self.ctx = RunContext(self)
        #: the one frontend of stdio (QEMU: "cannot use stdio by multiple character devices")
        self.stdio_user: str | None = None
        self._waited = False

    def get(self, kind: str, ident: str) -> Any:
        return self._made.get((kind, ident))

    def add(self, kind: str, ident: str, backend: Any) -> None:
        self._made[(kind, ident)] = backend
        self._order.append(backend)

    def of_kind(self, kind: str) -> list[Any]:
        """The backends of ``kind`` (``"chardev"``, ``"netdev"``), in the order made."""
        return [b for (k, _), b in self._made.items() if k == kind]

    def start_chardevs(self, stopping: Any = None) -> None:
        """Start every chardev's I/O thread (idempotent); the first time in the run, wait
        for the clients of socket servers with ``wait=on``, as QEMU does before the guest
        runs. ``stopping()`` true (a SIGTERM came) cuts the wait short."""
        chardevs = self.of_kind("chardev")
        for b in chardevs:
            start = getattr(b, "start", None)
            if start is not None:
                start()
        if self._waited:
            return
        self._waited = True
        for b in chardevs:
            wait = getattr(b, "wait_connected", None)
            if wait is not None:
                wait(stopping)
                if stopping is not None and stopping():
                    return

    def close(self) -> None:
        """Close every backend, the last made first (the run is over). Chardevs start
        handing over what they hold all at once, so together they take one flush bound
        (CLOSE_FLUSH_SECONDS) however many sinks are stalled."""
        for backend in self._order:
            begin = getattr(backend, "begin_close", None)
            if begin is not None:
                begin()
        for backend in reversed(self._order):
            close = getattr(backend, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.debug("closing a backend failed", exc_info=True)
        self._order.clear()
        self._made.clear()
