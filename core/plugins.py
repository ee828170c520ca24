"""Plugin discovery and the registries filled by the ``register_*`` hooks.

Plugins are the ``microvm`` entry points of the installed distributions. Scanning every
installed distribution's metadata costs tens of milliseconds, more than the rest of a start,
so the result is cached in ``~/.cache/microvm/plugin-index-*.json``, keyed by the mtimes of
the ``sys.path`` directories (installing or removing a distribution touches its
``site-packages``). ``MICROVM_NO_PLUGIN_CACHE=1`` skips the cache.

Operators steer plugins with ``MICROVM_PLUGINS_ALLOW`` / ``MICROVM_PLUGINS_DENY`` (comma
separated entry-point names) and trace hook calls with ``MICROVM_TRACE_HOOKS=1``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pluggy

from .errors import PluginError
from .options import MachineOption, OptionRegistry

log = logging.getLogger("microvm.plugins")
GROUP = "microvm"
INDEX_VERSION = 1


@dataclass(frozen=True)
class EntryPointInfo:
    name: str
    value: str
    dist: str
    version: str


@dataclass
class Registered:
    """A named thing a plugin registered (device type, backend, irqchip)."""

    name: str
    factory: Callable[..., Any] | None
    help: str
    plugin: str


def _cache_dir() -> Path:
    return Path(os.environ.get("MICROVM_CACHE") or Path.home() / ".cache" / "microvm")


def _fingerprint() -> str:
    h = hashlib.sha256()
    h.update(sys.prefix.encode())
    for p in sys.path:
        try:
            st = os.stat(p or ".")
        except OSError:
            continue
        h.update(f"{p}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:20]


def _scan_entry_points() -> list[EntryPointInfo]:
    from importlib.metadata import entry_points

    found = []
    seen = set()
    for ep in entry_points(group=GROUP):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        found.append(
            EntryPointInfo(ep.name, ep.value, dist.metadata["Name"] if dist else "?", dist.version if dist else "?")
        )
    return found


def discover() -> list[EntryPointInfo]:
    """The installed plugins' entry points, from the cache when sys.path is unchanged."""
    if os.environ.get("MICROVM_NO_PLUGIN_CACHE"):
        return _scan_entry_points()
    prefix = hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]
    path = _cache_dir() / f"plugin-index-{prefix}-{_fingerprint()}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("version") == INDEX_VERSION:
            return [EntryPointInfo(**e) for e in data["entry_points"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    eps = _scan_entry_points()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": INDEX_VERSION, "entry_points": [e.__dict__ for e in eps]}))
        os.replace(tmp, path)
        for old in path.parent.glob(f"plugin-index-{prefix}-*.json"):  # one per environment
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:  # a read-only home is no reason to fail
        log.debug("plugin index not cached: %s", e)
    return eps


def _load(ep: EntryPointInfo) -> Any:
    module, _, attr = ep.value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def _env_list(name: str) -> set[str] | None:
    v = os.environ.get(name)
    if v is None:
        return None
    return {x.strip() for x in v.split(",") if x.strip()}


class PluginHost:
    """The plugin manager plus everything the registration hooks declared."""

    def __init__(self, extra: Iterable[Any] = (), use_entry_points: bool = True) -> None:
        from . import hookspecs

        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        from . import coreplugin

        self.pm.register(coreplugin, name="core")
        self.entry_points: dict[str, EntryPointInfo] = {}
        if use_entry_points:
            allow, deny = _env_list("MICROVM_PLUGINS_ALLOW"), _env_list("MICROVM_PLUGINS_DENY") or set()
            for ep in discover():
                if (allow is not None and ep.name not in allow) or ep.name in deny:
                    log.debug("plugin %s skipped by allow/deny list", ep.name)
                    continue
                try:
                    plugin = _load(ep)
                except Exception as e:
                    raise PluginError(f"plugin {ep.name} ({ep.dist} {ep.version}) failed to load: {e}") from e
                self._register(plugin, ep.name, f"{ep.dist} {ep.version}")
                self.entry_points[ep.name] = ep
        for i, plugin in enumerate(extra):
            self._register(plugin, getattr(plugin, "__name__", None) or f"extra-{i}", "")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise PluginError(f"plugin {e.plugin!r}: {e}") from e
        if os.environ.get("MICROVM_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda s: sys.stderr.write("[hook] " + s))
            self.pm.enable_tracing()
        self.hook = self.pm.hook
        self.options = OptionRegistry()
        self.irqchips: dict[str, Registered] = {}
        self.device_types: dict[str, Registered] = {}
        self.backends: dict[tuple[str, str], Registered] = {}
        self._collect()

    def _register(self, plugin: Any, name: str, origin: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as e:
            where = f" ({origin})" if origin else ""
            raise PluginError(f"plugin {name}{where} does not match the hook specifications: {e}") from e

    # -- registration -------------------------------------------------------------------
    def _each_plugin(self, hookname: str) -> Iterable[tuple[str, Callable[..., Any]]]:
        """(plugin name, implementation) for one hook, so registrations can be attributed."""
        for impl in getattr(self.pm.hook, hookname).get_hookimpls():
            yield impl.plugin_name, impl.function

    def _collect(self) -> None:
        for pname, fn in self._each_plugin("register_machine_options"):

            def reg_option(option: MachineOption, _p: str = pname) -> None:
                if isinstance(option, MachineOption) and not option.plugin:
                    option = MachineOption(**{**option.__dict__, "plugin": _p})
                self.options.register(option)

            fn(register=reg_option)
        for pname, fn in self._each_plugin("register_irqchips"):
            fn(register=self._registrar(self.irqchips, "kernel-irqchip", pname))
        for pname, fn in self._each_plugin("register_device_types"):
            fn(register=self._registrar(self.device_types, "device type", pname))
        for pname, fn in self._each_plugin("register_backends"):

            def reg_backend(kind: str, name: str, factory: Callable[..., Any] | None, help: str = "", _p: str = pname) -> None:
                key = (kind, name)
                if key in self.backends:
                    raise PluginError(f"{kind} backend {name!r} registered twice ({self.backends[key].plugin} and {_p})")
                self.backends[key] = Registered(name, factory, help, _p)

            fn(register=reg_backend)

    @staticmethod
    def _registrar(table: dict[str, Registered], what: str, plugin: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any] | None, help: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin}: {what} name must be a non-empty string, got {name!r}")
            if name in table:
                raise PluginError(f"{what} {name!r} registered twice ({table[name].plugin} and {plugin})")
            table[name] = Registered(name, factory, help, plugin)

        return register

    # -- introspection (``microvm plugins``) ----------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            ep = self.entry_points.get(name)
            rows.append(
                {"name": name, "dist": ep.dist if ep else "-", "version": ep.version if ep else "-", "hooks": hooks}
            )
        return sorted(rows, key=lambda r: r["name"])


_HOST: PluginHost | None = None


def plugin_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use and once."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST
