"""What the commands do, shared by the fast path and typer."""
from __future__ import annotations

import sys
from typing import Any

from .main import error, oneline, setup_logging
from ..log import get_logger, say

log = get_logger("microvm.cli")
#: the -d log items microvm has, with QEMU's descriptions (``-d help``)
LOG_ITEMS = {
    "guest_errors": "log when the guest OS does something invalid (eg accessing a\nnon-existent register)",
}
#: QEMU 7.2's other -d items: they trace its TCG emulator or user-mode emulation, which
#: microvm does not have
QEMU_LOG_ITEMS = frozenset({"out_asm", "in_asm", "op", "op_opt", "op_ind", "int", "exec", "cpu", "fpu", "mmu",
                            "pcall", "cpu_reset", "unimp", "page", "nochain", "plugin", "strace", "tid"})


def log_items_help() -> str:
    """``-d help``, in QEMU's layout: the items microvm has."""
    lines = ["Log items (comma separated):", *(f"{n:<15} {h}" for n, h in LOG_ITEMS.items()),
             "", "QEMU's other items (" + ", ".join(sorted(QEMU_LOG_ITEMS)) + ") trace its TCG emulator: "
             "not in microvm."]
    return "\n".join(lines) + "\n"


def run_command(**options: Any) -> int:
    """``microvm run``: one keyword per option of :data:`microvm.cli.options.RUN_OPTIONS`
    (missing ones take their defaults)."""
    from .options import defaults

    unknown = set(options) - set(defaults())
    if unknown:
        raise TypeError(f"run_command: unknown options {sorted(unknown)}")
    return run_options({**defaults(), **options}, style="run")


