"""``microvm`` command line.

Three ways in, one options table (:mod:`microvm.cli.options`):

* ``microvm -M microvm -kernel ... -nographic`` (the first argument starts with ``-``):
  QEMU's spelling, parsed by hand in :mod:`microvm.cli.qemu`;
* ``microvm run --kernel ...``: parsed by hand in :mod:`microvm.cli.fast`;
* anything else (``run --help``, the other commands, a malformed ``run`` line): typer.

typer defines the commands and their help; but importing it costs about 60 ms, more than
QEMU needs to start, spawn and finish a tiny guest, so neither way of running a VM imports
it. Tests check that the parsers agree on every option.
"""
from __future__ import annotations

import sys


def setup_logging(verbose: int, logfile: str | None = None) -> None:
    """-v: info, -vv: debug; ``-D FILE`` sends the log there (opened now: a bad path is an
    error before the VM starts). :mod:`logging` itself is imported only when a message is due."""
    from ..log import DEBUG, INFO, WARNING, set_threshold

    stream = sys.stderr
    if logfile:
        import os

        stream = open(os.path.abspath(logfile), "w", buffering=1, encoding="utf-8")  # -daemonize changes to /
    level = WARNING if verbose <= 0 else INFO if verbose == 1 else DEBUG
    set_threshold(level, lambda logging: logging.basicConfig(level=level, format="microvm: %(message)s", stream=stream))


def oneline(msg: str) -> str:
    """``msg`` with every unprintable character escaped (``\\n``, ``\\x1b``...): an error
    quoting the user's input stays one line, whatever the input held."""
    if msg.isprintable():
        return msg
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def error(msg: str) -> int:
    try:
        sys.stderr.write(f"microvm: error: {oneline(msg)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed or a broken pipe: status stays 2
        pass
    return 2


def _ensure_std_fds() -> None:
    """Started with stdin/stdout/stderr closed (``>&-``, a daemon, some CI runners), the next
    file opened (/dev/kvm, a disk image) would become fd 0-2 and be read or written as a
    console. Put /dev/null there first, and give Python streams for them (it sets
    ``sys.stdout`` to None when fd 1 was closed at start): output is dropped, the VM runs."""
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # lowest free descriptor: this one
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))


def main(argv: list[str] | None = None) -> int:
    _ensure_std_fds()
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0].startswith("-") and args[0] != "-":
        from .qemu import qemu_main

        return qemu_main(args)
    if args[:2] == ["guest", "path"] and len(args) <= 3:  # for $(...): no typer
        from .commands import guest_path_command

        return guest_path_command(args[2] if len(args) == 3 else None)
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
