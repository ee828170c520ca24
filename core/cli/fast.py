"""A hand-written parser for ``microvm run OPTIONS`` (the start-up fast path).

It accepts exactly the options of :data:`microvm.cli.options.RUN_OPTIONS`, the table typer's
``run`` command is generated from too, and raises :class:`NotFast` for anything it does not
handle so that typer takes over and reports.
"""
from __future__ import annotations

from typing import Any

from .options import BY_NAME, defaults, store


class NotFast(Exception):
    """Let typer parse this command line."""


class FastUsageError(Exception):
    """A well-formed command line with a bad value (reported as one line, status 2)."""


def parse_run(argv: list[str]) -> dict[str, Any]:
    if not argv or argv[0] != "run":
        raise NotFast
    out = defaults()
    i = 1
    while i < len(argv):
        a = argv[i]
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        opt = BY_NAME.get(name)
        if opt is None:
            raise NotFast  # --help, unknown options, positional words: typer reports them
        if opt.kind in ("flag", "count"):
            if eq:
                raise NotFast
            store(out, opt, None)
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
        try:
            store(out, opt, value)
        except ValueError:
            raise NotFast from None  # typer words the error
    return out


#: spelling → (keyword, kind), and the defaults: views of the table, for the tests that
#: check typer's command against this parser
RUN_OPTIONS: dict[str, tuple[str, str]] = {n: (o.dest, o.kind) for n, o in BY_NAME.items()}
DEFAULTS: dict[str, Any] = defaults()
