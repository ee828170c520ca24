"""The core's own hook implementations: options that belong to the machine itself (not to a
device), the host character devices (QEMU's ``stdio``, ``null``, ``file``, ``pipe``, ``pty``, ``socket``), and
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
    register(MachineOption(
        "graphics", "bool", True,
        "Set on/off to enable/disable graphics emulation: microvm has no display either way; off (what "
        "-nographic and a line without a display option set) makes fw_cfg's NOGRAPHIC 1, as in QEMU",
        plugin="core",
    ))
    # QEMU 7.2 microvm's (and its x86 machine's) options for what microvm does not have: the
    # value that describes microvm is accepted and changes nothing, so QEMU users' lines
    # (`-M microvm,acpi=off` above all) run unchanged; a value asking for the thing is refused
    for name, kind, default, why, help_, auto_means in _ABSENT:
        register(MachineOption(name, kind, default, help_, auto_means=auto_means,
                               auto_value=False if auto_means else None, check=_only_absent(name, why, bool(auto_means)),
                               plugin="core"))
    for name, kind, default, help_, auto_means in _ACPI_ONLY:
        register(MachineOption(name, kind, default, help_, auto_means=auto_means,
                               auto_value=False if auto_means else None, plugin="core"))
    from .options import GENERIC_MACHINE_OPTIONS

    for option in GENERIC_MACHINE_OPTIONS:  # QEMU's generic machine properties
        register(option)


#: (name, kind, default, what microvm lacks, help, what auto means when it is accepted)
_ABSENT = (
    ("acpi", "OnOffAuto", "off", "microvm has no ACPI",
     "Enable ACPI: off only (microvm has no ACPI; QEMU's default auto means on)", ""),
    ("smm", "OnOffAuto", "off", "microvm has no System Management Mode",
     "Enable SMM: off only (microvm has no SMM; QEMU's default auto means on under KVM)", ""),
)
#: QEMU's microvm options for what it builds only with ACPI: every value is accepted and,
#: as in QEMU with acpi=off, changes nothing (microvm.options refuses on without acpi=off,
#: where QEMU would build the thing): (name, kind, default, help, what auto means)
_ACPI_ONLY = (
    ("pcie", "OnOffAuto", "auto", "Enable PCIe: QEMU adds it only with ACPI; microvm has none, so on is "
     "ignored with acpi=off, as in QEMU", "off (no PCIe without ACPI)"),
    ("ioapic2", "OnOffAuto", "auto", "Enable second IO-APIC: QEMU adds it only with ACPI; microvm has none, so "
     "on is ignored with acpi=off, as in QEMU", "off (one IOAPIC without ACPI)"),
    ("usb", "bool", False, "Set on/off to enable/disable usb: QEMU's microvm adds USB only with ACPI; on is "
     "ignored with acpi=off, as in QEMU", ""),
)


def _only_absent(name: str, why: str, auto_ok: bool) -> Callable[[Any], None]:
    """The ``check`` of an option for something microvm lacks: ``off`` (and ``auto`` where
    QEMU's auto means off on microvm) passes; ``on`` is one line naming what is missing."""

    def check(value: Any) -> None:
        if value is True or value == "on" or (value == "auto" and not auto_ok):
            from .errors import ConfigError

            text = "on" if value is True else value
            raise ConfigError(f"machine option {name}={text}: unsupported on microvm ({why})")

    return check


def _common(ctx: "MachineContext", ident: str, props: "Properties") -> dict[str, Any]:
    """What every core chardev backend gets: its counters, mux, and C-a x, which stops the
    machine running now (``ctx`` follows the run: a backend outlives a guest reset)."""
    return {
        "counters": ctx.counters(f"chardev.{ident}"),
        "mux": bool(props.get("mux", False)),
        "escapes": bool(props.get("mux", False)),
        "on_quit": lambda: ctx.request_stop(0, "terminated by C-a x", "host-qmp-quit"),  # QEMU's qmp_quit
    }


def _stdio(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev.fd import StdioBackend

    # the C-a commands with mux=on only, as QEMU (-serial mon:stdio, the default, has it)
    return StdioBackend(ident, signal=props.signal, **_common(ctx, ident, props))


def _null(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev.base import NullBackend

    return NullBackend(ident, **_common(ctx, ident, props))


def _file(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev.fd import FileBackend

    return FileBackend(ident, props.path, append=props.append, input_path=props["input-path"], **_common(ctx, ident, props))


def _pipe(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev.fd import PipeBackend

    return PipeBackend(ident, props.path, **_common(ctx, ident, props))


def _pty(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev.pty import PtyBackend

    return PtyBackend(ident, **_common(ctx, ident, props))


def _socket(ctx: "MachineContext", ident: str, props: "Properties") -> Any:
    from .chardev.socket import SocketBackend

    return SocketBackend(
        ident, path=props.path, host=props.host, port=props.port, server=props.server, wait=props.wait,
        reconnect=props.reconnect, nodelay=props.nodelay, **_common(ctx, ident, props),
    )


_MUX = Property("mux", "bool", False, "share the chardev between several devices; C-a c switches input between them")


@hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register("chardev", "stdio", _stdio, "the VMM's standard input and output",
             properties=(Property("mux", "bool", False, "share it between devices, with the C-a commands: C-a h help, "
                                                        "C-a x quit, C-a b break, C-a c next device "
                                                        "(on for -serial mon:stdio and -nographic's default)"),
                         Property("signal", "bool", True, "a terminal's Ctrl-C ends the VMM instead of reaching the guest")))
    register("chardev", "null", _null, "discards output, never produces input", properties=(_MUX,))
    register("chardev", "file", _file, "output to a file, input from input-path if given",
             properties=(Property("path", "str", required=True, help="the output file"),
                         Property("append", "bool", False, "append instead of truncating"),
                         Property("input-path", "str", None, "a file to read input from"), _MUX))
    register("chardev", "pipe", _pipe, "PATH.out and PATH.in (or PATH both ways): FIFOs or files",
             properties=(Property("path", "str", required=True, help="the FIFO (or the stem of PATH.in/PATH.out)"), _MUX))
    register("chardev", "pty", _pty, "a new pseudo-terminal (its /dev/pts name is printed on stdout)", properties=(_MUX,))
    register("chardev", "socket", _socket, "a unix (path=) or TCP (host=,port=) stream socket, server or client",
             properties=(Property("path", "str", None, "unix socket path"),
                         Property("host", "str", None, "TCP host (server: the address to listen on)"),
                         Property("port", "str", None, "TCP port"),
                         Property("server", "bool", False, "listen for a client instead of connecting"),
                         Property("wait", "bool", True, "server: wait for a client before the guest starts"),
                         Property("reconnect", "int", 0, "client: seconds between attempts to connect again (0: never)"),
                         Property("nodelay", "bool", False, "TCP_NODELAY"), _MUX))


@hookimpl
def kernel_cmdline(ctx: "MachineContext") -> list[str] | None:
    if not ctx.option("auto-kernel-cmdline"):
        return None
    # Linux's virtio_mmio.device=<size>@<base>:<irq> (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)
    return [f"virtio_mmio.device=512@{d.base:#x}:{d.irq}" for d in ctx.virtio_devices]


@hookimpl
def mptable_entries(ctx: "MachineContext") -> list[Any] | None:
    return [ctx.isa_irq_entry(t.irq) for t in ctx.virtio_devices]
