"""What the commands do, shared by the fast path and typer."""
from __future__ import annotations

import sys
from typing import Any

from .main import error, setup_logging
from ..log import get_logger

log = get_logger("microvm.cli")
#: QEMU's default RAM size, also what ``-m 0`` gives there
DEFAULT_RAM = 128 << 20
#: the -d log items microvm knows (QEMU has more, for its TCG)
LOG_ITEMS = frozenset({"guest_errors"})


def run_command(**options: Any) -> int:
    """``microvm run``: one keyword per option of :data:`microvm.cli.options.RUN_OPTIONS`
    (missing ones take their defaults)."""
    from .options import defaults

    unknown = set(options) - set(defaults())
    if unknown:
        raise TypeError(f"run_command: unknown options {sorted(unknown)}")
    o = {**defaults(), **options}
    kernel, initrd, append, machine, device = o["kernel"], o["initrd"], o["append"], o["machine"], o["device"]
    setup_logging(o["verbose"])
    items = {i for text in o["log_items"] for i in text.split(",") if i}
    unknown = items - LOG_ITEMS
    if unknown:
        return error(f"-d {','.join(sorted(unknown))}: unknown log item (supported: {', '.join(sorted(LOG_ITEMS))})")
    from ..log import log_every_event

    log_every_event("guest_errors" in items or o["verbose"] > 0)
    from ..errors import MicrovmError, UserError
    from ..sizes import parse_memory_size
    from ..spec import MachineSpec

    try:
        spec = MachineSpec(
            kernel=kernel, initrd=initrd, append=append or "", mem_size=parse_memory_size(o["memory"]) or DEFAULT_RAM, smp=o["smp"],
            no_reboot=o["no_reboot"], machine=list(machine), devices=list(device), drives=list(o["drive"]),
            chardevs=list(o["chardev"]), netdevs=list(o["netdev"]), serial=list(o["serial"]) or ["stdio"],
            metrics=o["metrics"], qmp=list(o["qmp"]), mon=list(o["mon"]), prelaunch=o["prelaunch"],
            no_shutdown=o["no_shutdown"], name=o["name"], bios=o["bios"],
        )
        spec.validate()
        if kernel is None and spec.bios is None and spec.drives:
            _firmware_for_disk(spec)
        if kernel is None and spec.bios is None:
            from ..guest import GuestBuildError, GuestNotBuilt, default_guest

            try:
                g = default_guest(build=True, progress=lambda s: sys.stderr.write(f"microvm: guest build: {s}\n"))
            except (GuestNotBuilt, GuestBuildError) as e:
                return error(str(e))
            # the ELF vmlinux through its PVH entry: no decompressor to run, which an emulating
            # host KVM executes a thousand times slower (about a minute for the bzImage here)
            spec.kernel = str(g.vmlinux)
            if initrd is None:
                spec.initrd = str(g.initramfs)
            if append is None:
                spec.append = g.cmdline
        from ..machine import run_spec

        return run_spec(spec)
    except UserError as e:
        return error(str(e))
    except MicrovmError as e:
        sys.stderr.write(f"microvm: {e}\n")
        return 1
    except OSError as e:  # /dev/kvm missing, KVM ioctls refused
        sys.stderr.write(f"microvm: {e}\n")
        return 1
    except Exception as e:  # a bug: say so in one line; the traceback is for -v
        log.debug("internal error", exc_info=True)
        sys.stderr.write(f"microvm: internal error: {type(e).__name__}: {e} (run with -v -v for the traceback)\n")
        return 1


def _firmware_for_disk(spec: Any) -> None:
    """No --kernel but a disk: boot the default firmware, as QEMU's microvm does without
    ACPI (qboot.rom), and say plainly what will happen: neither firmware can boot from a
    virtio-mmio disk here."""
    from ..boot.firmware import DEFAULT_FIRMWARE

    spec.bios = DEFAULT_FIRMWARE
    sys.stderr.write(
        f"microvm: no --kernel: booting the firmware {DEFAULT_FIRMWARE}, as QEMU's microvm does. It cannot boot "
        "from the disk: qboot boots only a kernel handed over through fw_cfg and otherwise halts silently, and "
        "SeaBIOS (--bios /usr/share/seabios/bios-microvm.bin) finds virtio-mmio disks only through ACPI, which "
        "microvm does not have ('No bootable device.'). To boot from the disk, give its kernel: "
        "--kernel FILE --append 'root=/dev/vda ...'. C-a x quits.\n"
    )


def plugins_command() -> int:
    from ..plugins import plugin_host

    rows = plugin_host().describe()
    width = max((len(r["name"]) for r in rows), default=4)
    dwidth = max((len(f"{r['dist']} {r['version']}") for r in rows), default=4)
    for r in rows:
        dist = f"{r['dist']} {r['version']}"
        print(f"{r['name']:<{width}}  {dist:<{dwidth}}  {', '.join(r['hooks'])}")
    return 0


def machine_command() -> int:
    from ..plugins import plugin_host

    host = plugin_host()
    opts = host.options.options
    print("microvm machine options (-M microvm,KEY=VALUE,...):")
    for name in sorted(opts):
        o = opts[name]
        default = {True: "on", False: "off", None: "auto"}.get(o.default, o.default) if not isinstance(o.default, int) or isinstance(o.default, bool) else o.default
        kind = o.kind if o.kind != "choice" else "|".join(o.choices)
        line = f"  {name}={kind} (default {default}"
        if o.auto_means:
            line += f"; auto means {o.auto_means}"
        line += f") [{o.plugin}]\n      {o.help}"
        print(line)
    if host.irqchips:
        print("kernel-irqchip values: " + ", ".join(f"{n} ({r.help})" for n, r in sorted(host.irqchips.items())))
    if host.device_types:
        print("device types: " + ", ".join(sorted(host.device_types)))
    return 0


def guest_build_command(force: bool, variant: str | None = None) -> int:
    from ..guest import GuestBuildError, build

    try:
        g = build(force=force, progress=lambda s: sys.stderr.write(f"microvm: guest build: {s}\n"), variant=variant)
    except (GuestBuildError, ValueError) as e:  # ValueError: an unknown variant
        return error(str(e))
    print(f"kernel    {g.kernel}\nvmlinux   {g.vmlinux}\ninitramfs {g.initramfs}\ncmdline   {g.cmdline}")
    return 0


def _run_signature() -> Any:
    """run_command's signature: the option table's keywords, so callers (and tests) can bind
    arguments by name as if they were spelled out."""
    import inspect

    from .options import RUN_OPTIONS

    return inspect.Signature([inspect.Parameter(o.dest, inspect.Parameter.KEYWORD_ONLY, default=o.default) for o in RUN_OPTIONS])


run_command.__signature__ = _run_signature()  # type: ignore[attr-defined]
