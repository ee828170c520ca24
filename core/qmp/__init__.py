"""QMP (the QEMU Machine Protocol) for microvm: a QEMU 7.2-compatible monitor server.

Nothing here is imported unless a QMP monitor is requested: the package pulls in ``json``,
``re``, ``socket`` and ``selectors``, which microvm's default start-up path avoids.

* :mod:`.control`  -- :class:`MachineControl`, what the machine side implements;
* :mod:`.server`   -- :class:`QmpServer`, the listening socket and its one thread;
* :mod:`.protocol` -- one connection's protocol state (greeting, negotiation, dispatch);
* :mod:`.commands` / :mod:`.hmp` -- the command table; :mod:`.events` -- event names/data;
* :mod:`.qjson`    -- QEMU's JSON dialect (streaming parser, byte-exact writer).

See docs/qmp.md.
"""
from __future__ import annotations
