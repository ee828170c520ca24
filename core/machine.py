"""The machine: guest memory, the two buses, the irqchip, the vCPUs, and the boot.

It names no device. Devices arrive through the plugins' hooks; this module only owns the
order of construction, the KVM objects, placement helpers and the run/stop/reset lifecycle.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable

from . import layout
from .bus import Bus
from .errors import BootError, ConfigError, MicrovmError, PluginError
from .log import get_logger, say
from .memory import GuestMemory
from .spec import MachineSpec

log = get_logger("microvm.machine")

if TYPE_CHECKING:
    from .bus.protocol import BusDevice
    from .chardev import Chardev
    from .metrics import Metrics
#: Interrupts a vCPU thread's KVM_RUN (EINTR). A real-time signal, as Firecracker uses, so an
#: embedding program's SIGUSR1 stays its own.
KICK_SIGNAL = signal.SIGRTMIN


def install_kick_handler() -> bool:
    """Give KICK_SIGNAL a no-op handler (its only effect is EINTR in KVM_RUN). Python lets
    only the main thread install handlers, so this runs when this module is imported there
    (programs import before they start threads), and again from Machine.run."""
    global _kick_handler_installed
    if _kick_handler_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
        signal.signal(KICK_SIGNAL, lambda *_: None)
    _kick_handler_installed = True
    return True


_kick_handler_installed = False
install_kick_handler()
#: how long Machine.pause waits for the vCPUs to leave KVM_RUN and park (an exit being
#: handled, e.g. a blocking console write, finishes first)
PAUSE_TIMEOUT = 10.0
#: Guest command-line words that keep Linux off instructions an emulating host cannot run
#: (docs/emulating-hosts.md: no XSAVE; clearcpuid 151 = POPCNT, 308 = SMAP, by number since names need
#: CONFIG_X86_FEATURE_NAMES).
EMULATING_HOST_CMDLINE = ["noxsave", "clearcpuid=151,308"]


def host_is_emulating() -> bool:
    """True on hosts whose KVM emulates guest kernel code (kvm_pvm, see docs/emulating-hosts.md)."""
    return os.path.exists("/sys/module/kvm_pvm")


#: the termination signal received (SIGTERM/SIGHUP), if any: it ends the process's machine,
#: whichever boot it is in (a guest reset builds a new Machine), and no reboot follows
_terminating: int | None = None
#: the machine whose main loop a termination signal must wake
_current: "Machine | None" = None


def _on_termination_signal(signum: int, _frame: Any) -> None:
    """Record the signal and wake the running machine's main loop, which stops it. Nothing
    else here: a handler runs between two bytecodes of the main thread, possibly while that
    thread holds a lock the stop would need (a deadlock, seen with Event.set)."""
    global _terminating
    _terminating = signum
    m = _current
    if m is not None:
        m._wake()


class ExtIntLine:
    """The boot CPU's LINT0 in virtual-wire mode, as an :class:`~microvm.irq.IrqLine`: an
    8259's INTR going high asks the boot vCPU to run an INTA cycle (KVM_INTERRUPT) when it
    can take an interrupt. Any thread may drive it."""

    gsi = -1

    def __init__(self, machine: "Machine") -> None:
        self._machine = machine

    def set_level(self, level: bool) -> None:
        if level:
            self._machine.request_extint()

    def pulse(self) -> None:
        self._machine.request_extint()

    def eventfd(self) -> int | None:
        return None


class Machine:
    """One boot of one VM. Build with :meth:`build` (done by :meth:`run` if needed).

    Plugins never see this object: their hooks get a :class:`~microvm.context.MachineContext`
    (``self.ctx``). A Machine runs once; a guest reset builds a new one (:func:`run_spec`).
    """

    def __init__(self, spec: MachineSpec, host: Any = None, images: Any = None, metrics: "Metrics | None" = None,
                 lifecycle: Any = None, backends: Any = None) -> None:
        from .boot.loader import read_images
        from .context import MachineContext
        from .metrics import Metrics
        from .plugins import PluginHost, plugin_host

        spec.validate()
        self.spec = spec
        if host is None:
            host = PluginHost(extra=spec.extra_plugins) if spec.extra_plugins else plugin_host()
        self.host = host
        self.hook = host.hook
        self.options: dict[str, Any] = host.options.parse_machine(spec.machine)
        #: the optional legacy devices, resolved once from the declared options
        self.legacy = host.options.legacy_devices(self.options)
        #: (config, registration, converted properties) of every --device, in order
        self._device_props: list[tuple[Any, Any, Any]] = []
        self._check_device_types()
        if spec.kernel is None and spec.bios is None:
            raise ConfigError("no kernel given (--kernel FILE) and no firmware (--bios FILE)")
        if spec.kernel is None and spec.append:
            raise ConfigError("--append is only allowed with --kernel")
        #: kernel, initrd and firmware bytes (microvm.boot.loader.BootImages), checked
        #: before KVM is touched
        self.images = images or read_images(spec.kernel, spec.initrd, max_size=spec.mem_size, bios=spec.bios)
        #: how this boot starts (ctx.boot)
        self.boot = self._boot_config()
        #: a machine rebuilt after a guest reset (run_spec passes the images on)
        self.rebooted = images is not None
        #: the process's counters (run_spec keeps one across reboots)
        self.metrics = metrics if metrics is not None else Metrics()
        self.ctx = MachineContext(self)
        self.smp = spec.smp
        #: the vCPUs' APIC IDs (= KVM vCPU ids), by vCPU index, laid out by the topology
        self.apic_ids: list[int] = spec.topology.apic_ids()
        self.ram_size = spec.mem_size
        self.devices: dict[str, Any] = {}
        #: the run's host backends (microvm.backends.HostBackends): kept across guest resets
        #: when run_spec passes them on; a Machine made alone owns (and closes) its own
        self._owns_backends = backends is None
        if backends is None:
            from .backends import HostBackends

            backends = HostBackends()
        self.backends = backends
        backends.current = self  # the run's backends speak for this boot from now on
        #: this boot's frontends on the chardevs, by (chardev id, who holds it)
        self._frontends: dict[tuple[str, Any], Any] = {}
        self._drive_users: dict[str, str] = {}
        #: drive id -> QOM path of the device using it (QMP query-block's qdev)
        self.drive_qdevs: dict[str, str] = {}
        self._creating_qdev: str | None = None
        #: the device whose factory runs now (who claims a drive, netdev or chardev), and a
        #: key that tells two devices of the same type apart
        self._creating = "a device"
        self._creating_key: Any = ("hook",)
        self._netdevs: dict[str, tuple[Any, str]] = {}
        self._irq_lines: dict[int, Any] = {}
        if lifecycle is None:
            from .lifecycle import Lifecycle

            lifecycle = Lifecycle(spec)
        #: run state across reboots and what a reset, power-off, panic or error does
        #: (microvm.lifecycle.Lifecycle; run_spec keeps one for every boot)
        self.lifecycle = lifecycle
        # Locks, always taken in this order (never the other way round; docs/qmp.md):
        #   lifecycle._lock (run-state transitions) -> _run_lock -> pause_cond -> kick_lock.
        #: serialises pause(), resume() and close(): a pause never quiesces devices that
        #: close() is tearing down, and a resume never undoes half a pause
        self._run_lock = threading.Lock()
        #: guards the flags below (_stopping, paused, _held, hold, parked, vcpus_active);
        #: parked vCPU threads wait on it
        self.pause_cond = threading.Condition()
        self._stopping = False
        #: paused (QMP stop, -S, a stopped run state): the vCPUs park on pause_cond
        self.paused = False
        #: a vCPU reported a guest event (reset, power-off, panic, internal error) that the
        #: run's main thread has not handled yet: the vCPUs park until it has
        self._held = False
        #: stopping, paused or held: the one flag a vCPU loop looks at before each KVM_RUN.
        #: Written only under pause_cond (derived from the three above); every writer that
        #: sets it kicks the vCPUs afterwards, so the loop's unlocked look cannot miss it
        self.hold = False
        #: devices quiesced and kvmclock saved by pause(), undone by resume()
        self._quiesced = False
        #: serialises kicks with the teardown that unmaps the vCPUs' kvm_run pages
        self.kick_lock = threading.Lock()
        self.torn_down = False
        self.parked = 0  # vCPU threads parked (under pause_cond)
        self.vcpus_active = 0  # vCPU threads in their loop (under pause_cond)
        #: the main loop (run()) is waiting for events: guest events are handed to it
        self.loop_running = False
        self._guest_ran = False  # the vCPUs were released at least once (QEMU's clock_valid)
        self._saved_clock: int | None = None
        #: a host signal (SIGTERM, SIGHUP, SIGINT) ended the run: its number
        self.host_signal = 0
        self.exit_status = 0
        self.stop_reason = ""
        #: QEMU's ShutdownCause of the stop (``guest-shutdown``, ``host-error``...): what the
        #: run's SHUTDOWN event says when this stop ends the process
        self.stop_cause: str | None = None
        self.reset_requested = False
        #: while running, the main thread sleeps on this pipe; request_stop and the signal
        #: handlers write a byte (a handler must not take locks: it may run while the main
        #: thread holds them)
        self._wake_r = self._wake_w = -1
        self._closed = False
        self._cleanups: list[Callable[[], None]] = []
        self.threads: list[Any] = []
        self.vcpus: list[Any] = []
        #: what plugins get of each vCPU (microvm.context.VcpuView), one per vCPU
        self.vcpu_views: list[Any] = []
        self.irqchip: Any = None
        self.kvm: Any = None
        self.vm: Any = None
        self.memory: GuestMemory | None = None
        self.pio_bus = Bus("pio", unmapped_read=0xFF, limit=1 << 16, metrics=self.metrics)
        self.mmio_bus = Bus("mmio", unmapped_read=0x00, metrics=self.metrics)  # QEMU's unassigned_mem_read: 0
        self.cmdline = ""
        self.entry: Any = None
        self.mptable: list[Any] = []
        self.emulation_assist = bool(self.options.get("x-emulation-assist", True))
        self._virtio: Any = None  # microvm.virtio.slots.VirtioSlots, imported on first use
        self._timers: Any = None  # microvm.timers.TimerService, created on first use
        self.extint_line = ExtIntLine(self)
        #: KVM exit reason -> handler(vcpu), for exits a device model owns: dispatched
        #: directly by the vCPU loop, so they stay off pluggy's path
        self.exit_handlers: dict[int, Callable[[Any], None]] = {}
        self.supported_cpuid: list[dict[str, int]] = []
        self._built = False
        self._ran = False
        self._stopped_hooks = False

    def _boot_config(self) -> Any:
        from .config import BootConfig
        from .memory import BELOW_4G_MAX

        img = self.images
        kind = None if img.kind == "none" else img.kind
        pvh = None
        if img.bios is not None and kind == "elf":
            from .boot.loader import elf_layout

            pvh = elf_layout(img.kernel)
        return BootConfig(
            firmware=img.bios.path if img.bios is not None else None,
            kernel=img.kernel if kind else None, initrd=img.initrd, kernel_kind=kind,
            append=self.spec.append, pvh=pvh, below_4g=min(self.spec.mem_size, BELOW_4G_MAX),
            fw_cfg_files=self.spec.fw_cfg_files,
        )

    def _check_device_types(self) -> None:
        """Every --device names an installed type, and ``--device NAME,help`` is answered:
        before anything is built, so a typo costs no KVM set-up."""
        from .config import VIRTIO_TRANSPORT_PROPERTIES, describe_properties, parse_properties

        types = self.host.device_types
        for cfg in self.spec.device_configs:
            reg = types.get(cfg.driver)
            if reg is None or reg.factory is None:
                known = ", ".join(sorted(types)) or "none installed"
                if cfg.help and not cfg.driver:
                    raise ConfigError(f"device types: {known}")
                from .providers import hint

                raise ConfigError(f"--device {cfg.driver}: unknown device type{hint('device', cfg.driver)} (available: {known})")
            declared = self.device_properties(reg) + (VIRTIO_TRANSPORT_PROPERTIES if reg.virtio else ())
            if cfg.help:
                raise ConfigError(f"{cfg.driver} properties: " + "; ".join(describe_properties(declared)))
        chip = self.options.get("kernel-irqchip")
        if chip is not None and chip not in self.host.irqchips:
            from .providers import hint

            raise ConfigError(f"kernel-irqchip={chip}: not available{hint('irqchip', chip)}; "
                              f"installed: {', '.join(sorted(self.host.irqchips)) or 'none'}")
        # every device's properties are converted now, before any KVM set-up
        ids: set[str] = set()
        self._device_props = []
        for cfg in self.spec.device_configs:
            reg = types[cfg.driver]
            declared = self.device_properties(reg) + (VIRTIO_TRANSPORT_PROPERTIES if reg.virtio else ())
            props = parse_properties(cfg.driver, declared, cfg.props)
            if props["id"]:
                if props["id"] in ids:
                    raise ConfigError(f"--device {cfg.driver}: duplicate id {props['id']!r}")
                ids.add(props["id"])
            self._device_props.append((cfg, reg, props))
        self._check_drives()
        stdio = [c.id for c in self.spec.chardev_configs.values() if c.backend == "stdio"]
        stdio += [s.text for s in self.spec.serial_configs if s.chardev is not None and s.chardev.backend == "stdio"]
        if len(stdio) > 1:  # QEMU's words; several frontends share one stdio with -chardev stdio,mux=on
            raise ConfigError("cannot use stdio by multiple character devices")
        # every backend is checked, used or not: its type exists and its keys are valid
        monitors = self.spec.monitor_chardevs  # a --mon's socket is the QMP server's, not a backend
        backends = [("chardev", c) for c in self.spec.chardev_configs.values() if c.id not in monitors]
        backends += [("chardev", s.chardev) for s in self.spec.serial_configs if s.chardev is not None]
        backends += [("netdev", c) for c in self.spec.netdev_configs.values()]
        for kind, c in backends:
            parse_properties(f"{kind} {c.id} ({c.backend})", self._backend_type(kind, c).properties, c.props)

    def _check_drives(self) -> None:
        """Every --drive's image, used by a device or not, can be opened as QEMU's ``file``
        driver would (a regular file or a block device; read-write unless readonly=on)."""
        import stat

        for d in self.spec.drive_configs.values():
            where = f"--drive id={d.id},file={d.file}"
            try:
                fd = os.open(d.file, (os.O_RDONLY if d.readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK)
            except IsADirectoryError:
                raise ConfigError(f"{where}: 'file' driver requires '{d.file}' to be a regular file") from None
            except OSError as e:
                raise ConfigError(f"{where}: Could not open '{d.file}': {e.strerror}") from None
            try:
                mode = os.fstat(fd).st_mode
            finally:
                os.close(fd)
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise ConfigError(f"{where}: 'file' driver requires '{d.file}' to be a regular file")

    @staticmethod
    def device_properties(reg: Any) -> tuple[Any, ...]:
        """A device type's declared properties plus QEMU's generic ``id``."""
        from .config import Property

        return (Property("id", "str", "", "a name for the device (logs, counters)"),) + tuple(reg.properties)

    # ------------------------------------------------------------------ what the context offers
    def add_pio_device(self, device: BusDevice, base: int, length: int, name: str) -> None:
        self._insert(self.pio_bus, device, base, length, name)

    def add_mmio_device(self, device: BusDevice, base: int, length: int, name: str) -> None:
        self._insert(self.mmio_bus, device, base, length, name)

    @staticmethod
    def _insert(bus: Bus, device: Any, base: int, length: int, name: str) -> None:
        from .errors import BusError

        try:
            bus.insert(device, base, length, name)
        except BusError as e:  # a placement the user's options caused: one line, status 2
            raise ConfigError(str(e)) from None

    def irq(self, gsi: int) -> Any:
        """The interrupt line for GSI ``gsi`` from the active irqchip, counted."""
        line = self._irq_lines.get(gsi)
        if line is None:
            from .irq import CountingIrqLine, NullIrqLine

            # no irqchip plugin installed: devices still work, polled (as with a masked line)
            raw = NullIrqLine(gsi) if self.irqchip is None else self.irqchip.line(gsi)
            line = self._irq_lines[gsi] = CountingIrqLine(raw, self.metrics.group("irqs", f"gsi{gsi}").counter("raised"))
        return line

    def isa_irq_entry(self, irq: int) -> Any:
        """The MP table I/O interrupt entry routing ISA ``irq`` to the active IOAPIC."""
        from .boot.mptable import IoInterrupt

        chip = self.irqchip
        if chip is None:
            return IoInterrupt(src_irq=irq, dst_ioapic=0, dst_pin=irq)
        return IoInterrupt(src_irq=irq, dst_ioapic=chip.ioapic_id, dst_pin=chip.isa_pin(irq))

    def drive(self, drive_id: str) -> Any:
        """The DriveConfig of ``--drive id=drive_id`` for the device being created; a second
        user is refused, as QEMU refuses to attach a drive twice."""
        cfg = self.spec.drive_configs.get(drive_id)
        if cfg is None:
            known = ", ".join(sorted(self.spec.drive_configs)) or "none"
            raise ConfigError(f"drive {drive_id!r} not found (defined drives: {known})")
        user = self._creating
        other = self._drive_users.get(drive_id)
        if other is not None:
            raise ConfigError(f"{user}: drive {drive_id} is already used by {other}")
        self._drive_users[drive_id] = user
        if self._creating_qdev is not None:
            self.drive_qdevs[drive_id] = self._creating_qdev
        return cfg

    def netdev(self, netdev_id: str) -> Any:
        """The network backend ``--netdev TYPE,id=netdev_id``, made by its plugin's factory
        for the device being created; one device per netdev, as QEMU."""
        user = self._creating
        if netdev_id in self._netdevs:
            raise ConfigError(f"{user}: netdev {netdev_id} is already used by {self._netdevs[netdev_id][1]}")
        cfg = self.spec.netdev_configs.get(netdev_id)
        if cfg is None:
            known = ", ".join(sorted(self.spec.netdev_configs)) or "none"
            raise ConfigError(f"netdev {netdev_id!r} not found (defined netdevs: {known})")
        backend = self.backends.get("netdev", netdev_id)
        if backend is None:
            backend = self._make_backend("netdev", cfg)
        self._netdevs[netdev_id] = (backend, user)
        return backend

    def _backend_type(self, kind: str, cfg: Any) -> Any:
        reg = self.host.backends.get((kind, cfg.backend))
        if reg is None or reg.factory is None:
            known = ", ".join(sorted(n for k, n in self.host.backends if k == kind)) or "none installed"
            what = {"netdev": "network", "chardev": "character device"}[kind]
            from .providers import hint

            raise ConfigError(f"--{kind} {cfg.backend},id={cfg.id}: no plugin provides this {what} backend"
                              f"{hint(kind, cfg.backend)} (available: {known})")
        return reg

    def _make_backend(self, kind: str, cfg: Any) -> Any:
        from .config import parse_properties

        made = self.backends.get(kind, cfg.id)  # made once per run, kept across guest resets
        if made is not None:
            return made
        reg = self._backend_type(kind, cfg)
        props = parse_properties(f"{kind} {cfg.id} ({cfg.backend})", reg.properties, cfg.props)
        b = self.backends
        if kind == "chardev" and cfg.backend == "stdio":
            if b.stdio_user is not None:
                raise ConfigError(f"cannot use stdio for both {b.stdio_user} and chardev {cfg.id}")
            b.stdio_user = f"chardev {cfg.id}" if not cfg.id.startswith("serial") else f"serial port {cfg.id[6:]}"
        # the factory's context follows the run: the backend outlives this boot's machine
        backend = reg.factory(b.ctx, cfg.id, props)
        b.add(kind, cfg.id, backend)
        return backend

    @property
    def virtio_transports(self) -> list[Any]:
        """The placed virtio-mmio slots (base, irq, transport), in placement order."""
        return self._virtio.slots if self._virtio is not None else []

    def add_virtio_device(self, backend: Any, name: str, transport: Any) -> Any:
        """Wrap a :class:`microvm.virtio.VirtioBackend` in a virtio-mmio transport and place it
        in the next free slot (QEMU's order: the highest first). Returns the slot."""
        assert self.memory is not None, "virtio devices are created in create_devices"
        if self._virtio is None:
            from .virtio.slots import VirtioSlots

            self._virtio = VirtioSlots(self)
        return self._virtio.add(backend, name, transport.legacy)

    @property
    def timers(self) -> Any:
        """The :class:`microvm.timers.TimerService` for devices with timed interrupts."""
        if self._timers is None:
            from .timers import TimerService

            self._timers = TimerService()
        return self._timers

    def request_extint(self) -> None:
        """The 8259's INTR went high (split irqchip): have the boot vCPU take the vector from
        the irqchip's ``extint_source()`` through KVM_INTERRUPT when it can accept one, as
        the LAPIC's LINT0 (ExtINT, virtual wire) would. Any thread may call this."""
        if self.threads:
            self.threads[0].extint_pending = True
            self.threads[0].kick()

    def add_exit_handler(self, exit_reason: int, handler: Callable[[Any], None]) -> None:
        """Handle a frequent KVM exit on the vCPU thread without a hook call per exit."""
        if exit_reason in self.exit_handlers:
            raise ConfigError(f"KVM exit {exit_reason} already has a handler")
        self.exit_handlers[exit_reason] = handler

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def chardev(self, chardev_id: str) -> Chardev:
        """A frontend on the ``--chardev BACKEND,id=ID`` backend for the device being
        created (the same one when that device asks again); a second device is refused
        unless the chardev has ``mux=on``, as QEMU does."""
        if chardev_id in self.spec.monitor_chardevs:
            raise ConfigError(f"{self._creating}: chardev {chardev_id} is used by a monitor (--mon)")
        cfg = self.spec.chardev_configs.get(chardev_id)
        if cfg is None:
            known = ", ".join(sorted(self.spec.chardev_configs)) or "none"
            raise ConfigError(f"{self._creating}: chardev {chardev_id!r} not found (defined chardevs: {known})")
        return self._frontend(cfg, self._creating, self._creating_key)

    def chardev_list(self) -> list[tuple[str, str, bool]]:
        """(label, filename, frontend open) of each host character device, for QMP's
        ``query-chardev``: the ``--chardev`` ones and the serial ports' own (``serial0``),
        as QEMU names them, with QEMU's filenames (``stdio``, ``unix:PATH,server=on``,
        ``pty:/dev/pts/N``...; a socket without a peer is ``disconnected:...``); a
        frontend is open once its device has its side open (a virtio serial port: while the
        guest has it open). A shorthand no port asked for is listed as not open."""
        out = []
        monitors = self.spec.monitor_chardevs
        configs = [c for c in self.spec.chardev_configs.values() if c.id not in monitors]
        configs += [s.chardev for s in self.spec.serial_configs if s.chardev is not None]
        for cfg in configs:
            dev = self.backends.get("chardev", cfg.id)
            filename, is_open = cfg.backend, False
            info = getattr(dev, "info", None)
            if callable(info):
                try:
                    described = info()
                    if hasattr(described, "filename"):  # a CharBackend's ChardevInfo
                        filename, is_open = described.filename, bool(described.frontend_open)
                    else:  # a plugin's backend describing itself with a mapping
                        filename, is_open = str(described.get("filename", filename)), True
                except Exception:
                    log.debug("chardev %s: info() failed", cfg.id, exc_info=True)
            elif dev is not None:
                is_open = True
            out.append((cfg.id, filename, is_open))
        return out

    def serial_chardev(self, index: int) -> Chardev | None:
        """The frontend of serial port ``index`` on its ``-serial`` chardev (None for ``none``)."""
        if index >= len(self.spec.serial_configs):
            return None
        s = self.spec.serial_configs[index]
        if s.ref is not None:
            cfg = self.spec.chardev_configs[s.ref]  # checked by MachineSpec.validate
        elif s.chardev is not None:
            cfg = s.chardev
        else:
            return None
        return self._frontend(cfg, f"serial port {index}", ("serial", index))

    def _frontend(self, cfg: Any, owner: str, key: Any) -> Any:
        fe = self._frontends.get((cfg.id, key))
        if fe is not None:
            return fe
        backend = self._make_backend("chardev", cfg)
        attach = getattr(backend, "attach", None)
        if attach is not None:
            fe = attach(owner)
        else:  # a plugin's backend that is not a CharBackend: one user, the object itself
            for (ident, _), other in self._frontends.items():
                if ident == cfg.id:
                    raise ConfigError(f"{owner}: chardev {cfg.id!r} is already in use")
            fe = backend
        self._frontends[(cfg.id, key)] = fe
        return fe

    def _open_chardevs(self) -> None:
        """Make every ``--chardev`` backend now, used or not (as QEMU does), so a socket
        that cannot be bound is an error before the guest runs. The first ``--serial``
        shorthand is made when its port asks (a default ``stdio`` nobody uses claims
        nothing); the further ones now, as QEMU makes a chardev for every ``-serial``
        although its microvm has one serial port (``serial1`` of ``-serial null -serial
        pty`` announces its pty). A ``--mon``'s socket is the QMP server's own, not a backend."""
        monitors = self.spec.monitor_chardevs
        for cfg in self.spec.chardev_configs.values():
            if cfg.id not in monitors:
                self._make_backend("chardev", cfg)  # once per run: a second boot finds it made
        for s in self.spec.serial_configs[1:]:
            if s.chardev is not None:
                self._make_backend("chardev", s.chardev)

    def _warn_unused_serials(self) -> None:
        """A ``--serial`` beyond the first that no device took: QEMU's microvm has one serial
        port (COM1), so QEMU leaves it unconnected without a word; say so once."""
        for i, s in enumerate(self.spec.serial_configs):
            if i == 0 or not s.present or ("serial", i) in {key for _, key in self._frontends}:
                continue
            label = s.ref if s.ref is not None else f"serial{i}"
            log.warning("--serial %s: microvm has one serial port (COM1): serial port %d is not created "
                        "and chardev %s has no device, as in QEMU", s.text, i, label)

    # ------------------------------------------------------------------ construction
    def build(self) -> None:
        from .boot import cpu as bootcpu
        from .context import VcpuView
        from .kvm import Kvm

        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.add_cleanup(self.kvm.close)
        self.add_cleanup(self.vm.close)
        try:
            self.memory = GuestMemory(self.ram_size, merge=bool(self.options.get("mem-merge", True)),
                                      dump=bool(self.options.get("dump-guest-core", True)))
        except (OSError, MemoryError) as e:  # -m larger than the host can map
            why = getattr(e, "strerror", None) or "Cannot allocate memory"
            raise ConfigError(f"cannot set up {self.ram_size >> 20} MiB of guest memory: {why}") from None
        self.add_cleanup(self.memory.close)
        if self.images.bios is not None:
            from .boot.firmware import map_firmware

            map_firmware(self.memory, self.images.bios)
        for slot, (gpa, size, host) in enumerate(self.memory.memslots()):
            self.vm.set_user_memory_region(slot, gpa, size, host)
        self._vmx_housekeeping()
        self.supported_cpuid = self.kvm.supported_cpuid()
        self._create_irqchip()
        # every netdev exists from the start, used or not (QEMU creates them all; a tap's
        # errors are then found before the guest runs), once per run
        for cfg in self.spec.netdev_configs.values():
            if self.backends.get("netdev", cfg.id) is None:
                self._make_backend("netdev", cfg)
        self._open_chardevs()
        self.hook.create_devices(ctx=self.ctx)
        self._create_user_devices()
        if self.boot.firmware is not None and self.boot.kernel is not None and self.boot.handled_by is None:
            raise ConfigError("--bios with --kernel: no installed plugin hands the kernel to the firmware "
                              "(install microvm-fw-cfg, or boot the kernel directly without --bios)")
        if self.boot.fw_cfg_files and self.boot.fw_cfg_files_taken_by is None:  # QEMU's words
            raise ConfigError(f"--fw-cfg {self.boot.fw_cfg_files[0][0]}: fw_cfg device not available "
                              "(install microvm-fw-cfg)")
        if self.boot.firmware is not None and self.smp > 1 and self.irqchip is None:
            raise ConfigError(f"--smp {self.smp} with --bios: the other vCPUs must wait for INIT/SIPI in an "
                              "in-kernel LAPIC, and no irqchip plugin is installed")
        if not self.rebooted:
            for nid in self.spec.netdev_configs:
                if nid not in self._netdevs:
                    log.warning("netdev %s has no peer", nid)  # QEMU's words
            self._warn_unused_serials()
        tsc_deadline = bool(self.kvm.check_extension("KVM_CAP_TSC_DEADLINE_TIMER"))
        for i, apic_id in enumerate(self.apic_ids):
            vcpu = self.vm.create_vcpu(apic_id)
            self.vcpus.append(vcpu)
            self.vcpu_views.append(VcpuView(vcpu))
            self.add_cleanup(vcpu.close)
            entries = bootcpu.edit_cpuid(self.supported_cpuid, apic_id, self.smp, tsc_deadline, self.spec.topology)
            self.hook.cpuid(ctx=self.ctx, vcpu_id=apic_id, entries=entries)
            if self.spec.cpu_features:  # -cpu host,+x,-y: the user has the last word
                from .boot.cpufeatures import apply_features

                apply_features(entries, self.spec.cpu_features, self.supported_cpuid, warn=log.warning if i == 0 else None)
            vcpu.set_cpuid(entries)
            vcpu.set_msrs(bootcpu.boot_msrs())
            fpu = vcpu.get_fpu()
            bootcpu.setup_fpu(fpu)
            vcpu.set_fpu(fpu)
            self.hook.configure_vcpu(ctx=self.ctx, vcpu=self.vcpu_views[i])
        self._load_kernel()
        self._built = True

    def _vmx_housekeeping(self) -> None:
        """Reserve the pages VMX needs for real-mode emulation, as QEMU does (harmless on AMD)."""
        from .kvm import KvmError

        try:
            self.vm.set_tss_addr(layout.KVM_TSS_ADDR)
            self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        except KvmError as e:
            log.debug("VMX housekeeping skipped: %s", e)

    def _create_irqchip(self) -> None:
        name = self.options.get("kernel-irqchip")
        chips = self.host.irqchips
        if name is None:  # QEMU microvm's default is split; fall back to what is installed
            name = next((n for n in ("split", "on") if n in chips), None)
            if name is None:
                log.info("no irqchip plugin installed: the machine has no interrupt controller")
                return
        reg = chips.get(name)
        if reg is None or reg.factory is None:
            from .providers import hint

            raise ConfigError(f"kernel-irqchip={name}: not available{hint('irqchip', name)}; "
                              f"installed: {', '.join(sorted(chips)) or 'none'}")
        self.irqchip = reg.factory(self.ctx)
        self.add_cleanup(self.irqchip.close)
        from .kvm import lib

        # the guest's EOI of a level-triggered vector, routed by the split irqchip's MSI
        # routes (KVM_CAP_SPLIT_IRQCHIP); KVM's own IOAPIC never exits for it
        self.add_exit_handler(lib.KVM_EXIT_IOAPIC_EOI, lambda vcpu: self.irqchip.eoi(vcpu.run.eoi.vector))

    def _create_user_devices(self) -> None:
        """One device per ``--device`` (properties converted in ``__init__``); virtio types
        are placed by the core with the transport the user chose."""
        from .config import VirtioTransportConfig

        anonymous = 0
        for index, (cfg, reg, props) in enumerate(self._device_props):
            self._creating = f"--device {cfg.driver}" + (f",id={props['id']}" if props["id"] else "")
            self._creating_key = ("device", index)
            # the device's QOM path as QEMU 7.2's query-block shows it
            self._creating_qdev = props["id"] or f"/machine/peripheral-anon/device[{anonymous}]"
            anonymous += 0 if props["id"] else 1
            try:
                made = reg.factory(self.ctx, props)
            finally:
                self._creating = "a device"
                self._creating_key = ("hook",)
                self._creating_qdev = None
            if not reg.virtio:
                continue
            from .virtio.backend import VirtioBackend

            if not isinstance(made, VirtioBackend):
                raise PluginError(f"plugin {reg.plugin}: the {cfg.driver} factory returned {made!r}, not a VirtioBackend")
            try:
                if props["id"]:
                    if self._name_taken(props["id"]):
                        raise ConfigError(f"--device {cfg.driver},id={props['id']}: another device is named {props['id']}")
                    name = props["id"]
                else:
                    name = self._unique_name(made.label or cfg.driver)
                self.add_virtio_device(made, name, VirtioTransportConfig(legacy=props["force-legacy"]))
            except BaseException:
                made.close()
                raise

    def _name_taken(self, name: str) -> bool:
        """Whether a placed device already has ``name`` (names key the counters)."""
        return any(m.name == name for bus in (self.pio_bus, self.mmio_bus) for m in bus.mappings())

    def _unique_name(self, base: str) -> str:
        """``base``, or ``base.1``, ``base.2``... when devices share a default name."""
        name, n = base, 0
        while self._name_taken(name):
            n += 1
            name = f"{base}.{n}"
        return name

    def _kernel_cmdline(self) -> str:
        """The user's words, the ``kernel_cmdline`` hooks', and on an emulating host the
        words that keep Linux off instructions it cannot run."""
        words = [self.spec.append] if self.spec.append else []
        for contrib in self.hook.kernel_cmdline(ctx=self.ctx):
            words.extend(contrib or [])
        if self.emulation_assist and host_is_emulating():
            extra = [w for w in EMULATING_HOST_CMDLINE if w not in self.spec.append.split()]
            if extra:
                log.info("host KVM is kvm_pvm (emulating): adding %r to the guest command line", " ".join(extra))
                words.extend(extra)
        return " ".join(w for w in words if w)

    def _load_kernel(self) -> None:
        from .boot import cpu as bootcpu
        from .boot import loader, mptable
        from .boot.e820 import e820_map

        assert self.memory is not None
        if self.images.bios is not None:
            self._firmware_boot()
            return
        self.cmdline = self.boot.cmdline = self._kernel_cmdline()
        e820 = e820_map([(r.gpa, r.size) for r in self.memory.regions])
        self.entry = loader.load(self.memory, self.images, self.cmdline, e820)
        entries: list[Any] = [mptable.Bus(mptable.ISA_BUS_ID, "ISA")]
        if self.irqchip is not None:
            entries.extend(self.irqchip.mptable_entries())
        for contrib in self.hook.mptable_entries(ctx=self.ctx):
            entries.extend(contrib or [])
        self.mptable = entries
        self.memory.write(layout.MPTABLE_ADDR, mptable.build(layout.MPTABLE_ADDR, entries))
        bootcpu.write_gdt_and_page_tables(self.memory)  # PVH enters with paging off; harmless
        bsp = self.vcpus[0]
        sregs = bsp.get_sregs()
        bootcpu.setup_sregs(sregs, self.entry.mode)
        bsp.set_sregs(sregs)
        regs = bsp.get_regs()
        bootcpu.setup_regs(regs, self.entry.mode, self.entry.rip, self.entry.boot_info)
        bsp.set_regs(regs)

    def _firmware_boot(self) -> None:
        """``--bios``: the firmware is mapped (build); an ELF kernel's segments go to RAM as
        QEMU's ``load_elfboot`` puts them, everything else reaches the firmware through the
        plugin that took the boot over (fw_cfg). The boot vCPU starts at the reset vector;
        the others wait for INIT/SIPI. No MP table, e820 or page tables are written: the
        firmware builds its own (``mptable_entries`` is not called)."""
        from .boot import firmware, loader
        from .kvm import lib

        assert self.memory is not None
        if self.boot.kernel is not None:
            self.cmdline = self.boot.cmdline = self._kernel_cmdline()
            raw = len(self.cmdline.encode())
            if self.boot.kernel_kind == "elf":
                loader.load_elf(self.memory, self.images.kernel)
                limit = loader.PVH_CMDLINE_MAX - 1
            else:
                hdr = loader.parse_setup_header(self.images.kernel)
                limit = hdr.cmdline_size if hdr.version >= 0x206 else 255
            if raw > limit:
                raise BootError(f"kernel command line is {raw} bytes; this kernel accepts at most {limit}")
        bsp = self.vcpus[0]
        sregs = bsp.get_sregs()
        firmware.setup_reset_sregs(sregs)
        bsp.set_sregs(sregs)
        regs = bsp.get_regs()
        firmware.setup_reset_regs(regs)
        bsp.set_regs(regs)
        if self.irqchip is not None:
            bsp.set_mp_state(lib.KVM_MP_STATE_RUNNABLE)
            for ap in self.vcpus[1:]:
                ap.set_mp_state(lib.KVM_MP_STATE_UNINITIALIZED)
        log.info("firmware boot: %s (%d KiB at %#x, last %d KiB at %#x)", self.images.bios.path,
                 len(self.images.bios.data) >> 10, self.images.bios.base, self.images.bios.isa_size >> 10,
                 firmware.ONE_MIB - self.images.bios.isa_size)

    # ------------------------------------------------------------------ lifecycle
    @property
    def stopping(self) -> bool:
        """The machine is ending (request_stop); vCPU loops leave, parked ones too."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        with self.pause_cond:
            self._stopping = value
            self._update_hold()
            self.pause_cond.notify_all()

    def _update_hold(self) -> None:
        """Recompute ``hold`` from the flags it stands for; under pause_cond."""
        self.hold = self._stopping or self.paused or self._held

    def request_stop(self, status: int, reason: str, cause: str | None = None) -> None:
        """Stop the machine (from any thread). The first reason wins. ``cause`` is QEMU's
        ShutdownCause for the SHUTDOWN event a QMP client gets when this ends the run
        (default: ``guest-shutdown`` for status 0, ``host-error`` otherwise)."""
        with self.pause_cond:
            first = not self._stopping
            if first:
                self.exit_status = status
                self.stop_reason = reason
                self.stop_cause = cause or ("host-error" if status else "guest-shutdown")
                self._stopping = True
                self._update_hold()
            self.pause_cond.notify_all()  # parked vCPUs leave too
        if first:
            log.log(40 if status else 20, "stopping: %s", reason)  # ERROR / INFO
        self._wake()
        if self._closed:
            return  # the vCPUs' kvm_run pages are unmapped: nothing to kick
        for t in self.threads:
            if t is not threading.current_thread():
                t.kick()

    def _wake(self) -> None:
        fd = self._wake_w
        if fd < 0:
            return
        try:
            os.write(fd, b"x")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    # What the guest does is reported to the run's Lifecycle, which applies QEMU's rules on
    # the main thread (see microvm.lifecycle): the reporting vCPU does not enter the guest
    # again until then.
    def guest_reset(self, reason: str) -> None:
        """The guest asked for a reset (triple fault): reboot (the machine is rebuilt), or
        with --no-reboot a shutdown, as QEMU does (see Lifecycle)."""
        self.lifecycle.post(self, "guest_reset", reason)

    def guest_shutdown(self) -> None:
        """The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN)."""
        self.lifecycle.post(self, "guest_shutdown")

    def guest_panicked(self, detail: str) -> None:
        """The guest reported a panic (KVM_SYSTEM_EVENT_CRASH, a pvpanic device)."""
        self.lifecycle.post(self, "guest_panicked", detail)

    def guest_crashloaded(self) -> None:
        """The guest loaded a crash kernel after a panic (pvpanic CRASH_LOADED)."""
        self.lifecycle.guest_crashloaded(self)

    def internal_error(self, message: str) -> None:
        """A KVM internal error or an exit nobody handles: with a QMP monitor the VM stays in
        ``internal-error`` (message and register dump in the log), else it ends with status 1."""
        if not self.lifecycle.monitored:
            self.request_stop(1, message, "host-error")
            return
        self.lifecycle.post(self, "internal_error", message)

    # ------------------------------------------------------------------ pause / resume
    def vcpu_started(self) -> None:
        with self.pause_cond:
            self.vcpus_active += 1

    def vcpu_finished(self) -> None:
        with self.pause_cond:
            self.vcpus_active -= 1
            self.pause_cond.notify_all()

    def hold_vcpus(self) -> None:
        """A guest event waits for the main thread: vCPUs park at their next exit (the
        reporting one at once) until :meth:`release_vcpus`."""
        with self.pause_cond:
            self._held = True
            self._update_hold()

    def release_vcpus(self) -> None:
        """The guest events are handled: vCPUs run again unless paused or stopping."""
        with self.pause_cond:
            self._held = False
            self._update_hold()
            self.pause_cond.notify_all()

    def pause(self, wait: bool = True) -> None:
        """Stop the guest where it is: every vCPU out of KVM_RUN and parked, the timer thread
        idle, every virtio worker parked and each backend paused (no guest memory written
        from here on), and kvmclock saved (QEMU's kvmclock_vm_state_change). ``wait``: wait
        until each vCPU has parked (not from a vCPU thread, which parks when it returns).
        Any thread; a no-op when already paused or once the machine is closed."""
        with self._run_lock:
            if self._closed:
                return
            with self.pause_cond:
                if self.paused:
                    return
                self.paused = True
                self._update_hold()
            me = threading.current_thread()
            for t in self.threads:
                if t is not me:
                    t.kick()
            if wait and not any(t is me for t in self.threads):
                with self.pause_cond:
                    if not self.pause_cond.wait_for(lambda: self.parked >= self.vcpus_active or self._stopping,
                                                    PAUSE_TIMEOUT):
                        log.warning("pause: %d of %d vCPUs still busy after %.0f s", self.vcpus_active - self.parked,
                                    self.vcpus_active, PAUSE_TIMEOUT)
            if self._timers is not None:
                self._timers.pause()
            if self._virtio is not None:
                self._virtio.pause()
            if self._guest_ran:
                self._save_clock()
            self._quiesced = True

    def resume(self) -> None:
        """Undo :meth:`pause`: kvmclock restored, devices and timers resumed, vCPUs released.
        A no-op when not paused or once the machine is closed."""
        with self._run_lock:
            if self._closed:
                return
            with self.pause_cond:
                if not self.paused:
                    return
            if self._quiesced:
                self._quiesced = False
                self._restore_clock()
                if self._virtio is not None:
                    self._virtio.resume()
                if self._timers is not None:
                    self._timers.resume()
            with self.pause_cond:
                self.paused = False
                self._update_hold()
                self._guest_ran = True
                self.pause_cond.notify_all()

    def mark_running(self) -> None:
        """The vCPUs start running (not paused): a later pause saves the guest's clock."""
        self._guest_ran = True

    def _save_clock(self) -> None:
        """The guest's kvmclock now, set again on resume (microvm.guestclock, as QEMU)."""
        if self.vm is not None:
            from . import guestclock

            self._saved_clock = guestclock.save(self.vm, self.vcpus, self.memory)

    def _restore_clock(self) -> None:
        clock, self._saved_clock = self._saved_clock, None
        if clock is not None and self.vm is not None:
            from . import guestclock

            guestclock.restore(self.vm, self.vcpus, clock)

    def triple_fault(self, vcpu: Any) -> None:
        """KVM_EXIT_SHUTDOWN. A guest reset, except when the vCPU was executing the
        ``--bios`` image itself: a firmware that triple-faults would do it again after every
        reset, so the machine stops (status 1) with the register dump instead."""
        fw = self.images.bios
        if fw is not None:
            from .vcpu import register_dump

            try:
                regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            except OSError:
                regs = sregs = None
            if regs is not None and not sregs.cr0 & (1 << 31):   # paging off: linear = physical
                pc = (sregs.cs.base + regs.rip) & 0xFFFFFFFF
                from .boot.firmware import ONE_MIB

                if fw.base <= pc or ONE_MIB - fw.isa_size <= pc < ONE_MIB:
                    self.request_stop(1, f"the firmware {fw.path} triple-faulted on vCPU {vcpu.id} (not rebooting into it "
                                         f"again)\n" + register_dump(vcpu, self.memory), "guest-reset")
                    return
        self.guest_reset("triple fault")

    def signal_thread(self, thread: Any) -> None:
        if _kick_handler_installed and thread.ident is not None and thread.is_alive():
            try:
                signal.pthread_kill(thread.ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def _install_termination_handlers(self) -> None:
        """SIGTERM/SIGHUP stop the machine cleanly (the terminal is restored, disks closed), as
        QEMU does; only possible from the main thread. See :func:`_on_termination_signal`."""
        global _current
        _current = self
        if threading.current_thread() is not threading.main_thread():
            return
        # SIGINT too (a Ctrl-C on a plain -serial stdio terminal, kill -INT): as Python's
        # KeyboardInterrupt it landed wherever the main thread was (between a Thread's
        # creation and start, inside a lock), which lost the signal, ended the run with an
        # internal error, or tore the machine down under a running vCPU (a segfault)
        self._prev_sigint = signal.getsignal(signal.SIGINT)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            if signal.getsignal(sig) is not _on_termination_signal:
                signal.signal(sig, _on_termination_signal)

    def _wait_for_stop(self) -> None:
        """The run's main loop (QEMU's main_loop_should_exit): sleep until a stop is
        requested, handling on the way what vCPUs reported (the Lifecycle's requests) and
        host signals."""
        import select

        self.loop_running = True
        try:
            self.lifecycle.process_requests(self)  # posted before the loop ran
            while not self.stopping:
                try:
                    select.select([self._wake_r], [], [])
                    while os.read(self._wake_r, 64):
                        pass
                except BlockingIOError:
                    pass
                if _terminating is not None:
                    self._terminated(_terminating)
                self.lifecycle.process_requests(self)
        finally:
            self.loop_running = False

    def _terminated(self, signum: int) -> None:
        """A host signal ends the run: SHUTDOWN host-signal to QMP clients (outside the
        signal handler), then the stop."""
        self.lifecycle.host_signal(self, signum)

    def run(self) -> int:
        """Boot and run until the guest stops; returns the exit status. A Machine runs once:
        its devices and KVM objects are torn down when it stops (a reboot builds a new one,
        as :func:`run_spec` does), so a second call raises :class:`MicrovmError`."""
        from .vcpu import VcpuThread

        if self._ran:
            raise MicrovmError("this Machine has already run; build a new Machine(spec) to boot again")
        self._ran = True
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._install_termination_handlers()
        try:
            if not self._built:
                self.build()
            if not install_kick_handler():
                log.warning("Machine.run outside the main thread before microvm.machine was imported in it: "
                            "a vCPU halted in the guest may take seconds to stop")
            if _terminating is not None:  # arrived while this machine was being built
                self._terminated(_terminating)
                return self.exit_status
            # chardev I/O runs from here; the first boot waits for socket servers' clients
            self.backends.start_chardevs(lambda: self.stopping or _terminating is not None)
            if self.stopping or _terminating is not None:
                return self.exit_status
            self.hook.machine_start(ctx=self.ctx)
            self.threads = [VcpuThread(self, v) for v in self.vcpus]
            # from here guest events go to this thread's loop (_wait_for_stop), which handles
            # what was posted before it got there
            self.loop_running = True
            self.lifecycle.machine_starting(self)  # pauses it for -S, or a reset while not running
            if self._virtio is not None:
                self._virtio.start()
            if self._timers is not None:
                self._timers.start()
            for t in self.threads:
                self.metrics.add_source("vcpus", t.name, t.exit_counts)
                t.start()
            self.lifecycle.machine_started(self)  # QMP monitors answer from here on
            try:
                self._wait_for_stop()
            except KeyboardInterrupt:  # run() outside the main thread: the handler is not ours
                self._terminated(signal.SIGINT)
        finally:
            self._stop_vcpu_threads()
            self.close()
            self._restore_sigint()
        return self.exit_status

    def _restore_sigint(self) -> None:
        """SIGINT goes back to what it was (Python's KeyboardInterrupt for a program or a test
        run embedding microvm): the machine only needs it while it runs."""
        prev = getattr(self, "_prev_sigint", None)
        if prev is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, prev)

    def _stop_vcpu_threads(self) -> None:
        """Whatever ends :meth:`run` (an exception included), the vCPU threads leave KVM_RUN
        before the machine is torn down, which unmaps their kvm_run pages."""
        live = [t for t in self.threads if t.is_alive()]
        if not live:
            return
        if not self.stopping:
            self.request_stop(1, "the run ended unexpectedly", "host-error")
        for t in live:
            t.join(timeout=5)
            if t.is_alive():
                log.warning("vCPU thread %s did not stop", t.name)

    def close(self) -> None:
        self.lifecycle.machine_closing(self)  # QMP commands go to no torn-down machine
        with self._run_lock:  # after a pause or resume in progress, and before any other
            self._close()

    def _close(self) -> None:
        if not self._stopped_hooks and self._built:
            self._stopped_hooks = True
            try:
                self.hook.machine_stop(ctx=self.ctx)
            except Exception:
                log.exception("machine_stop hook failed")
        if self._timers is not None:
            self._timers.stop()
        if self._virtio is not None:
            try:
                self._virtio.close()  # closes the backends' files and releases their locks
            except Exception:
                log.exception("closing virtio devices failed")
        if self._frontends:  # this boot's devices let go of the chardevs
            from .chardev.base import CharFrontend

            for fe in self._frontends.values():
                if isinstance(fe, CharFrontend):
                    fe.close()
            self._frontends.clear()
        if self._owns_backends:
            self.backends.close()
        alive = any(t.is_alive() for t in self.threads)
        with self.kick_lock:  # no kick writes to a kvm_run page from here on
            self.torn_down = True
        self._closed = True  # and request_stop kicks no vCPU (their pages go away)
        for fn in reversed(self._cleanups):
            if alive and (fn == getattr(self.memory, "close", None) or getattr(fn, "__self__", None) in self.vcpus):
                continue  # a stuck vCPU may still touch guest RAM and its kvm_run page: leave them
            try:
                fn()
            except Exception:
                log.debug("cleanup failed", exc_info=True)
        self._cleanups.clear()
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1  # first: a late _wake must not write to a reused fd
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def run_spec(spec: MachineSpec, host: Any = None, ready: Callable[[], None] | None = None) -> int:
    """Run a machine, rebuilding it after each guest reset unless --no-reboot; with
    ``spec.metrics``, write the counters (of every boot) there at the end. ``ready`` is
    called once, when the first machine is built and about to run (``-daemonize`` detaches
    there, as QEMU does after its machine is created).

    The :class:`~microvm.lifecycle.Lifecycle` (run state, QMP monitors) lives here, across
    the machines of the run: its monitors are bound once the first Machine has checked the
    options, before any vCPU runs, and closed when the run ends."""
    from .lifecycle import Lifecycle
    from .metrics import Metrics

    from .backends import HostBackends

    global _terminating
    _terminating = None  # a signal that ended an earlier run in this process is not this run's
    images = None
    metrics = Metrics()
    lifecycle = Lifecycle(spec)
    backends = HostBackends()  # the host side outlives each boot's machine
    try:
        while True:
            m = Machine(spec, host, images, metrics, lifecycle=lifecycle, backends=backends)
            if images is None:
                lifecycle.start_monitors()
            images = m.images
            if ready is not None:
                try:
                    m.build()
                except BaseException:
                    lifecycle.machine_ended(m, final=True)
                    m.close()
                    raise
                ready()
                ready = None
            try:
                status = m.run()
            finally:
                if _terminating is not None:  # (also one that came while m was already stopping)
                    lifecycle.host_signal(None, _terminating)
                reboot = lifecycle.machine_ended(m, final=_terminating is not None)
            if not reboot:
                return status
            log.info("rebooting")
    except KeyboardInterrupt:
        # Ctrl-C outside a machine's run (waiting for a wait=on QMP client, before the
        # handler is ours): the run ends as on a SIGINT while running
        _terminating = signal.SIGINT
        lifecycle.host_signal(None, signal.SIGINT)
        return 0
    finally:
        if _terminating == signal.SIGINT:
            say("microvm: terminating on signal 2\n")  # QEMU's line for a Ctrl-C / kill -INT
        lifecycle.run_ended()
        lifecycle.close_monitors()
        backends.close()
        if spec.metrics and images is not None:
            try:
                metrics.write_json(spec.metrics)
            except OSError as e:
                log.error("cannot write metrics to %s: %s", spec.metrics, e.strerror)
