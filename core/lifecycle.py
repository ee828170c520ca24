"""The VM's run state across reboots, what the guest's resets, power-offs, panics and errors
lead to, and the QMP monitors that watch and drive it.

A guest reset rebuilds the :class:`~microvm.machine.Machine` (``run_spec``), so the state a
management layer sees (``running``, ``paused``, ``prelaunch``, ``shutdown``,
``guest-panicked``, ``internal-error``) and the QMP servers live here, one object per
``run_spec``, and each Machine of the run reports to it. It is also the
:class:`microvm.qmp.control.MachineControl` the QMP servers call; it forwards to whichever
Machine is current.

One state machine, one lock. Every run-state transition (QMP ``stop``, ``cont``,
``system_reset``, ``quit``; a guest reset, power-off, panic or internal error; a host signal;
a machine starting or being torn down) runs from start to end under ``_lock``, and changes
the state only through :meth:`Lifecycle._set_state`, which allows QEMU 7.2's transitions
(``runstate_transitions_def`` in softmmu/runstate.c) and nothing else. As in QEMU:

* vCPU and device threads never take ``_lock``: what the guest does is *posted* (QEMU's
  ``qemu_system_*_request``), the reporting vCPU parks, and the run's main thread (the
  thread in ``Machine.run``, QEMU's main loop) handles the requests under the lock. So a
  ``stop`` holding the lock while it waits for the vCPUs to park never waits for a vCPU that
  waits for the lock;
* a reset is one transition: ``system_reset`` returns once the new machine stands (and
  ``RESET`` went out), and other commands wait for a reset in progress instead of acting on
  half of it (QEMU 7.2 answers the same: RESET before the reply, the next command sees the
  state after the reset; checked).

No log line or message is written while ``_lock`` is held: a section holds its thread's
lines (:func:`microvm.log.hold_logs`, the machine's and devices' included) and writes them
once the lock is released, so stderr that stalls (``-v`` into a pipe nobody reads) can hold
up the thread that logs but never a run-state transition, a SIGTERM or another monitor.

Lock order (never the other way round): ``Lifecycle._lock`` -> ``Machine._run_lock`` (pause,
resume, close) -> ``Machine.pause_cond`` (the vCPU flags) -> ``Machine.kick_lock``.
``Lifecycle._requests_lock`` is taken alone or before ``Machine.pause_cond``; a QMP server's
own lock is a leaf (``emit_event`` never blocks).

QEMU 7.2's rules, checked against QEMU itself:

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
* a stop (``vm_stop``) changes the state only of a running VM: a power-off handled after a
  ``stop`` leaves the VM ``paused`` (the SHUTDOWN event still goes out);
* a reset of a VM that was not running leaves it in ``prelaunch`` until ``cont`` (QEMU's
  main_loop_should_exit): the vCPUs do not run;
* every end of the run sends one ``SHUTDOWN`` with its cause; where QEMU exits without one
  (isa-debug-exit, a device model failing) microvm sends ``guest-shutdown`` or
  ``host-error``.

Nothing here imports :mod:`microvm.qmp` unless a monitor was asked for (start-up time).
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .log import WARNING, EventLog, get_logger, hold_logs, release_logs, say

if TYPE_CHECKING:
    from .machine import Machine
    from .spec import MachineSpec

log = get_logger("microvm.lifecycle")
#: events a guest can repeat without bound (pvpanic's crash-loaded write): first one logged,
#: repeats summarised (``-d guest_errors`` logs each), as QEMU logs them only under that flag
guest_event = EventLog(log)

# QEMU's RunState names (the same strings as microvm.qmp.control, which is not imported here)
RUNNING = "running"
PAUSED = "paused"
PRELAUNCH = "prelaunch"
SHUTDOWN = "shutdown"
GUEST_PANICKED = "guest-panicked"
INTERNAL_ERROR = "internal-error"
#: the states ``cont`` refuses until a reset (runstate_needs_reset)
NEEDS_RESET = (SHUTDOWN, INTERNAL_ERROR)
#: QEMU 7.2's runstate_transitions_def, between the states microvm has (anything else is a
#: bug: QEMU aborts, microvm logs it and keeps the state)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    PRELAUNCH: (RUNNING,),
    RUNNING: (PAUSED, SHUTDOWN, GUEST_PANICKED, INTERNAL_ERROR),
    PAUSED: (RUNNING, PRELAUNCH),
    SHUTDOWN: (PAUSED, PRELAUNCH),
    INTERNAL_ERROR: (PAUSED, PRELAUNCH),
    GUEST_PANICKED: (RUNNING, PRELAUNCH),
}
#: how long a command waits for a reset in progress (a machine being rebuilt: milliseconds)
RESET_WAIT = 60.0


def caused_by_guest(cause: str) -> bool:
    """QEMU's shutdown_caused_by_guest: the ``guest`` member of RESET and SHUTDOWN."""
    return cause.startswith("guest-")


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


