"""The ``microvm run`` options, declared once.

Both parsers are generated from :data:`RUN_OPTIONS`: the hand-written fast path
(:mod:`microvm.cli.fast`, no typer import) and typer's ``run`` command (help, errors), and
:func:`microvm.cli.commands.run_command` takes one keyword per option. A test checks that
the two parsers agree on every option.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class RunOption(NamedTuple):
    """One option of ``microvm run``.

    ``kind``: ``str`` (one value, the last wins), ``int``, ``flag`` (no value), ``list``
    (repeatable, values collected in order) or ``count`` (repeatable flag, counted).
    """

    names: tuple[str, ...]
    dest: str
    kind: str
    default: Any
    help: str
    metavar: str = ""


RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption(("--kernel",), "kernel", "str", None,
              "Kernel: ELF vmlinux (PVH entry) or bzImage. Default: the project's own guest.", "FILE"),
    RunOption(("--initrd",), "initrd", "str", None, "Initial ramdisk.", "FILE"),
    RunOption(("--bios",), "bios", "str", None,
              "Firmware image (qboot.rom, /usr/share/seabios/bios-microvm.bin, ...): boot through it instead of "
              "loading the kernel directly; a bare name is searched in /usr/share/qemu, /usr/share/seabios.", "FILE"),
    RunOption(("--append",), "append", "str", None, "Kernel command line.", "CMDLINE"),
    RunOption(("-m", "--memory"), "memory", "str", "128M", "Guest RAM (QEMU syntax: 512, 512M, 2G).", "SIZE"),
    RunOption(("--smp",), "smp", "int", 1, "Number of vCPUs.", "N"),
    RunOption(("--no-reboot",), "no_reboot", "flag", False,
              "Exit instead of rebooting when the guest resets (triple fault)."),
    RunOption(("-M", "--machine"), "machine", "list", (),
              "microvm[,key=value,...]; see `microvm machine` for the keys.", "OPTIONS"),
    RunOption(("--device",), "device", "list", (),
              "TYPE[,prop=value,...], e.g. virtio-blk-device,drive=ID; TYPE,help lists the properties.", "DEVICE"),
    RunOption(("--drive",), "drive", "list", (), "id=ID,file=PATH[,format=raw][,if=none][,readonly=on].", "DRIVE"),
    RunOption(("--chardev",), "chardev", "list", (), "BACKEND,id=ID[,...] (stdio, null, file,path=P).", "CHARDEV"),
    RunOption(("--netdev",), "netdev", "list", (), "TYPE,id=ID,... (network backends from plugins).", "NETDEV"),
    RunOption(("--serial",), "serial", "list", (),
              "Host side of the serial port: stdio (default), null, none, file:PATH, chardev:ID.", "CHARDEV"),
    RunOption(("--qmp",), "qmp", "list", (),
              "QMP monitor: unix:PATH,server=on,wait=off or tcp:HOST:PORT,server=on,wait=off (repeatable).", "ADDRESS"),
    RunOption(("--mon",), "mon", "list", (),
              "chardev=ID,mode=control: a QMP monitor on --chardev socket,id=ID,path=P|host=H,port=N,server=on.", "MONITOR"),
    RunOption(("-S", "--prelaunch"), "prelaunch", "flag", False, "Start paused (state prelaunch) until QMP cont."),
    RunOption(("--no-shutdown",), "no_shutdown", "flag", False,
              "When the guest shuts down, stop the VM (state shutdown, QMP still served) instead of exiting."),
    RunOption(("--name",), "name", "str", None, "A name for the VM (QMP query-name).", "NAME"),
    RunOption(("--metrics",), "metrics", "str", None,
              "Write the VM's counters (exits, device accesses, interrupts, bytes) as JSON to FILE at exit.", "FILE"),
    RunOption(("-d",), "log_items", "list", (),
              "Log items, as QEMU's -d: guest_errors logs every guest error (default: the first of each kind, "
              "then summaries).", "ITEMS"),
    RunOption(("-v", "--verbose"), "verbose", "count", 0, "More log output (-vv for debug; also every guest error)."),
)

#: spelling → option, for the fast parser
BY_NAME: dict[str, RunOption] = {n: o for o in RUN_OPTIONS for n in o.names}


def defaults() -> dict[str, Any]:
    """A fresh ``{dest: default}`` (lists are new lists)."""
    return {o.dest: (list(o.default) if o.kind == "list" else o.default) for o in RUN_OPTIONS}
