"""Character devices: where a serial port's or a console port's bytes go on the host.

Kept in the core because several devices share them (the 16550, the virtio console ports);
they are host I/O, not guest-visible devices. The core registers QEMU's backends through its
own plugin (``register_backends``, kind ``"chardev"``): ``stdio``, ``null``, ``file``,
``pipe``, ``pty`` and ``socket``; a plugin may add more by subclassing :class:`CharBackend`.

* :mod:`.base` -- :class:`CharBackend` (bounded output, flow-controlled input, the I/O
  thread, C-a escapes, mux) and :class:`CharFrontend` (a device's handle, the
  :class:`Chardev` protocol plugins see);
* :mod:`.fd` -- ``stdio``, ``file``, ``pipe``; :mod:`.pty`; :mod:`.socket`.

The backends live for the run (``microvm.backends.HostBackends``): a guest reset rebuilds
the machine, whose devices attach new frontends to the same backends.

Names resolve lazily: the default ``stdio`` path never imports the socket module.
"""
from __future__ import annotations

from typing import Any

_WHERE = {
    "Chardev": "base",
    "CharBackend": "base",
    "CharFrontend": "base",
    "ChardevInfo": "base",
    "NullBackend": "base",
    "OUTPUT_BUFFER": "base",
    "MUX_HELP": "base",
    "CLOSE_FLUSH_SECONDS": "base",
    "FdBackend": "fd",
    "StdioBackend": "fd",
    "FileBackend": "fd",
    "PipeBackend": "fd",
    "PtyBackend": "pty",
    "SocketBackend": "socket",
}
#: older names, kept importable
_ALIASES = {"NullChardev": "NullBackend", "FdChardev": "FdBackend", "FileChardev": "FileBackend"}

__all__ = sorted(_WHERE) + sorted(_ALIASES)


def __getattr__(name: str) -> Any:
    import importlib

    target = _ALIASES.get(name, name)
    module = _WHERE.get(target)
    if module is None:
        raise AttributeError(f"microvm.chardev has no {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), target)
    globals()[name] = value
    return value
