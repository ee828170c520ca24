"""The machine as a plugin sees it: :class:`MachineContext`, what every hook receives.

pytest hands its hooks a ``config`` or a ``session``, never its runner; microvm hands them
this small object instead of the :class:`~microvm.machine.Machine`, which keeps the
lifecycle (KVM objects, vCPU threads, reset) to itself. Everything here is documented
member by member in ``docs/plugins.md``; a plugin uses nothing else of the core.

One context exists per boot (a guest reset builds a new machine and a new context).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

if TYPE_CHECKING:
    from .chardev import Chardev
    from .config import BootConfig, DriveConfig, LegacyDevices, VirtioTransportConfig
    from .irq import IrqChip, IrqLine
    from .kvm import Vm
    from .machine import Machine
    from .memory import GuestMemory
    from .metrics import CounterGroup
    from .timers import TimerService
    from .virtio.backend import VirtioBackend
    from .virtio.slots import VirtioSlot


class KvmVm:
    """The KVM VM as an irqchip plugin sees it: the interrupt-controller ioctls, nothing
    else (no memory slots, no vCPUs, no raw ioctls)."""

    __slots__ = ("_vm",)

    def __init__(self, vm: "Vm") -> None:
        self._vm = vm

    def enable_cap(self, cap: str | int, *args: int) -> None:
        """KVM_ENABLE_CAP, e.g. ``("KVM_CAP_SPLIT_IRQCHIP", 24)`` before any vCPU exists."""
        self._vm.enable_cap(cap, *args)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: KVM's 8259 pair and IOAPIC."""
        self._vm.create_irqchip()

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        """KVM_CREATE_PIT2: KVM's 8254."""
        self._vm.create_pit2(speaker_dummy)

    def irq_line(self, irq: int, level: bool | int) -> None:
        """KVM_IRQ_LINE: drive an input of KVM's irqchip."""
        self._vm.irq_line(irq, level)

    def irqfd(self, fd: int, gsi: int, deassign: bool = False, resamplefd: int | None = None) -> None:
        """KVM_IRQFD: an eventfd that raises ``gsi`` without a vCPU exit."""
        self._vm.irqfd(fd, gsi, deassign, resamplefd)

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI: deliver a message-signalled interrupt to the in-kernel LAPICs."""
        return self._vm.signal_msi(address, data)

    def set_gsi_routing(self, entries: Any) -> None:
        """KVM_SET_GSI_ROUTING: ``[{"gsi", "type": "msi", "address", "data"}, ...]``."""
        self._vm.set_gsi_routing(entries)


class VcpuView:
    """A vCPU as the ``configure_vcpu`` and ``handle_exit`` hooks and exit handlers see it."""

    __slots__ = ("_vcpu",)

    def __init__(self, vcpu: Any) -> None:
        self._vcpu = vcpu

    @property
    def id(self) -> int:
        """Its index, which is also its APIC ID."""
        return self._vcpu.id

    @property
    def run(self) -> Any:
        """The ``struct kvm_run`` of the exit being handled (``run.exit_reason``,
        ``run.eoi.vector``, ...): read it on the vCPU's own thread, in the handler."""
        return self._vcpu.run_ptr

    def get_lapic_regs(self) -> bytearray:
        """The LAPIC register page (1 KiB, KVM_GET_LAPIC), before the vCPU first runs."""
        return self._vcpu.get_lapic_regs()

    def set_lapic_regs(self, regs: bytes | bytearray) -> None:
        """Write the LAPIC register page back (KVM_SET_LAPIC)."""
        self._vcpu.set_lapic_regs(regs)

    def set_msrs(self, msrs: dict[int, int]) -> None:
        """KVM_SET_MSRS: ``{index: value}``."""
        self._vcpu.set_msrs(msrs)

    def __repr__(self) -> str:
        return f"<vCPU {self.id}>"


class VirtioDeviceInfo(NamedTuple):
    """A placed virtio-mmio device, as plugins may know it."""

    name: str
    base: int
    irq: int
    device_id: int
    legacy: bool


class Timers:
    """The machine's timer thread, as a device sees it."""

    __slots__ = ("_service",)

    def __init__(self, service: Any) -> None:
        self._service = service

    def add(self, device: Any) -> None:
        """Run ``device`` on the timer thread: it has ``next_deadline() -> int | None``
        (monotonic nanoseconds) and ``tick(now_ns)``, which raises what became due."""
        self._service.add(device)

    def wake(self) -> None:
        """A device's deadline changed: look again (its ``on_timer_change``)."""
        self._service.wake()


