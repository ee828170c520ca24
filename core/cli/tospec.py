"""The run options (either spelling) → a :class:`microvm.spec.MachineSpec`, with QEMU's
meaning for every option: what ``-nographic``, ``-nodefaults``, ``-display none``,
``-monitor`` and ``-qmp`` imply for the serial port (``qemu_create_default_devices`` in
QEMU 7.2's ``softmmu/vl.c``), how ``-accel``/``-enable-kvm``/``-M accel=`` combine, and
QEMU's ``-m`` and ``-smp`` syntax. Errors are :class:`~microvm.errors.ConfigError` in QEMU's
words; the caller words them for the spelling used.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from ..errors import ConfigError

#: accelerators QEMU knows (the ones this QEMU 7.2 build has: kvm, tcg)
QEMU_ACCELS = ("kvm", "tcg")
#: kvm-accel properties QEMU 7.2 has that microvm does not
KVM_ACCEL_PROPS = ("kvm-shadow-mem", "dirty-ring-size", "notify-vmexit", "notify-window", "xen-version",
                   "xen-evtchn-max-pirq", "xen-gnttab-max-frames")
#: -display types QEMU has; microvm has none of them but ``none``
QEMU_DISPLAYS = ("none", "gtk", "sdl", "curses", "vnc", "egl-headless", "dbus", "spice-app", "cocoa")


def last_wins(text: str, positional: str, keys: tuple[str, ...] | None = None,
              flags: list[tuple[str, str, str]] | None = None) -> dict[str, str]:
    """QEMU's QemuOpts view of ``a,k=v`` (:func:`microvm.options.qemu_opts`: ``,,`` is a
    comma, the first item may omit its key, a key given twice keeps the last value, a later
    item without ``=`` is a short-form boolean)."""
    from ..options import qemu_opts

    return qemu_opts(text, positional, keys, flags)


def machine_strings(machine: list[str]) -> tuple[list[str], list[str]]:
    """The ``-M`` values without ``accel=`` (returned apart: QEMU's machine-level accelerator
    list), with QEMU's legacy ``kernel_irqchip`` spelled ``kernel-irqchip``."""
    from ..options import join_machine_opts, split_machine_opts

    kept, accels = [], []
    for text in machine:
        try:
            pairs = split_machine_opts(text)
        except ConfigError:
            kept.append(text)  # reported when the machine's options are parsed
            continue
        if not any(k in ("accel", "kernel_irqchip") for k, _ in pairs):
            kept.append(text)
            continue
        accels += [v for k, v in pairs if k == "accel"]
        rest = join_machine_opts([("kernel-irqchip" if k == "kernel_irqchip" else k, v) for k, v in pairs if k != "accel"], text)
        if rest is not None:
            kept.append(rest)
    return kept, accels


def apply_boot_opts(o: dict[str, Any]) -> None:
    """Move ``-M kernel=/initrd=/append=/firmware=`` into ``o``'s kernel/initrd/append/bios.
    Both parsers did it already, in command line order (:func:`microvm.cli.options.store`);
    this is for a caller that built ``o`` itself (typer): there ``-M`` wins."""
    from ..options import split_boot_opts

    machine = []
    for text in o["machine"]:
        kept, boot = split_boot_opts(text)
        o.update(boot)
        if kept is not None:
            machine.append(kept)
    o["machine"] = machine


def accel_irqchip(accel: list[str], machine_accels: list[str]) -> str | None:
    """Check ``-accel`` and ``-M accel=`` (QEMU: not both) and return ``-accel kvm``'s
    ``kernel-irqchip`` if given. KVM must come first; a fallback after it is never used."""
    if accel and machine_accels:
        raise ConfigError('The -accel and "-machine accel=" options are incompatible')
    for text in machine_accels:
        first = text.split(":")[0]
        if first not in QEMU_ACCELS:
            raise ConfigError(f"-machine accel={text}: invalid accelerator {first}")
        if first != "kvm":
            raise ConfigError(f"-machine accel={text}: unsupported on microvm (microvm runs on KVM only)")
    from ..options import duplicate_id, qemu_opts

    duplicate_id("-accel", accel, "accel")
    irqchip = None
    for n, text in enumerate(accel):
        try:
            props = qemu_opts(text, "accel", id_ok=True)
        except ConfigError as e:
            raise ConfigError(f"-accel {text}: {e}") from None
        name = props.pop("accel", "")
        if name not in QEMU_ACCELS:
            raise ConfigError(f"-accel {text}: invalid accelerator {name}")
        if name != "kvm":
            if n == 0:
                raise ConfigError(f"-accel {text}: unsupported on microvm (microvm runs on KVM only)")
            continue
        for key, value in props.items():
            if key == "kernel-irqchip":
                if value not in ("on", "off", "split"):
                    raise ConfigError(f"-accel {text}: Parameter 'kernel-irqchip' does not accept value '{value}'")
                if irqchip is None:
                    irqchip = value
            elif key in KVM_ACCEL_PROPS:
                raise ConfigError(f"-accel {text}: {key} is unsupported on microvm")
            else:
                raise ConfigError(f"-accel {text}: Property 'kvm-accel.{key}' not found")
    return irqchip


