"""Machine options (``-M microvm,key=value,...``) declared by plugins.

A plugin declares each option it understands with :class:`MachineOption` (a
:class:`microvm.config.Property`); the command line is parsed against the declared set only,
so an option whose plugin is not installed does not exist and an unknown key is an error
listing the known ones, as QEMU does.
"""
from __future__ import annotations

from typing import Any, Iterable

from .config import ON_OFF_AUTO, LEGACY_OPTIONS, LegacyDevices, MachineOption, Property
from .errors import ConfigError, PluginError

__all__ = ["ON_OFF_AUTO", "MachineOption", "OptionRegistry"]


class OptionRegistry:
    """The options the installed plugins declared, and parsing of ``-M`` strings against them."""

    def __init__(self) -> None:
        self.options: dict[str, MachineOption] = {}

    def register(self, option: Property) -> None:
        if not isinstance(option, Property):
            raise PluginError(f"register_machine_options: expected a MachineOption, got {option!r}")
        if not isinstance(option, MachineOption):  # declared as a plain Property: same fields
            option = MachineOption(*option)
        why = option.problem()
        if why:
            raise PluginError(f"machine option declared by {option.plugin or '?'}: {why}")
        if option.name in self.options:
            other = self.options[option.name]
            raise PluginError(f"machine option {option.name!r} declared twice ({other.plugin or '?'} and {option.plugin or '?'})")
        self.options[option.name] = option

    def defaults(self) -> dict[str, Any]:
        return {name: opt.default for name, opt in self.options.items()}

    def parse_machine(self, specs: Iterable[str]) -> dict[str, Any]:
        """Parse ``-M`` values (``microvm,key=value,...``; several ``-M`` merge left to right,
        a key given twice keeps the last value, as QEMU's)."""
        values = self.defaults()
        for spec in specs:
            for key, value in split_machine_opts(spec):
                if key == "type":
                    if value != "microvm":
                        raise ConfigError(f"unsupported machine type {value!r}: only 'microvm' is provided")
                    continue
                opt = self.options.get(key)
                if opt is None:
                    from .providers import hint

                    known = ", ".join(sorted(self.options)) or "(none: no plugin declares machine options)"
                    raise ConfigError(f"unknown machine option {key!r}{hint('machine', key)}; known: {known}")
                values[key] = opt.parse(value)
        return values

    def switch(self, values: dict[str, Any], name: str) -> bool:
        """Option ``name`` as on/off: a bool as it is, ``OnOffAuto`` with ``auto`` resolved
        through the declaration's ``auto_value``; False when no plugin declares it."""
        opt = self.options.get(name)
        if opt is None:
            return False
        return bool(opt.resolve(values.get(name, opt.default)))

    def legacy_devices(self, values: dict[str, Any]) -> LegacyDevices:
        """QEMU microvm's optional legacy devices as the parsed options ask for them."""
        return LegacyDevices(**{field: self.switch(values, opt) for field, opt in LEGACY_OPTIONS.items()})


def split_machine_opts(text: str) -> list[tuple[str, str]]:
    """``-M`` text as QEMU 7.2's keyval parser splits it, into (key, value) pairs.

    The first item may be the bare machine type (``microvm``: the implied key ``type``); it
    ends at the first comma. Every other item is ``key=value``, where ``,,`` in the value is a
    comma (``pit=off,,rtc=off`` is pit's value ``off,rtc=off``). One trailing comma is
    allowed; an empty item is ``Invalid parameter ''`` and a key without ``=`` is
    ``Expected '=' after parameter 'KEY'``, in QEMU's words.
    """
    out: list[tuple[str, str]] = []
    n, i = len(text), 0
    comma = text.find(",")
    head = text[: comma if comma >= 0 else n]
    if "=" not in head:
        if head == "":
            raise ConfigError(f"-M {text}: Invalid parameter ''")
        out.append(("type", head))
        i = n if comma < 0 else comma + 1
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        key = text[i:j]
        if key == "":
            raise ConfigError(f"-M {text}: Invalid parameter ''")
        if j == n or text[j] == ",":
            raise ConfigError(f"-M {text}: Expected '=' after parameter '{key}'")
        j += 1  # past '='
        value: list[str] = []
        while j < n:
            if text[j] == ",":
                if text[j + 1 : j + 2] == ",":
                    value.append(",")
                    j += 2
                    continue
                break
            value.append(text[j])
            j += 1
        out.append((key, "".join(value)))
        i = j + 1  # past the separating comma (or beyond the end)
    return out