class Reporter:
    """How errors are worded for the spelling used: ``microvm run`` says ``microvm: error:
    MESSAGE`` with status 2; the QEMU spelling says ``microvm: MESSAGE`` with QEMU's status 1
    and its option names (``-device``, not ``--device``). Writing never fails: stderr may be
    closed or a broken pipe (issue 12), and the exit status must stay what it would be."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.usage_status = 1 if style == "qemu" else 2

    def usage(self, msg: str) -> int:
        msg = oneline(msg)
        if self.style == "qemu":
            say(f"microvm: {qemu_words(msg)}\n")
        else:
            say(f"microvm: error: {msg}\n")
        return self.usage_status

    def failure(self, msg: str) -> int:
        msg = oneline(msg)
        say(f"microvm: {qemu_words(msg) if self.style == 'qemu' else msg}\n")
        return 1

    def warn(self, msg: str) -> None:
        msg = oneline(msg)
        say(f"microvm: warning: {qemu_words(msg) if self.style == 'qemu' else msg}\n")


def qemu_words(msg: str) -> str:
    """``--device foo: ...`` → ``-device foo: ...``: the option names as the QEMU spelling
    writes them, wherever a message quotes one."""
    from .options import BY_NAME

    words = msg.split(" ")
    for i, w in enumerate(words):
        if w.startswith("--"):
            name = w.rstrip(":,;)")
            opt = BY_NAME.get(name)
            if opt is not None and opt.qemu:
                words[i] = "-" + opt.qemu[0] + w[len(name):]
    return " ".join(words)


def run_options(o: dict[str, Any], style: str = "run") -> int:
    """Build and run the machine the options describe (both spellings end here)."""
    rep = Reporter(style)
    from ..errors import MicrovmError, UserError

    try:
        setup_logging(o["verbose"], o["logfile"])
    except OSError as e:
        return rep.usage(f"-D {o['logfile']}: cannot open the log file: {e.strerror}")
    items = {i for text in o["log_items"] for i in text.split(",") if i}
    if items & {"help", "?"}:
        say(log_items_help(), sys.stdout)
        return 1 if style == "qemu" else 0  # QEMU 7.2 exits 1 after -d help (measured)
    unknown = items - set(LOG_ITEMS)
    if unknown:
        tcg = unknown & QEMU_LOG_ITEMS
        if tcg:
            return rep.usage(f"-d {','.join(sorted(tcg))}: unsupported on microvm (QEMU's TCG tracing; "
                             f"microvm has {', '.join(LOG_ITEMS)}; -d help lists them)")
        return rep.usage(f"-d {','.join(sorted(unknown))}: unknown log item (supported: {', '.join(LOG_ITEMS)}; "
                         "-d help lists them)")
    from ..log import log_every_event

    log_every_event("guest_errors" in items or o["verbose"] > 0)
    from .introspect import answer, help_request

    try:
        asked = help_request(o)
        if asked is not None:
            text, ok = answer(*asked)
            if not ok:
                return rep.usage(text)
            say(text, sys.stdout)
            return 0
        from .tospec import build_spec, parse_name

        spec = build_spec(o, rep.warn)
        notice = None
        if spec.kernel is None and spec.bios is None and spec.drives:
            notice = _firmware_for_disk(spec, rep)
        if spec.kernel is None and spec.bios is None:
            from ..guest import GuestBuildError, GuestNotBuilt, default_guest

            try:
                g = default_guest(build=True, progress=lambda s: say(f"microvm: guest build: {s}\n"))
            except (GuestNotBuilt, GuestBuildError) as e:
                return rep.usage(str(e))
            # the ELF vmlinux through its PVH entry: no decompressor to run, which an emulating
            # host KVM executes a thousand times slower (about a minute for the bzImage here)
            spec.kernel = str(g.vmlinux)
            if o["initrd"] is None:
                spec.initrd = str(g.initramfs)
            if o["append"] is None:
                spec.append = g.cmdline
        _, process = parse_name(o["name"])
        from . import daemon

        if process:
            daemon.set_process_name(process)
        detached = daemon.Daemon() if o["daemonize"] else None  # the parent exits in here
        pidfile = None
        saved = daemon.exit_on_termination()  # until the machine takes SIGTERM/SIGHUP over
        try:
            if o["pidfile"] is not None:
                pidfile = daemon.PidFile(o["pidfile"])
            from ..machine import run_spec

            ready = None
            if detached is not None or notice is not None:
                def ready() -> None:  # the first machine is built: the line was valid
                    if notice is not None:
                        say(notice)
                    if detached is not None:
                        detached.ready(keep_stderr=bool(o["logfile"]))
            return run_spec(spec, ready=ready)
        finally:
            if pidfile is not None:
                pidfile.remove()
            daemon.restore_signals(saved)
    except UserError as e:
        return rep.usage(str(e))
    except MicrovmError as e:
        return rep.failure(str(e))
    except OSError as e:  # /dev/kvm missing, KVM ioctls refused
        return rep.failure(str(e))
    except Exception as e:  # a bug: say so in one line; the traceback is for -v
        log.debug("internal error", exc_info=True)
        say(oneline(f"microvm: internal error: {type(e).__name__}: {e} (run with -v -v for the traceback)") + "\n")
        return 1


def _firmware_for_disk(spec: Any, rep: Reporter) -> str:
    """No --kernel but a disk: boot the default firmware, as QEMU's microvm does without
    ACPI (qboot.rom); returns the notice that says plainly what will happen (neither firmware
    can boot from a virtio-mmio disk here), in the options' spelling, for the caller to print
    once the machine is built (a line that is refused gets its one error line only)."""
    from ..boot.firmware import DEFAULT_FIRMWARE

    spec.bios = DEFAULT_FIRMWARE
    text = (
        f"microvm: no --kernel: booting the firmware {DEFAULT_FIRMWARE}, as QEMU's microvm does. It cannot boot "
        "from the disk: qboot boots only a kernel handed over through fw_cfg and otherwise halts silently, and "
        "SeaBIOS, with --bios /usr/share/seabios/bios-microvm.bin, finds virtio-mmio disks only through ACPI, "
        "which microvm does not have ('No bootable device.'). To boot from the disk, give its kernel: "
        "--kernel FILE --append 'root=/dev/vda ...'." + (" C-a x quits." if "mon:stdio" in spec.serial else "")
    )
    return (qemu_words(text) if rep.style == "qemu" else text) + "\n"


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


def guest_path_command(which: str | None) -> int:
    """``microvm guest path [vmlinux|bzImage|initramfs]``: the default guest's files, so a
    QEMU-spelling line can say ``-kernel $(microvm guest path vmlinux)``. Never builds:
    a guest that is not built is an error naming ``microvm guest build``."""
    from ..guest import GuestNotBuilt, default_guest

    names = ("vmlinux", "bzImage", "initramfs")
    if which is not None and which not in names:
        return error(f"guest path {which}: expected one of {', '.join(names)}")
    try:
        g = default_guest(build=False)
    except GuestNotBuilt as e:
        return error(str(e))
    paths = {"vmlinux": g.vmlinux, "bzImage": g.kernel, "initramfs": g.initramfs}
    if which is not None:
        say(f"{paths[which]}\n", sys.stdout)
    else:
        say("".join(f"{n:<10}{p}\n" for n, p in paths.items()) + f"{'cmdline':<10}{g.cmdline}\n", sys.stdout)
    return 0


def guest_build_command(force: bool, variant: str | None = None) -> int:
    from ..guest import GuestBuildError, build

    try:
        g = build(force=force, progress=lambda s: sys.stderr.write(f"microvm: guest build: {s}\n"), variant=variant)
    except (GuestBuildError, ValueError) as e:  # ValueError: an unknown variant
        return error(str(e))
    print(f"kernel    {g.kernel}\nvmlinux   {g.vmlinux}\ninitramfs {g.initramfs}\ncmdline   {g.cmdline}")
    return 0


class _RunCommand:
    """``run_command`` itself: a callable whose ``__signature__`` (the option table's
    keywords, so callers and tests can bind arguments by name as if they were spelled out)
    is made only when asked for: building it needs :mod:`inspect` (and with it ``re``,
    ``enum``, ``dataclasses``...), which the default ``microvm run`` path must not import."""

    __name__ = __qualname__ = "run_command"

    def __init__(self, func: Any) -> None:
        self._func = func
        self.__doc__ = func.__doc__
        self.__module__ = func.__module__

    def __call__(self, **options: Any) -> int:
        return self._func(**options)

    @property
    def __signature__(self) -> Any:
        import inspect

        from .options import RUN_OPTIONS

        return inspect.Signature([inspect.Parameter(o.dest, inspect.Parameter.KEYWORD_ONLY, default=o.default)
                                  for o in RUN_OPTIONS])


run_command = _RunCommand(run_command)
