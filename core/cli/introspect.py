"""``help`` answers as QEMU gives them, generated from what the installed plugins declare:
``-device help``, ``-device NAME,help``, ``-M help``, ``-M microvm,help``, ``-netdev help``,
``-chardev help``, ``-cpu help``, ``-accel help``, ``-display help``; the same in
``microvm run``'s spelling (``--device virtio-blk-device,help``).

QEMU's layouts (7.2): device and machine properties as ``  name=<type>`` padded to 24
columns, `` - description``, then `` (default: value)`` with strings quoted; device lists as
``name "NAME", bus BUS, desc "TEXT"``. Devices, backends and machine options that a
known plugin would provide but which are not installed are listed after, with the plugin.
"""
from __future__ import annotations

from typing import Any, Iterable

_HELP = ("help", "?")


def _asks_help(text: str) -> bool:
    return any(part in _HELP for part in text.split(","))


def help_request(o: dict[str, Any]) -> tuple[str, str] | None:
    """(what, argument) for the first ``help`` the options ask for, else None."""
    for text in o["device"]:
        if _asks_help(text):
            first = text.split(",")[0]
            return ("devices", "") if first in _HELP else ("device", first)
    for text in o["machine"]:
        if _asks_help(text):
            first = text.split(",")[0]
            return ("machines", "") if first in _HELP else ("machine", first)
    for key in ("netdev", "chardev", "accel"):
        for text in o[key]:
            if text.split(",")[0] in _HELP:
                return (key, "")
    if o["cpu"] in _HELP:
        return ("cpu", "")
    if o["display"] in _HELP:
        return ("display", "")
    return None


def _type_name(p: Any) -> str:
    return {"choice": "str", "int": "int64"}.get(p.kind, p.kind)


def _default(p: Any) -> str | None:
    """QEMU's ``(default: ...)`` text: strings quoted, booleans true/false; None: no default."""
    if p.required or p.default is None:
        return None
    if isinstance(p.default, bool):
        return "true" if p.default else "false"
    if isinstance(p.default, int):
        return str(p.default)
    return f'"{p.default}"'


def property_lines(props: Iterable[Any], with_auto: bool = True) -> list[str]:
    """One QEMU-style line per declared :class:`~microvm.config.Property`, sorted by name."""
    lines = []
    for p in sorted(props, key=lambda p: p.name):
        line = f"  {p.name}=<{_type_name(p)}>"
        desc = p.help
        if p.kind == "choice":
            desc = f"{desc} ({'/'.join(p.choices)})" if desc else "/".join(p.choices)
        elif p.kind == "OnOffAuto" and not desc:
            desc = "on/off/auto"
        default = _default(p)
        if desc or default is not None:
            line = line.ljust(24) + f" - {desc}"
            if default is not None:
                line += f" (default: {default}" + (f"; auto means {p.auto_means}" if with_auto and p.auto_means else "") + ")"
            elif with_auto and p.auto_means:
                line += f" (auto means {p.auto_means})"
        lines.append(line)
    return lines


def _host() -> Any:
    from ..plugins import plugin_host

    return plugin_host()


def devices_text() -> str:
    from ..providers import missing

    host = _host()
    lines = ["Devices of the installed plugins:"]
    for name in sorted(host.device_types):
        reg = host.device_types[name]
        bus = ", bus virtio-bus" if reg.virtio else ""
        desc = f', desc "{reg.help}"' if reg.help else ""
        lines.append(f'name "{name}"{bus}{desc}, plugin "{reg.plugin}"')
    absent = missing("device", set(host.device_types))
    if absent:
        lines += ["", "Devices of plugins that are not installed:"]
        lines += [f'name "{n}" (pip install {d})' for n, d in absent]
    return "\n".join(lines) + "\n"


def device_text(name: str) -> tuple[str, bool]:
    """``NAME options:`` and its properties; (message, False) when the type is unknown."""
    from ..config import VIRTIO_TRANSPORT_PROPERTIES
    from ..providers import hint

    host = _host()
    reg = host.device_types.get(name)
    if reg is None:
        known = ", ".join(sorted(host.device_types)) or "none installed"
        return f"-device {name},help: '{name}' is not a valid device model name{hint('device', name)} (available: {known})", False
    props = tuple(reg.properties) + (VIRTIO_TRANSPORT_PROPERTIES if reg.virtio else ())
    return "\n".join([f"{name} options:", *property_lines(props)]) + "\n", True


def machines_text() -> str:
    return "Supported machines are:\n" + f"{'microvm':<20} microvm (i386) (default)\n"


def machine_text(name: str) -> tuple[str, bool]:
    from ..providers import KNOWN

    if name not in ("microvm", "type=microvm"):
        return f"-machine {name},help: unsupported machine type '{name}': only 'microvm' is provided (-M help)", False
    host = _host()
    opts = host.options.options
    lines = ["microvm-machine options:", *property_lines(opts.values())]
    chips = host.irqchips
    if chips:
        lines.append("  kernel-irqchip values: " + ", ".join(f"{n} ({r.help})" for n, r in sorted(chips.items())))
    absent = sorted((n, d) for (k, n), d in KNOWN.items() if k == "machine" and n not in opts)
    if absent:
        lines += ["Options of plugins that are not installed:"]
        lines += [f"  {n} (pip install {d})" for n, d in absent]
    return "\n".join(lines) + "\n", True


def backends_text(kind: str) -> str:
    from ..providers import missing

    names = sorted(n for k, n in _host().backends if k == kind)
    if kind == "chardev":
        text = "Available chardev backend types: \n" + "".join(f"  {n}\n" for n in names)
    else:
        text = "Available netdev backend types:\n" + "".join(f"{n}\n" for n in names)
    absent = missing(kind, set(names))
    if absent:
        text += "Not installed: " + ", ".join(f"{n} (pip install {d})" for n, d in absent) + "\n"
    return text


def answer(what: str, arg: str) -> tuple[str, bool]:
    """The text for a help request and whether it is an answer (status 0) or an error."""
    if what == "devices":
        return devices_text(), True
    if what == "device":
        return device_text(arg)
    if what == "machines":
        return machines_text(), True
    if what == "machine":
        return machine_text(arg)
    if what in ("netdev", "chardev"):
        return backends_text(what), True
    if what == "cpu":
        from ..boot.cpufeatures import help_text

        return help_text(), True
    if what == "accel":
        return "Accelerators supported in microvm:\nkvm\n", True
    if what == "display":
        return "Available display backend types:\nnone\n", True
    raise ValueError(what)
