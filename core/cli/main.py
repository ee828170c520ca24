"""``microvm`` command line.

typer defines the commands and their help; but importing typer costs about 60 ms, more than
QEMU needs to start, spawn and finish a tiny guest. So ``microvm run`` with the ordinary
options is parsed by :mod:`microvm.cli.fast` without typer, and anything else (``--help``,
other commands, a malformed line) goes through typer. A test checks that both parsers know
the same options and agree on what they mean.
"""
from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="microvm: %(message)s", stream=sys.stderr)


def error(msg: str) -> int:
    sys.stderr.write(f"microvm: error: {msg}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
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
