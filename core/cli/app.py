"""The typer application: every command, with help. Loaded only when needed (see main)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional

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


def _run_command_function() -> Callable[..., None]:
    """typer's ``run`` command, generated from :data:`microvm.cli.options.RUN_OPTIONS` (the
    table the fast parser reads too): one keyword parameter per option."""
    from .options import RUN_OPTIONS

    types = {"int": int, "flag": bool, "list": List[str], "count": int}
    params, annotations = [], {}
    for o in RUN_OPTIONS:
        kind = types.get(o.kind) or (Optional[str] if o.default is None else str)
        default = list(o.default) if o.kind == "list" else o.default
        info = typer.Option(default, *o.names, help=o.help, count=o.kind == "count", metavar=o.metavar or None)
        params.append(inspect.Parameter(o.dest, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind))
        annotations[o.dest] = kind

    def run(**options: Any) -> None:
        """Boot a microvm. Without --kernel, boots the project's default guest (building it once)."""
        from .commands import run_command

        raise typer.Exit(run_command(**options))

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = annotations
    return run


run = app.command("run", context_settings={"help_option_names": ["-h", "--help"]})(_run_command_function())


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


@guest_app.command("path")
def guest_path(which: Optional[str] = typer.Argument(None, help="vmlinux, bzImage or initramfs (default: all, one a line)")) -> None:
    """Print the default guest's file paths: microvm -kernel $(microvm guest path vmlinux) ..."""
    from .commands import guest_path_command

    raise typer.Exit(guest_path_command(which))


@guest_app.command("build")
def guest_build(
    force: bool = typer.Option(False, "--force", help="Rebuild even when cached."),
    variant: Optional[str] = typer.Option(None, "--variant", help="A patched variant: qemu-compatible (no INT3 self-test, so QEMU boots it on an emulating host)."),
) -> None:
    """Build (or reuse from ~/.cache/microvm) the default guest kernel and initramfs."""
    from .commands import guest_build_command

    raise typer.Exit(guest_build_command(force, variant))


def typer_main(argv: list[str]) -> int:
    try:
        rv = app(args=argv, prog_name="microvm", standalone_mode=False)
    except Exit as e:
        return e.exit_code
    except Abort:
        return 130
    except ClickException as e:  # unknown option, missing value, bad type: one line
        msg = e.format_message().replace("\n", " ").strip()
        if not msg:  # `microvm` alone: typer printed the help
            return e.exit_code
        return error(msg)
    return rv if isinstance(rv, int) else 0
