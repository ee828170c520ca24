"""The typer application: every command, with help. Loaded only when needed (see main)."""
from __future__ import annotations

from typing import List, Optional

import typer

from typer import Abort, Exit

try:  # typer >= 0.29 vendors click; older releases depend on it
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException

from .main import error

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="microvm: a QEMU-microvm-compatible virtual machine monitor on KVM; every device is a plugin.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
guest_app = typer.Typer(help="The default guest (kernel + initramfs) built from Debian packages.", no_args_is_help=True)
app.add_typer(guest_app, name="guest")


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def run(
    kernel: Optional[str] = typer.Option(None, "--kernel", help="Kernel: ELF vmlinux (PVH entry) or bzImage. Default: the project's own guest."),
    initrd: Optional[str] = typer.Option(None, "--initrd", help="Initial ramdisk."),
    append: Optional[str] = typer.Option(None, "--append", help="Kernel command line."),
    memory: str = typer.Option("128M", "-m", "--memory", help="Guest RAM (QEMU syntax: 512, 512M, 2G)."),
    smp: int = typer.Option(1, "--smp", help="Number of vCPUs."),
    no_reboot: bool = typer.Option(False, "--no-reboot", help="Exit instead of rebooting when the guest resets (triple fault)."),
    machine: List[str] = typer.Option([], "-M", "--machine", help="microvm[,key=value,...]; see `microvm machine` for the keys."),
    device: List[str] = typer.Option([], "--device", help="TYPE[,prop=value,...], e.g. virtio-blk-device,drive=ID."),
    drive: List[str] = typer.Option([], "--drive", help="id=ID,file=PATH,format=raw,if=none[,readonly=on]."),
    chardev: List[str] = typer.Option([], "--chardev", help="BACKEND,id=ID (stdio, null, file,path=P)."),
    netdev: List[str] = typer.Option([], "--netdev", help="TYPE,id=ID,... (network backends from plugins)."),
    serial: List[str] = typer.Option([], "--serial", help="Host side of the serial port: stdio (default), null, none, file:PATH, chardev:ID."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More log output (-vv for debug)."),
) -> None:
    """Boot a microvm. Without --kernel, boots the project's default guest (building it once)."""
    from .commands import run_command

    raise typer.Exit(run_command(kernel, initrd, append, memory, smp, no_reboot, machine, device, drive, chardev, netdev, serial, verbose))


@app.command()
def plugins() -> None:
    """List installed plugins: name, distribution, version, the hooks each implements."""
    from .commands import plugins_command

    raise typer.Exit(plugins_command())


@app.command("machine")
def machine_cmd() -> None:
    """List the machine options (-M) the installed plugins declare, with defaults and what auto means."""
    from .commands import machine_command

    raise typer.Exit(machine_command())


@guest_app.command("build")
def guest_build(force: bool = typer.Option(False, "--force", help="Rebuild even when cached.")) -> None:
    """Build (or reuse from ~/.cache/microvm) the default guest kernel and initramfs."""
    from .commands import guest_build_command

    raise typer.Exit(guest_build_command(force))


def typer_main(argv: list[str]) -> int:
    try:
        rv = app(args=argv, prog_name="microvm", standalone_mode=False)
    except Exit as e:
        return e.exit_code
    except Abort:
        return 130
    except ClickException as e:  # unknown option, missing value, bad type: one line
        return error(e.format_message().replace("\n", " "))
    return rv if isinstance(rv, int) else 0
