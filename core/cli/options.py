"""The ``microvm run`` options, declared once, with their QEMU spellings.

Three parsers are generated from :data:`RUN_OPTIONS`: the hand-written fast path for
``microvm run`` (:mod:`microvm.cli.fast`, no typer import), typer's ``run`` command (help,
errors), and the QEMU-spelling parser (:mod:`microvm.cli.qemu`, ``microvm -M microvm
-kernel ...``). All three produce the same ``{dest: value}`` dict, which
:func:`microvm.cli.commands.run_command` takes as one keyword per option. Tests check that
the parsers agree on every option and that every option QEMU 7.2 has is either mapped here
or refused in QEMU's words.

Several engineers add rows here: keep each row self-contained (one option, its spellings,
its help), so merges stay easy.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class RunOption(NamedTuple):
    """One option of ``microvm run`` (and of the QEMU spelling).

    ``kind``: ``str`` (one value, the last wins), ``int``, ``flag`` (no value), ``list``
    (repeatable, values collected in order) or ``count`` (repeatable flag, counted).
    ``qemu``: the option's names in QEMU's syntax, without the dash (``-m``, ``-machine``);
    microvm's own options (``--metrics``, ``-v``) are accepted there too, as extensions.
    """

    names: tuple[str, ...]
    dest: str
    kind: str
    default: Any
    help: str
    metavar: str = ""
    qemu: tuple[str, ...] = ()


RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption(("--kernel",), "kernel", "str", None,
              "Kernel: ELF vmlinux (PVH entry) or bzImage. Default: the project's own guest.", "FILE", ("kernel",)),
    RunOption(("--initrd",), "initrd", "str", None, "Initial ramdisk.", "FILE", ("initrd",)),
    RunOption(("--append",), "append", "str", None, "Kernel command line.", "CMDLINE", ("append",)),
    RunOption(("-m", "--memory"), "memory", "str", "128M",
              "Guest RAM, QEMU's syntax: SIZE or size=SIZE (512, 512M, 2G; MiB when bare).", "SIZE", ("m",)),
    RunOption(("--smp",), "smp", "str", "1",
              "vCPUs and topology, QEMU's syntax: N[,sockets=S][,cores=C][,threads=T][,maxcpus=M] (N or cpus=N).",
              "SMP", ("smp",)),
    RunOption(("--no-reboot",), "no_reboot", "flag", False,
              "Exit instead of rebooting when the guest resets (triple fault).", "", ("no-reboot",)),
    RunOption(("-M", "--machine"), "machine", "list", (),
              "microvm[,key=value,...]; `-M microvm,help` (or `microvm machine`) lists the keys.", "OPTIONS",
              ("M", "machine")),
    RunOption(("--device",), "device", "list", (),
              "TYPE[,prop=value,...], e.g. virtio-blk-device,drive=ID; `help` lists the types, TYPE,help the properties.",
              "DEVICE", ("device",)),
    RunOption(("--drive",), "drive", "list", (), "id=ID,file=PATH[,format=raw][,if=none][,readonly=on].", "DRIVE",
              ("drive",)),
    RunOption(("--chardev",), "chardev", "list", (),
              "BACKEND,id=ID[,...] (stdio[,mux=on][,signal=off], null, file,path=P; `help` lists them).", "CHARDEV",
              ("chardev",)),
    RunOption(("--netdev",), "netdev", "list", (), "TYPE,id=ID,... (network backends from plugins; `help` lists them).",
              "NETDEV", ("netdev",)),
    RunOption(("--serial",), "serial", "list", (),
              "Host side of the serial port: mon:stdio, stdio, null, none, file:PATH, chardev:ID "
              "(default: mon:stdio, as QEMU's -nographic).", "CHARDEV", ("serial",)),
    RunOption(("--metrics",), "metrics", "str", None,
              "Write the VM's counters (exits, device accesses, interrupts, bytes) as JSON to FILE at exit.", "FILE",
              ("metrics",)),
    RunOption(("-d",), "log_items", "list", (),
              "Log items, as QEMU's -d: guest_errors logs every guest error (default: the first of each kind, "
              "then summaries).", "ITEMS", ("d",)),
    RunOption(("-v", "--verbose"), "verbose", "count", 0, "More log output (-vv for debug; also every guest error).", "", ("v",)),
    # ---- QEMU's options around the seed's examples (issue 10) --------------------------------
    RunOption(("--enable-kvm",), "enable_kvm", "flag", False,
              "Use KVM (always: microvm has no other accelerator); QEMU's -machine accel=kvm.", "", ("enable-kvm",)),
    RunOption(("--accel",), "accel", "list", (), "kvm[,kernel-irqchip=on|split] (kvm only; `help` lists).", "ACCEL",
              ("accel",)),
    RunOption(("--cpu",), "cpu", "str", "host",
              "CPU model: host (or max), with features: host,-arch-capabilities,+x2apic; `help` lists them.",
              "MODEL", ("cpu",)),
    RunOption(("--bios",), "bios", "str", None,
              "Firmware image (qboot.rom, /usr/share/seabios/bios-microvm.bin, ...): boot through it instead of "
              "loading the kernel directly; a bare name is searched in /usr/share/qemu, /usr/share/seabios.",
              "FILE", ("bios",)),
    RunOption(("--fw-cfg",), "fw_cfg", "list", (),
              "[name=]NAME,file=PATH or [name=]NAME,string=STR: a file in fw_cfg for the firmware or the guest "
              "(names should start with opt/; repeatable).", "ITEM", ("fw_cfg",)),
    RunOption(("--nodefaults",), "nodefaults", "flag", False,
              "No default devices: no serial port unless --serial/--chardev ask for one.", "", ("nodefaults",)),
    RunOption(("--no-user-config",), "no_user_config", "flag", False,
              "Accepted for QEMU compatibility: microvm reads no configuration files.", "", ("no-user-config",)),
    RunOption(("--nographic",), "nographic", "flag", False,
              "No display: the serial port and the C-a commands on stdio (microvm's default anyway).", "",
              ("nographic",)),
    RunOption(("--display",), "display", "str", None, "none (microvm has no graphical display).", "TYPE",
              ("display",)),
    RunOption(("--monitor",), "monitor", "list", (),
              "none (microvm has no human monitor; use --qmp).", "DEV", ("monitor",)),
    RunOption(("--name",), "name", "str", None,
              "NAME[,process=PROCNAME][,debug-threads=on|off]: the guest's name (or guest=NAME), the process name.",
              "NAME", ("name",)),
    RunOption(("--pidfile",), "pidfile", "str", None,
              "Write the VMM's PID to FILE (locked while it runs, removed at exit).", "FILE", ("pidfile",)),
    RunOption(("--daemonize",), "daemonize", "flag", False,
              "Detach once the machine is built (stdio unavailable; errors before that still reach the terminal).",
              "", ("daemonize",)),
    RunOption(("-S", "--prelaunch"), "prelaunch", "flag", False,
              "Start paused (state prelaunch): the vCPUs run only after QMP cont.", "", ("S",)),
    RunOption(("--no-shutdown",), "no_shutdown", "flag", False,
              "When the guest shuts down, stop the VM (state shutdown, QMP still served) instead of exiting.", "",
              ("no-shutdown",)),
    RunOption(("--qmp",), "qmp", "list", (),
              "QMP monitor: unix:PATH,server=on,wait=off or tcp:HOST:PORT,server=on,wait=off (repeatable).", "DEV",
              ("qmp",)),
    RunOption(("--mon",), "mon", "list", (),
              "chardev=ID,mode=control: a QMP monitor on --chardev socket,id=ID,path=P|host=H,port=N,server=on.",
              "MONITOR", ("mon",)),
    RunOption(("-D", "--logfile"), "logfile", "str", None,
              "Write microvm's log (warnings, -v output) to FILE instead of stderr.", "FILE", ("D",)),
)

#: spelling → option, for the fast parser
BY_NAME: dict[str, RunOption] = {n: o for o in RUN_OPTIONS for n in o.names}
#: QEMU name (no dash) → option, for the QEMU-spelling parser
BY_QEMU_NAME: dict[str, RunOption] = {n: o for o in RUN_OPTIONS for n in o.qemu}


def defaults() -> dict[str, Any]:
    """A fresh ``{dest: default}`` (lists are new lists)."""
    return {o.dest: (list(o.default) if o.kind == "list" else o.default) for o in RUN_OPTIONS}


def store(out: dict[str, Any], opt: RunOption, value: str | None) -> None:
    """Record one occurrence of ``opt`` (``value`` None for flags and counts) in ``out``:
    the one rule both spellings follow. Raises ValueError for an ``int`` that is not one."""
    kind, key = opt.kind, opt.dest
    if kind == "flag":
        out[key] = True
    elif kind == "count":
        out[key] += 1
    elif kind == "list":
        if key == "machine":
            # QEMU 7.2: -M kernel=/initrd=/append=/firmware= and -kernel/-initrd/-append/-bios
            # set the same machine properties, the later on the line winning
            from ..options import split_boot_opts

            assert value is not None
            kept, boot = split_boot_opts(value)
            out.update(boot)
            if kept is None:
                return
            value = kept
        out[key].append(value)
    elif kind == "int":
        assert value is not None
        if not value.isascii():  # int() takes other scripts' digits; typer does not
            raise ValueError(value)
        out[key] = int(value)
    else:
        out[key] = value
