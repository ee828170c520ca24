"""QEMU's command line: ``microvm -M microvm -enable-kvm -m 512m -kernel vmlinux ...``.

When the first argument starts with ``-``, :func:`microvm.cli.main.main` hands the whole line
here. It is tokenized as ``qemu-system-x86_64`` tokenizes it (``softmmu/vl.c``,
``lookup_opt``): single-dash options (``--opt`` the same), an option's argument is always the
next word, even when it starts with a dash, and there is no ``-opt=value``. Each option maps
to the same row of :data:`microvm.cli.options.RUN_OPTIONS` as its ``microvm run``
spelling, so both spellings build the same machine through
:func:`microvm.cli.commands.run_options`. Hand-written and typer-free (start-up time).

Every other option QEMU 7.2 has (:data:`QEMU_ARG` / :data:`QEMU_NOARG`: read from the option
table compiled into Debian's ``qemu-system-x86_64`` 7.2, names and whether each takes an
argument) is refused in QEMU's one-line form, ``microvm: -vga std: unsupported on microvm``,
with QEMU's exit status 1; a word that is no QEMU option is ``-bogus: invalid option``.
"""
from __future__ import annotations

from typing import Any

from .options import BY_QEMU_NAME, RUN_OPTIONS, defaults, store

#: QEMU 7.2 (x86_64) options that take an argument (``HAS_ARG``)
QEMU_ARG = frozenset((
    "machine", "M", "cpu", "accel", "smp", "numa", "add-fd", "set", "global", "boot", "m",
    "mem-path", "k", "audio", "audiodev", "device", "name", "uuid", "fda", "fdb", "hda", "hdb",
    "hdc", "hdd", "cdrom", "blockdev", "drive", "mtdblock", "sd", "fsdev", "virtfs", "iscsi",
    "usbdevice", "display", "spice", "rotate", "vga", "vnc", "acpitable", "smbios", "netdev",
    "nic", "net", "chardev", "tpmdev", "bios", "pflash", "kernel", "append", "initrd", "dtb",
    "compat", "fw_cfg", "serial", "parallel", "monitor", "qmp", "qmp-pretty", "mon", "debugcon",
    "pidfile", "overcommit", "gdb", "d", "D", "dfilter", "seed", "L", "xen-domid", "action",
    "loadvm", "option-rom", "rtc", "icount", "watchdog-action", "echr", "incoming", "chroot",
    "runas", "sandbox", "readconfig", "trace", "plugin", "qtest", "qtest-log", "msg",
    "dump-vmstate", "object",
))
#: QEMU 7.2 (x86_64) options without an argument
QEMU_NOARG = frozenset((
    "h", "help", "version", "mem-prealloc", "audio-help", "snapshot", "usb", "nographic",
    "portrait", "full-screen", "win2k-hack", "no-fd-bootchk", "no-acpi", "no-hpet", "singlestep",
    "preconfig", "S", "s", "enable-kvm", "xen-attach", "xen-domid-restrict", "no-reboot",
    "no-shutdown", "daemonize", "only-migratable", "nodefaults", "no-user-config",
    "async-teardown", "enable-sync-profile",
))
#: QEMU options of other targets (name → takes an argument): "Option not supported for this
#: target" in qemu-system-x86_64, after their argument was read
QEMU_OTHER_TARGETS = {"g": True, "prom-env": True, "semihosting": False, "semihosting-config": True, "old-param": False}
#: what the QEMU spelling does itself, not a run option
ACTIONS = {"h": "help", "help": "help", "version": "version"}
#: QEMU options microvm accepts and has nothing to do for: what QEMU turns off, microvm never has
NOOPS = {
    "no-acpi": "microvm has no ACPI",
    "no-hpet": "microvm has no HPET",
}
#: a pointer to what microvm offers instead, for refused options
HINTS = {
    **{n: "microvm has only virtio-mmio disks: -drive id=ID,file=FILE,format=raw,if=none "
          "-device virtio-blk-device,drive=ID" for n in ("hda", "hdb", "hdc", "hdd", "cdrom", "fda", "fdb", "sd",
                                                         "mtdblock", "pflash", "blockdev", "snapshot")},
    **{n: "microvm's network devices are -netdev tap,id=ID -device virtio-net-device,netdev=ID"
       for n in ("net", "nic")},
    **{n: "microvm has no display" for n in ("vga", "vnc", "spice", "full-screen", "portrait", "rotate")},
    "mon": "microvm has no human monitor; use -qmp",
    "qmp-pretty": "use -qmp",
    "rtc": "use -M microvm,rtc=on,rtc-base=utc|localtime|DATE",
    "gdb": "no gdb stub", "s": "no gdb stub",
    "parallel": "microvm has no parallel port",
    "usb": "microvm has no USB", "usbdevice": "microvm has no USB",
}