class _Locked:
    """``with lifecycle._locked():`` is ``with lifecycle._lock:`` whose log lines are written
    after the release (the outermost section of a thread releases them)."""

    __slots__ = ("lock", "held")

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.held = False

    def __enter__(self) -> None:
        self.held = hold_logs()
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()
        if self.held:
            release_logs()


class Lifecycle:
    """Run state and monitors of one ``run_spec`` (see the module docstring).

    Threads: vCPU and device threads :meth:`post` guest events; the run's main thread
    handles them (:meth:`process_requests`), starts and ends machines and reports host
    signals; QMP server threads call the ``MachineControl`` methods (several servers: several
    threads). All of it under ``_lock`` except :meth:`post`.
    """

    def __init__(self, spec: "MachineSpec") -> None:
        self.spec = spec
        self.no_shutdown = bool(getattr(spec, "no_shutdown", False))
        self.monitors: list[Monitor] = []
        #: the run-state lock: held by every transition from its start to its end
        self._lock = threading.RLock()
        #: a reset in progress ended, or the run is ending (waits release ``_lock``)
        self._cond = threading.Condition(self._lock)
        #: guest events posted by vCPU and device threads: (machine, kind, args)
        self._requests_lock = threading.Lock()
        self._requests: list[tuple[Any, str, tuple[Any, ...]]] = []
        self.state = PRELAUNCH if getattr(spec, "prelaunch", False) else RUNNING
        self.machine: "Machine | None" = None
        #: QMP quit came: the run ends (kept for embedding programs; see _ending)
        self.quit_requested = False
        #: the ShutdownCause of a reset in progress; RESET goes out when the next machine starts
        self._resetting: str | None = None
        #: the run ends with the current machine (quit, signal, a shutdown without
        #: -no-shutdown, no reboot to come)
        self._ending = False
        #: the run's last SHUTDOWN event went out (one per end, with its cause)
        self._end_reported = False
        self._vcpus: list[Any] = []
        self._previous: "Machine | None" = None

    def _locked(self) -> _Locked:
        """The run-state lock, log lines written after it is released (module docstring)."""
        return _Locked(self._lock)

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
                # connections are accepted (wait=on is satisfied) but neither greeted nor
                # answered until the first machine and its vCPU threads exist
                # (machine_started), as QEMU serves its monitors from the main loop
                mon.server.start(serve=False)
        except BaseException:
            self.close_monitors()
            raise
        for mon in self.monitors:
            if mon.server.wait:
                say(f"microvm: waiting for connection on: {mon.filename()}\n")  # QEMU's info line
                mon.server.wait_for_client()

    def close_monitors(self) -> None:
        for mon in self.monitors:
            if mon.server is not None:
                mon.server.close()
        self.monitors = []

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        for mon in self.monitors:
            mon.server.emit_event(name, data)

    # ------------------------------------------------------------------ the state machine
    def _set_state(self, new: str) -> None:
        """QEMU's runstate_set: only the transitions QEMU 7.2 allows. Under ``_lock``."""
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            log.error("invalid runstate transition: '%s' -> '%s' (ignored)", self.state, new)
            return
        self.state = new

    def _idle(self) -> None:
        """Wait (releasing ``_lock``) while a reset is in progress: a command acts on the
        machine before or after a reset, never on half of one. Under ``_lock``."""
        if self._resetting is None or self._ending:
            return
        if not self._cond.wait_for(lambda: self._resetting is None or self._ending, RESET_WAIT):
            log.warning("a reset has been in progress for %.0f s; going on", RESET_WAIT)

    def _enter(self, m: "Machine | None", state: str) -> None:
        """QEMU's vm_stop(state): a running VM pauses and STOP is emitted; a VM that is not
        running keeps its state. Under ``_lock``, never on a vCPU thread."""
        if self.state != RUNNING:
            return
        self._set_state(state)
        if m is not None:
            m.pause()
        self.emit("STOP")

    def _shutdown(self, m: "Machine | None", cause: str, why: str) -> None:
        """QEMU's shutdown request: SHUTDOWN, then the process ends, or with -no-shutdown the
        VM stops in state ``shutdown`` (QEMU's vm_stop(RUN_STATE_SHUTDOWN)). Under ``_lock``."""
        self.emit("SHUTDOWN", {"guest": caused_by_guest(cause), "reason": cause})
        if self.no_shutdown:
            log.info("%s; -no-shutdown: VM stopped (shutdown)", why.split(":")[0])
            self._enter(m, SHUTDOWN)
            return
        self._end_reported = True
        self._end()
        if m is not None:
            m.request_stop(0, why, cause)

    def _end(self) -> None:
        """The run ends with the current machine: nobody waits for a reset any more."""
        self._ending = True
        self._cond.notify_all()

    def _begin_reset(self, m: "Machine", cause: str, why: str) -> bool:
        """Stop ``m`` for a rebuild (the RESET event comes when the next machine starts).
        False if ``m`` is already ending for another reason. Under ``_lock``."""
        if m.stopping and not m.reset_requested:
            return False
        if self._resetting is None:  # a second request during the same reset joins it
            self._resetting = cause
        m.reset_requested = True
        m.request_stop(0, why, cause)
        return True

    # ------------------------------------------------------------------ machines (main thread)
    def machine_starting(self, m: "Machine") -> bool:
        """A machine is built and about to start its vCPUs: pause it first when it must not
        run (``-S``, or a reset of a VM that was not running: ``prelaunch``); True then.
        A reset in progress ends here (RESET, then the commands waiting for it go on)."""
        with self._locked():
            self.machine = m
            self._vcpus = []
            if self._resetting is not None:
                cause, self._resetting = self._resetting, None
                # the event first: a client that sees the new state has the event before
                self.emit("RESET", {"guest": caused_by_guest(cause), "reason": cause})
                if self.state != RUNNING:
                    self._set_state(PRELAUNCH)
                self._cond.notify_all()
            if self._ending:
                m.request_stop(0, "quit", "host-qmp-quit")
            paused = self.state != RUNNING
            if paused:
                m.pause(wait=False)  # no vCPU thread runs yet: nothing to wait for
            else:
                m.mark_running()
            return paused

    def machine_started(self, m: "Machine") -> None:
        """``m``'s vCPU threads are started (parked for ``-S``): the monitors begin serving
        now, so their first answer already sees the machine (QEMU's main loop, which serves
        the monitors, runs only after the machine is created). Later machines of the run
        (resets) find them serving."""
        for mon in self.monitors:
            mon.server.serve()

    def machine_closing(self, m: "Machine") -> None:
        """``m`` is being torn down: forget it (keeping what ``query-cpus-fast`` showed, for
        while a reset rebuilds the machine); commands from now on change the state only.
        Waits for a transition in progress, which therefore never sees a torn-down machine."""
        with self._locked():
            if self.machine is m:
                self._vcpus = self._vcpu_info(m) if self.monitors else []
                self._previous = m  # its chardevs (the run's) are listed while the next is built
                self.machine = None

    def machine_ended(self, m: "Machine", final: bool = False) -> bool:
        """``m.run()`` returned: True if the run goes on with a new machine (a reset), else
        the run ends (``final``: whatever ``m`` asked for) and its SHUTDOWN goes out, with the
        stop's cause, if nothing reported the end yet."""
        with self._locked():
            self.machine_closing(m)
            if m.reset_requested and not self._ending and not final:
                return True
            if not self._end_reported:
                cause = "host-signal" if m.host_signal else (m.stop_cause or "host-error")
                self._end_reported = True
                self.emit("SHUTDOWN", {"guest": caused_by_guest(cause), "reason": cause})
            self._end()
            return False

    def run_ended(self) -> None:
        """``run_spec`` is returning (or failing): wake every waiter."""
        with self._locked():
            self._end()

    def host_signal(self, m: "Machine | None", signum: int) -> None:
        """SIGTERM, SIGHUP, SIGINT: the run ends (QEMU's qemu_system_killed), also when
        paused and with -no-shutdown. Main thread."""
        with self._locked():
            if not self._end_reported:
                self._end_reported = True
                self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
            self._end()
            if m is not None:
                m.host_signal = m.host_signal or signum
                m.request_stop(0, f"terminated by signal {signum}", "host-signal")

    # ------------------------------------------------------------------ what the guest does
    def post(self, m: "Machine", kind: str, *args: Any) -> None:
        """A guest event from a vCPU or device thread (QEMU's ``qemu_system_*_request``):
        the vCPUs park at their next exit and the machine's main loop handles it. A machine
        without a running main loop (not started, ``microvm.testing``) handles it here."""
        if not m.loop_running:
            with self._locked():
                self._handle(m, kind, args)
            return
        with self._requests_lock:
            m.hold_vcpus()
            self._requests.append((m, kind, args))
        m._wake()

    def process_requests(self, m: "Machine") -> None:
        """Handle what ``m``'s threads posted, in order (the main thread's loop)."""
        with self._requests_lock:
            if not self._requests:
                return
            mine = [(kind, args) for machine, kind, args in self._requests if machine is m]
            self._requests = []  # another machine's are stale: it is gone
        with self._locked():
            for kind, args in mine:
                self._handle(m, kind, args)
        with self._requests_lock:  # (a request posted meanwhile keeps them held)
            if not self._requests:
                m.release_vcpus()

    def _handle(self, m: "Machine", kind: str, args: tuple[Any, ...]) -> None:
        if self.machine is not None and self.machine is not m:
            return  # from a machine torn down since
        if m.stopping:
            return  # the machine ends anyway (quit, a signal, a reset in progress)
        getattr(self, "_" + kind)(m, *args)

    def _guest_reset(self, m: "Machine", reason: str) -> None:
        if self.spec.no_reboot:  # QEMU's reboot_action=shutdown
            self._shutdown(m, "guest-reset", f"guest reset ({reason}) with --no-reboot: exiting")
        else:
            self._begin_reset(m, "guest-reset", f"guest reset ({reason}): rebooting")

    def _guest_shutdown(self, m: "Machine") -> None:
        self._shutdown(m, "guest-shutdown", "guest powered off")

    def _guest_panicked(self, m: "Machine", detail: str) -> None:
        """QEMU's qemu_system_guest_panicked with its default panic action (shutdown)."""
        log.error("guest panicked: %s", detail)
        if self.no_shutdown:  # -no-shutdown turns the panic's shutdown into a pause
            self.emit("GUEST_PANICKED", {"action": "pause"})
            self._enter(m, GUEST_PANICKED)
            return
        # QEMU's shutdown request wins over its deferred vm_stop: no STOP event
        self.emit("GUEST_PANICKED", {"action": "poweroff"})
        if self.state == RUNNING:
            self._set_state(GUEST_PANICKED)
        self.emit("SHUTDOWN", {"guest": True, "reason": "guest-panic"})
        self._end_reported = True
        self._end()
        m.request_stop(0, f"guest panicked ({detail})", "guest-panic")

    def _internal_error(self, m: "Machine", message: str) -> None:
        log.error("%s\nVM stopped (internal-error): a QMP client can system_reset or quit", message)
        self._enter(m, INTERNAL_ERROR)

    def guest_crashloaded(self, m: "Machine") -> None:
        """QEMU's qemu_system_guest_crashloaded: an event, the guest runs on (any thread)."""
        guest_event("pvpanic crash-loaded", WARNING, "guest loaded a crash kernel")
        self.emit("GUEST_CRASHLOADED", {"action": "run"})

    # ------------------------------------------------------------------ MachineControl (QMP threads)
    def run_state(self) -> str:
        return self.state

    def stop(self) -> None:
        with self._locked():
            self._idle()
            if self._ending:  # the run is ending (SHUTDOWN sent): nothing follows it
                return
            self._enter(self.machine, PAUSED)

    def cont(self) -> None:
        with self._locked():
            self._idle()
            if self._ending:  # as QEMU, whose main loop has left: no RESUME after SHUTDOWN
                return
            if self.state in NEEDS_RESET:  # changed since the command looked
                from .qmp.errors import QmpError

                raise QmpError("Resetting the Virtual Machine is required")
            if self.state == RUNNING:
                return
            self._set_state(RUNNING)
            self.emit("RESUME")  # QEMU's vm_prepare_start: the event, then the vCPUs
            if self.machine is not None:
                self.machine.resume()

    def system_reset(self) -> None:
        """QEMU's qmp_system_reset, carried out before the reply: returns once the new
        machine stands (RESET sent), so each request is one reset and one RESET, and the
        next command sees the state after it. A VM that was not running comes back in
        ``prelaunch`` (its vCPUs do not run until ``cont``)."""
        cause = "host-qmp-system-reset"
        with self._locked():
            self._idle()
            if self._ending:
                return
            m = self.machine
            if self.spec.no_reboot:  # QEMU 7.2: reboot_action=shutdown makes it a shutdown
                self._shutdown(m, cause, "system_reset (QMP) with --no-reboot: exiting")
                return
            if m is None:  # before the first machine starts: nothing has run, nothing to rebuild
                self.emit("RESET", {"guest": False, "reason": cause})
                if self.state != RUNNING:
                    self._set_state(PRELAUNCH)
                return
            if self._begin_reset(m, cause, "system_reset (QMP): rebooting"):
                self._idle()

    def quit(self) -> None:
        with self._locked():
            self._idle()
            self.quit_requested = True
            if not self._end_reported:
                self._end_reported = True
                self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            self._end()
            if self.machine is not None:
                self.machine.request_stop(0, "quit (QMP)", "host-qmp-quit")

    def name(self) -> str | None:
        return getattr(self.spec, "name", None)

    def vcpus(self) -> list[Any]:
        with self._locked():
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
        """QEMU's ``query-chardev`` list, in QEMU's order: its chardevs container is a
        GLib hash table filled in creation order (``-chardev`` and ``-qmp`` as given, then
        the serial ports' own), listed backwards (microvm.qmp.ghash)."""
        from .qmp.control import ChardevInfo
        from .qmp.ghash import qom_children_order

        found: dict[str, Any] = {}
        with self._locked():
            m = self.machine or self._previous
            if m is not None:
                for label, filename, used in m.chardev_list():
                    found[label] = ChardevInfo(label, filename, used)
            for mon in self.monitors:
                found[mon.label] = ChardevInfo(mon.label, mon.filename(), True)
        created = [c for c in self.spec.chardev_configs if c in found]
        created += [mon.label for mon in self.monitors if mon.label not in created]
        created += [label for label in found if label not in created]
        return [found[label] for label in qom_children_order(created)]

    def blocks(self) -> list[Any]:
        from .qmp.control import BlockInfo

        with self._locked():
            m = self.machine
            qdevs = dict(m.drive_qdevs) if m is not None else {}
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
