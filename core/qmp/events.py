"""QMP events: the names and data microvm emits, checked against QEMU 7.2's schema.

An event on the wire is ``{"timestamp": {"seconds": S, "microseconds": US}, "event": NAME}``
plus ``"data"`` when the event has members; the timestamp is wall-clock time, as QEMU's
``g_get_real_time()``. Checking names and enum values here catches a typo on the machine
side before a client (libvirt switches on these strings) sees it.
"""
from __future__ import annotations

import time
from typing import Any

#: qapi/run-state.json ShutdownCause (QEMU 7.2)
SHUTDOWN_CAUSES = (
    "none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal", "host-ui",
    "guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load",
)
#: GuestPanicAction
GUEST_PANIC_ACTIONS = ("pause", "poweroff", "run")

#: event name -> (required members, optional members)
EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "STOP": ((), ()),
    "RESUME": ((), ()),
    "RESET": (("guest", "reason"), ()),
    "SHUTDOWN": (("guest", "reason"), ()),
    "POWERDOWN": ((), ()),
    "GUEST_PANICKED": (("action",), ("info",)),
    "GUEST_CRASHLOADED": (("action",), ("info",)),
}


def check_event(name: str, data: dict[str, Any] | None) -> None:
    """Raise ValueError for an event or member QEMU 7.2 would not send."""
    spec = EVENTS.get(name)
    if spec is None:
        raise ValueError(f"unknown QMP event {name!r} (known: {', '.join(EVENTS)})")
    required, optional = spec
    data = data or {}
    missing = [m for m in required if m not in data]
    extra = [m for m in data if m not in required and m not in optional]
    if missing or extra:
        raise ValueError(f"event {name}: missing {missing}, unexpected {extra}")
    if "guest" in data and type(data["guest"]) is not bool:
        raise ValueError(f"event {name}: 'guest' must be a bool")
    if "reason" in data and data["reason"] not in SHUTDOWN_CAUSES:
        raise ValueError(f"event {name}: reason {data['reason']!r} is not a ShutdownCause")
    if "action" in data and data["action"] not in GUEST_PANIC_ACTIONS:
        raise ValueError(f"event {name}: action {data['action']!r} is not a GuestPanicAction")


def event_message(name: str, data: dict[str, Any] | None = None, now_ns: int | None = None) -> dict[str, Any]:
    """The event object (the writer orders members as QEMU does)."""
    ns = time.time_ns() if now_ns is None else now_ns
    msg: dict[str, Any] = {"event": name, "timestamp": {"seconds": ns // 1_000_000_000,
                                                        "microseconds": ns // 1000 % 1_000_000}}
    if data:
        msg["data"] = data
    return msg