#: QEMU's default RAM size, also what ``-m 0`` and ``-m ""`` give there
DEFAULT_RAM = 128 << 20


def parse_memory(text: str) -> int:
    """QEMU's ``-m [size=]SIZE[,slots=N,maxmem=SIZE]`` (sizes as :func:`microvm.sizes.
    parse_memory_size` reads them, QEMU 7.2's rules); no memory hotplug."""
    from ..sizes import parse_memory_size

    from ..options import qemu_opts

    text = str(text)

    def check(key: str, value: str) -> None:  # in order, as QEMU checks each item
        if key in ("slots", "maxmem"):
            raise ConfigError("memory hotplug (slots=, maxmem=) is unsupported on microvm")
        if key != "size":
            raise ConfigError(f"Invalid parameter '{key}'")
        if value == "":  # QEMU's qemu_opt_parse of an empty size: "" alone is the default
            raise ConfigError("Parameter 'size' expects a non-negative number below 2^64")

    if text == "":
        return DEFAULT_RAM
    try:
        props = qemu_opts(text, "size", each=check)
    except ConfigError as e:
        raise ConfigError(f"-m {text}: {e}") from None
    size = props.get("size")
    if size is None:
        return DEFAULT_RAM
    try:
        return parse_memory_size(size) or DEFAULT_RAM
    except ConfigError as e:  # worded "-m SIZE: ...": name the whole argument
        msg, prefix = str(e), f"-m {size}:"
        raise ConfigError(f"-m {text}:{msg[len(prefix):]}" if msg.startswith(prefix) else f"-m {text}: {msg}") from None


def parse_name(text: str | None) -> tuple[str | None, str | None]:
    """``-name [guest=]NAME[,process=PROC][,debug-threads=on|off]`` → (guest name, process name)."""
    if text is None:
        return None, None
    try:
        props = last_wins(text, "guest")
    except ConfigError as e:
        raise ConfigError(f"-name {text}: {e}") from None
    for key, value in props.items():
        if key not in ("guest", "process", "debug-threads"):
            raise ConfigError(f"-name {text}: Invalid parameter '{key}'")
        if key == "debug-threads" and value not in ("on", "off", "yes", "no", "true", "false"):
            raise ConfigError(f"-name {text}: Parameter 'debug-threads' expects 'on' or 'off'")
    return props.get("guest"), props.get("process")


def uses_stdio(serial: list[str], chardevs: list[str]) -> str | None:
    """The option that puts a chardev on stdio, if any (for ``-daemonize``)."""
    for s in serial:
        if s in ("stdio", "mon:stdio"):
            return f"-serial {s}"
    for c in chardevs:
        if c.split(",")[0] in ("stdio", "backend=stdio") or ",backend=stdio" in c:
            return f"-chardev {c}"
    return None


def no_display(o: dict[str, Any]) -> bool:
    """The line asks for no display: ``-nographic``, or no display option at all (microvm
    has no graphical display, so it then behaves as ``-nographic``; with ``-daemonize`` as
    ``-display none``, where stdio is not there). ``-display none`` keeps QEMU's graphics=on."""
    return bool(o["nographic"] or (o["display"] is None and not o["daemonize"]))


def default_serial(o: dict[str, Any]) -> list[str]:
    """The serial ports, as QEMU 7.2's ``qemu_create_default_devices`` makes them.

    Without ``-serial`` and ``-nodefaults``, serial0 exists: with ``-nographic`` it is on
    stdio, multiplexed with the monitor (``mon:stdio``: C-a commands, Ctrl-C to the guest)
    unless ``-monitor``/``-qmp`` took the monitor away (then plain ``stdio``: no C-a commands,
    Ctrl-C ends the VMM); with ``-display none`` it is on a virtual console nobody sees
    (``null``). microvm has no graphical display, so without a display option it behaves
    as ``-nographic`` (as ``-display none`` with ``-daemonize``, where stdio is not there).
    ``-nodefaults`` without ``-serial`` leaves the machine without a serial port.
    """
    if o["serial"]:
        return list(o["serial"])
    if o["nodefaults"]:
        return ["none"]
    if not no_display(o):
        return ["null"]
    monitor_taken = bool(o["monitor"] or o["qmp"] or o["mon"])
    return ["stdio"] if monitor_taken else ["mon:stdio"]


