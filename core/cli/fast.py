"""A hand-written parser for ``microvm run OPTIONS`` (the start-up fast path).

It accepts exactly the options of the typer ``run`` command (``RUN_OPTIONS``), and raises
:class:`NotFast` for anything it does not handle so that typer takes over and reports.
"""
from __future__ import annotations

from typing import Any


class NotFast(Exception):
    """Let typer parse this command line."""


class FastUsageError(Exception):
    """A well-formed command line with a bad value (reported as one line, status 2)."""


#: option spelling → (keyword, kind): kind is "str", "int", "flag", "list" or "count"
RUN_OPTIONS: dict[str, tuple[str, str]] = {
    "--kernel": ("kernel", "str"),
    "--initrd": ("initrd", "str"),
    "--append": ("append", "str"),
    "-m": ("memory", "str"),
    "--memory": ("memory", "str"),
    "--smp": ("smp", "int"),
    "--no-reboot": ("no_reboot", "flag"),
    "-M": ("machine", "list"),
    "--machine": ("machine", "list"),
    "--device": ("device", "list"),
    "--drive": ("drive", "list"),
    "--chardev": ("chardev", "list"),
    "--netdev": ("netdev", "list"),
    "--serial": ("serial", "list"),
    "-v": ("verbose", "count"),
    "--verbose": ("verbose", "count"),
}
DEFAULTS: dict[str, Any] = {
    "kernel": None, "initrd": None, "append": None, "memory": "128M", "smp": 1, "no_reboot": False,
    "machine": [], "device": [], "drive": [], "chardev": [], "netdev": [], "serial": [], "verbose": 0,
}


def parse_run(argv: list[str]) -> dict[str, Any]:
    if not argv or argv[0] != "run":
        raise NotFast
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
    i = 1
    while i < len(argv):
        a = argv[i]
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        spec = RUN_OPTIONS.get(name)
        if spec is None:
            raise NotFast  # --help, unknown options, positional words: typer reports them
        key, kind = spec
        if kind in ("flag", "count"):
            if eq:
                raise NotFast
            out[key] = True if kind == "flag" else out[key] + 1
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise NotFast
            value = argv[i + 1]
            i += 2
        if kind == "int":
            if not value.isascii():
                raise NotFast  # int() takes other scripts' digits; typer does not
            try:
                out[key] = int(value)
            except ValueError:
                raise NotFast from None
        elif kind == "list":
            out[key].append(value)
        else:
            out[key] = value
    return out
