"""Machine options (``-M microvm,key=value,...``) declared by plugins.

A plugin declares each option it understands with :class:`MachineOption`; the command line is
parsed against the declared set only, so an option whose plugin is not installed does not
exist and an unknown key is an error listing the known ones, as QEMU does.
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from .errors import ConfigError, PluginError

ON_OFF_AUTO = ("on", "off", "auto")
_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}


class MachineOption(NamedTuple):
    """One ``-M`` key.

    ``kind`` is ``"OnOffAuto"``, ``"bool"``, ``"str"``, ``"int"`` or ``"choice"`` (with
    ``choices``). ``auto_means`` documents what ``auto`` resolves to (shown by
    ``microvm machine``), e.g. ``"on"`` or ``"on without KVM, off with KVM"``.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    auto_means: str = ""
    plugin: str = ""

    def parse(self, text: str) -> Any:
        t = text.strip()
        low = t.lower()
        if self.kind == "OnOffAuto":
            if low in ON_OFF_AUTO:
                return low
            raise ConfigError(f"machine option {self.name}={text}: expected on, off or auto")
        if self.kind == "bool":
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ConfigError(f"machine option {self.name}={text}: expected on or off")
        if self.kind == "int":
            try:
                return int(t, 0)
            except ValueError:
                raise ConfigError(f"machine option {self.name}={text}: expected a number") from None
        if self.kind == "choice":
            if t in self.choices:
                return t
            raise ConfigError(f"machine option {self.name}={text}: expected one of {', '.join(self.choices)}")
        return t


class OptionRegistry:
    """The options the installed plugins declared, and parsing of ``-M`` strings against them."""

    def __init__(self) -> None:
        self.options: dict[str, MachineOption] = {}

    def register(self, option: MachineOption) -> None:
        if not isinstance(option, MachineOption):
            raise PluginError(f"register_machine_options: expected a MachineOption, got {option!r}")
        if option.name in self.options:
            other = self.options[option.name]
            raise PluginError(f"machine option {option.name!r} declared twice ({other.plugin or '?'} and {option.plugin or '?'})")
        self.options[option.name] = option

    def defaults(self) -> dict[str, Any]:
        return {name: opt.default for name, opt in self.options.items()}

    def parse_machine(self, specs: Iterable[str]) -> dict[str, Any]:
        """Parse ``-M`` values (``microvm,key=value,...``; several ``-M`` merge left to right)."""
        values = self.defaults()
        for spec in specs:
            for i, item in enumerate(p for p in spec.split(",") if p != ""):
                if "=" not in item:
                    if i == 0 or item == "microvm":
                        if item not in ("microvm", "type=microvm"):
                            raise ConfigError(f"unsupported machine type {item!r}: only 'microvm' is provided")
                        continue
                    raise ConfigError(f"machine option {item!r} needs a value (key=value)")
                key, _, value = item.partition("=")
                if key == "type":
                    if value != "microvm":
                        raise ConfigError(f"unsupported machine type {value!r}: only 'microvm' is provided")
                    continue
                opt = self.options.get(key)
                if opt is None:
                    known = ", ".join(sorted(self.options)) or "(none: no plugin declares machine options)"
                    raise ConfigError(f"unknown machine option {key!r}; known: {known}")
                values[key] = opt.parse(value)
        return values
