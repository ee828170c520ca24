"""``microvm`` command line.

typer defines the commands and their help; but importing typer costs about 60 ms, more than
QEMU needs to start, spawn and finish a tiny guest. So ``microvm run`` with the ordinary
options is parsed by :mod:`microvm.cli.fast` without typer, and anything else (``--help``,
other commands, a malformed line) goes through typer. A test checks that both parsers know
the same options and agree on what they mean.
"""
from __future__ import annotations

import sys


def setup_logging(verbose: int) -> None:
    """-v: info, -vv: debug. :mod:`logging` itself is imported only when a message is due."""
    from ..log import DEBUG, INFO, WARNING, set_threshold

    level = WARNING if verbose <= 0 else INFO if verbose == 1 else DEBUG
    set_threshold(level, lambda logging: logging.basicConfig(level=level, format="microvm: %(message)s", stream=sys.stderr))


def error(msg: str) -> int:
    sys.stderr.write(f"microvm: error: {msg}\n")
    return 2


def _ensure_std_fds() -> None:
    """Started with stdin/stdout/stderr closed (a daemon, some CI runners), the next file
    opened (/dev/kvm, a disk image) would become fd 0-2 and be read or written as a
    console. Put /dev/null there first."""
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # lowest free descriptor: this one


def main(argv: list[str] | None = None) -> int:
    _ensure_std_fds()
    args = sys.argv[1:] if argv is None else list(argv)
    from . import fast

    try:
        parsed = fast.parse_run(args)
    except fast.NotFast:
        from .app import typer_main

        return typer_main(args)
    except fast.FastUsageError as e:
        return error(str(e))
    from .commands import run_command

    return run_command(**parsed)