def build_spec(o: dict[str, Any], warn: Callable[[str], None]) -> Any:
    """The :class:`MachineSpec` the options describe (validated). ``kernel`` may be None
    (the caller fills in the default guest)."""
    from ..spec import MachineSpec
    from ..topology import parse_smp

    display = o["display"]
    if display is not None and display != "none":
        kind = display.split(",")[0].split("=")[0]
        if kind in QEMU_DISPLAYS:
            raise ConfigError(f"-display {display}: unsupported on microvm (microvm has no display; use -display none)")
        raise ConfigError(f"-display {display}: Parameter 'type' does not accept value '{kind}'")
    for mon in o["monitor"]:
        if mon != "none":
            raise ConfigError(f"-monitor {mon}: unsupported on microvm (microvm has no human monitor; use -qmp)")
    if o["daemonize"] and o["nographic"]:
        raise ConfigError("-nographic cannot be used with -daemonize")
    apply_boot_opts(o)
    from ..options import duplicate_id

    duplicate_id("--fw-cfg", [t for t in o["fw_cfg"] if isinstance(t, str)], "name")
    serial = default_serial(o)
    if o["daemonize"]:
        where = uses_stdio(serial, o["chardev"])
        if where is not None:
            raise ConfigError(f"{where}: cannot use stdio with -daemonize")
    machine, machine_accels = machine_strings(o["machine"])
    if o["enable_kvm"]:
        machine_accels = machine_accels or ["kvm"]
    irqchip = accel_irqchip(o["accel"], machine_accels)
    if irqchip is not None:  # -accel's value wins over -M kernel-irqchip=, as in QEMU
        machine.append(f"kernel-irqchip={irqchip}")
    if no_display(o):
        # QEMU 7.2's -nographic puts graphics=off into the machine options (fw_cfg's
        # NOGRAPHIC 1: SeaBIOS then writes its console to the serial port, which is on stdio);
        # first, so that a -M graphics=on the user wrote wins
        machine.insert(0, "graphics=off")
    if o["cpu"] != "host":
        from ..boot.cpufeatures import parse_cpu

        try:
            parse_cpu(o["cpu"])
        except ConfigError as e:
            text = str(e)
            raise ConfigError(text if text.startswith("-cpu") else f"-cpu {o['cpu']}: {text}") from None
    # QEMU also warns about explicit zeros (-smp 0); not here: a line that fails later (an
    # unknown -M key, found when the machine is made) must stay one line on stderr
    topology = parse_smp(o["smp"] if o["smp"] is not None else "1")
    name, _process = parse_name(o["name"])
    metrics = os.path.abspath(o["metrics"]) if o["metrics"] else o["metrics"]  # -daemonize changes to /
    spec = MachineSpec(
        kernel=o["kernel"], initrd=o["initrd"], append=o["append"] or "", mem_size=parse_memory(o["memory"]),
        smp=topology.cpus, topology=topology, cpu=o["cpu"], no_reboot=o["no_reboot"], machine=machine,
        devices=list(o["device"]), drives=list(o["drive"]), chardevs=list(o["chardev"]),
        netdevs=list(o["netdev"]), serial=serial, metrics=metrics, name=name,
        qmp=list(o["qmp"]), mon=list(o["mon"]), prelaunch=o["prelaunch"], no_shutdown=o["no_shutdown"],
        bios=o["bios"], fw_cfg=list(o["fw_cfg"]),
    )
    spec.validate()
    for text, (name, _) in zip(spec.fw_cfg, spec.fw_cfg_files):
        if isinstance(text, str):
            from ..options import qemu_opts, short_flag_warning

            flags: list[tuple[str, str, str]] = []
            qemu_opts(text, "name", flags=flags)  # parsed once already: only its short forms
            for flag in flags:
                warn(short_flag_warning("--fw-cfg", text, flag))
        if not name.startswith("opt/"):  # QEMU 7.2's warning, word for word
            warn(f'--fw-cfg {text}: externally provided fw_cfg item names should be prefixed with "opt/"')
    _warn_short_flags(o, warn)
    for option, configs in (("-chardev", spec.chardev_configs), ("-netdev", spec.netdev_configs)):
        for cfg in configs.values():  # QEMU 7.2 accepts these with a warning
            for given, key, value in cfg.short_flags:
                warn(f"{option} {cfg.text}: short-form boolean option '{given}' deprecated; "
                     f"please use {key}={value} instead")
    if spec.prelaunch and not spec.qmp and not spec.mon:
        # QEMU just waits; microvm has no human monitor on the console to say cont with
        warn("-S without -qmp or -mon: nothing can continue the VM, it stays paused until it is ended")
    return spec


def _warn_short_flags(o: dict[str, Any], warn: Callable[[str], None]) -> None:
    """QEMU 7.2's warning for each short-form boolean (``-name vm,debug-threads``) in the
    QemuOpts options that were parsed before (-fw_cfg's are warned with its other warning)."""
    from ..options import qemu_opts, short_flag_warning

    texts = [("-m", o["memory"], "size"), ("--name", o["name"], "guest")]
    texts += [("--accel", text, "accel") for text in o["accel"]]
    for option, text, implied in texts:
        if text is None:
            continue
        flags: list[tuple[str, str, str]] = []
        qemu_opts(str(text), implied, flags=flags)
        for flag in flags:
            warn(short_flag_warning(option, str(text), flag))
