"""Testing a plugin's hook glue without KVM: a real :class:`~microvm.context.MachineContext`
over a machine that has guest RAM, both buses, timers, counters and the installed plugins'
options, devices and backends, but no VM and no vCPU.

::

    from microvm.testing import TestMachine

    m = TestMachine("microvm,rtc=on", devices=["isa-debug-exit,iobase=0xf4"])
    m.create_devices()                 # the create_devices hook, then every --device factory
    m.pio_bus.write(0xF4, b"\\x01")     # drive a device through its bus, as a vCPU would
    m.mptable_entries()                # what the MP table would hold

The interrupt controller is a :class:`FakeIrqChip` (``kernel-irqchip=split`` or ``on``
semantics, with :class:`~microvm.irq.RecordingIrqLine` lines), so a test can see every
level change a device makes. A third party's plugin is passed with ``plugins=[module]``
(or found through its entry point when installed).
"""
from __future__ import annotations

from typing import Any, Iterable

from .boot.loader import BootImages
from .bus import Bus  # re-exported: place a device under test on a real bus
from .irq import RecordingIrqLine
from .machine import Machine
from .spec import MachineSpec

__all__ = ["Bus", "FakeIrqChip", "TestMachine", "plugin_hooks"]


def plugin_hooks(plugin: Any) -> set[str]:
    """The hooks ``plugin`` (a module or object) implements, after checking every hookimpl's
    name and arguments against the specifications (a :class:`~microvm.errors.PluginError`
    says what does not match)."""
    from .plugins import PluginHost

    host = PluginHost(extra=[plugin], use_entry_points=False)
    return {h.name for h in host.pm.get_hookcallers(plugin) or []}


class FakeIrqChip:
    """An :class:`~microvm.irq.IrqChip` without KVM: lines are
    :class:`~microvm.irq.RecordingIrqLine`, the MP table entries those of an IOAPIC.

    ``name="split"``: ISA IRQ 0 on pin 2 and room for a userspace 8259 (``attach_pic``);
    ``name="on"``: KVM's routing (pin n) with its own 8259 and, if asked for, 8254 built in.
    """

    def __init__(self, name: str = "split", ioapic_id: int = 1, pit: bool = True) -> None:
        self.name = name
        self.ioapic_id = ioapic_id
        self.builtin: frozenset[str] = frozenset() if name == "split" else frozenset({"pic", "pit"} if pit else {"pic"})
        self.lines: dict[int, RecordingIrqLine] = {}
        self.pics: list[Any] = []
        self.eois: list[int] = []

    def line(self, gsi: int) -> RecordingIrqLine:
        return self.lines.setdefault(gsi, RecordingIrqLine(gsi))

    def isa_pin(self, irq: int) -> int:
        return 2 if irq == 0 and self.name == "split" else irq

    def attach_pic(self, pic: Any) -> None:
        from .errors import ConfigError

        if "pic" in self.builtin:
            raise ConfigError(f"kernel-irqchip={self.name}: the irqchip has its own 8259s")
        self.pics.append(pic)

    def extint_source(self) -> Any:
        return self.pics[0] if self.pics else None

    def has_pic(self) -> bool:
        return "pic" in self.builtin or bool(self.pics)

    def eoi(self, vector: int) -> None:
        self.eois.append(vector)

    def mptable_entries(self) -> list[object]:
        from . import layout
        from .boot.mptable import IoApic

        return [IoApic(self.ioapic_id, layout.IOAPIC_ADDR)]

    def close(self) -> None:
        pass