class MachineContext:
    """What a plugin may use of the machine it is part of. Created by the core only."""

    __slots__ = ("_m",)

    def __init__(self, machine: "Machine") -> None:
        self._m = machine

    # ---- what the machine is ---------------------------------------------------------------
    @property
    def smp(self) -> int:
        """Number of vCPUs (their APIC IDs: :attr:`apic_ids`)."""
        return self._m.smp

    @property
    def max_cpus(self) -> int:
        """The most vCPUs the machine's topology has room for (``-smp ...,maxcpus=N``; equal
        to :attr:`smp` without it): what a firmware is told (fw_cfg's MAX_CPUS). microvm
        has no CPU hotplug, so only :attr:`smp` of them exist."""
        return self._m.spec.topology.maxcpus

    @property
    def apic_ids(self) -> list[int]:
        """The vCPUs' APIC IDs by vCPU index (the first is the boot CPU). ``0 .. smp-1``
        unless ``-smp`` gives a topology whose counts are not powers of two, which leaves
        holes, as in QEMU; an IOAPIC takes ``max(apic_ids) + 1``."""
        return list(self._m.apic_ids)

    @property
    def ram_size(self) -> int:
        """Guest RAM in bytes (below 3 GiB, the rest from 4 GiB; see ``memory.regions``)."""
        return self._m.ram_size

    @property
    def memory(self) -> "GuestMemory":
        """Guest RAM: bounds-checked ``read``/``write``/``view``/``read_u32``...; anything
        outside RAM raises :class:`~microvm.errors.GuestMemoryError`."""
        assert self._m.memory is not None, "guest memory exists from create_devices on"
        return self._m.memory

    @property
    def irqchip(self) -> "IrqChip | None":
        """The interrupt controller (:class:`~microvm.irq.IrqChip`), None when no irqchip
        plugin is installed."""
        return self._m.irqchip

    @property
    def legacy(self) -> "LegacyDevices":
        """Which optional legacy devices (pic, pit, rtc, isa_serial) the machine options ask
        for, with ``auto`` resolved; read this instead of another plugin's option."""
        return self._m.legacy

    @property
    def vm(self) -> KvmVm:
        """The KVM VM's interrupt-controller ioctls (:class:`KvmVm`: ``enable_cap``,
        ``create_irqchip``, ``create_pit2``, ``irq_line``, ``irqfd``, ``signal_msi``,
        ``set_gsi_routing``), for irqchip plugins. Devices do not need it."""
        return KvmVm(self._m.vm)

    @property
    def supported_cpuid(self) -> list[dict[str, int]]:
        """``KVM_GET_SUPPORTED_CPUID`` (entries as dicts: function, index, flags, eax..edx)."""
        return self._m.supported_cpuid

    def option(self, name: str) -> Any:
        """The parsed value of machine option ``name`` (``-M microvm,name=...``) as declared
        by its plugin (``OnOffAuto`` options give ``"on"``/``"off"``/``"auto"``); None when no
        installed plugin declares it."""
        return self._m.options.get(name)

    def switch(self, name: str) -> bool:
        """Machine option ``name`` as on/off, ``auto`` resolved by its declaration; False
        when no plugin declares it."""
        return self._m.host.options.switch(self._m.options, name)

    @property
    def devices(self) -> dict[str, Any]:
        """Named device objects of this boot: a plugin keeps its own here for its later
        hooks (``machine_start``, ``mptable_entries``); also what introspection lists."""
        return self._m.devices

    @property
    def boot(self) -> "BootConfig":
        """How this boot starts (:class:`~microvm.api.BootConfig`): the ``--bios`` firmware
        (None for a direct kernel boot), the kernel, initrd and command line the firmware
        must be handed (``cmdline`` is final from ``machine_start`` on), and
        ``hand_over(plugin)`` for the plugin that does it."""
        return self._m.boot

    @property
    def virtio_devices(self) -> list[VirtioDeviceInfo]:
        """The placed virtio-mmio devices (``name``, ``base``, ``irq``, ``device_id``,
        ``legacy``), in placement order."""
        return [VirtioDeviceInfo(s.name, s.base, s.irq, s.transport.device_id, s.transport.legacy)
                for s in self._m.virtio_transports]

    # ---- placing devices -------------------------------------------------------------------
    def add_pio_device(self, device: Any, base: int, length: int, name: str) -> None:
        """Map a bus device (``read(offset, data)``, ``write(offset, data)``) on the I/O
        ports ``[base, base+length)``. Overlaps are refused (:class:`~microvm.errors.ConfigError`)."""
        self._m.add_pio_device(device, base, length, name)

    def add_mmio_device(self, device: Any, base: int, length: int, name: str) -> None:
        """Map a bus device at guest physical ``[base, base+length)`` (outside RAM)."""
        self._m.add_mmio_device(device, base, length, name)

    def add_virtio_device(self, backend: "VirtioBackend", name: str,
                          transport: "VirtioTransportConfig | None" = None) -> VirtioDeviceInfo:
        """Put a :class:`~microvm.api.VirtioBackend` on a virtio-mmio transport in the next
        free slot (QEMU's order: 0xfeb00e00, IRQ 12 first). ``transport`` chooses the
        register layout (default: legacy, as QEMU 7.2). Returns where it went. A
        ``--device`` of a type registered with ``virtio=True`` is placed by the core."""
        from .config import VirtioTransportConfig

        s = self._m.add_virtio_device(backend, name, transport or VirtioTransportConfig())
        return VirtioDeviceInfo(s.name, s.base, s.irq, s.transport.device_id, s.transport.legacy)

    def irq(self, gsi: int) -> "IrqLine":
        """The :class:`~microvm.irq.IrqLine` of GSI ``gsi`` (ISA IRQs are GSIs 0-15);
        which interrupt controller is behind it is not the device's business."""
        return self._m.irq(gsi)

    def isa_irq_entry(self, irq: int) -> Any:
        """The MP table I/O interrupt entry routing ISA ``irq`` to the IOAPIC pin the
        irqchip uses for it (return it from ``mptable_entries``)."""
        return self._m.isa_irq_entry(irq)

    @property
    def extint_line(self) -> "IrqLine":
        """The boot CPU's LINT0 in virtual-wire mode: an 8259 emulated in userspace drives
        this with its INTR output; the boot vCPU then takes the vector from the irqchip's
        :meth:`~microvm.irq.IrqChip.extint_source`."""
        return self._m.extint_line

    # ---- host-side configuration -----------------------------------------------------------
    def chardev(self, chardev_id: str) -> "Chardev":
        """The host backend of ``--chardev BACKEND,id=ID`` (``write``, ``set_receiver``,
        ``start``, ``close``), created on first use."""
        return self._m.chardev(chardev_id)

    def serial_chardev(self, index: int) -> "Chardev | None":
        """The host side of serial port ``index`` from ``--serial`` (None for ``none`` or
        when fewer were given)."""
        return self._m.serial_chardev(index)

    def drive(self, drive_id: str) -> "DriveConfig":
        """The :class:`~microvm.config.DriveConfig` of ``--drive id=ID,...`` (``file``,
        ``format``, ``readonly``); a :class:`~microvm.errors.ConfigError` naming the defined
        drives when there is none. A drive may be used by one device only."""
        return self._m.drive(drive_id)

    def netdev(self, netdev_id: str) -> Any:
        """The network backend of ``--netdev TYPE,id=ID,...`` as its plugin's factory made
        it (a tap, ...), for the one device that uses it; a second user is refused."""
        return self._m.netdev(netdev_id)

    # ---- services --------------------------------------------------------------------------
    @property
    def timers(self) -> Timers:
        """The timer thread (:class:`Timers`): ``add(dev)`` for a device with
        ``next_deadline()`` and ``tick(now_ns)``; ``wake()`` after reprogramming."""
        return Timers(self._m.timers)

    def counters(self, name: str) -> "CounterGroup":
        """The :class:`~microvm.metrics.CounterGroup` of device ``name`` (the same group its
        bus accesses are counted in): ``counters(name).counter("bytes_read").add(n)``."""
        return self._m.metrics.group("devices", name)

    def add_exit_handler(self, exit_reason: int, handler: Callable[[Any], None]) -> None:
        """Handle a frequent KVM exit (``KVM_EXIT_*`` from :mod:`microvm.api`) on the vCPU
        thread, without a hook call per exit; ``handler(vcpu)`` gets a :class:`VcpuView`.
        Rare exits can use the ``handle_exit`` hook instead. (``KVM_EXIT_IOAPIC_EOI`` is the
        core's: it calls ``IrqChip.eoi``.)"""
        self._m.add_exit_handler(exit_reason, handler)

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` when the machine is torn down (in reverse order of registration)."""
        self._m.add_cleanup(fn)

    def request_stop(self, status: int, reason: str, cause: str | None = None) -> None:
        """End the VM (from any thread) with exit ``status``; the first request wins.
        ``cause`` is the QMP ``SHUTDOWN`` event's reason (QEMU's ShutdownCause, e.g.
        ``guest-shutdown`` for a guest that asked to end); default ``guest-shutdown`` for
        status 0, ``host-error`` (a device's fatal error) otherwise."""
        self._m.request_stop(status, reason, cause)

    def request_reset(self, reason: str) -> None:
        """Reset the VM as a triple fault would: reboot, or exit with ``--no-reboot``."""
        self._m.guest_reset(reason)

    def report_guest_panic(self, detail: str = "") -> None:
        """The guest reported a panic (a pvpanic-like device, on a vCPU thread): QMP
        ``GUEST_PANICKED``, then the VM stops (``guest-panicked``) and ends, or with
        ``--no-shutdown`` stays stopped, as QEMU's default panic action does."""
        self._m.guest_panicked(detail or "reported by a device")

    def report_guest_crashloaded(self) -> None:
        """The guest loaded a crash kernel after a panic (QMP ``GUEST_CRASHLOADED``); it runs on."""
        self._m.guest_crashloaded()

    def __repr__(self) -> str:
        chip = self.irqchip
        return f"<MachineContext smp={self.smp} ram={self.ram_size >> 20}MiB irqchip={chip.name if chip else None}>"
