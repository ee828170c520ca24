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
from .log import get_logger
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
#: Guest command-line words that keep Linux off instructions an emulating host cannot run
#: (HOST.md: no XSAVE; clearcpuid 151 = POPCNT, 308 = SMAP, by number since names need
#: CONFIG_X86_FEATURE_NAMES).
EMULATING_HOST_CMDLINE = ["noxsave", "clearcpuid=151,308"]


def host_is_emulating() -> bool:
    """True on hosts whose KVM emulates guest kernel code (kvm_pvm, see HOST.md)."""
    return os.path.exists("/sys/module/kvm_pvm")


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

    def __init__(self, spec: MachineSpec, host: Any = None, images: Any = None, metrics: "Metrics | None" = None) -> None:
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
        self.ram_size = spec.mem_size
        self.devices: dict[str, Any] = {}
        self._chardevs: dict[str, Chardev] = {}
        self._stdio_user: str | None = None
        self._drive_users: dict[str, str] = {}
        #: the device whose factory runs now (who claims a drive or netdev)
        self._creating = "a device"
        self._netdevs: dict[str, tuple[Any, str]] = {}
        self._irq_lines: dict[int, Any] = {}
        self.stopping = False
        self.exit_status = 0
        self.stop_reason = ""
        self.reset_requested = False
        self._stop_event = threading.Event()
        self._cleanups: list[Callable[[], None]] = []
        self.threads: list[Any] = []
        self.vcpus: list[Any] = []
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
        )

    def _check_device_types(self) -> None:
        """Every --device names an installed type, and ``--device NAME,help`` is answered:
        before anything is built, so a typo costs no KVM set-up."""
        from .config import VIRTIO_TRANSPORT_PROPERTIES, describe_properties

        types = self.host.device_types
        for cfg in self.spec.device_configs:
            reg = types.get(cfg.driver)
            if reg is None or reg.factory is None:
                known = ", ".join(sorted(types)) or "none installed"
                if cfg.help and not cfg.driver:
                    raise ConfigError(f"device types: {known}")
                raise ConfigError(f"--device {cfg.driver}: unknown device type (available: {known})")
            if cfg.help:
                props = describe_properties(self.device_properties(reg) + (VIRTIO_TRANSPORT_PROPERTIES if reg.virtio else ()))
                raise ConfigError(f"{cfg.driver} properties: " + "; ".join(props))
        # every backend is checked, used or not: its type exists and its keys are valid
        from .config import parse_properties

        backends = [("chardev", c) for c in self.spec.chardev_configs.values()]
        backends += [("chardev", s.chardev) for s in self.spec.serial_configs if s.chardev is not None]
        backends += [("netdev", c) for c in self.spec.netdev_configs.values()]
        for kind, c in backends:
            parse_properties(f"{kind} {c.id} ({c.backend})", self._backend_type(kind, c).properties, c.props)

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
        backend = self._make_backend("netdev", cfg)
        self._netdevs[netdev_id] = (backend, user)
        return backend

    def _backend_type(self, kind: str, cfg: Any) -> Any:
        reg = self.host.backends.get((kind, cfg.backend))
        if reg is None or reg.factory is None:
            known = ", ".join(sorted(n for k, n in self.host.backends if k == kind)) or "none installed"
            what = {"netdev": "network", "chardev": "character device"}[kind]
            raise ConfigError(f"--{kind} {cfg.backend},id={cfg.id}: no plugin provides this {what} backend (available: {known})")
        return reg

    def _make_backend(self, kind: str, cfg: Any) -> Any:
        from .config import parse_properties

        reg = self._backend_type(kind, cfg)
        props = parse_properties(f"{kind} {cfg.id} ({cfg.backend})", reg.properties, cfg.props)
        if kind == "chardev" and cfg.backend == "stdio":
            if self._stdio_user is not None:
                raise ConfigError(f"cannot use stdio for both {self._stdio_user} and chardev {cfg.id}")
            self._stdio_user = f"chardev {cfg.id}" if not cfg.id.startswith("serial") else f"serial port {cfg.id[6:]}"
        backend = reg.factory(self.ctx, cfg.id, props)
        close = getattr(backend, "close", None)
        if close is not None:
            self.add_cleanup(close)
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
        """The ``--chardev BACKEND,id=ID`` backend, created on first use."""
        dev = self._chardevs.get(chardev_id)
        if dev is None:
            cfg = self.spec.chardev_configs.get(chardev_id)
            if cfg is None:
                known = ", ".join(sorted(self.spec.chardev_configs)) or "none"
                raise ConfigError(f"chardev {chardev_id!r} not found (defined chardevs: {known})")
            dev = self._chardevs[chardev_id] = self._make_backend("chardev", cfg)
        return dev

    def serial_chardev(self, index: int) -> Chardev | None:
        """The host side of serial port ``index`` from ``-serial`` (None for ``none``)."""
        if index >= len(self.spec.serial_configs):
            return None
        s = self.spec.serial_configs[index]
        if s.ref is not None:
            return self.chardev(s.ref)
        if s.chardev is None:
            return None
        dev = self._chardevs.get(s.chardev.id)
        if dev is None:
            dev = self._chardevs[s.chardev.id] = self._make_backend("chardev", s.chardev)
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
        if self.images.bios is not None:
            from .boot.firmware import map_firmware

            map_firmware(self.memory, self.images.bios)
        for slot, (gpa, size, host) in enumerate(self.memory.memslots()):
            self.vm.set_user_memory_region(slot, gpa, size, host)
        self._vmx_housekeeping()
        self.supported_cpuid = self.kvm.supported_cpuid()
        self._create_irqchip()
        self.hook.create_devices(ctx=self.ctx)
        self._create_user_devices()
        if self.boot.firmware is not None and self.boot.kernel is not None and self.boot.handled_by is None:
            raise ConfigError("--bios with --kernel: no installed plugin hands the kernel to the firmware "
                              "(install microvm-fw-cfg, or boot the kernel directly without --bios)")
        if self.boot.firmware is not None and self.smp > 1 and self.irqchip is None:
            raise ConfigError(f"--smp {self.smp} with --bios: the other vCPUs must wait for INIT/SIPI in an "
                              "in-kernel LAPIC, and no irqchip plugin is installed")
        tsc_deadline = bool(self.kvm.check_extension("KVM_CAP_TSC_DEADLINE_TIMER"))
        for i in range(self.smp):
            vcpu = self.vm.create_vcpu(i)
            self.vcpus.append(vcpu)
            self.add_cleanup(vcpu.close)
            entries = bootcpu.edit_cpuid(self.supported_cpuid, i, self.smp, tsc_deadline)
            self.hook.cpuid(ctx=self.ctx, vcpu_id=i, entries=entries)
            vcpu.set_cpuid(entries)
            vcpu.set_msrs(bootcpu.boot_msrs())
            fpu = vcpu.get_fpu()
            bootcpu.setup_fpu(fpu)
            vcpu.set_fpu(fpu)
            self.hook.configure_vcpu(ctx=self.ctx, vcpu=vcpu)
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
            raise ConfigError(f"kernel-irqchip={name}: not available; installed: {', '.join(sorted(chips)) or 'none'}")
        self.irqchip = reg.factory(self.ctx)
        self.add_cleanup(self.irqchip.close)
        from .kvm import lib

        # the guest's EOI of a level-triggered vector, routed by the split irqchip's MSI
        # routes (KVM_CAP_SPLIT_IRQCHIP); KVM's own IOAPIC never exits for it
        self.add_exit_handler(lib.KVM_EXIT_IOAPIC_EOI, lambda vcpu: self.irqchip.eoi(vcpu.run_ptr.eoi.vector))

    def _create_user_devices(self) -> None:
        """One device per ``--device``, converted against its type's declared properties;
        virtio types are placed by the core with the transport the user chose."""
        from .config import VIRTIO_TRANSPORT_PROPERTIES, VirtioTransportConfig, parse_properties

        names: set[str] = set()
        for cfg in self.spec.device_configs:
            reg = self.host.device_types[cfg.driver]  # checked in __init__
            declared = self.device_properties(reg) + (VIRTIO_TRANSPORT_PROPERTIES if reg.virtio else ())
            props = parse_properties(cfg.driver, declared, cfg.props)
            if props["id"]:
                if props["id"] in names:
                    raise ConfigError(f"--device {cfg.driver}: duplicate id {props['id']!r}")
                names.add(props["id"])
            self._creating = f"--device {cfg.driver}" + (f",id={props['id']}" if props["id"] else "")
            try:
                made = reg.factory(self.ctx, props)
            finally:
                self._creating = "a device"
            if not reg.virtio:
                continue
            from .virtio.backend import VirtioBackend

            if not isinstance(made, VirtioBackend):
                raise PluginError(f"plugin {reg.plugin}: the {cfg.driver} factory returned {made!r}, not a VirtioBackend")
            name = props["id"] or made.label or f"{cfg.driver}.{len(self.virtio_transports)}"
            try:
                self.add_virtio_device(made, name, VirtioTransportConfig(legacy=props["force-legacy"]))
            except BaseException:
                made.close()
                raise

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
                                         f"again)\n" + register_dump(vcpu, self.memory))
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
        QEMU does; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.request_stop(0, f"terminated by signal {signum}"))

    def run(self) -> int:
        """Boot and run until the guest stops; returns the exit status. A Machine runs once:
        its devices and KVM objects are torn down when it stops (a reboot builds a new one,
        as :func:`run_spec` does), so a second call raises :class:`MicrovmError`."""
        from .vcpu import VcpuThread

        if self._ran:
            raise MicrovmError("this Machine has already run; build a new Machine(spec) to boot again")
        self._ran = True
        try:
            if not self._built:
                self.build()
            self._install_termination_handlers()
            if not install_kick_handler():
                log.warning("Machine.run outside the main thread before microvm.machine was imported in it: "
                            "a vCPU halted in the guest may take seconds to stop")
            self.hook.machine_start(ctx=self.ctx)
            if self._virtio is not None:
                self._virtio.start()
            if self._timers is not None:
                self._timers.start()
            self.threads = [VcpuThread(self, v) for v in self.vcpus]
            for t in self.threads:
                self.metrics.add_source("vcpus", t.name, t.exit_counts)
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
    """Run a machine, rebuilding it after each guest reset unless --no-reboot; with
    ``spec.metrics``, write the counters (of every boot) there at the end."""
    from .metrics import Metrics

    images = None
    metrics = Metrics()
    try:
        while True:
            m = Machine(spec, host, images, metrics)
            images = m.images
            status = m.run()
            if not m.reset_requested:
                return status
            log.info("rebooting")
    finally:
        if spec.metrics and images is not None:
            try:
                metrics.write_json(spec.metrics)
            except OSError as e:
                log.error("cannot write metrics to %s: %s", spec.metrics, e.strerror)