class QemuUsageError(Exception):
    """A malformed QEMU-spelling command line: ``microvm: MESSAGE``, status 1 (as QEMU)."""


def parse_qemu(argv: list[str]) -> tuple[dict[str, Any], str | None]:
    """Parse a QEMU-spelling command line into the run options; the second item is an
    action (``help``, ``version``) when the line asks for one instead of a VM."""
    out = defaults()
    i, n = 0, len(argv)
    while i < n:
        word = argv[i]
        if not word.startswith("-") or word == "-":
            raise QemuUsageError(
                f"{word}: a disk image argument (QEMU's IDE hard disk 0) is unsupported on microvm; use "
                f"-drive id=ID,file={word},format=raw,if=none -device virtio-blk-device,drive=ID")
        name = word[2:] if word.startswith("--") else word[1:]
        opt = BY_QEMU_NAME.get(name)
        if opt is not None:
            takes_arg = opt.kind not in ("flag", "count")
        elif name in QEMU_ARG or name in QEMU_NOARG:
            takes_arg = name in QEMU_ARG
        elif name in QEMU_OTHER_TARGETS:
            takes_arg = QEMU_OTHER_TARGETS[name]
        else:
            raise QemuUsageError(f"{word}: invalid option")
        value = None
        if takes_arg:
            if i + 1 >= n:
                raise QemuUsageError(f"{word}: requires an argument")
            value = argv[i + 1]
            i += 2
        else:
            i += 1
        where = f"{word} {value}" if value is not None else word
        if name in QEMU_OTHER_TARGETS:
            raise QemuUsageError(f"{where}: Option not supported for this target")
        if opt is not None:
            try:
                store(out, opt, value)
            except ValueError:  # an int option (none in QEMU's spelling today)
                raise QemuUsageError(f"{word} {value}: expects an integer") from None
        elif name in ACTIONS:
            return out, ACTIONS[name]
        elif name == "no-acpi":  # QEMU 7.2 sets the machine property: -M acpi=off
            out["machine"].append("acpi=off")
        elif name not in NOOPS:
            hint = HINTS.get(name)
            raise QemuUsageError(f"{where}: unsupported on microvm" + (f" ({hint})" if hint else ""))
    return out, None


def version_text() -> str:
    """``-version``: QEMU's first line (what tools parse), then what microvm is."""
    from .. import __version__

    return (f"QEMU emulator version 7.2.0 (microvm {__version__})\n"
            "microvm implements QEMU 7.2's microvm machine type on KVM with QEMU's command line; it is not QEMU.\n")


def help_text() -> str:
    """``-h``: QEMU's layout, generated from the options table."""
    from .. import __version__

    lines = [f"microvm {__version__}: QEMU 7.2's microvm machine on KVM, every device a plugin",
             "usage: microvm [options]            (QEMU's spelling)",
             "       microvm run [--options]      (the same options; microvm run --help)",
             "       microvm plugins | machine | guest path | guest build",
             "",
             "-h or -help     display this help and exit",
             "-version        display version information and exit"]
    for o in RUN_OPTIONS:
        for q in o.qemu:
            head = f"-{q}" + (f" {o.metavar.lower()}" if o.kind not in ("flag", "count") else "")
            extension = "" if q in QEMU_ARG or q in QEMU_NOARG else " (microvm)"
            if len(head) < 16:
                lines.append(f"{head:<16}{o.help}{extension}")
            else:
                lines.append(head)
                lines.append(f"{'':16}{o.help}{extension}")
    lines += ["", "Other QEMU options are refused with the reason; -device help, -M microvm,help, -netdev help,",
              "-chardev help and -cpu help list what the installed plugins provide.",
              "", "With the console on stdio multiplexed (the default, -serial mon:stdio), press 'ctrl-a h' to get some help."]
    return "\n".join(lines) + "\n"


def qemu_main(argv: list[str]) -> int:
    """``microvm -opt ...``: parse, answer -h/-version, else run as ``microvm run`` would,
    with QEMU's error form and status."""
    import sys

    try:
        options, action = parse_qemu(argv)
    except QemuUsageError as e:
        from .commands import say
        from .main import oneline

        say(f"microvm: {oneline(str(e))}\n")
        return 1
    if action is not None:
        from .commands import say

        say(version_text() if action == "version" else help_text(), sys.stdout)
        return 0
    from .commands import run_options

    return run_options(options, style="qemu")
