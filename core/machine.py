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
from .chardev import Chardev, FdChardev, NullChardev, stdio_chardev
from .errors import ConfigError, MicrovmError
from .memory import GuestMemory
from .spec import MachineSpec, parse_props
from .log import get_logger

log = get_logger("microvm.machine")

if TYPE_CHECKING:
    from .bus.protocol import BusDevice
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
#: Guest command-line words that keep Linux off instructions an emulating host cannot run
#: (HOST.md: no XSAVE; clearcpuid 151 = POPCNT, 308 = SMAP, by number since names need
#: CONFIG_X86_FEATURE_NAMES).
EMULATING_HOST_CMDLINE = ["noxsave", "clearcpuid=151,308"]


def host_is_emulating() -> bool:
    """True on hosts whose KVM emulates guest kernel code (kvm_pvm, see HOST.md)."""
    return os.path.exists("/sys/module/kvm_pvm")


class Machine:
    """One boot of one VM. Build with :meth:`build` (done by :meth:`run` if needed)."""

    def __init__(self, spec: MachineSpec, host: Any = None, images: Any = None) -> None:
        from .boot.loader import read_images
        from .plugins import PluginHost, plugin_host

        spec.validate()
        self.spec = spec
        if host is None:
            host = PluginHost(extra=spec.extra_plugins) if spec.extra_plugins else plugin_host()
        self.host = host
        self.hook = host.hook
        self.options: dict[str, Any] = host.options.parse_machine(spec.machine)
        if spec.kernel is None:
            raise ConfigError("no kernel given (--kernel FILE)")
        #: kernel and initrd bytes (microvm.boot.loader.BootImages), checked before KVM is touched
        self.images = images or read_images(spec.kernel, spec.initrd)
        #: a machine rebuilt after a guest reset (run_spec passes the images on)
        self.rebooted = images is not None
        self.smp = spec.smp
        self.ram_size = spec.mem_size
        self.devices: dict[str, Any] = {}
        self.drives = spec.parsed("drive")
        self.chardev_specs = spec.parsed("chardev")
        self.netdev_specs = spec.parsed("netdev")
        self._chardevs: dict[str, Chardev] = {}
        self._stdio_user: str | None = None
        self.stopping = False
        self.exit_status = 0
        self.stop_reason = ""
        self.reset_requested = False
        self._stop_event = threading.Event()
        self._cleanups: list[Callable[[], None]] = []
        self.threads: list[Any] = []
        self.vcpus: list[Any] = []
        self.irqchip: Any = None
        self.irqchip_mode: str | None = None
        self.kvm: Any = None
        self.vm: Any = None
        self.memory: GuestMemory | None = None
        self.pio_bus = Bus("pio", unmapped_read=0xFF, limit=1 << 16)
        self.mmio_bus = Bus("mmio", unmapped_read=0x00)  # QEMU's unassigned_mem_read: 0
        self.cmdline = ""
        self.entry: Any = None
        self.mptable: list[Any] = []
        self.emulation_assist = bool(self.options.get("x-emulation-assist", True))
        self.ioapic_id = 0
        self._virtio: Any = None  # microvm.virtio.slots.VirtioSlots, imported on first use
        self._timers: Any = None  # microvm.timers.TimerService, created on first use
        #: the PIC's INTR line in split mode: see request_extint()
        self.extint_source: Any = None
        #: KVM exit reason -> handler(vcpu), for exits a device model owns (the IOAPIC's EOI):
        #: dispatched directly by the vCPU loop, so they stay off pluggy's path
        self.exit_handlers: dict[int, Callable[[Any], None]] = {}
        self._virtio_legacy: bool | None = None
        self.supported_cpuid: list[dict[str, int]] = []
        self._built = False
        self._stopped_hooks = False

    # ------------------------------------------------------------------ plugin-facing API
    def option(self, name: str) -> Any:
        """The parsed value of machine option ``name``; None when no plugin declares it."""
        return self.options.get(name)

    def add_pio_device(self, device: BusDevice, base: int, length: int, name: str) -> None:
        self.pio_bus.insert(device, base, length, name)

    def add_mmio_device(self, device: BusDevice, base: int, length: int, name: str) -> None:
        self.mmio_bus.insert(device, base, length, name)

    def irq(self, gsi: int) -> Any:
        """The interrupt line for GSI ``gsi`` from the active irqchip."""
        if self.irqchip is None:
            # no irqchip plugin installed: devices still work, polled (as with a masked line)
            from .irq import NullIrqLine

            return NullIrqLine(gsi)
        return self.irqchip.line(gsi)

    def isa_irq_entry(self, irq: int) -> Any:
        """The MP table I/O interrupt entry routing ISA ``irq`` to the active IOAPIC."""
        from .boot.mptable import IoInterrupt

        pin = self.irqchip.isa_pin(irq) if hasattr(self.irqchip, "isa_pin") else irq
        return IoInterrupt(src_irq=irq, dst_ioapic=self.ioapic_id, dst_pin=pin)

    def drive(self, drive_id: str) -> dict[str, str]:
        try:
            return self.drives[drive_id]
        except KeyError:
            known = ", ".join(sorted(self.drives)) or "none"
            raise ConfigError(f"drive {drive_id!r} not found (defined drives: {known})") from None

    @property
    def virtio_transports(self) -> list[Any]:
        """The placed virtio-mmio slots (base, irq, transport), in placement order."""
        return self._virtio.slots if self._virtio is not None else []

    def add_virtio_device(self, backend: Any, name: str) -> Any:
        """Wrap a :class:`microvm.virtio.VirtioBackend` in a virtio-mmio transport and place it
        in the next free slot (QEMU's order: the highest first). Returns the slot."""
        assert self.memory is not None, "virtio devices are created in create_devices"
        legacy = True if self._virtio_legacy is None else self._virtio_legacy
        self._virtio_legacy = None
        if self._virtio is None:
            from .virtio.slots import VirtioSlots

            self._virtio = VirtioSlots(self)
        return self._virtio.add(backend, name, legacy)

    @property
    def timers(self) -> Any:
        """The :class:`microvm.timers.TimerService` for devices with timed interrupts."""
        if self._timers is None:
            from .timers import TimerService

            self._timers = TimerService()
        return self._timers

    def request_extint(self) -> None:
        """The 8259's INTR went high (split irqchip): have the boot vCPU take the vector from
        ``extint_source.acknowledge()`` through KVM_INTERRUPT when it can accept one, as the
        LAPIC's LINT0 (ExtINT, virtual wire) would. Any thread may call this."""
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

    def _claim_stdio(self, user: str) -> Chardev:
        if self._stdio_user is not None:
            raise ConfigError(f"cannot use stdio for both {self._stdio_user} and {user}")
        self._stdio_user = user
        dev = stdio_chardev(on_quit=lambda: self.request_stop(0, "terminated by C-a x"))
        self.add_cleanup(dev.close)
        return dev

    def chardev(self, chardev_id: str) -> Chardev:
        """The ``--chardev BACKEND,id=ID`` backend, created on first use."""
        if chardev_id in self._chardevs:
            return self._chardevs[chardev_id]
        props = self.chardev_specs.get(chardev_id)
        if props is None:
            raise ConfigError(f"chardev {chardev_id!r} not found")
        backend = props.get("backend")
        if backend == "stdio":
            dev: Chardev = self._claim_stdio(f"chardev {chardev_id}")
        elif backend == "null":
            dev = NullChardev()
        elif backend == "file":
            dev = self._file_chardev(props.get("path", ""))
        else:
            reg = self.host.backends.get(("chardev", backend or ""))
            if reg is None or reg.factory is None:
                raise ConfigError(f"chardev backend {backend!r} is not available (stdio, null, file)")
            dev = reg.factory(self, props)
        self._chardevs[chardev_id] = dev
        return dev

    def _file_chardev(self, path: str) -> Chardev:
        if not path:
            raise ConfigError("file chardev needs path=...")
        try:
            # truncated once per process, as QEMU does: a reboot appends to the same log
            mode = os.O_APPEND if self.rebooted else os.O_TRUNC
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot open {path}: {e.strerror}") from None
        dev = FdChardev(fd, None)
        self.add_cleanup(lambda: os.close(fd))
        return dev

    def serial_chardev(self, index: int) -> Chardev | None:
        """The host side of serial port ``index`` from ``-serial`` (None for ``none``)."""
        if index >= len(self.spec.serial):
            return None
        key = f"serial{index}"
        if key in self._chardevs:
            return self._chardevs[key]
        s = self.spec.serial[index]
        if s == "none":
            return None
        if s == "stdio":
            dev: Chardev = self._claim_stdio(f"serial port {index}")
        elif s == "null":
            dev = NullChardev()
        elif s.startswith("file:"):
            dev = self._file_chardev(s[5:])
        elif s.startswith("chardev:"):
            dev = self.chardev(s[8:])
        else:
            raise ConfigError(f"-serial {s}: expected stdio, null, none, file:PATH or chardev:ID")
        self._chardevs[key] = dev
        return dev

    # ------------------------------------------------------------------ construction
    def build(self) -> None:
        from .boot import cpu as bootcpu
        from .kvm import Kvm

        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.add_cleanup(self.kvm.close)
        self.add_cleanup(self.vm.close)
        self.memory = GuestMemory(self.ram_size)
        self.add_cleanup(self.memory.close)
        for slot, region in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, region.gpa, region.size, self.memory.host_address(region))
        self._vmx_housekeeping()
        self.supported_cpuid = self.kvm.supported_cpuid()
        self._create_irqchip()
        self.hook.create_devices(machine=self)
        self._create_user_devices()
        tsc_deadline = bool(self.kvm.check_extension("KVM_CAP_TSC_DEADLINE_TIMER"))
        for i in range(self.smp):
            vcpu = self.vm.create_vcpu(i)
            self.vcpus.append(vcpu)
            self.add_cleanup(vcpu.close)
            entries = bootcpu.edit_cpuid(self.supported_cpuid, i, self.smp, tsc_deadline)
            self.hook.cpuid(machine=self, vcpu_id=i, entries=entries)
            vcpu.set_cpuid(entries)
            vcpu.set_msrs(bootcpu.boot_msrs())
            fpu = vcpu.get_fpu()
            bootcpu.setup_fpu(fpu)
            vcpu.set_fpu(fpu)
            self.hook.configure_vcpu(machine=self, vcpu=vcpu)
        self._load_kernel()
        self._built = True

    def _vmx_housekeeping(self) -> None:
        """Reserve the pages VMX needs for real-mode emulation, as QEMU does (harmless on AMD)."""
        from .kvm import KvmError, ffi

        try:
            self.vm.ioctl_int("KVM_SET_TSS_ADDR", layout.KVM_TSS_ADDR)
            self.vm.ioctl_ptr("KVM_SET_IDENTITY_MAP_ADDR", ffi.new("uint64_t *", layout.KVM_IDENTITY_MAP_ADDR))
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
        self.irqchip_mode = name
        reg = chips.get(name)
        if reg is None or reg.factory is None:
            raise ConfigError(f"kernel-irqchip={name}: not available; installed: {', '.join(sorted(chips)) or 'none'}")
        self.irqchip = reg.factory(self)
        self.ioapic_id = getattr(self.irqchip, "ioapic_id", 0)

    def _create_user_devices(self) -> None:
        for ident, props in self.netdev_specs.items():
            backend = props.get("backend", "")
            if ("netdev", backend) not in self.host.backends:
                known = ", ".join(sorted(n for k, n in self.host.backends if k == "netdev")) or "none installed"
                raise ConfigError(f"--netdev {backend},id={ident}: no plugin provides this network backend ({known})")
        for text in self.spec.devices:
            props = parse_props(text, positional="driver")
            driver = props.pop("driver", None) or props.pop("type", None)
            reg = self.host.device_types.get(driver or "")
            if reg is None or reg.factory is None:
                known = ", ".join(sorted(self.host.device_types)) or "none installed"
                raise ConfigError(f"--device {driver}: unknown device type (available: {known})")
            # virtio-mmio's force-legacy (QEMU: -global virtio-mmio.force-legacy=...), on by
            # default as in QEMU 7.2; a transport property, so the core consumes it
            legacy = props.pop("force-legacy", None)
            if legacy is not None:
                from .options import MachineOption

                self._virtio_legacy = MachineOption("force-legacy", "bool", True, "").parse(legacy)
            reg.factory(self, props)
            if self._virtio_legacy is not None:
                self._virtio_legacy = None
                raise ConfigError(f"--device {driver}: force-legacy applies to virtio devices only")

    def _load_kernel(self) -> None:
        from .boot import cpu as bootcpu
        from .boot import loader, mptable
        from .boot.e820 import e820_map

        assert self.memory is not None
        words = [self.spec.append] if self.spec.append else []
        for contrib in self.hook.kernel_cmdline(machine=self):
            words.extend(contrib or [])
        if self.emulation_assist and host_is_emulating():
            extra = [w for w in EMULATING_HOST_CMDLINE if w not in self.spec.append.split()]
            if extra:
                log.info("host KVM is kvm_pvm (emulating): adding %r to the guest command line", " ".join(extra))
                words.extend(extra)
        self.cmdline = " ".join(w for w in words if w)
        e820 = e820_map([(r.gpa, r.size) for r in self.memory.regions])
        self.entry = loader.load(self.memory, self.images, self.cmdline, e820)
        entries: list[Any] = [mptable.Bus(mptable.ISA_BUS_ID, "ISA")]
        for contrib in self.hook.mptable_entries(machine=self):
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

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, status: int, reason: str) -> None:
        """Stop the machine (from any thread). The first reason wins."""
        if not self.stopping:
            self.exit_status = status
            self.stop_reason = reason
            self.stopping = True
            log.log(40 if status else 20, "stopping: %s", reason)  # ERROR / INFO
        self._stop_event.set()
        for t in self.threads:
            if t is not threading.current_thread():
                t.kick()

    def guest_reset(self, reason: str) -> None:
        """The guest asked for a reset (triple fault): end the process with --no-reboot, as
        QEMU does, else rebuild the machine and boot again."""
        if self.spec.no_reboot:
            self.request_stop(0, f"guest reset ({reason}) with --no-reboot: exiting")
        else:
            self.reset_requested = True
            self.request_stop(0, f"guest reset ({reason}): rebooting")

    def signal_thread(self, thread: Any) -> None:
        if _kick_handler_installed and thread.ident is not None and thread.is_alive():
            try:
                signal.pthread_kill(thread.ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass


    def _install_termination_handlers(self) -> None:
        """SIGTERM/SIGHUP stop the machine cleanly (the terminal is restored, disks closed), as
        QEMU does; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.request_stop(0, f"terminated by signal {signum}"))

    def run(self) -> int:
        """Boot and run until the guest stops; returns the exit status."""
        from .vcpu import VcpuThread

        try:
            if not self._built:
                self.build()
            self._install_termination_handlers()
            if not install_kick_handler():
                log.warning("Machine.run outside the main thread before microvm.machine was imported in it: "
                            "a vCPU halted in the guest may take seconds to stop")
            self.hook.machine_start(machine=self)
            if self._virtio is not None:
                self._virtio.start()
            if self._timers is not None:
                self._timers.start()
            self.threads = [VcpuThread(self, v) for v in self.vcpus]
            for t in self.threads:
                t.start()
            try:
                while not self._stop_event.wait(0.5):
                    pass
            except KeyboardInterrupt:
                self.request_stop(0, "interrupted (SIGINT)")
            for t in self.threads:
                t.join(timeout=5)
                if t.is_alive():
                    log.warning("vCPU thread %s did not stop", t.name)
        finally:
            self.close()
        return self.exit_status

    def close(self) -> None:
        if not self._stopped_hooks and self._built:
            self._stopped_hooks = True
            try:
                self.hook.machine_stop(machine=self)
            except Exception:
                log.exception("machine_stop hook failed")
        if self._timers is not None:
            self._timers.stop()
        if self._virtio is not None:
            try:
                self._virtio.close()  # closes the backends' files and releases their locks
            except Exception:
                log.exception("closing virtio devices failed")
        for ch in self._chardevs.values():
            try:
                ch.close()
            except Exception:
                log.debug("chardev close failed", exc_info=True)
        self._chardevs.clear()
        alive = any(t.is_alive() for t in self.threads)
        for fn in reversed(self._cleanups):
            if alive and fn in (getattr(self.memory, "close", None),):
                continue  # a stuck vCPU may still touch guest RAM: leave the mapping
            try:
                fn()
            except Exception:
                log.debug("cleanup failed", exc_info=True)
        self._cleanups.clear()


def run_spec(spec: MachineSpec, host: Any = None) -> int:
    """Run a machine, rebuilding it after each guest reset unless --no-reboot."""
    images = None
    while True:
        m = Machine(spec, host, images)
        images = m.images
        status = m.run()
        if not m.reset_requested:
            return status
        log.info("rebooting")