class TestMachine(Machine):
    """A :class:`~microvm.machine.Machine` whose plugin side is real and whose KVM side
    does not exist. ``machine`` is the ``-M`` string; ``devices``, ``drives``, ``chardevs``,
    ``netdevs`` and ``serial`` take the command line's strings. ``irqchip`` is
    ``"split"``, ``"on"`` or None (no interrupt controller). ``smp`` is a vCPU count or
    QEMU's ``-smp`` text (``"2,maxcpus=4"``). ``kernel``/``initrd``/``append``
    (bytes of a bzImage or PVH ELF) and ``firmware`` (the bytes of a ``--bios`` image) set what
    ``ctx.boot`` says, for plugins that hand a kernel to a firmware; nothing is loaded.
    ``fw_cfg``: ``--fw-cfg`` texts or (name, bytes) pairs (``ctx.boot.fw_cfg_files``)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        machine: str = "microvm",
        devices: Iterable[str] = (),
        drives: Iterable[str] = (),
        chardevs: Iterable[str] = (),
        netdevs: Iterable[str] = (),
        serial: Iterable[str] = ("null",),
        irqchip: str | None = "split",
        smp: int | str = 1,
        mem_size: int = 64 << 20,
        plugins: Iterable[Any] = (),
        host: Any = None,
        kernel: bytes | None = None,
        initrd: bytes | None = None,
        append: str = "",
        firmware: bytes | None = None,
        fw_cfg: Iterable[Any] = (),
    ) -> None:
        topology = None
        if isinstance(smp, str):  # QEMU's -smp text: "2,maxcpus=4", "4,sockets=2"
            from .topology import parse_smp

            topology = parse_smp(smp)
            smp = topology.cpus
        spec = MachineSpec(
            kernel="(none: microvm.testing)", mem_size=mem_size, smp=smp, topology=topology,
            machine=[machine] if machine else [],
            devices=list(devices), drives=list(drives), chardevs=list(chardevs), netdevs=list(netdevs),
            serial=list(serial), extra_plugins=list(plugins), append=append, fw_cfg=list(fw_cfg),
        )
        bios = None
        if firmware is not None:  # what ctx.boot says of a --bios boot (nothing is mapped)
            from .boot.firmware import Firmware

            bios = Firmware("test.rom", "(test firmware)", firmware)
        kind = "none"
        if kernel is not None:
            from .boot.loader import detect

            kind = detect(kernel)
        super().__init__(spec, host=host, images=BootImages(kernel or b"", initrd, kind, bios))
        self.rebooted = False
        self.fake_irqchip = FakeIrqChip(irqchip, ioapic_id=max(self.apic_ids) + 1) if irqchip else None

    def build(self) -> None:
        raise NotImplementedError("a TestMachine has no KVM: use create_devices()")

    def create_devices(self) -> "TestMachine":
        """What :meth:`Machine.build` does for the plugins: guest RAM, the irqchip, the
        ``create_devices`` hook, then one factory call per ``devices`` entry."""
        from .memory import GuestMemory

        self.memory = GuestMemory(self.ram_size)
        self.add_cleanup(self.memory.close)
        self.irqchip = self.fake_irqchip
        self._open_chardevs()
        self.hook.create_devices(ctx=self.ctx)
        self._create_user_devices()
        return self

    def start(self) -> "TestMachine":
        """What :meth:`Machine.run` starts besides the vCPUs: the chardevs' I/O threads (a
        socket server with ``wait=on`` waits for its client here), the ``machine_start``
        hook, the virtio devices' notification workers and the timer thread (``close()``
        stops them). With a ``kernel``, ``ctx.boot.cmdline`` is first made final, as loading
        it would."""
        if self.boot.kernel is not None and self.boot.cmdline is None:
            self.cmdline = self.boot.cmdline = self._kernel_cmdline()
        self.backends.start_chardevs()
        self.hook.machine_start(ctx=self.ctx)
        if self._virtio is not None:
            self._virtio.start()
        if self._timers is not None:
            self._timers.start()
        return self

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call machine-time hook ``hook`` with this machine's context; the plugins' results
        as one list (lists returned by hooks are flattened, None dropped)."""
        out: list[Any] = []
        for r in getattr(self.hook, hook)(ctx=self.ctx, **kwargs) or []:
            if isinstance(r, list):
                out.extend(r)
            elif r is not None:
                out.append(r)
        return out

    def mptable_entries(self) -> list[Any]:
        """The MP table entries a boot would write: the irqchip's and the plugins'."""
        entries = list(self.irqchip.mptable_entries()) if self.irqchip is not None else []
        return entries + self.call("mptable_entries")

    def line(self, gsi: int) -> RecordingIrqLine:
        """The recording line behind GSI ``gsi`` (what the device drove)."""
        assert self.fake_irqchip is not None, "no irqchip"
        return self.fake_irqchip.line(gsi)

    def __enter__(self) -> "TestMachine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._built = True  # machine_stop runs for what create_devices made
        super().close()
