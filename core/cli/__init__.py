"""Command line entry points."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .main import main as _main

    return _main(argv)


def console_main() -> None:
    """The ``microvm`` console script: :func:`main`, then exit without the interpreter's
    finalization (several milliseconds of module teardown and thread bookkeeping, a sixth
    of a tiny guest's whole run). Everything microvm writes is unbuffered (os.write,
    pwritev, fdatasync on FLUSH) or flushed here, so nothing is lost."""
    import os
    import sys

    try:
        status = main()
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
