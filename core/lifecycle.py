"""The VM's run state across reboots, what the guest's resets, power-offs, panics and errors
lead to, and the QMP monitors that watch and drive it.

A guest reset rebuilds the :class:`~microvm.machine.Machine` (``run_spec``), so the state a
management layer sees (``running``, ``paused``, ``prelaunch``, ``shutdown``,
``guest-panicked``, ``internal-error``) and the QMP servers live here, one object per
``run_spec``, and each Machine of the run reports to it. It is also the
:class:`microvm.qmp.control.MachineControl` the QMP servers call (on their thread, one call
at a time); it forwards to whichever Machine is current.

QEMU 7.2's rules (softmmu/runstate.c), checked against QEMU itself:

* a guest reset (triple fault) reboots and emits ``RESET {guest: true, reason:
  guest-reset}``, also with ``-no-shutdown``; with ``-no-reboot`` it is a shutdown instead
  (``SHUTDOWN {guest: true, reason: guest-reset}``), and so is QMP's ``system_reset``
  (``host-qmp-system-reset``);
* a shutdown ends the process, or with ``-no-shutdown`` stops the VM in state ``shutdown``
  (``STOP``), still served; only ``system_reset`` (then ``cont``) or ``quit`` leave it;
* a host signal or QMP ``quit`` always ends the process;
* a guest panic: ``GUEST_PANICKED {action: poweroff}`` then ``SHUTDOWN {guest: true,
  reason: guest-panic}`` and the process ends (no ``STOP``: QEMU's deferred vm_stop never
  runs), or with ``-no-shutdown`` ``GUEST_PANICKED {action: pause}``, ``STOP`` and state
  ``guest-panicked``, which ``cont`` leaves (pvpanic's crash-loaded: ``GUEST_CRASHLOADED``);
* a KVM internal error stops the VM in ``internal-error`` (``STOP``); without a QMP monitor
  nobody could ever act on that state, so microvm then ends with status 1 as before;
* a reset of a VM that was not running leaves it in ``prelaunch`` until ``cont``.

Nothing here imports :mod:`microvm.qmp` unless a monitor was asked for (start-up time).
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .log import get_logger

if TYPE_CHECKING:
    from .machine import Machine
    from .spec import MachineSpec

log = get_logger("microvm.lifecycle")

# QEMU's RunState names (the same strings as microvm.qmp.control, which is not imported here)
RUNNING = "running"
PAUSED = "paused"
PRELAUNCH = "prelaunch"
SHUTDOWN = "shutdown"
GUEST_PANICKED = "guest-panicked"
INTERNAL_ERROR = "internal-error"
#: the states ``cont`` refuses until a reset (runstate_needs_reset)
NEEDS_RESET = (SHUTDOWN, INTERNAL_ERROR)


class Monitor:
    """One ``-qmp ADDRESS`` / ``-mon chardev=ID,mode=control``: its QEMU chardev label and
    address, and the server once started."""

    def __init__(self, label: str, address: str) -> None:
        self.label = label
        self.address = address
        self.server: Any = None

    def filename(self) -> str:
        """QEMU's ``query-chardev`` filename of a listening socket: ``unix:PATH,server=on``,
        prefixed ``disconnected:`` while no client is connected."""
        a = self.server.address if self.server is not None else None
        if a is None:
            return self.address
        if a.kind == "unix":
            text = f"unix:{a.path},server=on"
        else:
            host = f"[{a.host}]" if ":" in a.host else a.host
            text = f"tcp:{host}:{self.server.port or a.port},server=on"
        return text if self.server.client_count else "disconnected:" + text


def monitors_of(spec: "MachineSpec") -> list[Monitor]:
    """The monitors ``spec`` asks for: each ``--qmp`` (labels ``compat_monitor0``, ...) and
    each ``--mon chardev=ID,mode=control`` on a socket ``--chardev`` (label ``ID``)."""
    out = [Monitor(f"compat_monitor{i}", a) for i, a in enumerate(spec.qmp)]
    for chardev_id, address in spec.mon_addresses().items():
        out.append(Monitor(chardev_id, address))
    return out


class Lifecycle:
    """Run state and monitors of one ``run_spec`` (see the module docstring).

    Threads: the vCPU threads report guest events (:meth:`guest_reset`, ...), the QMP server
    thread calls the ``MachineControl`` methods, the main thread runs the machines. ``_lock``
    guards the state and is never held while waiting for vCPUs (a vCPU reporting an event
    takes it), so a pause from QMP and an event from the guest cannot deadlock.
    """

    def __init__(self, spec: "MachineSpec") -> None:
        self.spec = spec
        self.state = PRELAUNCH if getattr(spec, "prelaunch", False) else RUNNING
        self.no_shutdown = bool(getattr(spec, "no_shutdown", False))
        self.monitors: list[Monitor] = []
        self.machine: "Machine | None" = None
        self.quit_requested = False
        #: the ShutdownCause of a reset in progress, reported (RESET) when the next machine starts
        self.reset_cause: str | None = None
        self._lock = threading.RLock()
        self._vcpus: list[Any] = []

    # ------------------------------------------------------------------ monitors
    @property
    def monitored(self) -> bool:
        return bool(self.monitors)

    def start_monitors(self) -> None:
        """Bind every monitor (ConfigError with one line if one cannot be bound) and, for
        ``wait=on``, wait for a first client, as QEMU does before starting the guest."""
        wanted = monitors_of(self.spec)
        if not wanted:
            return
        from .qmp.server import QmpServer

        try:
            for mon in wanted:
                mon.server = QmpServer(mon.address, self)
                # listed before it starts: a client may connect and command at once, and the
                # events its commands cause must reach it
                self.monitors.append(mon)
                mon.server.start()
        except BaseException:
            self.close_monitors()
            raise
        for mon in self.monitors:
            if mon.server.wait:
                log.info("QMP: waiting for a client on %s (wait=on)", mon.address)
                mon.server.wait_for_client()

    def close_monitors(self) -> None:
        for mon in self.monitors:
            if mon.server is not None:
                mon.server.close()
        self.monitors = []

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        for mon in self.monitors:
            mon.server.emit_event(name, data)

    # ------------------------------------------------------------------ machines
    def machine_starting(self, m: "Machine") -> bool:
        """A machine is built and about to start its vCPUs: pause it first when it must not
        run (``-S``, or a reset of a VM that was not running: ``prelaunch``); True then.
        Under the lock, so a ``cont`` either finds no machine yet (and this one starts
        running) or finds it paused (and resumes it)."""
        with self._lock:
            self.machine = m
            self._vcpus = []
            if self.reset_cause is not None:  # the reset is done: a new machine stands
                cause, self.reset_cause = self.reset_cause, None
                # the event first: a client that sees the new state has the event before
                self.emit("RESET", {"guest": cause.startswith("guest"), "reason": cause})
                if self.state != RUNNING:
                    self.state = PRELAUNCH
            if self.quit_requested:
                m.request_stop(0, "quit")
            paused = self.state != RUNNING
            if paused:
                m.pause(wait=False)  # no vCPU thread runs yet: nothing to wait for
            else:
                m.mark_running()
            return paused

    def machine_closing(self, m: "Machine") -> None:
        """``m`` is being torn down: forget it (keeping what ``query-cpus-fast`` showed, for
        while a reset rebuilds the machine); commands from now on change the state only."""
        with self._lock:
            if self.machine is m:
                self._vcpus = self._vcpu_info(m) if self.monitors else []
                self.machine = None

    def machine_ended(self, m: "Machine") -> None:
        """``m.run()`` returned: report a host signal."""
        self.machine_closing(m)
        if m.host_signal:
            self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})

    # ------------------------------------------------------------------ what the guest does
    def guest_reset(self, m: "Machine", reason: str) -> None:
        if self.spec.no_reboot:  # QEMU's reboot_action=shutdown
            self._shutdown(m, True, "guest-reset", f"guest reset ({reason}) with --no-reboot: exiting")
        else:
            self._reset(m, "guest-reset", f"guest reset ({reason}): rebooting")

    def guest_shutdown(self, m: "Machine") -> None:
        self._shutdown(m, True, "guest-shutdown", "guest powered off")

    def guest_panicked(self, m: "Machine", detail: str) -> None:
        """QEMU's qemu_system_guest_panicked with its default panic action (shutdown)."""
        log.error("guest panicked: %s", detail)
        if self.no_shutdown:  # -no-shutdown turns the panic's shutdown into a pause
            self.emit("GUEST_PANICKED", {"action": "pause"})
            self._enter(m, GUEST_PANICKED)
        else:  # QEMU's shutdown request wins over its deferred vm_stop: no STOP event
            self.emit("GUEST_PANICKED", {"action": "poweroff"})
            with self._lock:
                self.state = GUEST_PANICKED
            self.emit("SHUTDOWN", {"guest": True, "reason": "guest-panic"})
            m.request_stop(0, f"guest panicked ({detail})")

    def guest_crashloaded(self, m: "Machine") -> None:
        """QEMU's qemu_system_guest_crashloaded: an event, the guest runs on."""
        log.warning("guest loaded a crash kernel")
        self.emit("GUEST_CRASHLOADED", {"action": "run"})

    def internal_error(self, m: "Machine", message: str) -> None:
        if not self.monitored:
            m.request_stop(1, message)
            return
        log.error("%s\nVM stopped (internal-error): a QMP client can system_reset or quit", message)
        self._enter(m, INTERNAL_ERROR)

    def _reset(self, m: "Machine | None", cause: str, why: str) -> None:
        with self._lock:
            self.reset_cause = cause
        if m is not None:
            m.reset_requested = True
            m.request_stop(0, why)

    def _shutdown(self, m: "Machine | None", guest: bool, cause: str, why: str) -> None:
        """QEMU's shutdown request: SHUTDOWN, then the process ends, or with -no-shutdown the
        VM stops in state ``shutdown`` (QEMU's vm_stop(RUN_STATE_SHUTDOWN))."""
        self.emit("SHUTDOWN", {"guest": guest, "reason": cause})
        if self.no_shutdown:
            log.info("%s; -no-shutdown: VM stopped (shutdown)", why.split(":")[0])
            self._enter(m, SHUTDOWN)
        elif m is not None:
            m.request_stop(0, why)
        else:
            self.quit_requested = True

    def _enter(self, m: "Machine | None", state: str) -> None:
        """QEMU's vm_stop(state): the VM pauses and STOP is emitted if it was running."""
        with self._lock:
            was, self.state = self.state, state
        if was == RUNNING:
            if m is not None:
                m.pause(wait=not _on_vcpu_thread(m))
            self.emit("STOP")

    # ------------------------------------------------------------------ MachineControl (QMP thread)
    def run_state(self) -> str:
        return self.state

    def stop(self) -> None:
        with self._lock:
            if self.state != RUNNING:
                return
            self.state = PAUSED
            m = self.machine
        if m is not None:
            m.pause()
        self.emit("STOP")

    def cont(self) -> None:
        with self._lock:
            if self.state == RUNNING or self.state in NEEDS_RESET:
                return
            self.state = RUNNING
            m = self.machine
        if m is not None:
            m.resume()
        self.emit("RESUME")

    def system_reset(self) -> None:
        m = self.machine
        if self.spec.no_reboot:  # QEMU 7.2: reboot_action=shutdown makes it a shutdown
            self._shutdown(m, False, "host-qmp-system-reset", "system_reset (QMP) with --no-reboot: exiting")
        else:
            self._reset(m, "host-qmp-system-reset", "system_reset (QMP): rebooting")

    def quit(self) -> None:
        self.quit_requested = True
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        m = self.machine
        if m is not None:
            m.request_stop(0, "quit (QMP)")

    def name(self) -> str | None:
        return getattr(self.spec, "name", None)

    def vcpus(self) -> list[Any]:
        m = self.machine
        return self._vcpu_info(m) if m is not None else list(self._vcpus)

    @staticmethod
    def _vcpu_info(m: "Machine") -> list[Any]:
        from .qmp.control import VcpuInfo

        threads = {t.vcpu.id: t for t in m.threads}
        out = []
        for v in m.vcpus:
            t = threads.get(v.id)
            out.append(VcpuInfo(v.id, (t.native_id or 0) if t is not None else 0))
        return out

    def kvm(self) -> tuple[bool, bool]:
        return (True, True)

    def chardevs(self) -> list[Any]:
        from .qmp.control import ChardevInfo

        out = []
        m = self.machine
        if m is not None:
            for label, filename, used in m.chardev_list():
                out.append(ChardevInfo(label, filename, used))
        for mon in self.monitors:
            out.append(ChardevInfo(mon.label, mon.filename(), True))
        return out

    def blocks(self) -> list[Any]:
        from .qmp.control import BlockInfo

        m = self.machine
        qdevs = m.drive_qdevs if m is not None else {}
        out = []
        for d in self.spec.drive_configs.values():
            try:
                st = os.stat(d.file)
                size, allocated = st.st_size, st.st_blocks * 512
            except OSError:
                size, allocated = 0, None
            qdev = qdevs.get(d.id)
            # an attached virtio-blk drive reports io-status and is not removable; a drive
            # no device uses is "removable" and has no io-status (QEMU 7.2's answers)
            out.append(BlockInfo(d.id, d.file, d.readonly, driver=d.format, virtual_size=size, actual_size=allocated,
                                 qdev=qdev, removable=qdev is None, io_status="ok" if qdev is not None else None))
        return out


def _on_vcpu_thread(m: "Machine") -> bool:
    me = threading.current_thread()
    return any(t is me for t in m.threads)
