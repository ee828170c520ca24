"""The core's own hook implementations: options that belong to the machine itself (not to a
device), the host character devices every machine has (``stdio``, ``null``, ``file``), and
the virtio-mmio slots' command line and MP table entries. Registered by
:class:`microvm.plugins.PluginHost` under the name ``core``, always."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

from .config import MachineOption, Property

if TYPE_CHECKING:
    from .config import Properties
    from .context import MachineContext

hookimpl = pluggy.HookimplMarker("microvm")


@hookimpl
def register_machine_options(register: Callable[[MachineOption], None]) -> None:
    register(MachineOption(
        "kernel-irqchip", "str", None,
        "Interrupt controller model: split (LAPIC in KVM, IOAPIC/PIC/PIT in microvm) or on (all in KVM)",
        auto_means="split when the ioapic plugin is installed, else on", plugin="core",
    ))
    register(MachineOption(
        "auto-kernel-cmdline", "bool", True,
        "Set off to disable adding virtio-mmio devices to the kernel cmdline", plugin="core",
    ))
    register(MachineOption(
        "x-option-roms", "bool", True,
        "Set off to disable loading option ROMs (with --bios and --kernel: fw_cfg's genroms/linuxboot_dma.bin, "
        "or pvh.bin for an ELF kernel; a direct kernel boot loads none)",
        plugin="core",
    ))
    register(MachineOption(
        "x-emulation-assist", "bool", True,
        "Step over INT3/FWAIT/CLAC/STAC/POPCNT that an emulating host KVM cannot execute, and on such hosts "
        "add 'noxsave clearcpuid=151,308' to the guest command line",
        plugin="core",
    ))


def _stdio(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev import stdio_chardev

    return stdio_chardev(on_quit=lambda: ctx.request_stop(0, "terminated by C-a x"), mux=props.mux, signals=props.signal)


def _null(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev import NullChardev

    return NullChardev()


def _file(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev import file_chardev

    return file_chardev(props.path, append=props.append)


@hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register("chardev", "stdio", _stdio, "the VMM's standard input and output",
             properties=(Property("mux", "bool", False, "C-a commands: C-a h help, C-a x quit, C-a b break "
                                                        "(on for -serial mon:stdio and -nographic's default)"),
                         Property("signal", "bool", True, "a terminal's Ctrl-C ends the VMM instead of reaching the guest")))
    register("chardev", "null", _null, "discards output, never produces input")
    register("chardev", "file", _file, "output to a file (input: none)",
             properties=(Property("path", "str", required=True, help="the file"),
                         Property("append", "bool", False, "append instead of truncating (once per process)")))


@hookimpl
def kernel_cmdline(ctx: "MachineContext") -> list[str] | None:
    if not ctx.option("auto-kernel-cmdline"):
        return None
    # Linux's virtio_mmio.device=<size>@<base>:<irq> (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)
    return [f"virtio_mmio.device=512@{d.base:#x}:{d.irq}" for d in ctx.virtio_devices]


@hookimpl
def mptable_entries(ctx: "MachineContext") -> list[Any] | None:
    return [ctx.isa_irq_entry(t.irq) for t in ctx.virtio_devices]
